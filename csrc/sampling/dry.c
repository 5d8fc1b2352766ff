/* dry.c — DRY ("don't repeat yourself", koboldcpp PR 982 by pi6am, as in llama.cpp): a token that
 * would extend a sequence already seen earlier in the window loses
 * multiplier * base^(length - allowed_length), where the sequence may not reach back past the last
 * sequence breaker.
 *
 * Breakers are matched as text across token boundaries: a breaker starts inside one token (its
 * head) and its remaining bytes are spelled by the tokens that follow, up to 20 of them.
 * llama.cpp instead re-tokenizes the remainder and needs exactly that tokenization; matching bytes
 * needs only each token's text, and finds every spelling. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

#define MAX_BREAKER_BYTES 40   /* llama.cpp truncates longer breakers */
#define MAX_TAIL_TOKENS 20     /* tokens a breaker may run on past its head */

typedef struct {
    int32_t breaker;   /* which breaker */
    int32_t covered;   /* bytes of it that the head token's text ends with */
} head_entry;

/* What DRY knows about the vocabulary, built once and shared read-only by clones. */
typedef struct {
    atomic_int refcount;
    int32_t n_vocab;
    uint8_t *text;                 /* token t: text[offsets[t] .. offsets[t + 1]) */
    int64_t *offsets;
    uint8_t *breakers;             /* breaker b: breakers[breaker_offsets[b] .. [b + 1]) */
    int64_t *breaker_offsets;
    int32_t n_breakers;
    uint8_t *holds_breaker;        /* the token's text contains a whole breaker */
    uint32_t *heads_start;         /* token t's entries: heads[heads_start[t] .. heads_start[t + 1]) */
    head_entry *heads;
} dry_vocab;

typedef struct {
    jl_sampler base;
    dry_vocab *vocab;              /* NULL: DRY is off */
    float multiplier, penalty_base;
    int32_t allowed_length;
    jl_token_window window;
    int32_t *longest_repeat;       /* per token: longest repeat its emission would extend, or -1 */
    int32_t *repeat_count;         /* scratch per window position */
    int32_t *touched;              /* tokens whose longest_repeat was set, to clear afterwards */
    size_t scratch_size;
} dry_sampler;

static void vocab_release(dry_vocab *v) {
    if (!v || atomic_fetch_sub(&v->refcount, 1) != 1) return;
    free(v->text);
    free(v->offsets);
    free(v->breakers);
    free(v->breaker_offsets);
    free(v->holds_breaker);
    free(v->heads_start);
    free(v->heads);
    free(v);
}

static void *copy_bytes(const void *src, size_t bytes) {
    void *dst = malloc(bytes ? bytes : 1);
    if (dst && bytes) memcpy(dst, src, bytes);
    return dst;
}

static inline const uint8_t *token_text(const dry_vocab *v, int32_t t, size_t *len) {
    *len = (size_t)(v->offsets[t + 1] - v->offsets[t]);
    return v->text + v->offsets[t];
}

static inline const uint8_t *breaker_text(const dry_vocab *v, int32_t b, size_t *len) {
    *len = (size_t)(v->breaker_offsets[b + 1] - v->breaker_offsets[b]);
    return v->breakers + v->breaker_offsets[b];
}

/* Every place a breaker starts in the vocabulary's text: a token holding a whole breaker is
 * marked; one whose text ends with a proper prefix of it gets a head entry. memchr over the one
 * text buffer finds the breaker's first byte, so the cost is the hits, not the vocabulary. */
