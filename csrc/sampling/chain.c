/* chain.c — the generic sampler entry points, and the chain: a sampler running others in order. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

jl_sampler *jl_sampler_new(const jl_sampler_iface *iface) {
    jl_sampler *s = calloc(1, iface->size);
    if (s) s->iface = iface;
    return s;
}

jl_status jl_sampler_apply(jl_sampler *s, jl_candidates *cands) { return s->iface->apply(s, cands); }

jl_status jl_sampler_accept(jl_sampler *s, int32_t token) {
    return s->iface->accept ? s->iface->accept(s, token) : JL_OK;
}

void jl_sampler_reset(jl_sampler *s) {
    if (s->iface->reset) s->iface->reset(s);
}

jl_sampler *jl_sampler_clone(const jl_sampler *s) {
    jl_sampler *copy = malloc(s->iface->size);
    if (!copy) return NULL;
    memcpy(copy, s, s->iface->size);
    if (s->iface->clone_buffers && s->iface->clone_buffers(s, copy) != JL_OK) {
        free(copy);
        return NULL;
    }
    return copy;
}

void jl_sampler_free(jl_sampler *s) {
    if (!s) return;
    if (s->iface->free_buffers) s->iface->free_buffers(s);
    free(s);
}

typedef struct {
    jl_sampler base;
    jl_sampler **items;
    size_t n, capacity;
} chain;

jl_status jl_chain_apply_first(jl_sampler *self, jl_candidates *cands, size_t n) {
    chain *ch = (chain *)self;
    if (n > ch->n) n = ch->n;
    for (size_t i = 0; i < n; i++) {
        jl_status status = jl_sampler_apply(ch->items[i], cands);
        if (status != JL_OK) return status;
    }
    return JL_OK;
}

static jl_status chain_apply(jl_sampler *self, jl_candidates *cands) {
    return jl_chain_apply_first(self, cands, ((chain *)self)->n);
}

static jl_status chain_accept(jl_sampler *self, int32_t token) {
    chain *ch = (chain *)self;
    for (size_t i = 0; i < ch->n; i++) {
        jl_status status = jl_sampler_accept(ch->items[i], token);
        if (status != JL_OK) return status;
    }
    return JL_OK;
}

static void chain_reset(jl_sampler *self) {
    chain *ch = (chain *)self;
    for (size_t i = 0; i < ch->n; i++) jl_sampler_reset(ch->items[i]);
}

static void chain_free_buffers(jl_sampler *self) {
    chain *ch = (chain *)self;
    for (size_t i = 0; i < ch->n; i++) jl_sampler_free(ch->items[i]);
    free(ch->items);
}

static jl_status chain_clone_buffers(const jl_sampler *self, jl_sampler *copy) {
    const chain *src = (const chain *)self;
    chain *dst = (chain *)copy;
    dst->items = malloc((src->capacity ? src->capacity : 1) * sizeof *dst->items);
    if (!dst->items) return jl_fail(JL_ERR_NOMEM, "sampler chain");
    for (dst->n = 0; dst->n < src->n; dst->n++) {
        dst->items[dst->n] = jl_sampler_clone(src->items[dst->n]);
        if (!dst->items[dst->n]) {
            chain_free_buffers(copy);
            return jl_fail(JL_ERR_NOMEM, "cloning sampler %s", src->items[dst->n]->iface->name);
        }
    }
    return JL_OK;
}

static const jl_sampler_iface chain_iface = {
    .name = "chain",
    .size = sizeof(chain),
    .apply = chain_apply,
    .accept = chain_accept,
    .reset = chain_reset,
    .clone_buffers = chain_clone_buffers,
    .free_buffers = chain_free_buffers,
};

jl_sampler *jl_chain_new(void) { return jl_sampler_new(&chain_iface); }

jl_status jl_chain_add(jl_sampler *self, jl_sampler *s) {
    chain *ch = (chain *)self;
    if (!s) return jl_fail(JL_ERR_NOMEM, "sampler");
    if (ch->n == ch->capacity) {
        size_t capacity = ch->capacity ? 2 * ch->capacity : 8;
        jl_sampler **grown = realloc(ch->items, capacity * sizeof *grown);
        if (!grown) {
            jl_sampler_free(s);
            return jl_fail(JL_ERR_NOMEM, "sampler chain");
        }
        ch->items = grown;
        ch->capacity = capacity;
    }
    ch->items[ch->n++] = s;
    return JL_OK;
}

size_t jl_chain_length(const jl_sampler *self) { return ((const chain *)self)->n; }

jl_sampler *jl_chain_get(const jl_sampler *self, size_t i) {
    const chain *ch = (const chain *)self;
    return i < ch->n ? ch->items[i] : NULL;
}
