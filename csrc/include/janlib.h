/* janlib.h — the one header the Python binding sees.
 *
 * Every entry point returns a jl_status; on failure jl_last_error() holds a message
 * (thread-local). Nothing here exits, aborts or calls back into Python. */
#ifndef JANLIB_H
#define JANLIB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    JL_OK = 0,
    JL_ERR_INVALID_ARG = 1,   /* a caller mistake: shape, size, range */
    JL_ERR_UNSUPPORTED = 2,   /* a type or ISA this build or CPU cannot run */
    JL_ERR_NOMEM = 3,
    JL_ERR_INTERNAL = 4,
    JL_ERR_KV_FULL = 5,       /* the KV cache has too few free cells; nothing was changed */
} jl_status;

const char *jl_last_error(void);

/* GGML tensor type ids, as stored in GGUF files. */
typedef enum {
    JL_TYPE_F32 = 0,
    JL_TYPE_F16 = 1,
    JL_TYPE_Q4_0 = 2,
    JL_TYPE_Q4_1 = 3,
    JL_TYPE_Q5_0 = 6,
    JL_TYPE_Q5_1 = 7,
    JL_TYPE_Q8_0 = 8,
    JL_TYPE_Q8_1 = 9,
    JL_TYPE_Q2_K = 10,
    JL_TYPE_Q3_K = 11,
    JL_TYPE_Q4_K = 12,
    JL_TYPE_Q5_K = 13,
    JL_TYPE_Q6_K = 14,
    JL_TYPE_Q8_K = 15,
    JL_TYPE_IQ4_NL = 20,
    JL_TYPE_IQ4_XS = 23,
    JL_TYPE_BF16 = 30,
    JL_TYPE_COUNT = 40,
} jl_type;

/* Instruction-set levels, each a superset of the one before. */
typedef enum {
    JL_ISA_SCALAR = 0,
    JL_ISA_AVX2 = 1,    /* AVX2 + FMA + F16C */
    JL_ISA_AVX512 = 2,  /* AVX-512 F/BW/VL/DQ + VNNI */
    JL_ISA_AMX = 3,     /* AVX-512 + AMX-TILE/INT8, the OS granting the tile state: int8 GEMMs on tiles */
    JL_ISA_COUNT = 4,
} jl_isa;

const char *jl_isa_name(int isa);
int jl_isa_best(void);                 /* best level this CPU can run */
int jl_isa_active(void);
jl_status jl_isa_set(int isa);         /* JL_ERR_UNSUPPORTED if the CPU lacks it */
/* cpuid feature flags as a space-separated list, e.g. "avx2 fma f16c avx512f ..." */
const char *jl_cpu_flags(void);

/* Type facts for the types this build computes with; JL_ERR_UNSUPPORTED otherwise. */
jl_status jl_type_info(int type, const char **name, int64_t *block_size, int64_t *type_size);
/* The activation format the type's dot product pairs with under the active ISA. */
int jl_type_activation(int type);

/* Threads: one persistent pool. n_threads <= 0 means the global default. */
int jl_default_threads(void);          /* initially the physical core count */
jl_status jl_set_default_threads(int n_threads);
int jl_physical_cores(void);
/* Self-check of the pool: n_jobs jobs with thread counts drawn (seeded) from {1, 2, 3, 5, 8, 16}, each share
 * counting its runs. Returns in *n_bad the jobs where a share ran other than once or after jl_parallel returned. */
jl_status jl_pool_stress(int64_t n_jobs, uint64_t seed, int64_t *n_bad);

/* dst (n,) float32 <- src, n elements of type `type` (n a multiple of its block size). */
jl_status jl_dequantize(int type, const void *src, size_t src_bytes, float *dst, int64_t n,
                        int n_threads);

/* y (n, rows) = x (n, k) @ W.T, W (rows, k) of type `type`, rows packed back to back.
 * x is quantized once to the activation format of `type`, then rows are split across threads. */
jl_status jl_matmul(int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                    const float *x, int64_t n, float *y, int n_threads);

/* Weights repacked for the GEMM, kept per tensor (keyed by its address) from its first batched
 * use for the life of the cache (a model owns one): with them the GEMM pays from 2 rows, for the
 * types whose packed panels are about as large as their blocks (Q4_0, Q4_1). Thread-safe. */
typedef struct jl_packed_cache jl_packed_cache;
jl_packed_cache *jl_packed_cache_create(void);
void jl_packed_cache_free(jl_packed_cache *cache);
size_t jl_packed_cache_bytes(jl_packed_cache *cache);  /* the packed copies held */
/* jl_matmul with a cache (NULL: jl_matmul); W must stay at its address while the cache lives */
jl_status jl_matmul_cached(jl_packed_cache *cache, int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                           const float *x, int64_t n, float *y, int n_threads);

