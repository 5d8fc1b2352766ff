/* kv_cache.h — the KV cache every sequence of a context shares: fixed-size pages from pools,
 * and per sequence and pool a page table.
 *
 * Page k of a sequence holds its positions [k * JL_KV_PAGE, (k + 1) * JL_KV_PAGE), so the
 * attention arithmetic of a sequence never depends on where its pages lie or on what other
 * sequences hold (batch invariance). Pages are reference counted: copying a sequence's prefix
 * shares its pages, and a page is copied only when a sequence writes into one it shares.
 *
 * Two pools, as llama.cpp's iSWA cache: one for the full-attention layers, one for the
 * sliding-window layers (either may be absent). A windowed pool works as a ring buffer of pages:
 * once a sequence's length passes a page by a window (and one page of slack), no later query of it
 * can see that page, and the page goes back to the pool. A sequence therefore holds its windowed layers' K and V
 * only from pos_min on (a whole page): it can be cut back (seq_rm) or copied (seq_cp) only to a
 * length whose window it still holds, or to 0 (jl_kv_cut_min); a caller recomputes otherwise.
 *
 * A page holds, for every (layer of its pool, KV head), K as (JL_KV_PAGE, head_dim_k) rows of type_k and V
 * as float (F16/F32) transposed, (head_dim_v, JL_KV_PAGE), so both attention products are the
 * kernel table's dot products. A quantized V (Q8_0, Q4_0) is kept as (JL_KV_PAGE, head_dim_v)
 * rows instead: a transposed row of 32 positions would be one block, and a block cannot take its
 * positions one at a time (re-quantizing it would change what earlier positions read).
 * A pool is allocated once for all its pages but the OS commits its memory only when a page is
 * first written: resident memory follows the pages in use (free pages are reused last-freed
 * first, so a windowed pool keeps touching the same few). A page is zeroed when handed out, so
 * every value in it is zero or one some forward pass wrote: a zero attention weight times it is
 * zero (an f16 overflow of K or V aside, which breaks its own sequence anyway). */
#ifndef JANLIB_KV_CACHE_H
#define JANLIB_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "janlib.h"

#define JL_KV_PAGE 32      /* positions per page */
#define JL_KV_NO_PAGE (-1) /* a windowed pool's table entry for a page given back */

typedef struct {
    int n_layer;               /* the model layers whose K and V this pool's pages hold */
    int *layers;               /* (n_layer,) their ids, in model order */
    int64_t window;            /* 0: every position is kept; else a query at pos sees positions > pos - window */
    size_t page_bytes;         /* n_layer * n_head_kv * (k_bytes + v_bytes) */
    int32_t n_pages, n_free;
    uint8_t *data;             /* (n_pages, page_bytes) */
    int32_t *refs;             /* (n_pages,) how many page tables hold the page */
    int32_t *free_pages;       /* (n_pages,) a stack of free page ids, the next one on top */
    int32_t *table;            /* (n_seq, max_pages) page ids, JL_KV_NO_PAGE below first[seq] */
    int32_t *first;            /* (n_seq,) a sequence holds its pages [first, pages_for(len)); 0 unless windowed */
} jl_kv_pool;

typedef struct {
    int n_layer, n_head_kv, head_dim_k, head_dim_v;
    int type_k, type_v;        /* F16, F32, Q8_0 or Q4_0 */
    int v_trans;               /* V is float and stored transposed */
    size_t k_row;              /* bytes of one K row (Dk values of type_k) */
    size_t v_elem, v_row;      /* bytes of one transposed V value, or of one V row */
    size_t k_bytes, v_bytes;   /* one (layer, head) of a page: K (JL_KV_PAGE, Dk), V (Dv, JL_KV_PAGE) or (JL_KV_PAGE, Dv) */
    int n_pools;
    jl_kv_pool pools[2];       /* the full-attention layers' pool first, then the windowed layers' */
    int *layer_pool;           /* (n_layer,) the pool of each layer */
    int *layer_slot;           /* (n_layer,) its index among that pool's layers */
    int32_t n_seq, max_pages;  /* sequences; pages per sequence (n_ctx rounded up to whole pages) */
    int64_t n_ctx;
    int64_t *len;              /* (n_seq,) a sequence holds positions [0, len) */
    int64_t *scratch;          /* (4, n_seq) the chunk and plan functions' per-sequence lengths and pages */
    int64_t plan_taken[2], plan_need[2];  /* a batch's plan: pages taken so far and at the fullest, per pool */
} jl_kv_cache;

static inline int32_t jl_kv_pages_for(int64_t n_positions) {
    return (int32_t)((n_positions + JL_KV_PAGE - 1) / JL_KV_PAGE);
}

/* The first position a token at pos sees: a window keeps positions > pos - window (0: all). */
static inline int64_t jl_kv_first_visible(int64_t pos, int64_t window) {
    return window > 0 && pos >= window ? pos - window + 1 : 0;
}

/* n_cells is rounded up to whole pages, each pool getting that many (a windowed pool never holds
 * more pages than the full one, so it never fills first); a quantized type needs its head
 * dimension to be a whole number of blocks. layer_window (n_layer,): each layer's sliding window,
 * 0 for full attention; NULL keeps every layer's whole history (llama.cpp's --swa-full). */
jl_status jl_kv_init(jl_kv_cache *c, int n_layer, const int32_t *layer_window, int n_head_kv, int head_dim_k,
                     int head_dim_v, int type_k, int type_v, int64_t n_ctx, int32_t n_seq, int64_t n_cells);
void jl_kv_release(jl_kv_cache *c);

