/* min_p.c — keep tokens at least p times as likely as the most likely one. */
#include <math.h>

#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    float p;
    size_t min_keep;
} min_p_sampler;

static jl_status min_p_apply(jl_sampler *self, jl_candidates *c) {
    const min_p_sampler *s = (const min_p_sampler *)self;
    if (s->p <= 0.0f || c->size == 0) return JL_OK;
    jl_candidates_materialize(c);
    float max_l = c->data[0].logit;
    if (c->n_sorted == 0)
        for (size_t i = 1; i < c->size; i++) max_l = c->data[i].logit > max_l ? c->data[i].logit : max_l;
    const float min_logit = max_l + logf(s->p);  /* p_i >= p * p_max, in logits */
    size_t passing = 0;
    for (size_t i = 0; i < c->size; i++) passing += c->data[i].logit >= min_logit;
    if (passing >= s->min_keep) {
        /* the passing tokens are exactly the best `passing`: compacting keeps any sorted prefix */
        size_t kept = 0;
        for (size_t i = 0; i < c->size; i++)
            if (c->data[i].logit >= min_logit) c->data[kept++] = c->data[i];
        jl_candidates_truncate(c, kept);
    } else {
        jl_candidates_keep_top(c, s->min_keep);
    }
    return JL_OK;
}

static const jl_sampler_iface min_p_iface = {
    .name = "min-p",
    .size = sizeof(min_p_sampler),
    .apply = min_p_apply,
};

jl_sampler *jl_sampler_min_p_new(float p, size_t min_keep) {
    min_p_sampler *s = (min_p_sampler *)jl_sampler_new(&min_p_iface);
    if (s) {
        s->p = p;
        s->min_keep = min_keep;
    }
    return (jl_sampler *)s;
}