/* Several weights that multiply the same x (a layer's q, k and v; gate and up). */
#define JL_MATMUL_SHARED_MAX 4
typedef struct {
    int type;
    const void *w;   /* (rows, k) of `type`, rows back to back */
    size_t w_bytes;
    int64_t rows;
    float *y;        /* (n, rows) */
} jl_matmul_weight;
/* Makes row `row` of a matmul's x, on the thread that then quantizes it (the rows are shared out). */
typedef void (*jl_row_fill_fn)(void *arg, int64_t row);
/* Each weight's y = x (n, k) @ W.T, equal bit for bit to its own jl_matmul_cached: weights of one
 * type take x quantized once, and all their rows are shared out in one parallel step; weights of
 * different types run one after the other. fill_row (NULL: none) makes each row of x first, once:
 * x is then written (it must not alias any y) although the pointer is const for the callers without one. */
jl_status jl_matmul_shared(jl_packed_cache *cache, const jl_matmul_weight *weights, int n_weights, int64_t k,
                           const float *x, int64_t n, jl_row_fill_fn fill_row, void *fill_arg, int n_threads);

/* Activation quantization on its own, for tests: n rows of k floats -> activation blocks. */
jl_status jl_quantize_rows(int act_type, const float *x, int64_t n, int64_t k, void *dst,
                           size_t dst_bytes);

/* ---- the forward pass (model.c) ----------------------------------------------------------
 *
 * A model is a description of where each weight lies in the mapped GGUF file plus its
 * hyperparameters; the architectures differ only in the flags, scales and optional tensors
 * set here (janlib.models turns each architecture's metadata into one). A context holds a KV cache
 * that several sequences share and every scratch buffer, allocated once; jl_context_decode runs
 * all layers for a batch of tokens from any of its sequences in one call. */

/* One weight, a pointer into the mapped file (never copied); data == NULL when absent.
 * ne0 is the contiguous dimension: a matrix (rows, k) has ne0 = k, ne1 = rows; a vector ne1 = 1;
 * ne2 > 1 stacks that many matrices back to back (one per expert), else 1. A fused tensor's
 * parts (attn_qkv, a gate_up ffn_up) are given as views of its rows. */
typedef struct {
    const void *data;
    size_t nbytes;
    int type;
    int64_t ne0, ne1, ne2;
} jl_tensor;

typedef enum {
    JL_ROPE_ADJACENT = 0,  /* rotate pairs (x[2i], x[2i+1]): llama as GGUF conversion stores it */
    JL_ROPE_NEOX = 1,      /* rotate pairs (x[i], x[i + d/2]): qwen2, gemma3 */
} jl_rope_layout;

typedef enum {
    JL_FFN_SILU = 0,       /* down(silu(gate(x)) * up(x)); without ffn_gate: down(silu(up(x))) */
    JL_FFN_GELU_TANH = 1,  /* down(gelu_tanh(gate(x)) * up(x)); without ffn_gate: down(gelu_tanh(up(x))) */
    JL_FFN_GELU_ERF = 2,   /* likewise with the exact gelu, 0.5 x (1 + erf(x / sqrt(2))) (bert) */
} jl_ffn_activation;

typedef enum {
    JL_NORM_RMS = 0,       /* x / sqrt(mean(x^2) + eps) * w */
    JL_NORM_LAYER = 1,     /* (x - mean(x)) / sqrt(var(x) + eps) * w + b (b optional) */
} jl_norm_type;

