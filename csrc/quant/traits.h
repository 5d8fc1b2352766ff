/* traits.h — the per-type kernel table. Hot loops look kernels up here once per call;
 * there is no switch on the type inside them. */
#ifndef JANLIB_TRAITS_H
#define JANLIB_TRAITS_H

#include <stddef.h>
#include <stdint.h>

#include "janlib.h"

/* The most activation rows one vec_dot call takes: the weight row is unpacked once for all. */
#define JL_NC_MAX 4

/* dst (n,) <- src: n values, n a multiple of the block size */
typedef void (*jl_to_float_fn)(const void *restrict src, float *restrict dst, int64_t n);
/* dst <- src (n,): quantize one row, n a multiple of the block size */
typedef void (*jl_from_float_fn)(const float *restrict src, void *restrict dst, int64_t n);
/* s[c] = dot(w, x + c * x_stride) over k values for c < nc, 1 <= nc <= JL_NC_MAX;
 * w is one row of this type, x rows are in this type's activation format. */
typedef void (*jl_vec_dot_fn)(int64_t k, const void *restrict w, const void *restrict x,
                              size_t x_stride, int nc, float *restrict s);

/* A GEMM for many activation rows (optional per type and ISA). Weights are repacked a panel of
 * panel_rows rows at a time into the kernel's interleaved layout, the activation rows (already in
 * the activation format) once per call. Every output is bit-identical to vec_dot's: a row's
 * result must not depend on how many rows share the call (batch invariance). */
typedef struct {
    int panel_rows;
    size_t (*panel_bytes)(int64_t k);
    size_t (*x_bytes)(int64_t k);  /* NULL with pack_x: the kernel reads the activation rows as they are */
    /* panel <- rows (<= panel_rows) weight rows of w_row_bytes each; missing rows pack as zeros.
     * NULL: the kernel reads panel_rows consecutive rows of W in place (panel_bytes unused) */
    void (*pack_w)(const void *restrict w, size_t w_row_bytes, int64_t rows, int64_t k, void *restrict panel);
    /* xp <- one activation row */
    void (*pack_x)(const void *restrict xq, int64_t k, void *restrict xp);
    /* y[c * y_stride + r] = dot(row r of the panel, packed row c), r < rows, c < n */
    void (*panel_dot)(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, size_t x_stride,
                      int64_t n, float *restrict y, size_t y_stride);
    int keep_packed;  /* packed panels are about the tensor's own size: worth keeping per tensor */
    /* optional, for panels too compact for many rows (nibbles): wide <- one panel in a layout of
     * wide_bytes(k) that panel_dot_wide reads with no unpacking, the same outputs */
    size_t (*wide_bytes)(int64_t k);
    void (*widen)(int64_t k, const void *restrict panel, void *restrict wide);
    void (*panel_dot_wide)(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, size_t x_stride,
                           int64_t n, float *restrict y, size_t y_stride);
    /* optional, for kernels that want many rows (AMX tiles): calls with fewer than min_rows
     * activation rows run on `below`, the traits of the same type at the level below */
    int min_rows;
    const struct jl_type_traits *below;
} jl_gemm_kernels;
/* s[c] = the sum over n_pages pages of dot(pages[p] + w_offset, x + c * x_stride + p * page_len)
 * over page_len values each (page_len a multiple of 16), for c < nc <= JL_NC_MAX; w of this type
 * (F16 or F32), x float32. A value's place in the accumulation depends only on its place in its
 * page and pages add in order, so pages whose x values are all zero change no bit of the sum (for
 * finite w): the attention V step sums only a query's own pages, whichever others share the call. */
typedef void (*jl_vec_dot_pages_fn)(int64_t page_len, int64_t n_pages, const uint8_t *const *restrict pages,
                                    size_t w_offset, const float *restrict x, size_t x_stride, int nc,
                                    float *restrict s);

/* Attention of up to JL_ATTEND_QUERIES queries that share one KV head of one sequence, over a
 * float cache (K rows (JL_KV_PAGE, dk) and V transposed (dv, JL_KV_PAGE) per page, both of this
 * type; dk and dv multiples of 4). Query c sees positions [first[c], last[c]]; its scores are
 * softcap(scale * q_c . k) (softcap 0: none) and out[c] (dv,) becomes its softmax-weighted sum of V.
 * The arithmetic (quant/ref_attention.c spells it out, SIMD kernels reproduce it bit for bit) runs
 * four lanes per query, lane j taking dimensions d = j (mod 4) of each dot product and positions
 * p = j (mod 4) of each weighted sum, walks the pages in order with an online softmax, and combines
 * the lanes in a fixed order: a query's result depends on its own q, positions and the cache only,
 * never on how many queries share the call. */
#define JL_ATTEND_QUERIES 16
typedef struct {
    int nq, dk, dv;
    const float *const *q;         /* (nq,) query rows of dk */
    float *const *out;             /* (nq,) output rows of dv */
    const int64_t *first, *last;   /* (nq,) */
    float scale, softcap;
    const int32_t *page_table;     /* the sequence's page ids: page i holds positions [i, i + 1) * JL_KV_PAGE */
    const uint8_t *base;           /* the K block of the layer and head in page 0 */
    size_t page_bytes, v_offset;   /* page stride; the V block's offset from the K block */
    float *scratch;                /* JL_ATTEND_SCRATCH_FLOATS(dk, dv) floats, 64-byte aligned */
} jl_attend_args;
/* the queries (4 groups, dk / 4, 16), a page's K and V as float, 4 groups' weights of a page
 * (8, 16) and masks, running maxima and sums, the output accumulators (4 groups, dv, 16) */
