/* top_k.c — keep the k most likely (k <= 0: all), found by partial selection. */
#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    int32_t k;
} top_k_sampler;

static jl_status top_k_apply(jl_sampler *self, jl_candidates *c) {
    const int32_t k = ((const top_k_sampler *)self)->k;
    if (k <= 0) return JL_OK;
    jl_candidates_keep_top(c, (size_t)k);
    return JL_OK;
}

static const jl_sampler_iface top_k_iface = {
    .name = "top-k",
    .size = sizeof(top_k_sampler),
    .apply = top_k_apply,
};

jl_sampler *jl_sampler_top_k_new(int32_t k) {
    top_k_sampler *s = (top_k_sampler *)jl_sampler_new(&top_k_iface);
    if (s) s->k = k;
    return (jl_sampler *)s;
}