/* Per layer. Shapes are (rows, k); "optional" tensors are skipped when data == NULL. */
typedef struct {
    jl_tensor attn_norm;            /* optional (n_embd,): absent, attention reads x itself (olmo2) */
    jl_tensor attn_norm_bias;       /* optional (n_embd,): LayerNorm bias */
    jl_tensor attn_q;               /* (n_head * head_dim_k, n_embd) */
    jl_tensor attn_k;               /* (n_head_kv * head_dim_k, n_embd) */
    jl_tensor attn_v;               /* (n_head_kv * head_dim_v, n_embd) */
    jl_tensor attn_q_bias;          /* optional (n_head * head_dim_k,) */
    jl_tensor attn_k_bias;          /* optional (n_head_kv * head_dim_k,) */
    jl_tensor attn_v_bias;          /* optional (n_head_kv * head_dim_v,) */
    jl_tensor attn_q_norm;          /* optional (head_dim_k,): RMSNorm of each query head before RoPE;
                                       (n_head * head_dim_k,): of the whole query row (olmo2) */
    jl_tensor attn_k_norm;          /* optional (head_dim_k,) or (n_head_kv * head_dim_k,): likewise for keys */
    jl_tensor attn_output;          /* (n_embd, n_head * head_dim_v) */
    jl_tensor attn_output_bias;     /* optional (n_embd,) */
    jl_tensor post_attention_norm;  /* optional (n_embd,): RMSNorm of the attention output */
    jl_tensor attn_output_norm;     /* optional (n_embd,): post-norm (bert): x = norm(x + attention) */
    jl_tensor attn_output_norm_bias;      /* optional (n_embd,) */
    jl_tensor ffn_norm;             /* optional (n_embd,): absent, the FFN reads x itself (olmo2) */
    jl_tensor ffn_norm_bias;        /* optional (n_embd,): LayerNorm bias */
    jl_tensor ffn_gate;             /* optional (n_ff, n_embd): absent, the FFN is down(act(up(x))) */
    jl_tensor ffn_up;               /* (n_ff, n_embd) */
    jl_tensor ffn_down;             /* (n_embd, n_ff) */
    jl_tensor ffn_gate_bias;        /* optional (n_ff,) */
    jl_tensor ffn_up_bias;          /* optional (n_ff,) */
    jl_tensor ffn_down_bias;        /* optional (n_embd,) */
    /* mixture of experts, instead of ffn_gate/up/down when ffn_gate_inp is given */
    jl_tensor ffn_gate_inp;         /* (n_expert, n_embd): router logits */
    jl_tensor ffn_gate_exps;        /* (n_expert, n_ff_exp, n_embd) */
    jl_tensor ffn_up_exps;          /* (n_expert, n_ff_exp, n_embd) */
    jl_tensor ffn_down_exps;        /* (n_expert, n_embd, n_ff_exp) */
    jl_tensor post_ffw_norm;        /* optional (n_embd,): RMSNorm of the FFN output */
    jl_tensor layer_output_norm;    /* optional (n_embd,): post-norm (bert): x = norm(x + ffn) */
    jl_tensor layer_output_norm_bias;     /* optional (n_embd,) */
    /* RoPE: pair i of the first n_rot dimensions turns by pos * rope_inv_freq[i], and cos and sin
     * are multiplied by rope_attn_factor. rope_inv_freq == NULL: the layer has no RoPE (NoPE).
     * rope_inv_freq_long (optional): used instead by contexts of n_ctx > rope_n_ctx_orig (longrope). */
    const double *rope_inv_freq;      /* (n_rot / 2,) */
    const double *rope_inv_freq_long; /* (n_rot / 2,) or NULL */
    float rope_attn_factor;
    int32_t sliding_window;         /* > 0: a token at pos p sees positions > p - sliding_window; 0: all before it */
} jl_layer_desc;

typedef struct {
    int32_t n_layer, n_embd, n_head, n_head_kv, head_dim_k, head_dim_v, n_ff, n_vocab;
    int32_t n_rot;                  /* RoPE turns the first n_rot (even, <= head_dim_k) dimensions of a head */
    int32_t rope_layout;            /* jl_rope_layout, over those n_rot dimensions */
    int32_t rope_n_ctx_orig;        /* see rope_inv_freq_long */
    int32_t ffn_activation;         /* jl_ffn_activation */
    int32_t norm_type;              /* jl_norm_type of attn_norm, ffn_norm and output_norm (q/k and post norms are RMS) */
    int32_t n_expert, n_expert_used, n_ff_exp;  /* 0, 0, 0 without experts */
    int32_t expert_weights_norm;    /* nonzero: the n_expert_used routing weights are divided by their sum */
    float expert_weights_scale;     /* then multiplied by this (1: none) */
    float norm_eps;                 /* of every norm */
    float embedding_scale;          /* token embeddings are multiplied by this (gemma: sqrt(n_embd), granite) */
    float residual_scale;           /* each block's output is multiplied by this before it is added (granite; 1: none) */
    float attention_scale;          /* scores = attention_scale * q.k */
    float attn_logit_softcap;       /* > 0: scores = cap * tanh(scores / cap) before the softmax (gemma2); 0: none */
    float logit_scale;              /* logits are multiplied by this (granite: 1 / logit_scale; 1: none) */
    float final_logit_softcap;      /* > 0: logits = cap * tanh(logits / cap); 0: none */
    int32_t non_causal;             /* nonzero (an encoder): a token attends to every position its sequence holds
                                       after the batch, later ones too; then a batch must fit one n_batch chunk */
    jl_tensor token_embd;           /* (n_vocab, n_embd): rows are looked up, any type with a to_float */
    jl_tensor token_types;          /* optional (n_types, n_embd): row 0 (token type 0) is added to every embedding (bert) */
    jl_tensor position_embd;        /* optional (n_pos, n_embd): row pos is added (absolute positions; pos < n_pos) */
    jl_tensor token_embd_norm;      /* optional (n_embd,): norm of the summed embeddings (bert) */
    jl_tensor token_embd_norm_bias; /* optional (n_embd,) */
    jl_tensor output_norm;          /* optional (n_embd,): absent, the last layer's output is the hidden state */
    jl_tensor output_norm_bias;     /* optional (n_embd,) */
    jl_tensor output;               /* optional (n_vocab, n_embd); the same tensor as token_embd when tied; absent (an
                                       encoder): only jl_context_decode_embeddings can run */
    const jl_layer_desc *layers;    /* (n_layer,) */
} jl_model_desc;

