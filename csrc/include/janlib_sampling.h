/* janlib_sampling.h — the sampler chain: one sequence's next-token choice, llama.cpp semantics.
 *
 * A sequence's sampling (jl_sampling) owns a chain of samplers built from jl_sampling_params:
 *
 *   constraint mask -> logit bias -> penalties -> [user order of dry, top_k, typ_p, top_p, min_p,
 *   xtc, temperature] -> dist          (mirostat 1/2: ... penalties -> temperature -> mirostat)
 *
 * Each sampler rewrites a candidate list in place (jl_candidates); the last one (dist or
 * mirostat) selects a token. The lower half of this header is the interface for writing samplers.
 * A jl_sampling is one sequence's: use it from one thread at a time, clone it for another. */
#ifndef JANLIB_SAMPLING_H
#define JANLIB_SAMPLING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "janlib.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The order-dependent samplers, as named in the `samplers` list. */
typedef enum {
    JL_SAMPLER_DRY = 0,
    JL_SAMPLER_TOP_K = 1,
    JL_SAMPLER_TYPICAL_P = 2,
    JL_SAMPLER_TOP_P = 3,
    JL_SAMPLER_MIN_P = 4,
    JL_SAMPLER_XTC = 5,
    JL_SAMPLER_TEMPERATURE = 6,
    JL_SAMPLER_KIND_COUNT = 7,
} jl_sampler_kind;

/* n byte strings packed back to back: string i is bytes[offsets[i] .. offsets[i + 1]). */
typedef struct {
    const uint8_t *bytes;
    const int64_t *offsets;  /* count + 1 entries, offsets[0] == 0 */
    int64_t count;
} jl_byte_strings;

/* Field names and meanings follow the Jan API (CreateChatCompletionDto). */
typedef struct {
    float temperature;          /* <= 0: greedy */
    float dynatemp_range;       /* > 0: temperature follows the entropy in [t - range, t + range] */
    float dynatemp_exponent;
    int32_t top_k;              /* <= 0: off */
    float top_p;                /* >= 1: off */
    float min_p;                /* <= 0: off */
    float typical_p;            /* >= 1: off */
    int32_t min_keep;           /* top_p, min_p, typical_p and xtc keep at least this many */
    float xtc_probability;      /* <= 0: off */
    float xtc_threshold;        /* > 0.5: off */
    int32_t repeat_last_n;      /* 0: penalties off, -1: the whole context (n_ctx) */
    float repeat_penalty;       /* 1: off */
    float frequency_penalty;
    float presence_penalty;
    float dry_multiplier;       /* 0: DRY off */
    float dry_base;             /* < 1: DRY off */
    int32_t dry_allowed_length;
    int32_t dry_penalty_last_n; /* 0: DRY off, -1: the whole context (n_ctx) */
    jl_byte_strings dry_sequence_breakers;  /* each truncated to 40 bytes, as llama.cpp */
    int32_t mirostat;           /* 0, 1 or 2: replaces the user order with temperature + mirostat */
    float mirostat_tau;
    float mirostat_eta;
    const int32_t *logit_bias_ids;     /* a token may appear more than once: biases add up */
    const float *logit_bias_values;    /* -INFINITY bans */
    int32_t n_logit_bias;
    const int32_t *order;       /* jl_sampler_kind values; repeats allowed */
    int32_t n_order;
    uint64_t seed;              /* every random stream of the sequence derives from it */
    int32_t n_probs;            /* > 0: keep the top n_probs of each draw (jl_sampling_last_probs) */
    bool post_sampling_probs;   /* report probabilities after the chain instead of the raw softmax */
    int32_t n_ctx;              /* what a window of -1 covers; 0: everything accepted so far */
} jl_sampling_params;

typedef struct jl_sampling jl_sampling;

/* vocab_text: each token's bytes (count == n_vocab), needed only when DRY is on; the chain
 * keeps its own copy. */
jl_status jl_sampling_create(const jl_sampling_params *params, int32_t n_vocab,
                             jl_byte_strings vocab_text, jl_sampling **out);
void jl_sampling_free(jl_sampling *s);
/* A second, independent sequence in the same state: history, random streams, mirostat mu, mask. */
jl_status jl_sampling_clone(const jl_sampling *s, jl_sampling **out);
/* Back to the state right after creation (the same seed gives the same tokens again). */
void jl_sampling_reset(jl_sampling *s);

