/* sampling.c — one sequence's sampling: assembles the chain from the Jan API parameters as
 * llama.cpp's common layer does, owns the candidate buffer and reports each draw's probabilities. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

#define MIROSTAT_M 100  /* tokens mirostat 1 fits its Zipf exponent to, as llama.cpp */

struct jl_sampling {
    int32_t n_vocab;
    jl_sampler *chain;          /* mask, logit bias, penalties, the ordered samplers, the draw */
    jl_token_data *candidates;  /* n_vocab */
    float *dense;               /* n_vocab: the logits the chain adjusts before materializing */
    int32_t n_probs;
    bool post_sampling_probs;
    jl_token_data *top;         /* n_probs: the last draw's most probable tokens */
    int32_t *top_ids;
    float *top_probs;
    int32_t n_top;
    float token_prob;
};

static jl_sampler *mask_of(const jl_sampling *s) { return jl_chain_get(s->chain, 0); }

/* -1 means the whole context: n_ctx, or everything accepted when n_ctx is 0 */
static int64_t resolve_window(int32_t last_n, int32_t n_ctx) {
    if (last_n == -1) return n_ctx > 0 ? n_ctx : -1;
    return n_ctx > 0 && last_n > n_ctx ? n_ctx : last_n;
}

static jl_status check_strings(jl_byte_strings s, const char *what) {
    if (s.count < 0 || (s.count > 0 && (!s.bytes || !s.offsets)) || (s.count > 0 && s.offsets[0] != 0))
        return jl_fail(JL_ERR_INVALID_ARG, "%s: malformed strings", what);
    for (int64_t i = 0; i < s.count; i++)
        if (s.offsets[i + 1] < s.offsets[i])
            return jl_fail(JL_ERR_INVALID_ARG, "%s: offsets decrease at %lld", what, (long long)i);
    return JL_OK;
}

static jl_status check_params(const jl_sampling_params *p, int32_t n_vocab) {
    if (n_vocab <= 0) return jl_fail(JL_ERR_INVALID_ARG, "n_vocab=%d", n_vocab);
    if (p->mirostat < 0 || p->mirostat > 2) return jl_fail(JL_ERR_INVALID_ARG, "mirostat=%d", p->mirostat);
    if (p->n_order < 0 || (p->n_order > 0 && !p->order)) return jl_fail(JL_ERR_INVALID_ARG, "sampler order");
    for (int32_t i = 0; i < p->n_order; i++)
        if (p->order[i] < 0 || p->order[i] >= JL_SAMPLER_KIND_COUNT)
            return jl_fail(JL_ERR_INVALID_ARG, "sampler kind %d at %d", p->order[i], i);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && (!p->logit_bias_ids || !p->logit_bias_values)))
        return jl_fail(JL_ERR_INVALID_ARG, "logit bias arrays");
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias_ids[i] < 0 || p->logit_bias_ids[i] >= n_vocab)
            return jl_fail(JL_ERR_INVALID_ARG, "logit bias token %d not in [0, %d)", p->logit_bias_ids[i], n_vocab);
        if (!(p->logit_bias_values[i] < INFINITY))
            return jl_fail(JL_ERR_INVALID_ARG, "logit bias of token %d is %g", p->logit_bias_ids[i],
                           p->logit_bias_values[i]);
    }
    if (p->min_keep < 0 || p->n_probs < 0 || p->n_ctx < 0 || p->repeat_last_n < -1 ||
        p->dry_penalty_last_n < -1 || p->dry_allowed_length < 0)
        return jl_fail(JL_ERR_INVALID_ARG, "min_keep=%d n_probs=%d n_ctx=%d repeat_last_n=%d "
                       "dry_penalty_last_n=%d dry_allowed_length=%d", p->min_keep, p->n_probs, p->n_ctx,
                       p->repeat_last_n, p->dry_penalty_last_n, p->dry_allowed_length);
    return check_strings(p->dry_sequence_breakers, "dry_sequence_breakers");
}

