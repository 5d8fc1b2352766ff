# The sampler chain binding (included by _core.pyx): one C call per drawn token, the GIL released.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t


cdef extern from "janlib_sampling.h" nogil:
    int JL_SAMPLER_DRY
    int JL_SAMPLER_TOP_K
    int JL_SAMPLER_TYPICAL_P
    int JL_SAMPLER_TOP_P
    int JL_SAMPLER_MIN_P
    int JL_SAMPLER_XTC
    int JL_SAMPLER_TEMPERATURE

    ctypedef struct jl_byte_strings:
        const uint8_t *bytes
        const int64_t *offsets
        int64_t count

    ctypedef struct jl_sampling_params:
        float temperature
        float dynatemp_range
        float dynatemp_exponent
        int32_t top_k
        float top_p
        float min_p
        float typical_p
        int32_t min_keep
        float xtc_probability
        float xtc_threshold
        int32_t repeat_last_n
        float repeat_penalty
        float frequency_penalty
        float presence_penalty
        float dry_multiplier
        float dry_base
        int32_t dry_allowed_length
        int32_t dry_penalty_last_n
        jl_byte_strings dry_sequence_breakers
        int32_t mirostat
        float mirostat_tau
        float mirostat_eta
        const int32_t *logit_bias_ids
        const float *logit_bias_values
        int32_t n_logit_bias
        const int32_t *order
        int32_t n_order
        uint64_t seed
        int32_t n_probs
        bint post_sampling_probs
        int32_t n_ctx

    ctypedef struct jl_sampling:
        pass

    jl_status jl_sampling_create(const jl_sampling_params *params, int32_t n_vocab,
                                 jl_byte_strings vocab_text, jl_sampling **out)
    void jl_sampling_free(jl_sampling *s)
    jl_status jl_sampling_clone(const jl_sampling *s, jl_sampling **out)
    void jl_sampling_reset(jl_sampling *s)
    jl_status jl_sampling_accept(jl_sampling *s, const int32_t *tokens, int64_t n)
    jl_status jl_sampling_sample(jl_sampling *s, const float *logits, int32_t *token)
    jl_status jl_sampling_set_mask(jl_sampling *s, const uint8_t *allowed, int64_t n)
    int32_t jl_sampling_last_probs(const jl_sampling *s, const int32_t **ids, const float **probs,
                                   float *token_prob)
    jl_status jl_sampling_survivors(jl_sampling *s, const float *logits, int32_t *ids, float *probs,
                                    int32_t *n_out)


# the names of the `samplers` list, as the C chain numbers them
SAMPLER_KINDS = {
    "dry": JL_SAMPLER_DRY,
    "top_k": JL_SAMPLER_TOP_K,
    "typ_p": JL_SAMPLER_TYPICAL_P,
    "top_p": JL_SAMPLER_TOP_P,
    "min_p": JL_SAMPLER_MIN_P,
    "xtc": JL_SAMPLER_XTC,
    "temperature": JL_SAMPLER_TEMPERATURE,
}

ctypedef fused _element:
    int32_t
    int64_t
    float
    uint8_t


