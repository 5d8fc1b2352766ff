/* mirostat.c — Mirostat 1: estimate the Zipf exponent from the top m tokens, pick the top k
 * that targets surprise mu, draw, then steer mu toward tau by the observed surprise. */
#include <math.h>

#include "janlib_sampling.h"

#define MIROSTAT_STREAM 3

typedef struct {
    jl_sampler base;
    int32_t n_vocab, m;
    float tau, eta, mu;
    uint64_t seed;
    jl_rng rng;
} mirostat_sampler;

static jl_status mirostat_apply(jl_sampler *self, jl_candidates *c) {
    mirostat_sampler *s = (mirostat_sampler *)self;
    jl_candidates_softmax(c);
    jl_candidates_sort_top(c, (size_t)s->m);
    float sum_ti_bi = 0.0f, sum_ti_sq = 0.0f;
    for (size_t i = 0; i + 1 < (size_t)s->m && i + 1 < c->size; i++) {
        const float t_i = logf((float)(i + 2) / (float)(i + 1));
        const float b_i = logf(c->data[i].p / c->data[i + 1].p);
        sum_ti_bi += t_i * b_i;
        sum_ti_sq += t_i * t_i;
    }
    const float s_hat = sum_ti_bi / sum_ti_sq;
    const float epsilon_hat = s_hat - 1.0f;
    const float k = powf((epsilon_hat * powf(2.0f, s->mu)) / (1.0f - powf((float)s->n_vocab, -epsilon_hat)),
                         1.0f / s_hat);
    /* NaN or < 1 (a degenerate distribution) keeps one token, as llama.cpp's max(int(k), 1) */
    const size_t top = !(k >= 1.0f) ? 1 : k >= (float)c->size ? c->size : (size_t)k;
    jl_candidates_keep_top(c, top);
    jl_status status = jl_candidates_draw(c, &s->rng);
    if (status != JL_OK) return status;
    const float surprise = -log2f(c->data[c->selected].p);
    s->mu -= s->eta * (surprise - s->tau);
    return JL_OK;
}

static void mirostat_reset(jl_sampler *self) {
    mirostat_sampler *s = (mirostat_sampler *)self;
    s->mu = 2.0f * s->tau;
    jl_rng_seed(&s->rng, s->seed, MIROSTAT_STREAM);
}

static const jl_sampler_iface mirostat_iface = {
    .name = "mirostat",
    .size = sizeof(mirostat_sampler),
    .apply = mirostat_apply,
    .reset = mirostat_reset,
};

jl_sampler *jl_sampler_mirostat_new(int32_t n_vocab, uint64_t seed, float tau, float eta, int32_t m) {
    mirostat_sampler *s = (mirostat_sampler *)jl_sampler_new(&mirostat_iface);
    if (s) {
        *s = (mirostat_sampler){.base = s->base, .n_vocab = n_vocab, .m = m, .tau = tau, .eta = eta,
                                .seed = seed};
        mirostat_reset(&s->base);
    }
    return (jl_sampler *)s;
}
