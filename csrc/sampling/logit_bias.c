/* logit_bias.c — fixed per-token additions to the logits; -inf bans (ignore_eos bans every EOG). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

typedef struct {
    int32_t id;
    float bias;
} token_bias;

typedef struct {
    jl_sampler base;
    int32_t n;
    token_bias *biases;
} logit_bias_sampler;

static jl_status logit_bias_apply(jl_sampler *self, jl_candidates *c) {
    const logit_bias_sampler *lb = (const logit_bias_sampler *)self;
    if (lb->n == 0) return JL_OK;
    for (int32_t j = 0; j < lb->n; j++) {
        const token_bias *b = &lb->biases[j];
        if (c->dense) {
            c->dense[b->id] += b->bias;
            continue;
        }
        for (size_t i = 0; i < c->size; i++) {
            if (c->data[i].id == b->id) {
                c->data[i].logit += b->bias;
                break;
            }
        }
    }
    c->n_sorted = 0;
    return JL_OK;
}

static jl_status logit_bias_clone_buffers(const jl_sampler *self, jl_sampler *copy) {
    const logit_bias_sampler *src = (const logit_bias_sampler *)self;
    logit_bias_sampler *dst = (logit_bias_sampler *)copy;
    dst->biases = malloc((size_t)(src->n ? src->n : 1) * sizeof *dst->biases);
    if (!dst->biases) return jl_fail(JL_ERR_NOMEM, "logit bias of %d tokens", src->n);
    memcpy(dst->biases, src->biases, (size_t)src->n * sizeof *dst->biases);
    return JL_OK;
}

static void logit_bias_free_buffers(jl_sampler *self) { free(((logit_bias_sampler *)self)->biases); }

static const jl_sampler_iface logit_bias_iface = {
    .name = "logit-bias",
    .size = sizeof(logit_bias_sampler),
    .apply = logit_bias_apply,
    .clone_buffers = logit_bias_clone_buffers,
    .free_buffers = logit_bias_free_buffers,
};

jl_sampler *jl_sampler_logit_bias_new(const int32_t *ids, const float *biases, int32_t n) {
    logit_bias_sampler *lb = (logit_bias_sampler *)jl_sampler_new(&logit_bias_iface);
    if (!lb) return NULL;
    lb->biases = malloc((size_t)(n ? n : 1) * sizeof *lb->biases);
    if (!lb->biases) {
        free(lb);
        return NULL;
    }
    lb->n = n;
    for (int32_t j = 0; j < n; j++) lb->biases[j] = (token_bias){ids[j], biases[j]};
    return (jl_sampler *)lb;
}