typedef struct jl_model jl_model;
typedef struct jl_context jl_context;

/* Validates every shape, type and byte count and keeps a copy of the description (not of the
 * weights: they must stay mapped until jl_model_free). Vectors (norms, biases) must be F32. */
jl_status jl_model_create(const jl_model_desc *desc, jl_model **model);
void jl_model_free(jl_model *model);  /* after every context made from it */

/* A context: one KV cache that sequences 0 .. n_seq_max - 1 share, n_cells cells in all (rounded
 * up to whole pages of jl_context_page_size() cells; memory is committed only as pages are used),
 * each sequence holding at most n_ctx positions; type_k and type_v (the K and V cache types) are
 * each JL_TYPE_F16, F32, Q8_0 or Q4_0 (a quantized type needs a head dimension that is a multiple
 * of 32); scratch for n_batch tokens at a time (longer batches run in chunks of n_batch). Any
 * number of contexts may share one model. Sliding-window layers keep only the pages their window
 * can still see (their own pool of n_cells cells), unless swa_full keeps every position. */
jl_status jl_context_create(const jl_model *model, int64_t n_ctx, int32_t n_seq_max, int64_t n_cells, int type_k,
                            int type_v, int64_t n_batch, int swa_full, jl_context **ctx);
void jl_context_free(jl_context *ctx);
int64_t jl_context_n_ctx(const jl_context *ctx);
int32_t jl_context_n_seq_max(const jl_context *ctx);
int64_t jl_context_n_cells(const jl_context *ctx);
int64_t jl_context_n_free_cells(const jl_context *ctx);  /* in whole free pages */
size_t jl_context_kv_bytes(const jl_context *ctx);        /* bytes of the KV pages in use */
int64_t jl_context_page_size(void);
/* The cache holds positions [0, *len) of seq. */
jl_status jl_context_seq_len(const jl_context *ctx, int32_t seq, int64_t *len);
/* The smallest position every layer of seq still holds (its sliding-window layers give back what
 * no later query sees), and the shortest length other than 0 that seq_rm can cut it back to and
 * seq_cp copy up to (the window of that length must still be held). Both are 0 when nothing was given back. */
jl_status jl_context_seq_pos_min(const jl_context *ctx, int32_t seq, int64_t *pos_min, int64_t *cut_min);

/* A row whose token is JL_TOKEN_EMBD takes the batch's next embd row as its input instead of a
 * token_embd lookup, unscaled (embedding_scale is the token embeddings', as llama.cpp applies
 * gemma's sqrt(n_embd) to token rows only): an image's embeddings from a projector. */
#define JL_TOKEN_EMBD (-1)

/* A batch of tokens from any sequences, in any interleaving. A sequence's tokens are at
 * consecutive positions starting at its length (they are appended to its cache). */
