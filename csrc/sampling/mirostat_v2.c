/* mirostat_v2.c — Mirostat 2: drop tokens whose surprise exceeds mu, draw, steer mu toward tau. */
#include <math.h>

#include "janlib_sampling.h"

#define MIROSTAT_V2_STREAM 4

typedef struct {
    jl_sampler base;
    float tau, eta, mu;
    uint64_t seed;
    jl_rng rng;
} mirostat_v2_sampler;

/* -log2(p) <= mu, with the logarithm taken only near the boundary */
static inline bool within_surprise(float p, float p_boundary, float mu) {
    if (p >= 2.0f * p_boundary) return true;
    if (p < 0.5f * p_boundary) return false;
    return -log2f(p) <= mu;
}

static jl_status mirostat_v2_apply(jl_sampler *self, jl_candidates *c) {
    mirostat_v2_sampler *s = (mirostat_v2_sampler *)self;
    jl_candidates_softmax(c);
    const float p_boundary = exp2f(-s->mu);
    size_t kept = 0;
    for (size_t i = 0; i < c->size; i++)
        if (within_surprise(c->data[i].p, p_boundary, s->mu)) c->data[kept++] = c->data[i];
    if (kept == 0) {  /* every token is too surprising: keep the most likely */
        jl_candidates_keep_top(c, 1);
    } else {
        jl_candidates_truncate(c, kept);
    }
    jl_status status = jl_candidates_draw(c, &s->rng);
    if (status != JL_OK) return status;
    const float surprise = -log2f(c->data[c->selected].p);
    s->mu -= s->eta * (surprise - s->tau);
    return JL_OK;
}

static void mirostat_v2_reset(jl_sampler *self) {
    mirostat_v2_sampler *s = (mirostat_v2_sampler *)self;
    s->mu = 2.0f * s->tau;
    jl_rng_seed(&s->rng, s->seed, MIROSTAT_V2_STREAM);
}

static const jl_sampler_iface mirostat_v2_iface = {
    .name = "mirostat-v2",
    .size = sizeof(mirostat_v2_sampler),
    .apply = mirostat_v2_apply,
    .reset = mirostat_v2_reset,
};

jl_sampler *jl_sampler_mirostat_v2_new(uint64_t seed, float tau, float eta) {
    mirostat_v2_sampler *s = (mirostat_v2_sampler *)jl_sampler_new(&mirostat_v2_iface);
    if (s) {
        *s = (mirostat_v2_sampler){.base = s->base, .tau = tau, .eta = eta, .seed = seed};
        mirostat_v2_reset(&s->base);
    }
    return (jl_sampler *)s;
}