static jl_status find_heads(dry_vocab *v) {
    typedef struct {
        int32_t token;
        head_entry entry;
    } located_head;
    located_head *found = NULL;
    size_t n_found = 0, capacity = 0;
    const uint8_t *text = v->text;
    const int64_t total = v->offsets[v->n_vocab];
    for (int32_t b = 0; b < v->n_breakers && total > 0; b++) {
        size_t blen;
        const uint8_t *brk = breaker_text(v, b, &blen);
        int32_t t = 0, holder = -1;
        for (const uint8_t *hit = memchr(text, brk[0], (size_t)total); hit;
             hit = memchr(hit + 1, brk[0], (size_t)(text + total - hit - 1))) {
            const int64_t pos = hit - text;
            while (v->offsets[t + 1] <= pos) t++;
            /* a token's whole occurrences come before its partial ones (those run off its end);
             * llama.cpp gives a token holding the breaker no partial entries for it */
            if (t == holder) continue;
            const size_t rest = (size_t)(v->offsets[t + 1] - pos), n = rest < blen ? rest : blen;
            if (memcmp(hit, brk, n) != 0) continue;
            if (n == blen) {
                v->holds_breaker[t] = 1;
                holder = t;
                continue;
            }
            if (n_found == capacity) {
                capacity = capacity ? 2 * capacity : 256;
                located_head *grown = realloc(found, capacity * sizeof *grown);
                if (!grown) {
                    free(found);
                    return jl_fail(JL_ERR_NOMEM, "DRY breaker heads");
                }
                found = grown;
            }
            found[n_found++] = (located_head){t, {b, (int32_t)n}};
        }
    }
    /* group by token: heads[heads_start[t] .. heads_start[t + 1]) */
    v->heads = malloc((n_found ? n_found : 1) * sizeof *v->heads);
    if (!v->heads) {
        free(found);
        return jl_fail(JL_ERR_NOMEM, "DRY breaker heads");
    }
    for (size_t i = 0; i < n_found; i++) v->heads_start[found[i].token + 1]++;
    for (int32_t t = 0; t < v->n_vocab; t++) v->heads_start[t + 1] += v->heads_start[t];
    for (size_t i = 0; i < n_found; i++) v->heads[v->heads_start[found[i].token]++] = found[i].entry;
    for (int32_t t = v->n_vocab; t > 0; t--) v->heads_start[t] = v->heads_start[t - 1];  /* undo the ++ */
    v->heads_start[0] = 0;
    free(found);
    return JL_OK;
}

static jl_status vocab_build(int32_t n_vocab, jl_byte_strings text, jl_byte_strings breakers,
                             dry_vocab **out) {
    dry_vocab *v = calloc(1, sizeof *v);
    if (!v) return jl_fail(JL_ERR_NOMEM, "DRY vocabulary");
    atomic_init(&v->refcount, 1);
    v->n_vocab = n_vocab;
    v->text = copy_bytes(text.bytes, (size_t)text.offsets[n_vocab]);
    v->offsets = copy_bytes(text.offsets, ((size_t)n_vocab + 1) * sizeof *v->offsets);
    v->breakers = malloc((size_t)breakers.count * MAX_BREAKER_BYTES + 1);
    v->breaker_offsets = malloc(((size_t)breakers.count + 1) * sizeof *v->breaker_offsets);
    v->holds_breaker = calloc((size_t)n_vocab, 1);
    v->heads_start = calloc((size_t)n_vocab + 1, sizeof *v->heads_start);
    if (!v->text || !v->offsets || !v->breakers || !v->breaker_offsets || !v->holds_breaker ||
        !v->heads_start) {
        vocab_release(v);
        return jl_fail(JL_ERR_NOMEM, "DRY vocabulary of %d tokens", n_vocab);
    }
    v->breaker_offsets[0] = 0;
    for (int64_t b = 0; b < breakers.count; b++) {
        int64_t len = breakers.offsets[b + 1] - breakers.offsets[b];
        if (len > MAX_BREAKER_BYTES) len = MAX_BREAKER_BYTES;
        if (len == 0) continue;  /* an empty breaker would match everywhere */
        memcpy(v->breakers + v->breaker_offsets[v->n_breakers], breakers.bytes + breakers.offsets[b],
               (size_t)len);
        v->breaker_offsets[v->n_breakers + 1] = v->breaker_offsets[v->n_breakers] + len;
        v->n_breakers++;
    }
    jl_status status = find_heads(v);
    if (status != JL_OK) {
        vocab_release(v);
        return status;
    }
    *out = v;
    return JL_OK;
}

/* Tokens after the head (history[head], counting back from the newest at `last`) that finish the
 * breaker, or -1 when they do not spell the rest of it within the window. */
