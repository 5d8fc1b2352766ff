/* vision.h — the vision encoder (ViT: SigLIP, CLIP) of a multimodal projector (vision.c).
 *
 * Pre-norm transformer blocks over the patches of one or more images: patch embedding (a matmul over
 * the unfolded patches), learned position embeddings, then per block LayerNorm, bidirectional
 * multi-head attention, LayerNorm, a two-matrix FFN. The projector that follows (pixel shuffle,
 * pooling, MLP) is the caller's. Weights point into the mapped file, as the text model's do. */
#ifndef JANLIB_VISION_H
#define JANLIB_VISION_H

#include <stdint.h>

#include "janlib.h"

/* The FFN activations of vision towers: the text model's, plus CLIP's x * sigmoid(1.702 x). */
enum { JL_VIT_GELU_QUICK = 100 };

/* Per block; every "_bias" is optional (data == NULL); matrices (rows, k) as in jl_layer_desc. */
typedef struct {
    jl_tensor ln1, ln1_bias;                /* (n_embd,) F32 */
    jl_tensor attn_q, attn_q_bias;          /* (n_embd, n_embd) */
    jl_tensor attn_k, attn_k_bias;          /* (n_embd, n_embd) */
    jl_tensor attn_v, attn_v_bias;          /* (n_embd, n_embd) */
    jl_tensor attn_out, attn_out_bias;      /* (n_embd, n_embd) */
    jl_tensor ln2, ln2_bias;                /* (n_embd,) F32 */
    jl_tensor ffn_up, ffn_up_bias;          /* (n_ff, n_embd) */
    jl_tensor ffn_down, ffn_down_bias;      /* (n_embd, n_ff) */
} jl_vit_layer_desc;

typedef struct {
    int32_t n_layer, n_embd, n_head, n_ff;
    int32_t patch_dim;          /* 3 * patch_size^2: a patch unfolded as (channel, y, x) */
    int32_t n_patches;          /* per image */
    int32_t ffn_activation;     /* JL_FFN_GELU_TANH, JL_FFN_GELU_ERF, JL_FFN_SILU or JL_VIT_GELU_QUICK */
    float norm_eps;             /* of every LayerNorm */
    jl_tensor patch_embd;       /* (n_embd, patch_dim) */
    jl_tensor patch_bias;       /* optional (n_embd,) F32 */
    jl_tensor class_embd;       /* optional (n_embd,) F32: a row put before the patches (CLIP) */
    jl_tensor position_embd;    /* (n_pos, n_embd), n_pos = n_patches (+ 1 with class_embd), any type with a to_float */
    jl_tensor pre_ln, pre_ln_bias;    /* optional (n_embd,) F32: LayerNorm before the first block (CLIP) */
    jl_tensor post_ln, post_ln_bias;  /* optional (n_embd,) F32: LayerNorm after the last block */
    const jl_vit_layer_desc *layers;  /* (n_layer,) */
} jl_vit_desc;

typedef struct jl_vit jl_vit;

/* Validates every shape and type and keeps a copy of the description (the weights must stay mapped). */
jl_status jl_vit_create(const jl_vit_desc *desc, jl_vit **vit);
void jl_vit_free(jl_vit *vit);
/* out (n_images, n_pos, n_embd) <- the tower over patches (n_images, n_patches, patch_dim), each image
 * attending within itself only; n_pos = n_patches (+ 1, the class row first, with class_embd). */
jl_status jl_vit_encode(const jl_vit *vit, const float *patches, int64_t n_images, float *out, int n_threads);

#endif