/* Tokens that entered the context without being sampled (the prompt): penalty and DRY history. */
jl_status jl_sampling_accept(jl_sampling *s, const int32_t *tokens, int64_t n);

/* Apply the chain to logits (n_vocab float32), draw a token and accept it. */
jl_status jl_sampling_sample(jl_sampling *s, const float *logits, int32_t *token);

/* The constraint slot, ahead of every other sampler: allowed[i] != 0 keeps token i. It stays
 * until replaced; NULL lifts it. */
jl_status jl_sampling_set_mask(jl_sampling *s, const uint8_t *allowed, int64_t n);

/* The last draw's top probabilities, most probable first: *ids / *probs point into the chain
 * (valid until the next call) and the count is returned; *token_prob is the drawn token's. */
int32_t jl_sampling_last_probs(const jl_sampling *s, const int32_t **ids, const float **probs,
                               float *token_prob);

/* For tests: run every sampler but the final draw on logits and write the tokens the draw could
 * pick with their probabilities, most probable first (ties: lower id first). ids and probs hold
 * n_vocab entries. History is untouched; random samplers (xtc) advance their streams. */
jl_status jl_sampling_survivors(jl_sampling *s, const float *logits, int32_t *ids, float *probs,
                                int32_t *n_out);

/* ---- the sampler interface ------------------------------------------------------------------ */

typedef struct {
    int32_t id;
    float logit;
    float p;
} jl_token_data;

/* A candidate list starts dense: the whole vocabulary in id order as plain logits (dense[id]),
 * which the samplers that only adjust logits by id work on directly. The first sampler that
 * reorders or needs probabilities materializes it into data. */
typedef struct {
    jl_token_data *data;  /* the candidates once materialized; room for the whole vocabulary */
    size_t size;
    size_t n_sorted;      /* data[0 .. n_sorted) are the best n_sorted, in order (see jl_token_better) */
    float *dense;         /* non-NULL: not materialized yet, and data's contents mean nothing */
    int64_t selected;     /* the drawn entry, -1 until a selecting sampler runs */
} jl_candidates;

/* The one order every sort and selection uses: higher logit first, then lower id, so ties and
 * cut-offs are deterministic. */