static int32_t tail_length(const dry_vocab *v, const int32_t *history, size_t head, size_t last,
                           head_entry e) {
    size_t blen, len;
    const uint8_t *brk = breaker_text(v, e.breaker, &blen);
    size_t done = (size_t)e.covered;
    for (size_t step = 1; step <= MAX_TAIL_TOKENS && head + step <= last; step++) {
        const uint8_t *w = token_text(v, history[head + step], &len);
        size_t n = len < blen - done ? len : blen - done;
        if (memcmp(w, brk + done, n) != 0) return -1;
        done += n;
        if (done == blen) return (int32_t)step;
    }
    return -1;
}

/* The repeat length no sequence may exceed: tokens since the most recent breaker (llama.cpp's
 * step 1: the newest head whose breaker completes, its longest completion). */
static size_t repeat_limit(const dry_vocab *v, const int32_t *history, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const size_t head = n - 1 - i;
        const int32_t t = history[head];
        int32_t longest = v->holds_breaker[t] ? 0 : -1;
        for (uint32_t h = v->heads_start[t]; h < v->heads_start[t + 1]; h++) {
            int32_t tail = tail_length(v, history, head, n - 1, v->heads[h]);
            if (tail > longest) longest = tail;
        }
        if (longest >= 0) return i - (size_t)longest;
    }
    return n;
}

static jl_status grow_scratch(dry_sampler *d, size_t n) {
    if (d->scratch_size >= n) return JL_OK;
    free(d->repeat_count);
    free(d->touched);
    d->repeat_count = malloc(n * sizeof *d->repeat_count);
    d->touched = malloc(n * sizeof *d->touched);
    d->scratch_size = d->repeat_count && d->touched ? n : 0;
    return d->scratch_size ? JL_OK : jl_fail(JL_ERR_NOMEM, "DRY scratch of %zu", n);
}

/* The penalty for emitting t, 0 when it extends no repeat or holds a breaker itself. */
static inline float penalty_for(const dry_sampler *d, int32_t t, int32_t max_exponent) {
    if (d->longest_repeat[t] < 0 || d->vocab->holds_breaker[t]) return 0.0f;
    int32_t exponent = d->longest_repeat[t] - d->allowed_length;
    if (max_exponent > 0 && exponent > max_exponent) exponent = max_exponent;
    return (float)(d->multiplier * pow(d->penalty_base, exponent));
}

/* llama.cpp's ring-buffer rat(i): the token i places back from the newest */
static inline int32_t back(const int32_t *history, size_t n, size_t i) { return history[n - 1 - i]; }

static jl_status dry_apply(jl_sampler *self, jl_candidates *c) {
    dry_sampler *d = (dry_sampler *)self;
    const dry_vocab *v = d->vocab;
    const size_t n = d->window.len;
    if (!v || n <= (size_t)d->allowed_length) return JL_OK;
    const int32_t *history = jl_window_data(&d->window);
    const size_t limit = repeat_limit(v, history, n);
    if (limit < (size_t)d->allowed_length) return JL_OK;
    jl_status status = grow_scratch(d, n);
    if (status != JL_OK) return status;

    /* Z-algorithm over the reversed window: repeat[last - k] is how far the sequence ending k
     * tokens back matches the one ending now, capped at the limit. Linear time. */
    int32_t *repeat = d->repeat_count;
    const size_t last = n - 1;
    size_t lt = 0, rt = 0;
    for (size_t k = 1; k < n; k++) {
        size_t len;
        if (k > rt) {
            len = 0;
            while (len + k < n && back(history, n, len) == back(history, n, len + k)) len++;
            if (len > 0) {
                lt = k;
                rt = k + len - 1;
            }
        } else if ((size_t)repeat[last - (k - lt)] < rt - k + 1) {
            len = (size_t)repeat[last - (k - lt)];
        } else {
            size_t i = rt + 1;
            while (i < n && back(history, n, i) == back(history, n, i - k)) i++;
            len = i - k;
            lt = k;
            rt = i - 1;
        }
        repeat[last - k] = (int32_t)(len < limit ? len : limit);
    }

    /* the token after each long-enough repeat would extend it: keep its longest */
    size_t n_touched = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const int32_t len = repeat[i];
        if (len < d->allowed_length) continue;
        const int32_t t = back(history, n, n - 2 - i);
        if (d->longest_repeat[t] < 0) d->touched[n_touched++] = t;
        if (d->longest_repeat[t] < len) d->longest_repeat[t] = len;
    }

    /* cap the exponent so base^exponent stays a finite float */
    int32_t max_exponent = 0;
    if (d->penalty_base > 1.000001f) max_exponent = (int32_t)(88.7228391f / logf(d->penalty_base));
    if (c->dense) {
        for (size_t i = 0; i < n_touched; i++)
            c->dense[d->touched[i]] -= penalty_for(d, d->touched[i], max_exponent);
    } else {
        for (size_t i = 0; i < c->size; i++)
            c->data[i].logit -= penalty_for(d, c->data[i].id, max_exponent);
    }
    for (size_t i = 0; i < n_touched; i++) d->longest_repeat[d->touched[i]] = -1;
    c->n_sorted = 0;
    return JL_OK;
}

