/* top_p.c — nucleus: the smallest most-likely set whose probability reaches p. */
#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    float p;
    size_t min_keep;
} top_p_sampler;

static jl_status top_p_apply(jl_sampler *self, jl_candidates *c) {
    const top_p_sampler *s = (const top_p_sampler *)self;
    if (s->p >= 1.0f) return JL_OK;
    jl_candidates_softmax(c);
    /* llama.cpp's adaptive guess: the nucleus is rarely past the best 256, so sort those first
     * and widen only when the running sum has not reached p */
    jl_candidates_sort_top(c, c->size > 1024 ? 256 : c->size);
    float cumulative = 0.0f;
    size_t keep = c->size;
    for (size_t i = 0; i < c->size; i++) {
        if (i == c->n_sorted) jl_candidates_sort_top(c, 4 * i);
        cumulative += c->data[i].p;
        if (cumulative >= s->p && i + 1 >= s->min_keep) {
            keep = i + 1;
            break;
        }
    }
    jl_candidates_truncate(c, keep);
    return JL_OK;
}

static const jl_sampler_iface top_p_iface = {
    .name = "top-p",
    .size = sizeof(top_p_sampler),
    .apply = top_p_apply,
};

jl_sampler *jl_sampler_top_p_new(float p, size_t min_keep) {
    top_p_sampler *s = (top_p_sampler *)jl_sampler_new(&top_p_iface);
    if (s) {
        s->p = p;
        s->min_keep = min_keep;
    }
    return (jl_sampler *)s;
}
