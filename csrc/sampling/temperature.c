/* temperature.c — divide the logits by the temperature (<= 0: keep only the most likely token);
 * with a range, the temperature follows the distribution's normalized entropy (dynatemp). */
#include <math.h>

#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    float temperature, range, exponent;
} temperature_sampler;

/* Greedy keeps only the first maximum (the lowest id while the list is in id order). llama.cpp
 * sets the others to -inf instead; they could never be drawn, so dropping them changes no draw. */
static void keep_most_likely(jl_candidates *c) {
    size_t best = 0;
    if (c->dense) {
        for (size_t i = 1; i < c->size; i++) best = c->dense[i] > c->dense[best] ? i : best;
        c->data[0] = (jl_token_data){(int32_t)best, c->dense[best], 0.0f};
        c->dense = NULL;
    } else {
        if (c->n_sorted == 0)
            for (size_t i = 1; i < c->size; i++) best = c->data[i].logit > c->data[best].logit ? i : best;
        c->data[0] = c->data[best];
    }
    c->size = c->n_sorted = c->size ? 1 : 0;
}

static void scale(jl_candidates *c, float temperature) {
    if (temperature <= 0.0f) {
        keep_most_likely(c);
    } else if (c->dense) {
        for (size_t i = 0; i < c->size; i++) c->dense[i] /= temperature;
    } else {
        for (size_t i = 0; i < c->size; i++) c->data[i].logit /= temperature;
    }
}

static jl_status temperature_apply(jl_sampler *self, jl_candidates *c) {
    const temperature_sampler *s = (const temperature_sampler *)self;
    if (s->range <= 0.0f) {
        scale(c, s->temperature);
        return JL_OK;
    }
    if (c->size <= 1) return JL_OK;
    const float min_t = fmaxf(0.0f, s->temperature - s->range), max_t = s->temperature + s->range;
    const float max_entropy = -logf(1.0f / (float)c->size);
    jl_candidates_softmax(c);
    float entropy = 0.0f;
    for (size_t i = 0; i < c->size; i++)
        if (c->data[i].p > 0.0f) entropy -= c->data[i].p * logf(c->data[i].p);
    scale(c, min_t + (max_t - min_t) * powf(entropy / max_entropy, s->exponent));
    return JL_OK;
}

static const jl_sampler_iface temperature_iface = {
    .name = "temperature",
    .size = sizeof(temperature_sampler),
    .apply = temperature_apply,
};

jl_sampler *jl_sampler_temperature_new(float temperature, float range, float exponent) {
    temperature_sampler *s = (temperature_sampler *)jl_sampler_new(&temperature_iface);
    if (s) {
        s->temperature = temperature;
        s->range = range;
        s->exponent = exponent;
    }
    return (jl_sampler *)s;
}
