# C declarations of csrc/include/janlib.h for the binding.
from libc.stdint cimport int64_t, uint64_t

cdef extern from "janlib.h" nogil:
    ctypedef int jl_status
    int JL_OK
    int JL_ERR_INVALID_ARG
    int JL_ERR_UNSUPPORTED
    int JL_ERR_NOMEM
    int JL_ERR_KV_FULL
    int JL_ISA_COUNT
    int JL_TYPE_COUNT

    const char *jl_last_error()
    const char *jl_isa_name(int isa)
    int jl_isa_best()
    int jl_isa_active()
    jl_status jl_isa_set(int isa)
    const char *jl_cpu_flags()

    jl_status jl_type_info(int type, const char **name, int64_t *block_size, int64_t *type_size)
    int jl_type_activation(int type)

    int jl_default_threads()
    jl_status jl_set_default_threads(int n_threads)
    int jl_physical_cores()
    jl_status jl_pool_stress(int64_t n_jobs, uint64_t seed, int64_t *n_bad)

    jl_status jl_dequantize(int type, const void *src, size_t src_bytes, float *dst, int64_t n,
                            int n_threads)
    jl_status jl_matmul(int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                        const float *x, int64_t n, float *y, int n_threads)
    ctypedef struct jl_packed_cache:
        pass
    jl_packed_cache *jl_packed_cache_create()
    void jl_packed_cache_free(jl_packed_cache *cache)
    size_t jl_packed_cache_bytes(jl_packed_cache *cache)
    jl_status jl_matmul_cached(jl_packed_cache *cache, int type, const void *w, size_t w_bytes, int64_t rows,
                               int64_t k, const float *x, int64_t n, float *y, int n_threads)
    enum: JL_MATMUL_SHARED_MAX
    ctypedef struct jl_matmul_weight:
        int type
        const void *w
        size_t w_bytes
        int64_t rows
        float *y
    ctypedef void (*jl_row_fill_fn)(void *arg, int64_t row)
    jl_status jl_matmul_shared(jl_packed_cache *cache, const jl_matmul_weight *weights, int n_weights, int64_t k,
                               const float *x, int64_t n, jl_row_fill_fn fill_row, void *fill_arg, int n_threads)
    jl_status jl_quantize_rows(int act_type, const float *x, int64_t n, int64_t k, void *dst,
                               size_t dst_bytes)


# The forward pass (csrc/model.c).
from libc.stdint cimport int32_t, uint8_t

