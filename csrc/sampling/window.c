/* window.c — the recent-token history of penalties and DRY, kept contiguous so the samplers
 * read it as a plain array. A bounded window takes twice its size and slides back once full. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

jl_status jl_window_init(jl_token_window *w, size_t limit) {
    w->limit = limit;
    w->capacity = limit ? 2 * limit : 256;
    w->start = w->len = 0;
    w->tokens = malloc(w->capacity * sizeof *w->tokens);
    return w->tokens ? JL_OK : jl_fail(JL_ERR_NOMEM, "token window of %zu", w->capacity);
}

jl_status jl_window_push(jl_token_window *w, int32_t token, int32_t *dropped) {
    *dropped = -1;
    if (w->limit && w->len == w->limit) {
        *dropped = w->tokens[w->start++];
        w->len--;
    }
    if (w->start + w->len == w->capacity) {
        if (w->start > 0) {
            memmove(w->tokens, w->tokens + w->start, w->len * sizeof *w->tokens);
            w->start = 0;
        } else {
            int32_t *grown = realloc(w->tokens, 2 * w->capacity * sizeof *grown);
            if (!grown) return jl_fail(JL_ERR_NOMEM, "token window of %zu", 2 * w->capacity);
            w->tokens = grown;
            w->capacity *= 2;
        }
    }
    w->tokens[w->start + w->len++] = token;
    return JL_OK;
}

void jl_window_clear(jl_token_window *w) { w->start = w->len = 0; }

jl_status jl_window_copy(const jl_token_window *src, jl_token_window *dst) {
    *dst = *src;
    dst->start = 0;
    dst->tokens = malloc(src->capacity * sizeof *dst->tokens);
    if (!dst->tokens) return jl_fail(JL_ERR_NOMEM, "token window of %zu", src->capacity);
    memcpy(dst->tokens, jl_window_data(src), src->len * sizeof *dst->tokens);
    return JL_OK;
}

void jl_window_free(jl_token_window *w) {
    free(w->tokens);
    w->tokens = NULL;
    w->len = w->start = w->capacity = 0;
}