static jl_status dry_accept(jl_sampler *self, int32_t token) {
    dry_sampler *d = (dry_sampler *)self;
    int32_t dropped;
    return d->vocab ? jl_window_push(&d->window, token, &dropped) : JL_OK;
}

static void dry_reset(jl_sampler *self) { jl_window_clear(&((dry_sampler *)self)->window); }

static void dry_free_buffers(jl_sampler *self) {
    dry_sampler *d = (dry_sampler *)self;
    vocab_release(d->vocab);
    jl_window_free(&d->window);
    free(d->longest_repeat);
    free(d->repeat_count);
    free(d->touched);
}

static jl_status alloc_longest_repeat(dry_sampler *d) {
    d->longest_repeat = malloc((size_t)d->vocab->n_vocab * sizeof *d->longest_repeat);
    if (!d->longest_repeat) return jl_fail(JL_ERR_NOMEM, "DRY repeat table");
    memset(d->longest_repeat, 0xff, (size_t)d->vocab->n_vocab * sizeof *d->longest_repeat);  /* -1 */
    return JL_OK;
}

static jl_status dry_clone_buffers(const jl_sampler *self, jl_sampler *copy) {
    const dry_sampler *src = (const dry_sampler *)self;
    dry_sampler *dst = (dry_sampler *)copy;
    dst->repeat_count = dst->touched = NULL;
    dst->scratch_size = 0;
    dst->longest_repeat = NULL;
    if (!src->vocab) return JL_OK;
    if (alloc_longest_repeat(dst) != JL_OK) return JL_ERR_NOMEM;
    if (jl_window_copy(&src->window, &dst->window) != JL_OK) {
        free(dst->longest_repeat);
        return JL_ERR_NOMEM;
    }
    atomic_fetch_add(&dst->vocab->refcount, 1);
    return JL_OK;
}

static const jl_sampler_iface dry_iface = {
    .name = "dry",
    .size = sizeof(dry_sampler),
    .apply = dry_apply,
    .accept = dry_accept,
    .reset = dry_reset,
    .clone_buffers = dry_clone_buffers,
    .free_buffers = dry_free_buffers,
};

jl_status jl_sampler_dry_new(int32_t n_vocab, jl_byte_strings vocab_text, int64_t window,
                             float multiplier, float base, int32_t allowed_length,
                             jl_byte_strings breakers, jl_sampler **out) {
    dry_sampler *d = (dry_sampler *)jl_sampler_new(&dry_iface);
    if (!d) return jl_fail(JL_ERR_NOMEM, "DRY sampler");
    d->multiplier = multiplier;
    d->penalty_base = base;
    d->allowed_length = allowed_length;
    *out = &d->base;
    if (multiplier == 0.0f || base < 1.0f || window == 0) return JL_OK;  /* off */
    if (vocab_text.count != n_vocab)
        return jl_fail(JL_ERR_INVALID_ARG, "DRY needs the text of all %d tokens, got %lld", n_vocab,
                       (long long)vocab_text.count);
    jl_status status = vocab_build(n_vocab, vocab_text, breakers, &d->vocab);
    if (status == JL_OK) status = alloc_longest_repeat(d);
    if (status == JL_OK) status = jl_window_init(&d->window, window < 0 ? 0 : (size_t)window);
    return status;  /* on failure the caller frees *out, which releases what was built */
}
