/* kv_cache.h — the KV cache every sequence of a context shares: fixed-size pages from one pool,
 * and per sequence a page table.
 *
 * Page k of a sequence holds its positions [k * JL_KV_PAGE, (k + 1) * JL_KV_PAGE), so the
 * attention arithmetic of a sequence never depends on where its pages lie or on what other
 * sequences hold (batch invariance). Pages are reference counted: copying a sequence's prefix
 * shares its pages, and a page is copied only when a sequence writes into one it shares.
 *
 * A page holds, for every (layer, KV head), K as (JL_KV_PAGE, head_dim_k) rows of type_k and V
 * as float (F16/F32) transposed, (head_dim_v, JL_KV_PAGE), so both attention products are the
 * kernel table's dot products. A quantized V (Q8_0, Q4_0) is kept as (JL_KV_PAGE, head_dim_v)
 * rows instead: a transposed row of 32 positions would be one block, and a block cannot take its
 * positions one at a time (re-quantizing it would change what earlier positions read).
 * The pool is allocated once for all cells but the OS commits its memory only when a page is
 * first written: resident memory follows the pages in use. A page is zeroed when handed out, so
 * every value in it is zero or one some forward pass wrote: a zero attention weight times it is
 * zero (an f16 overflow of K or V aside, which breaks its own sequence anyway). */
#ifndef JANLIB_KV_CACHE_H
#define JANLIB_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "janlib.h"

#define JL_KV_PAGE 32  /* positions per page */

typedef struct {
    int n_layer, n_head_kv, head_dim_k, head_dim_v;
    int type_k, type_v;        /* F16, F32, Q8_0 or Q4_0 */
    int v_trans;               /* V is float and stored transposed */
    size_t k_row;              /* bytes of one K row (Dk values of type_k) */
    size_t v_elem, v_row;      /* bytes of one transposed V value, or of one V row */
    size_t k_bytes, v_bytes;   /* one (layer, head) of a page: K (JL_KV_PAGE, Dk), V (Dv, JL_KV_PAGE) or (JL_KV_PAGE, Dv) */
    size_t page_bytes;         /* n_layer * n_head_kv * (k_bytes + v_bytes) */
    int32_t n_pages, n_free;
    uint8_t *pool;             /* (n_pages, page_bytes) */
    int32_t *refs;             /* (n_pages,) how many page tables hold the page */
    int32_t *free_pages;       /* (n_pages,) a stack of free page ids, the next one on top */
    int32_t n_seq, max_pages;  /* sequences; pages per sequence (n_ctx rounded up to whole pages) */
    int64_t n_ctx;
    int32_t *table;            /* (n_seq, max_pages) page ids; a sequence uses the first pages_for(len) */
    int64_t *len;              /* (n_seq,) a sequence holds positions [0, len) */
} jl_kv_cache;

static inline int32_t jl_kv_pages_for(int64_t n_positions) {
    return (int32_t)((n_positions + JL_KV_PAGE - 1) / JL_KV_PAGE);
}

/* n_cells is rounded up to whole pages; a quantized type needs its head dimension to be a whole
 * number of blocks. */
jl_status jl_kv_init(jl_kv_cache *c, int n_layer, int n_head_kv, int head_dim_k, int head_dim_v, int type_k,
                     int type_v, int64_t n_ctx, int32_t n_seq, int64_t n_cells);
void jl_kv_release(jl_kv_cache *c);

/* (JL_KV_PAGE, Dk) K rows and the V block of one layer and KV head in a page */
static inline uint8_t *jl_kv_k(const jl_kv_cache *c, int32_t page, int layer, int head) {
    return c->pool + (size_t)page * c->page_bytes +
           ((size_t)layer * c->n_head_kv + (size_t)head) * (c->k_bytes + c->v_bytes);
}
static inline uint8_t *jl_kv_v(const jl_kv_cache *c, int32_t page, int layer, int head) {
    return jl_kv_k(c, page, layer, head) + c->k_bytes;
}

/* k (Dk,) and v (Dv,) of one position into page slot `slot` of a layer and KV head, converted to
 * the cache types */
void jl_kv_write(const jl_kv_cache *c, int32_t page, int layer, int head, int slot, const float *k, const float *v);
/* the page holding position pos of seq (pos < its reserved length) */
static inline int32_t jl_kv_page(const jl_kv_cache *c, int32_t seq, int64_t pos) {
    return c->table[(size_t)seq * c->max_pages + (size_t)(pos / JL_KV_PAGE)];
}

/* Free pages seq needs so that positions [len, new_len) can be written: new pages, plus a copy
 * of a partly filled last page that it shares. */
int32_t jl_kv_pages_to_grow(const jl_kv_cache *c, int32_t seq, int64_t new_len);
/* Make positions [len, new_len) writable and set len = new_len; the caller has checked that
 * jl_kv_pages_to_grow pages are free. */
void jl_kv_grow(jl_kv_cache *c, int32_t seq, int64_t new_len);
/* Forget positions >= new_len (new_len <= len); pages no table holds any more are free. */
void jl_kv_truncate(jl_kv_cache *c, int32_t seq, int64_t new_len);
/* dst (p0 <= len(dst), p0 <= p1 <= len(src)), cut to p0, gets src's positions [p0, p1): whole
 * pages are shared, the page where p0 falls mid-page is copied. JL_ERR_KV_FULL when that copy
 * finds no free page; nothing was changed then. */
jl_status jl_kv_copy(jl_kv_cache *c, int32_t src, int32_t dst, int64_t p0, int64_t p1);
/* Drop positions [n_keep, n_keep + n_discard) of seq and move the later ones down, each key
 * rotated back by n_discard positions: rope_cos/rope_sin (n_layer, head_dim_k / 2) hold the angles
 * of -n_discard positions for each layer, for the first n_rot / 2 pairs; rope_layout is a jl_rope_layout. */
jl_status jl_kv_shift(jl_kv_cache *c, int32_t seq, int64_t n_keep, int64_t n_discard, const float *rope_cos,
                      const float *rope_sin, int n_rot, int rope_layout);

#endif
