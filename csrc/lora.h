/* lora.h — applying LoRA adapters inside the forward pass (lora.c), for model.c only. */
#ifndef JANLIB_LORA_H
#define JANLIB_LORA_H

#include <stdint.h>

#include "janlib.h"

/* The adapters of the batch being evaluated and each row of the current chunk's scales, with the
 * scratch of the low-rank products (grown on demand, kept by the context). */
typedef struct {
    int32_t n_lora;
    const jl_lora *const *lora;  /* (n_lora,) */
    float *scales;               /* (n_batch, n_lora) the chunk's rows, compacted with them */
    int32_t *rows;               /* (n_batch,) the rows one adapter applies to */
    float *x;                    /* (n_batch, width_max) those rows' inputs, gathered */
    float *t;                    /* (n_batch, rank_max) A x */
    int64_t scales_cap, rows_cap, x_cap, t_cap;  /* elements allocated */
} jl_lora_rows;

/* The model's description (model.c). */
const jl_model_desc *jl_model_description(const jl_model *model);

/* The batch's adapters belong to model and its scales are finite. */
jl_status jl_lora_check_batch(const jl_model *model, const jl_batch *batch);
/* Scratch for chunks of n_batch rows of the batch's adapters; width_max: the widest projection. */
jl_status jl_lora_begin(jl_lora_rows *lr, const jl_batch *batch, int64_t n_batch, int64_t width_max);
/* The scales of batch rows [first, first + n_rows) become the chunk's rows 0.. */
void jl_lora_load_rows(jl_lora_rows *lr, const jl_batch *batch, int64_t first, int64_t n_rows);
/* Chunk row src moves to row dst (keep_rows). */
void jl_lora_move_row(jl_lora_rows *lr, int64_t dst, int64_t src);
/* y (n_rows, width) += each row's adapters' scale * (alpha / rank) * (x @ A.T) @ B.T for the
 * projection `target` of `layer`; x (n_rows, k). A row's sum depends on that row alone. */
jl_status jl_lora_apply(jl_lora_rows *lr, int layer, int target, const float *x, int64_t k, int64_t n_rows, float *y,
                        int64_t width, int n_threads);
void jl_lora_rows_free(jl_lora_rows *lr);

#endif