static jl_status add_ordered(jl_sampler *chain, jl_sampler_kind kind, const jl_sampling_params *p,
                             int32_t n_vocab, jl_byte_strings vocab_text) {
    const size_t min_keep = (size_t)p->min_keep;
    switch (kind) {
    case JL_SAMPLER_DRY: {
        jl_sampler *dry = NULL;
        jl_status status = jl_sampler_dry_new(n_vocab, vocab_text,
                                              resolve_window(p->dry_penalty_last_n, p->n_ctx),
                                              p->dry_multiplier, p->dry_base, p->dry_allowed_length,
                                              p->dry_sequence_breakers, &dry);
        if (status != JL_OK) {
            jl_sampler_free(dry);
            return status;
        }
        return jl_chain_add(chain, dry);
    }
    case JL_SAMPLER_TOP_K: return jl_chain_add(chain, jl_sampler_top_k_new(p->top_k));
    case JL_SAMPLER_TYPICAL_P: return jl_chain_add(chain, jl_sampler_typical_new(p->typical_p, min_keep));
    case JL_SAMPLER_TOP_P: return jl_chain_add(chain, jl_sampler_top_p_new(p->top_p, min_keep));
    case JL_SAMPLER_MIN_P: return jl_chain_add(chain, jl_sampler_min_p_new(p->min_p, min_keep));
    case JL_SAMPLER_XTC:
        return jl_chain_add(chain, jl_sampler_xtc_new(p->xtc_probability, p->xtc_threshold, min_keep, p->seed));
    case JL_SAMPLER_TEMPERATURE:
        return jl_chain_add(chain, jl_sampler_temperature_new(p->temperature, p->dynatemp_range,
                                                              p->dynatemp_exponent));
    default: return jl_fail(JL_ERR_INVALID_ARG, "sampler kind %d", kind);
    }
}

static jl_status build_chain(jl_sampler *chain, const jl_sampling_params *p, int32_t n_vocab,
                             jl_byte_strings vocab_text) {
    jl_status status = jl_chain_add(chain, jl_sampler_mask_new(n_vocab));
    if (status == JL_OK)
        status = jl_chain_add(chain, jl_sampler_logit_bias_new(p->logit_bias_ids, p->logit_bias_values,
                                                               p->n_logit_bias));
    if (status == JL_OK)
        status = jl_chain_add(chain, jl_sampler_penalties_new(n_vocab, resolve_window(p->repeat_last_n, p->n_ctx),
                                                              p->repeat_penalty, p->frequency_penalty,
                                                              p->presence_penalty));
    if (status != JL_OK) return status;
    switch (p->mirostat) {
    case 1:
        status = jl_chain_add(chain, jl_sampler_temperature_new(p->temperature, 0.0f, 1.0f));
        return status ? status : jl_chain_add(chain, jl_sampler_mirostat_new(n_vocab, p->seed, p->mirostat_tau,
                                                                             p->mirostat_eta, MIROSTAT_M));
    case 2:
        status = jl_chain_add(chain, jl_sampler_temperature_new(p->temperature, 0.0f, 1.0f));
        return status ? status : jl_chain_add(chain, jl_sampler_mirostat_v2_new(p->seed, p->mirostat_tau,
                                                                                p->mirostat_eta));
    default:
        for (int32_t i = 0; i < p->n_order && status == JL_OK; i++)
            status = add_ordered(chain, (jl_sampler_kind)p->order[i], p, n_vocab, vocab_text);
        return status ? status : jl_chain_add(chain, jl_sampler_dist_new(p->seed));
    }
}

