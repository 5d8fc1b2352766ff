/* mask.c — the constraint slot: a per-step mask of allowed tokens, applied before everything else
 * (structured output fills it). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    int32_t n_vocab;
    uint8_t *allowed;  /* NULL: no constraint */
} mask_sampler;

static jl_status mask_apply(jl_sampler *self, jl_candidates *c) {
    const uint8_t *allowed = ((mask_sampler *)self)->allowed;
    if (!allowed) return JL_OK;
    if (c->dense) {
        for (size_t i = 0; i < c->size; i++)
            if (!allowed[i]) c->dense[i] = -INFINITY;
    } else {
        for (size_t i = 0; i < c->size; i++)
            if (!allowed[c->data[i].id]) c->data[i].logit = -INFINITY;
    }
    c->n_sorted = 0;
    return JL_OK;
}

static void mask_free_buffers(jl_sampler *self) {
    mask_sampler *m = (mask_sampler *)self;
    free(m->allowed);
    m->allowed = NULL;
}

static jl_status mask_clone_buffers(const jl_sampler *self, jl_sampler *copy) {
    const mask_sampler *src = (const mask_sampler *)self;
    mask_sampler *dst = (mask_sampler *)copy;
    dst->allowed = NULL;
    return jl_sampler_mask_set(copy, src->allowed);
}

static const jl_sampler_iface mask_iface = {
    .name = "mask",
    .size = sizeof(mask_sampler),
    .apply = mask_apply,
    .reset = mask_free_buffers,  /* a fresh sequence starts unconstrained */
    .clone_buffers = mask_clone_buffers,
    .free_buffers = mask_free_buffers,
};

jl_sampler *jl_sampler_mask_new(int32_t n_vocab) {
    mask_sampler *m = (mask_sampler *)jl_sampler_new(&mask_iface);
    if (m) m->n_vocab = n_vocab;
    return (jl_sampler *)m;
}

jl_status jl_sampler_mask_set(jl_sampler *self, const uint8_t *allowed) {
    mask_sampler *m = (mask_sampler *)self;
    if (!allowed) {
        mask_free_buffers(self);
        return JL_OK;
    }
    if (!m->allowed && !(m->allowed = malloc((size_t)m->n_vocab)))
        return jl_fail(JL_ERR_NOMEM, "token mask of %d", m->n_vocab);
    memcpy(m->allowed, allowed, (size_t)m->n_vocab);
    return JL_OK;
}