cdef extern from "janlib.h" nogil:
    int JL_TYPE_F16
    int JL_TYPE_F32
    int JL_TYPE_Q8_0
    int JL_TYPE_Q4_0
    int JL_ROPE_ADJACENT
    int JL_ROPE_NEOX
    int JL_FFN_SILU
    int JL_FFN_GELU_TANH
    int JL_FFN_GELU_ERF
    int JL_NORM_RMS
    int JL_NORM_LAYER

    ctypedef struct jl_tensor:
        const void *data
        size_t nbytes
        int type
        int64_t ne0
        int64_t ne1
        int64_t ne2

    ctypedef struct jl_layer_desc:
        jl_tensor attn_norm
        jl_tensor attn_norm_bias
        jl_tensor attn_q
        jl_tensor attn_k
        jl_tensor attn_v
        jl_tensor attn_q_bias
        jl_tensor attn_k_bias
        jl_tensor attn_v_bias
        jl_tensor attn_q_norm
        jl_tensor attn_k_norm
        jl_tensor attn_output
        jl_tensor attn_output_bias
        jl_tensor post_attention_norm
        jl_tensor ffn_norm
        jl_tensor ffn_norm_bias
        jl_tensor ffn_gate
        jl_tensor ffn_up
        jl_tensor ffn_down
        jl_tensor ffn_gate_bias
        jl_tensor ffn_up_bias
        jl_tensor ffn_down_bias
        jl_tensor ffn_gate_inp
        jl_tensor ffn_gate_exps
        jl_tensor ffn_up_exps
        jl_tensor ffn_down_exps
        jl_tensor post_ffw_norm
        jl_tensor attn_output_norm
        jl_tensor attn_output_norm_bias
        jl_tensor layer_output_norm
        jl_tensor layer_output_norm_bias
        const double *rope_inv_freq
        const double *rope_inv_freq_long
        float rope_attn_factor
        int32_t sliding_window

    ctypedef struct jl_model_desc:
        int32_t n_layer, n_embd, n_head, n_head_kv, head_dim_k, head_dim_v, n_ff, n_vocab
        int32_t n_rot
        int32_t rope_layout
        int32_t rope_n_ctx_orig
        int32_t ffn_activation
        int32_t norm_type
        int32_t n_expert, n_expert_used, n_ff_exp
        int32_t expert_weights_norm
        float expert_weights_scale
        float norm_eps
        float embedding_scale
        float residual_scale
        float attention_scale
        float attn_logit_softcap
        float logit_scale
        float final_logit_softcap
        int32_t non_causal
        jl_tensor token_embd
        jl_tensor token_types
        jl_tensor position_embd
        jl_tensor token_embd_norm
        jl_tensor token_embd_norm_bias
        jl_tensor output_norm
        jl_tensor output_norm_bias
        jl_tensor output
        const jl_layer_desc *layers

    ctypedef struct jl_model:
        pass
    ctypedef struct jl_context:
        pass

    jl_status jl_model_create(const jl_model_desc *desc, jl_model **model)
    void jl_model_free(jl_model *model)
    ctypedef struct jl_lora:
        pass
    enum: JL_TOKEN_EMBD
    ctypedef struct jl_batch:
        int64_t n_tokens
        const int32_t *tokens
        const int64_t *positions
        const int32_t *seq_ids
        const uint8_t *want_logits
        int32_t n_lora
        const jl_lora *const *lora
        const float *lora_scales
        int64_t n_embd_rows
        const float *embd
        const int32_t *non_causal_blocks

    jl_status jl_context_create(const jl_model *model, int64_t n_ctx, int32_t n_seq_max, int64_t n_cells,
                                int type_k, int type_v, int64_t n_batch, int swa_full, jl_context **ctx)
    void jl_context_free(jl_context *ctx)
    int64_t jl_context_n_ctx(const jl_context *ctx)
    int32_t jl_context_n_seq_max(const jl_context *ctx)
    int64_t jl_context_n_cells(const jl_context *ctx)
    int64_t jl_context_n_free_cells(const jl_context *ctx)
    size_t jl_context_kv_bytes(const jl_context *ctx)
    int64_t jl_context_page_size()
    jl_status jl_context_seq_len(const jl_context *ctx, int32_t seq, int64_t *len)
    jl_status jl_context_seq_pos_min(const jl_context *ctx, int32_t seq, int64_t *pos_min, int64_t *cut_min)
    jl_status jl_context_decode(jl_context *ctx, const jl_batch *batch, float *logits, int n_threads)
    jl_status jl_context_decode_embeddings(jl_context *ctx, const jl_batch *batch, float *embeddings, int n_threads)
    jl_status jl_context_seq_rm(jl_context *ctx, int32_t seq, int64_t p0, int64_t p1)
    jl_status jl_context_seq_cp(jl_context *ctx, int32_t src, int32_t dst, int64_t p0, int64_t p1)
    jl_status jl_context_seq_shift(jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard)
    jl_status jl_context_seq_can_shift(const jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard, int *ok)


# LoRA adapters (csrc/lora.c).
cdef extern from "janlib.h" nogil:
    int JL_LORA_N_TARGETS

    ctypedef struct jl_lora_pair:
        jl_tensor a
        jl_tensor b_t

    jl_status jl_lora_create(const jl_model *model, const jl_lora_pair *pairs, float alpha, jl_lora **lora)
    void jl_lora_free(jl_lora *lora)