static inline bool jl_token_better(const jl_token_data *a, const jl_token_data *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

typedef struct jl_sampler jl_sampler;

typedef struct {
    const char *name;
    size_t size;   /* bytes of the sampler's struct, which begins with jl_sampler */
    jl_status (*apply)(jl_sampler *self, jl_candidates *cands);
    jl_status (*accept)(jl_sampler *self, int32_t token);  /* NULL: keeps no history */
    void (*reset)(jl_sampler *self);                   /* NULL: no state */
    /* NULL: the struct is plain data, cloned by copying it. Otherwise called on that byte-for-
     * byte copy to give it buffers of its own; on failure it frees what it allocated. */
    jl_status (*clone_buffers)(const jl_sampler *self, jl_sampler *copy);
    void (*free_buffers)(jl_sampler *self);           /* NULL: owns nothing beyond itself */
} jl_sampler_iface;

struct jl_sampler {
    const jl_sampler_iface *iface;
};

/* The generic entry points; a NULL sampler is accepted by free. */
jl_sampler *jl_sampler_new(const jl_sampler_iface *iface);  /* zeroed struct of iface->size */
jl_status jl_sampler_apply(jl_sampler *s, jl_candidates *cands);
jl_status jl_sampler_accept(jl_sampler *s, int32_t token);
void jl_sampler_reset(jl_sampler *s);
jl_sampler *jl_sampler_clone(const jl_sampler *s);
void jl_sampler_free(jl_sampler *s);

/* The chain is a sampler that runs its samplers in order and owns them. */
jl_sampler *jl_chain_new(void);
jl_status jl_chain_add(jl_sampler *chain, jl_sampler *s);   /* takes s, frees it on failure */
size_t jl_chain_length(const jl_sampler *chain);
jl_sampler *jl_chain_get(const jl_sampler *chain, size_t i);
jl_status jl_chain_apply_first(jl_sampler *chain, jl_candidates *cands, size_t n);

/* The samplers; NULL when out of memory. */
jl_sampler *jl_sampler_mask_new(int32_t n_vocab);
jl_status jl_sampler_mask_set(jl_sampler *mask, const uint8_t *allowed);  /* n_vocab bytes or NULL */
jl_sampler *jl_sampler_logit_bias_new(const int32_t *ids, const float *biases, int32_t n);
jl_sampler *jl_sampler_penalties_new(int32_t n_vocab, int64_t window, float repeat, float freq,
                                     float present);            /* window: 0 off, -1 unbounded */
jl_status jl_sampler_dry_new(int32_t n_vocab, jl_byte_strings vocab_text, int64_t window,
                             float multiplier, float base, int32_t allowed_length,
                             jl_byte_strings breakers, jl_sampler **out);
jl_sampler *jl_sampler_top_k_new(int32_t k);
jl_sampler *jl_sampler_top_p_new(float p, size_t min_keep);
jl_sampler *jl_sampler_min_p_new(float p, size_t min_keep);
jl_sampler *jl_sampler_typical_new(float p, size_t min_keep);
jl_sampler *jl_sampler_xtc_new(float probability, float threshold, size_t min_keep, uint64_t seed);
jl_sampler *jl_sampler_temperature_new(float temperature, float range, float exponent);
jl_sampler *jl_sampler_mirostat_new(int32_t n_vocab, uint64_t seed, float tau, float eta, int32_t m);
jl_sampler *jl_sampler_mirostat_v2_new(uint64_t seed, float tau, float eta);
jl_sampler *jl_sampler_dist_new(uint64_t seed);

/* ---- helpers for sampler implementations ------------------------------------------------------ */

/* These take either form of the list and materialize a dense one when they need to; code that
 * reads c->data itself calls jl_candidates_materialize first. */
void jl_candidates_materialize(jl_candidates *c);
/* Make data[0 .. k) the best k in order, the rest after them in any order; k is clamped. */
void jl_candidates_sort_top(jl_candidates *c, size_t k);
/* Keep only the best k: the same as sort_top then truncate, without materializing a dense list. */
void jl_candidates_keep_top(jl_candidates *c, size_t k);
/* p = softmax(logit) over the candidates; returns the maximum logit. */
float jl_candidates_softmax(jl_candidates *c);
/* Keep only the first n entries (n <= size). */
void jl_candidates_truncate(jl_candidates *c, size_t n);
/* The best k of src / of logits[0 .. n) (ids are indices), not moved, into dst, in order;
 * return how many (min(k, n)). */
size_t jl_candidates_select_top(const jl_token_data *src, size_t n, size_t k, jl_token_data *dst);
size_t jl_logits_select_top(const float *logits, size_t n, size_t k, jl_token_data *dst);
/* sum of e^(x[i] - shift) for shift >= every x[i], vectorized */
double jl_sum_exp(const float *x, size_t n, float shift);

/* xoshiro256**, seeded through splitmix64: small, fast, the same stream on every platform. */
typedef struct {
    uint64_t s[4];
} jl_rng;
void jl_rng_seed(jl_rng *rng, uint64_t seed, uint64_t stream);  /* stream: one per sampler kind */
uint64_t jl_rng_next(jl_rng *rng);
double jl_rng_uniform(jl_rng *rng);  /* [0, 1) */

/* Softmax the candidates and draw one by its probability; sets c->selected. Fails when every
 * candidate is -inf (all banned or masked). */
jl_status jl_candidates_draw(jl_candidates *c, jl_rng *rng);

/* The last `limit` tokens accepted (limit 0: all of them), oldest first and contiguous. */
typedef struct {
    int32_t *tokens;   /* tokens[start .. start + len) */
    size_t start, len, capacity, limit;
} jl_token_window;
jl_status jl_window_init(jl_token_window *w, size_t limit);
/* Appends token; *dropped gets the token that fell out of the window, or -1. */
jl_status jl_window_push(jl_token_window *w, int32_t token, int32_t *dropped);
void jl_window_clear(jl_token_window *w);
static inline const int32_t *jl_window_data(const jl_token_window *w) { return w->tokens + w->start; }
jl_status jl_window_copy(const jl_token_window *src, jl_token_window *dst);
void jl_window_free(jl_token_window *w);

#ifdef __cplusplus
}
#endif
#endif