/* The buffers besides the chain, sized from n_vocab and n_probs. */
static jl_status alloc_buffers(jl_sampling *s) {
    const size_t n_top = s->n_probs ? (size_t)s->n_probs : 1;
    s->candidates = malloc((size_t)s->n_vocab * sizeof *s->candidates);
    s->dense = malloc((size_t)s->n_vocab * sizeof *s->dense);
    s->top = malloc(n_top * sizeof *s->top);
    s->top_ids = malloc(n_top * sizeof *s->top_ids);
    s->top_probs = malloc(n_top * sizeof *s->top_probs);
    if (!s->candidates || !s->dense || !s->top || !s->top_ids || !s->top_probs)
        return jl_fail(JL_ERR_NOMEM, "candidates for %d tokens", s->n_vocab);
    return JL_OK;
}

jl_status jl_sampling_create(const jl_sampling_params *params, int32_t n_vocab, jl_byte_strings vocab_text,
                             jl_sampling **out) {
    *out = NULL;
    jl_status status = check_params(params, n_vocab);
    if (status == JL_OK) status = check_strings(vocab_text, "vocabulary text");
    if (status != JL_OK) return status;
    jl_sampling *s = calloc(1, sizeof *s);
    if (!s) return jl_fail(JL_ERR_NOMEM, "sampling");
    s->n_vocab = n_vocab;
    s->n_probs = params->n_probs;
    s->post_sampling_probs = params->post_sampling_probs;
    s->chain = jl_chain_new();
    status = s->chain ? build_chain(s->chain, params, n_vocab, vocab_text) : jl_fail(JL_ERR_NOMEM, "chain");
    if (status == JL_OK) status = alloc_buffers(s);
    if (status != JL_OK) {
        jl_sampling_free(s);
        return status;
    }
    *out = s;
    return JL_OK;
}

void jl_sampling_free(jl_sampling *s) {
    if (!s) return;
    jl_sampler_free(s->chain);
    free(s->candidates);
    free(s->dense);
    free(s->top);
    free(s->top_ids);
    free(s->top_probs);
    free(s);
}

jl_status jl_sampling_clone(const jl_sampling *s, jl_sampling **out) {
    *out = NULL;
    jl_sampling *copy = calloc(1, sizeof *copy);
    if (!copy) return jl_fail(JL_ERR_NOMEM, "sampling");
    copy->n_vocab = s->n_vocab;
    copy->n_probs = s->n_probs;
    copy->post_sampling_probs = s->post_sampling_probs;
    copy->chain = jl_sampler_clone(s->chain);
    jl_status status = copy->chain ? alloc_buffers(copy) : jl_fail(JL_ERR_NOMEM, "cloning the chain");
    if (status != JL_OK) {
        jl_sampling_free(copy);
        return status;
    }
    copy->n_top = s->n_top;
    copy->token_prob = s->token_prob;
    memcpy(copy->top_ids, s->top_ids, (size_t)s->n_top * sizeof *s->top_ids);
    memcpy(copy->top_probs, s->top_probs, (size_t)s->n_top * sizeof *s->top_probs);
    *out = copy;
    return JL_OK;
}

void jl_sampling_reset(jl_sampling *s) {
    jl_sampler_reset(s->chain);
    s->n_top = 0;
    s->token_prob = 0.0f;
}

jl_status jl_sampling_accept(jl_sampling *s, const int32_t *tokens, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab)
            return jl_fail(JL_ERR_INVALID_ARG, "token %d at %lld not in [0, %d)", tokens[i], (long long)i, s->n_vocab);
    for (int64_t i = 0; i < n; i++) {
        jl_status status = jl_sampler_accept(s->chain, tokens[i]);
        if (status != JL_OK) return status;
    }
    return JL_OK;
}

jl_status jl_sampling_set_mask(jl_sampling *s, const uint8_t *allowed, int64_t n) {
    if (allowed && n != s->n_vocab)
        return jl_fail(JL_ERR_INVALID_ARG, "mask of %lld entries for %d tokens", (long long)n, s->n_vocab);
    return jl_sampler_mask_set(mask_of(s), allowed);
}