cdef inline const _element *_data_or_null(const _element[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef jl_byte_strings _strings(const uint8_t[::1] data, const int64_t[::1] offsets):
    cdef jl_byte_strings s
    s.bytes = _data_or_null(data)
    s.offsets = _data_or_null(offsets)
    s.count = offsets.shape[0] - 1 if offsets.shape[0] > 0 else 0
    return s


cdef class SamplingChain:
    """One sequence's C sampler chain; janlib.sampling.Sampler builds it from SamplingParams.
    One thread at a time: the chain's state changes with every call."""
    cdef jl_sampling *chain
    cdef readonly int32_t n_vocab

    def __cinit__(self):
        self.chain = NULL

    def __init__(self, params, int32_t n_vocab, int32_t n_ctx, uint64_t seed, const int32_t[::1] order,
                 const int32_t[::1] bias_ids, const float[::1] bias_values,
                 const uint8_t[::1] breaker_bytes, const int64_t[::1] breaker_offsets,
                 const uint8_t[::1] vocab_bytes, const int64_t[::1] vocab_offsets):
        cdef jl_sampling_params p
        if bias_ids.shape[0] != bias_values.shape[0]:
            raise ValueError("logit bias: as many ids as values")
        p.temperature = params.temperature
        p.dynatemp_range = params.dynatemp_range
        p.dynatemp_exponent = params.dynatemp_exponent
        p.top_k = params.top_k
        p.top_p = params.top_p
        p.min_p = params.min_p
        p.typical_p = params.typical_p
        p.min_keep = params.min_keep
        p.xtc_probability = params.xtc_probability
        p.xtc_threshold = params.xtc_threshold
        p.repeat_last_n = params.repeat_last_n
        p.repeat_penalty = params.repeat_penalty
        p.frequency_penalty = params.frequency_penalty
        p.presence_penalty = params.presence_penalty
        p.dry_multiplier = params.dry_multiplier
        p.dry_base = params.dry_base
        p.dry_allowed_length = params.dry_allowed_length
        p.dry_penalty_last_n = params.dry_penalty_last_n
        p.dry_sequence_breakers = _strings(breaker_bytes, breaker_offsets)
        p.mirostat = params.mirostat
        p.mirostat_tau = params.mirostat_tau
        p.mirostat_eta = params.mirostat_eta
        p.logit_bias_ids = _data_or_null(bias_ids)
        p.logit_bias_values = _data_or_null(bias_values)
        p.n_logit_bias = bias_ids.shape[0]
        p.order = _data_or_null(order)
        p.n_order = order.shape[0]
        p.seed = seed
        p.n_probs = params.n_probs
        p.post_sampling_probs = params.post_sampling_probs
        p.n_ctx = n_ctx
        cdef jl_byte_strings vocab = _strings(vocab_bytes, vocab_offsets)
        cdef jl_status status
        with nogil:
            status = jl_sampling_create(&p, n_vocab, vocab, &self.chain)
        check(status)
        self.n_vocab = n_vocab

    def __dealloc__(self):
        jl_sampling_free(self.chain)

    def sample(self, const float[::1] logits):
        """Apply the chain to logits (float32, n_vocab), draw a token, accept it; returns it."""
        cdef int32_t token
        cdef jl_status status
        if logits.shape[0] != self.n_vocab:
            raise ValueError(f"sample: {logits.shape[0]} logits for a vocabulary of {self.n_vocab}")
        with nogil:
            status = jl_sampling_sample(self.chain, &logits[0], &token)
        check(status)
        return token

    def accept(self, int32_t token):
        check(jl_sampling_accept(self.chain, &token, 1))

    def accept_many(self, const int32_t[::1] tokens):
        cdef jl_status status
        with nogil:
            status = jl_sampling_accept(self.chain, _data_or_null(tokens), tokens.shape[0])
        check(status)

    def set_mask(self, const uint8_t[::1] allowed):
        """allowed[i] != 0 keeps token i; None lifts the mask."""
        if allowed is None:
            check(jl_sampling_set_mask(self.chain, NULL, 0))
        else:
            check(jl_sampling_set_mask(self.chain, _data_or_null(allowed), allowed.shape[0]))

    def last_probs(self):
        """([ids], [probs], token_prob) of the last draw."""
        cdef const int32_t *ids
        cdef const float *probs
        cdef float token_prob
        cdef int32_t n = jl_sampling_last_probs(self.chain, &ids, &probs, &token_prob)
        return [ids[i] for i in range(n)], [probs[i] for i in range(n)], token_prob

    def survivors(self, const float[::1] logits, int32_t[::1] ids, float[::1] probs):
        """For tests: every sampler but the draw; fills ids/probs (n_vocab each), returns the count."""
        cdef int32_t n
        cdef jl_status status
        if logits.shape[0] != self.n_vocab or ids.shape[0] < self.n_vocab or probs.shape[0] < self.n_vocab:
            raise ValueError(f"survivors: arrays of {self.n_vocab} entries expected")
        with nogil:
            status = jl_sampling_survivors(self.chain, &logits[0], &ids[0], &probs[0], &n)
        check(status)
        return n

    def reset(self):
        jl_sampling_reset(self.chain)

    def clone(self):
        cdef SamplingChain copy = SamplingChain.__new__(SamplingChain)
        check(jl_sampling_clone(self.chain, &copy.chain))
        copy.n_vocab = self.n_vocab
        return copy
