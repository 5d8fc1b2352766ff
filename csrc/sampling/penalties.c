/* penalties.c — repeat, frequency and presence penalties over the last `window` tokens. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    int32_t n_vocab;
    float repeat, freq, present;
    int32_t *counts;   /* occurrences of each token in the window; NULL: penalties off */
    jl_token_window window;
} penalties_sampler;

static inline void penalize(float *logit, int32_t count, const penalties_sampler *p) {
    /* multiply rather than divide a negative logit, so the penalty never makes it more likely */
    *logit = *logit <= 0.0f ? *logit * p->repeat : *logit / p->repeat;
    *logit -= (float)count * p->freq + p->present;
}

static jl_status penalties_apply(jl_sampler *self, jl_candidates *c) {
    penalties_sampler *p = (penalties_sampler *)self;
    if (!p->counts || p->window.len == 0) return JL_OK;
    const int32_t *history = jl_window_data(&p->window);
    const size_t n = p->window.len;
    if (c->dense) {
        /* touch only the window's tokens: negate a count once applied so repeats are skipped */
        for (size_t i = 0; i < n; i++) {
            int32_t count = p->counts[history[i]];
            if (count <= 0) continue;
            penalize(&c->dense[history[i]], count, p);
            p->counts[history[i]] = -count;
        }
        for (size_t i = 0; i < n; i++)
            if (p->counts[history[i]] < 0) p->counts[history[i]] = -p->counts[history[i]];
    } else {
        for (size_t i = 0; i < c->size; i++) {
            int32_t count = p->counts[c->data[i].id];
            if (count > 0) penalize(&c->data[i].logit, count, p);
        }
    }
    c->n_sorted = 0;
    return JL_OK;
}

static jl_status penalties_accept(jl_sampler *self, int32_t token) {
    penalties_sampler *p = (penalties_sampler *)self;
    if (!p->counts) return JL_OK;
    int32_t dropped;
    jl_status status = jl_window_push(&p->window, token, &dropped);
    if (status != JL_OK) return status;
    p->counts[token]++;
    if (dropped >= 0) p->counts[dropped]--;
    return JL_OK;
}

static void penalties_reset(jl_sampler *self) {
    penalties_sampler *p = (penalties_sampler *)self;
    if (!p->counts) return;
    memset(p->counts, 0, (size_t)p->n_vocab * sizeof *p->counts);
    jl_window_clear(&p->window);
}

static void penalties_free_buffers(jl_sampler *self) {
    penalties_sampler *p = (penalties_sampler *)self;
    free(p->counts);
    jl_window_free(&p->window);
}

static jl_status penalties_clone_buffers(const jl_sampler *self, jl_sampler *copy) {
    const penalties_sampler *src = (const penalties_sampler *)self;
    penalties_sampler *dst = (penalties_sampler *)copy;
    if (!src->counts) return JL_OK;
    size_t bytes = (size_t)src->n_vocab * sizeof *dst->counts;
    if (!(dst->counts = malloc(bytes))) return jl_fail(JL_ERR_NOMEM, "penalty counts");
    memcpy(dst->counts, src->counts, bytes);
    if (jl_window_copy(&src->window, &dst->window) != JL_OK) {
        free(dst->counts);
        return JL_ERR_NOMEM;
    }
    return JL_OK;
}

static const jl_sampler_iface penalties_iface = {
    .name = "penalties",
    .size = sizeof(penalties_sampler),
    .apply = penalties_apply,
    .accept = penalties_accept,
    .reset = penalties_reset,
    .clone_buffers = penalties_clone_buffers,
    .free_buffers = penalties_free_buffers,
};

jl_sampler *jl_sampler_penalties_new(int32_t n_vocab, int64_t window, float repeat, float freq,
                                     float present) {
    penalties_sampler *p = (penalties_sampler *)jl_sampler_new(&penalties_iface);
    if (!p) return NULL;
    *p = (penalties_sampler){.base = p->base, .n_vocab = n_vocab, .repeat = repeat, .freq = freq,
                             .present = present};
    const bool neutral = repeat == 1.0f && freq == 0.0f && present == 0.0f;
    if (window == 0 || neutral) return (jl_sampler *)p;  /* off: no history to keep */
    p->counts = calloc((size_t)n_vocab, sizeof *p->counts);
    if (!p->counts || jl_window_init(&p->window, window < 0 ? 0 : (size_t)window) != JL_OK) {
        free(p->counts);
        free(p);
        return NULL;
    }
    return (jl_sampler *)p;
}