static jl_status load_candidates(jl_sampling *s, const float *logits, jl_candidates *c) {
    int bad = 0;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        s->dense[i] = logits[i];
        bad |= !(logits[i] < INFINITY);
    }
    if (bad) {
        int32_t i = 0;
        while (logits[i] < INFINITY) i++;
        return jl_fail(JL_ERR_INVALID_ARG, "logits[%d] is %g: logits must be finite or -inf", i, logits[i]);
    }
    *c = (jl_candidates){.data = s->candidates, .size = (size_t)s->n_vocab, .dense = s->dense, .selected = -1};
    return JL_OK;
}

/* Raw-logit softmax over the whole vocabulary, as llama.cpp's server reports by default:
 * top entries into s->top, returns the log of the normalizer relative to the best logit. */
static double raw_log_normalizer(jl_sampling *s, const float *logits) {
    s->n_top = (int32_t)jl_logits_select_top(logits, (size_t)s->n_vocab, (size_t)s->n_probs, s->top);
    const float max_l = s->top[0].logit;
    if (max_l == -INFINITY) return 0.0;
    return log(jl_sum_exp(logits, (size_t)s->n_vocab, max_l));
}

static void record_probs(jl_sampling *s, const float *logits, const jl_candidates *c, double log_norm) {
    const jl_token_data *drawn = &c->data[c->selected];
    if (!s->post_sampling_probs) {
        const float max_l = s->top[0].logit;
        for (int32_t i = 0; i < s->n_top; i++)
            s->top_probs[i] = (float)exp((double)(s->top[i].logit - max_l) - log_norm);
        s->token_prob = (float)exp((double)(logits[drawn->id] - max_l) - log_norm);
    } else {
        /* the chain's own probabilities, which only the zero ones leave out */
        size_t n = jl_candidates_select_top(c->data, c->size, (size_t)s->n_probs, s->top);
        s->n_top = 0;
        while ((size_t)s->n_top < n && s->top[s->n_top].p > 0.0f) {
            s->top_probs[s->n_top] = s->top[s->n_top].p;
            s->n_top++;
        }
        s->token_prob = drawn->p;
    }
    for (int32_t i = 0; i < s->n_top; i++) s->top_ids[i] = s->top[i].id;
}

jl_status jl_sampling_sample(jl_sampling *s, const float *logits, int32_t *token) {
    jl_candidates c;
    jl_status status = load_candidates(s, logits, &c);
    if (status != JL_OK) return status;
    const bool raw_probs = s->n_probs > 0 && !s->post_sampling_probs;
    const double log_norm = raw_probs ? raw_log_normalizer(s, logits) : 0.0;
    status = jl_sampler_apply(s->chain, &c);
    if (status != JL_OK) return status;
    if (c.selected < 0 || (size_t)c.selected >= c.size)
        return jl_fail(JL_ERR_INTERNAL, "the chain selected no token");
    if (s->n_probs > 0) record_probs(s, logits, &c, log_norm);
    *token = c.data[c.selected].id;
    return jl_sampler_accept(s->chain, *token);
}

int32_t jl_sampling_last_probs(const jl_sampling *s, const int32_t **ids, const float **probs,
                               float *token_prob) {
    *ids = s->top_ids;
    *probs = s->top_probs;
    *token_prob = s->token_prob;
    return s->n_top;
}

jl_status jl_sampling_survivors(jl_sampling *s, const float *logits, int32_t *ids, float *probs,
                                int32_t *n_out) {
    jl_candidates c;
    jl_status status = load_candidates(s, logits, &c);
    if (status == JL_OK) status = jl_chain_apply_first(s->chain, &c, jl_chain_length(s->chain) - 1);
    if (status != JL_OK) return status;
    jl_candidates_softmax(&c);
    jl_candidates_sort_top(&c, c.size);
    int32_t n = 0;
    for (size_t i = 0; i < c.size && c.data[i].p > 0.0f; i++, n++) {
        ids[n] = c.data[i].id;
        probs[n] = c.data[i].p;
    }
    *n_out = n;
    return JL_OK;
}