typedef struct {
    int64_t n_tokens;
    const int32_t *tokens;       /* (n_tokens,) a token id, or JL_TOKEN_EMBD */
    const int64_t *positions;    /* (n_tokens,) */
    const int32_t *seq_ids;      /* (n_tokens,) */
    const uint8_t *want_logits;  /* (n_tokens,) nonzero: the row's logits are returned */
    /* LoRA: the adapters the rows may use (n_lora = 0: none) and each row's scale for each; a row adds
     * adapter j's terms scaled by lora_scales[i * n_lora + j], and none of them where that is 0. */
    int32_t n_lora;
    const struct jl_lora *const *lora;  /* (n_lora,) each made for the context's model */
    const float *lora_scales;           /* (n_tokens, n_lora) */
    /* Embedding rows: the inputs of the JL_TOKEN_EMBD rows, in batch order (n_embd_rows = 0: none). */
    int64_t n_embd_rows;
    const float *embd;                  /* (n_embd_rows, n_embd) */
    /* NULL, or (n_tokens,) labels: a run of consecutive rows with the same nonzero label is a
     * block whose rows attend to each other both ways (and causally to what precedes it), as
     * llama.cpp's mtmd decodes a gemma3 image. A block's rows are of one sequence, at most n_batch
     * of them: a chunk ends early rather than split one. */
    const int32_t *non_causal_blocks;
} jl_batch;

/* Run a batch: logits (n_wanted, n_vocab) for the rows with want_logits, in batch order. A row's
 * logits depend only on its sequence's tokens and positions: they are bit-identical whatever
 * else is in the batch, however the sequence was split into batches, at any thread count.
 * JL_ERR_KV_FULL when the free pages do not suffice, JL_ERR_INVALID_ARG for a bad token,
 * sequence or position; either way nothing was changed. On any other failure the batch's
 * sequences keep only the positions they held before, or none where an earlier chunk of the batch
 * gave back sliding-window pages those positions need. */
jl_status jl_context_decode(jl_context *ctx, const jl_batch *batch, float *logits, int n_threads);
/* Like jl_context_decode, but the rows with want_logits give their final hidden state (after output_norm
 * where the model has one): embeddings (n_wanted, n_embd), in batch order (pooling is the caller's). */
jl_status jl_context_decode_embeddings(jl_context *ctx, const jl_batch *batch, float *embeddings, int n_threads);
/* Forget positions [p0, p1) of seq, p1 < 0 meaning its end; only a suffix may be removed, down to
 * 0 or to at least its cut_min (jl_context_seq_pos_min). */
jl_status jl_context_seq_rm(jl_context *ctx, int32_t seq, int64_t p0, int64_t p1);
/* dst, cut to p0 first, gets src's cached positions [p0, p1) (p1 < 0: src's end) without
 * recomputing them: whole pages are shared, copied only when one of them writes into it.
 * dst must hold at least p0 positions, and the two together the window of p1 in sliding-window layers. */
jl_status jl_context_seq_cp(jl_context *ctx, int32_t src, int32_t dst, int64_t p0, int64_t p1);
/* Context shift: drop positions [n_keep, n_keep + n_discard) of seq and move the later ones
 * down by n_discard, their keys rotated back by as many positions (RoPE is relative). Refused when
 * sliding-window layers would need kept positions they gave back. */
jl_status jl_context_seq_shift(jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard);
/* *ok: whether that shift can run (the caller recomputes the kept and moved tokens otherwise). */
jl_status jl_context_seq_can_shift(const jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard, int *ok);

/* ---- LoRA adapters (lora.c) --------------------------------------------------------------
 *
 * An adapter adds scale * (alpha / rank) * B (A x) to some of the layers' projections, unmerged: the
 * base weights stay as they are, so each token of a batch may use its own adapters and scales (see
 * jl_batch). The projections an adapter may change: */
typedef enum {
    JL_LORA_ATTN_Q = 0,
    JL_LORA_ATTN_K = 1,
    JL_LORA_ATTN_V = 2,
    JL_LORA_ATTN_OUTPUT = 3,
    JL_LORA_FFN_GATE = 4,
    JL_LORA_FFN_UP = 5,
    JL_LORA_FFN_DOWN = 6,
    JL_LORA_N_TARGETS = 7,
} jl_lora_target;

/* One adapted projection W (rows, k): its low-rank pair, both F32; a.data == NULL: not adapted. */
typedef struct {
    jl_tensor a;    /* (rank, k) */
    jl_tensor b_t;  /* (rank, rows): B transposed, so B t is rank contiguous row updates */
} jl_lora_pair;

typedef struct jl_lora jl_lora;

/* pairs (n_layer * JL_LORA_N_TARGETS,) layer by layer, in jl_lora_target order; their data is pointed
 * at, not copied (it must outlive the adapter). Each pair's terms are multiplied by alpha / rank, or
 * by 1 when alpha is 0 (as llama.cpp). Every shape is checked against the model's projection, and a
 * mismatch is named. */
jl_status jl_lora_create(const jl_model *model, const jl_lora_pair *pairs, float alpha, jl_lora **lora);
void jl_lora_free(jl_lora *lora);  /* after every decode that uses it */

#ifdef __cplusplus
}
#endif
#endif
