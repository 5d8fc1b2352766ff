/* ops.h — the forward pass's elementwise building blocks (ops.c), for model.c only. */
#ifndef JANLIB_OPS_H
#define JANLIB_OPS_H

#include <stdint.h>

/* float32 rows, no checks, cannot fail */

/* y (n_rows, n) = x / sqrt(mean(x^2) + eps) * w row by row; y may be x. */
void jl_rmsnorm(float *y, const float *x, const float *w, int64_t n_rows, int64_t n, float eps);
/* y (n_rows, n) = (x - mean(x)) / sqrt(var(x) + eps) * w (+ b, when b is not NULL) row by row; y may be x. */
void jl_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n_rows, int64_t n, float eps);
/* cos/sin (n_pairs,) of the rotation angles pos * inv_freq[i], times mscale */
void jl_rope_angles(int64_t pos, const double *inv_freq, int n_pairs, float mscale, float *cos, float *sin);
/* Rotate the first n_rot dimensions of each of the n_heads heads (head_dim values each) of x in
 * place by the angles of jl_rope_angles (n_rot / 2 pairs), pairing them as `layout` says. */
void jl_rope(float *x, int n_heads, int head_dim, int n_rot, int layout, const float *cos, const float *sin);
/* gate (n,) <- act(gate) * up, act a jl_ffn_activation; up == NULL: act(gate) */
void jl_glu(float *gate, const float *up, int64_t n, int activation);
/* x (n,) <- softmax(x), computed with the max subtracted */
void jl_softmax(float *x, int64_t n);
/* One block of keys of an online softmax. x (n,) holds the block's scores, of which [a, b)
 * (a < b) are visible; *max and *sum are the running maximum and sum of e^(score - *max) over
 * the earlier blocks (-INFINITY and 0 before the first). x becomes e^(x - new max) on [a, b) and
 * 0 elsewhere, *max and *sum are updated, and the factor that rescales what the earlier blocks
 * added up (e^(old max - new max)) is returned. */
float jl_softmax_block(float *x, int64_t n, int64_t a, int64_t b, float *max, float *sum);
/* x (n,) <- cap * tanh(x / cap) */
void jl_softcap(float *x, int64_t n, float cap);

#endif