#define JL_ATTEND_SCRATCH_FLOATS(dk, dv) \
    ((((size_t)16 * (dk) + (size_t)32 * (dk) + (size_t)32 * (dv) + 4 * 8 * 16 + 144 + (size_t)64 * (dv)) + 15) / 16 * 16)
typedef void (*jl_attend_fn)(const jl_attend_args *a);

typedef struct jl_type_traits {
    const char *name;
    int64_t block_size;         /* values per block */
    int64_t type_size;          /* bytes per block */
    int activation;             /* jl_type that x is quantized to for vec_dot */
    jl_to_float_fn to_float;
    jl_from_float_fn from_float;  /* set for the activation formats and the KV cache types (F16 included) */
    jl_vec_dot_fn vec_dot;        /* set for the weight types */
    const jl_gemm_kernels *gemm;  /* set where a GEMM beats vec_dot for many rows */
    jl_vec_dot_pages_fn vec_dot_pages;  /* set for the KV cache types */
    jl_attend_fn attend;  /* optional, for a float KV cache whose K and V are both this type */
} jl_type_traits;

/* The scalar reference table (quant/ref.c): every supported type has every kernel it needs. */
void jl_ref_register(jl_type_traits *table);
/* SIMD tables override the entries they speed up and leave the rest to the reference. */
void jl_avx2_register(jl_type_traits *table);
/* the 256-bit int8 GEMM of the avx2 level: the AVX2 build, or the AVX-VNNI one where the CPU has it */
void jl_avx2_gemm_register(jl_type_traits *table);
void jl_avxvnni_gemm_register(jl_type_traits *table);
void jl_avx512_register(jl_type_traits *table);
void jl_avx512_gemm_register(jl_type_traits *table);
void jl_avx512_gemm_float_register(jl_type_traits *table);
/* the AMX GEMMs (cpu/amx_gemm.c) over the AVX-512 table; below: the AVX-512 level's table; the
 * emulated build's on CPUs without AMX, where the level is only offered to the tests */
void jl_amx_gemm_register(jl_type_traits *table, const jl_type_traits *below);
void jl_amx_gemm_register_emulated(jl_type_traits *table, const jl_type_traits *below);
/* For the tests, on CPUs without AMX but with AVX-512: on, the amx level is offered (jl_isa_best)
 * and its GEMMs run on the tile model; off, the CPU's own levels again (an active amx level falls
 * back to the best of them). Nothing changes on a CPU with AMX. Not while other threads call janlib. */
jl_status jl_amx_emulate(int on);
/* the CPU's best level, whatever jl_amx_emulate offers */
int jl_isa_detected(void);
/* For the tests: y (n, rows) = x (n, k) @ W.T through the AMX GEMM of `type` alone, every row on
 * it whatever n, on one thread: its tile instructions run by the CPU (emulated = 0; needs the amx
 * level) or by a software model of the tiles (emulated = 1; needs the avx512 level). JL_ERR_UNSUPPORTED
 * for a type without an AMX GEMM or a CPU without the level; JL_ERR_INTERNAL when the model met
 * an instruction the CPU would refuse. */
jl_status jl_amx_gemm_check(int emulated, int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                            const float *x, int64_t n, float *y);
/* For the tests of the tile model itself: tiles 0 (C), 1 (A), 2 (B) configured as shapes
 * (rows, bytes per row) each, loaded from c, a, b (rows of that many bytes), then the model's
 * TDPB{S,U}{S,U}D C, A, B and C stored back to c. JL_ERR_INTERNAL with the fault where the model
 * refuses the configuration or the instruction, as the CPU would. */
jl_status jl_amx_emu_dpb_check(int src1_signed, int src2_signed, const int shapes[6], uint8_t *c, const uint8_t *a,
                               const uint8_t *b);
/* the attention kernels: the reference (quant/ref_attention.c) at the scalar level, AVX-512 */
void jl_ref_attention_register(jl_type_traits *table);
void jl_avx512_attention_register(jl_type_traits *table);
/* For the tests: K (n_pos, dk) and V (n_pos, dv) float32 rows stored as the cache stores `type`
 * (pages in reverse order), then isa's attend kernel on q (nq, dk) -> out (nq, dv).
 * JL_ERR_UNSUPPORTED when that level has no attend kernel for the type. */
jl_status jl_attend_check(int isa, int type, int nq, int dk, int dv, int64_t n_pos, const float *q,
                          const float *k, const float *v, const int64_t *first, const int64_t *last,
                          float scale, float softcap, float *out);

/* Active table entry for a type, or NULL when the type is not supported. */
const jl_type_traits *jl_traits(int type);
/* Table for a given ISA level, for the tests that compare levels. */
const jl_type_traits *jl_traits_for(int isa, int type);

static inline size_t jl_row_bytes(const jl_type_traits *t, int64_t n) {
    return (size_t)(n / t->block_size) * (size_t)t->type_size;
}

#endif