static inline const jl_kv_pool *jl_kv_pool_of(const jl_kv_cache *c, int layer) {
    return &c->pools[c->layer_pool[layer]];
}
/* the page of layer's pool holding position pos of seq (held: pos_min <= pos < its reserved length) */
static inline int32_t jl_kv_page(const jl_kv_cache *c, int layer, int32_t seq, int64_t pos) {
    return jl_kv_pool_of(c, layer)->table[(size_t)seq * c->max_pages + (size_t)(pos / JL_KV_PAGE)];
}
/* (JL_KV_PAGE, Dk) K rows and the V block of one layer and KV head in a page of the layer's pool */
static inline uint8_t *jl_kv_k(const jl_kv_cache *c, int layer, int32_t page, int head) {
    const jl_kv_pool *p = jl_kv_pool_of(c, layer);
    return p->data + (size_t)page * p->page_bytes +
           ((size_t)c->layer_slot[layer] * c->n_head_kv + (size_t)head) * (c->k_bytes + c->v_bytes);
}
static inline uint8_t *jl_kv_v(const jl_kv_cache *c, int layer, int32_t page, int head) {
    return jl_kv_k(c, layer, page, head) + c->k_bytes;
}

/* One layer and KV head of one sequence's pages, looked up once for a walk over its positions:
 * jl_kv_at(&view, pos) is the (JL_KV_PAGE, Dk) K block of the page holding pos, its V block
 * k_bytes further. */
typedef struct {
    const int32_t *table;  /* (max_pages,) the sequence's page ids in the layer's pool */
    const uint8_t *base;   /* the layer's and head's K block in page 0 */
    size_t page_bytes;
} jl_kv_view;
static inline jl_kv_view jl_kv_view_of(const jl_kv_cache *c, int layer, int32_t seq, int head) {
    const jl_kv_pool *p = jl_kv_pool_of(c, layer);
    const jl_kv_view view = {p->table + (size_t)seq * c->max_pages,
                             p->data + ((size_t)c->layer_slot[layer] * c->n_head_kv + (size_t)head) * (c->k_bytes + c->v_bytes),
                             p->page_bytes};
    return view;
}
static inline const uint8_t *jl_kv_at(const jl_kv_view *view, int64_t pos) {
    return view->base + (size_t)view->table[pos / JL_KV_PAGE] * view->page_bytes;
}

/* k (Dk,) and v (Dv,) of one position into page slot `slot` of a layer and KV head, converted to
 * the cache types */
void jl_kv_write(const jl_kv_cache *c, int layer, int32_t page, int head, int slot, const float *k, const float *v);

/* The smallest position whose K and V every layer of seq still holds (0 when nothing was given
 * back; its length when it is empty), and the shortest length other than 0 seq can be cut back
 * or copied to (its windowed layers must still hold that length's window). */
int64_t jl_kv_pos_min(const jl_kv_cache *c, int32_t seq);
int64_t jl_kv_cut_min(const jl_kv_cache *c, int32_t seq);
/* Whether seq (len >= n) can be cut back to n: n is 0, or every pool still holds n's window. */
int jl_kv_can_cut(const jl_kv_cache *c, int32_t seq, int64_t n);
/* Bytes of the pages in use, all pools together. */
size_t jl_kv_bytes_in_use(const jl_kv_cache *c);

/* Before a batch runs, the free pages each pool needs at its fullest point: plan_begin, then
 * plan_chunk for each chunk in the order decode will run them, then plan_need[pool]. A page a
 * chunk gives back counts as free for the later chunks; one shared with another sequence is not
 * counted as coming back, so this may refuse a batch that would just fit, never admit one that
 * does not. Nothing in the cache changes. */
void jl_kv_plan_begin(jl_kv_cache *c);
void jl_kv_plan_chunk(jl_kv_cache *c, const int32_t *seq_ids, int64_t n_rows);
/* Before a chunk of rows (seq_ids, n_rows): each of its sequences gets the pages its positions up
 * to the chunk's last need (copying a shared, partly filled last page); its length grows. */
void jl_kv_begin_chunk(jl_kv_cache *c, const int32_t *seq_ids, int64_t n_rows);
/* After a chunk ran: every sequence gives back the windowed pages no later query of it sees. */
void jl_kv_end_chunk(jl_kv_cache *c);
/* Forget positions >= new_len (new_len <= len); pages no table holds any more are free. */
void jl_kv_truncate(jl_kv_cache *c, int32_t seq, int64_t new_len);
/* dst (p0 <= len(dst), p0 <= p1 <= len(src)), cut to p0, gets src's positions [p0, p1): whole
 * pages are shared, the page where p0 falls mid-page is copied. JL_ERR_INVALID_ARG when a
 * windowed pool no longer holds the window of p1 (from dst below p0 or from src above it),
 * JL_ERR_KV_FULL when the copy finds no free page; nothing was changed then. */
jl_status jl_kv_copy(jl_kv_cache *c, int32_t src, int32_t dst, int64_t p0, int64_t p1);
/* Drop positions [n_keep, n_keep + n_discard) of seq and move the later ones down, each key
 * rotated back by n_discard positions: rope_cos/rope_sin (n_layer, head_dim_k / 2) hold the angles
 * of -n_discard positions for each layer, for the first n_rot / 2 pairs; rope_layout is a jl_rope_layout.
 * A windowed pool moves only what the new length's window needs; the shift is refused
 * (jl_kv_can_shift 0, JL_ERR_INVALID_ARG) when that window reaches into kept positions seq no
 * longer holds; nothing was changed then. */
int jl_kv_can_shift(const jl_kv_cache *c, int32_t seq, int64_t n_keep, int64_t n_discard);
jl_status jl_kv_shift(jl_kv_cache *c, int32_t seq, int64_t n_keep, int64_t n_discard, const float *rope_cos,
                      const float *rope_sin, int n_rot, int rope_layout);

#endif
