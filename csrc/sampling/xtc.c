/* xtc.c — exclude top choices: with some probability, drop every token above the threshold but
 * the least likely of them. */
#include "janlib_sampling.h"

#define XTC_STREAM 2

typedef struct {
    jl_sampler base;
    float probability, threshold;
    size_t min_keep;
    uint64_t seed;
    jl_rng rng;
} xtc_sampler;

static jl_status xtc_apply(jl_sampler *self, jl_candidates *c) {
    xtc_sampler *s = (xtc_sampler *)self;
    if (s->probability <= 0.0f || s->threshold > 0.5f || c->size < 2) return JL_OK;
    if (jl_rng_uniform(&s->rng) > s->probability) return JL_OK;
    jl_candidates_softmax(c);
    size_t above = 0;
    for (size_t i = 0; i < c->size; i++) above += c->data[i].p >= s->threshold;
    if (above < 2) return JL_OK;
    const size_t removed = above - 1;
    if (c->size - removed < s->min_keep) return JL_OK;
    jl_candidates_sort_top(c, above);
    c->data += removed;
    c->size -= removed;
    c->n_sorted = 1;  /* the survivor of the top choices still leads the rest */
    return JL_OK;
}

static void xtc_reset(jl_sampler *self) {
    xtc_sampler *s = (xtc_sampler *)self;
    jl_rng_seed(&s->rng, s->seed, XTC_STREAM);
}

static const jl_sampler_iface xtc_iface = {
    .name = "xtc",
    .size = sizeof(xtc_sampler),
    .apply = xtc_apply,
    .reset = xtc_reset,
};

jl_sampler *jl_sampler_xtc_new(float probability, float threshold, size_t min_keep, uint64_t seed) {
    xtc_sampler *s = (xtc_sampler *)jl_sampler_new(&xtc_iface);
    if (s) {
        s->probability = probability;
        s->threshold = threshold;
        s->min_keep = min_keep;
        s->seed = seed;
        xtc_reset(&s->base);
    }
    return (jl_sampler *)s;
}
