/* kv_cache.c — pools of pages, page tables and the per-sequence operations on them (kv_cache.h). */
#include "kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ops.h"
#include "quant/fp16.h"
#include "quant/traits.h"

static int is_float(int type) { return type == JL_TYPE_F16 || type == JL_TYPE_F32; }

/* the supported cache types and their fit to a head dimension */
static jl_status check_type(int type, int head_dim, const char *which) {
    if (!is_float(type) && type != JL_TYPE_Q8_0 && type != JL_TYPE_Q4_0)
        return jl_fail(JL_ERR_INVALID_ARG, "context: the %s cache type must be F16, F32, Q8_0 or Q4_0, got type id %d",
                       which, type);
    const jl_type_traits *t = jl_traits(type);
    if (head_dim % t->block_size != 0)
        return jl_fail(JL_ERR_UNSUPPORTED, "context: a %s cache of %s needs a head dimension that is a multiple of %lld, "
                       "this model's is %d", which, t->name, (long long)t->block_size, head_dim);
    return JL_OK;
}

/* The window a layer's cache keeps: 0 (everything) for full attention and for a window no
 * sequence can outgrow. */
static int64_t kept_window(const int32_t *layer_window, int layer, int64_t n_ctx) {
    const int64_t window = layer_window ? layer_window[layer] : 0;
    return window < n_ctx ? window : 0;
}

static jl_status init_pool(jl_kv_pool *p, const jl_kv_cache *c, int32_t n_pages) {
    p->page_bytes = (size_t)p->n_layer * c->n_head_kv * (c->k_bytes + c->v_bytes);
    p->n_pages = p->n_free = n_pages;
    /* calloc of this size maps fresh zero pages that the OS commits on first write */
    p->data = calloc((size_t)n_pages, p->page_bytes);
    p->refs = calloc((size_t)n_pages, sizeof *p->refs);
    p->free_pages = malloc((size_t)n_pages * sizeof *p->free_pages);
    p->table = malloc((size_t)c->n_seq * (size_t)c->max_pages * sizeof *p->table);
    p->first = calloc((size_t)c->n_seq, sizeof *p->first);
    if (!p->data || !p->refs || !p->free_pages || !p->table || !p->first)
        return jl_fail(JL_ERR_NOMEM, "context: out of memory for a KV cache of %d pages of %zu bytes", n_pages,
                       p->page_bytes);
    for (int32_t i = 0; i < n_pages; i++) p->free_pages[i] = n_pages - 1 - i;  /* page 0 on top */
    for (size_t i = 0; i < (size_t)c->n_seq * (size_t)c->max_pages; i++) p->table[i] = JL_KV_NO_PAGE;
    return JL_OK;
}

jl_status jl_kv_init(jl_kv_cache *c, int n_layer, const int32_t *layer_window, int n_head_kv, int head_dim_k,
                     int head_dim_v, int type_k, int type_v, int64_t n_ctx, int32_t n_seq, int64_t n_cells) {
    memset(c, 0, sizeof *c);
    jl_status st;
    if ((st = check_type(type_k, head_dim_k, "K")) != JL_OK || (st = check_type(type_v, head_dim_v, "V")) != JL_OK)
        return st;
    const int64_t n_pages = jl_kv_pages_for(n_cells);
    if (n_pages > INT32_MAX / 2)
        return jl_fail(JL_ERR_INVALID_ARG, "context: %lld KV cells are too many", (long long)n_cells);
    c->n_layer = n_layer;
    c->n_head_kv = n_head_kv;
    c->head_dim_k = head_dim_k;
    c->head_dim_v = head_dim_v;
    c->type_k = type_k;
    c->type_v = type_v;
    c->v_trans = is_float(type_v);
    c->k_row = jl_row_bytes(jl_traits(type_k), head_dim_k);
    c->v_row = jl_row_bytes(jl_traits(type_v), head_dim_v);
    c->v_elem = c->v_trans ? (size_t)jl_traits(type_v)->type_size : 0;
    c->k_bytes = (size_t)JL_KV_PAGE * c->k_row;
    c->v_bytes = (size_t)JL_KV_PAGE * c->v_row;
    c->n_seq = n_seq;
    c->n_ctx = n_ctx;
    c->max_pages = jl_kv_pages_for(n_ctx);
    c->layer_pool = malloc((size_t)n_layer * sizeof *c->layer_pool);
    c->layer_slot = malloc((size_t)n_layer * sizeof *c->layer_slot);
    c->len = calloc((size_t)n_seq, sizeof *c->len);
    c->scratch = malloc((size_t)4 * n_seq * sizeof *c->scratch);
    if (!c->layer_pool || !c->layer_slot || !c->len || !c->scratch) {
        jl_kv_release(c);
        return jl_fail(JL_ERR_NOMEM, "context: out of memory for a KV cache");
    }
    /* the full-attention layers' pool first, then the windowed layers' (each only if it has layers) */
    int n_full = 0;
    for (int il = 0; il < n_layer; il++) n_full += kept_window(layer_window, il, n_ctx) == 0;
    const int sizes[2] = {n_full, n_layer - n_full};
    for (int kind = 0; kind < 2; kind++)
        if (sizes[kind] > 0) {
            jl_kv_pool *p = &c->pools[c->n_pools];
            p->layers = malloc((size_t)sizes[kind] * sizeof *p->layers);
            if (!p->layers) {
                jl_kv_release(c);
                return jl_fail(JL_ERR_NOMEM, "context: out of memory for a KV cache");
            }
            for (int il = 0; il < n_layer; il++) {
                const int64_t window = kept_window(layer_window, il, n_ctx);
                if ((window > 0) != kind) continue;
                c->layer_pool[il] = c->n_pools;
                c->layer_slot[il] = p->n_layer;
                p->layers[p->n_layer++] = il;
                p->window = window > p->window ? window : p->window;  /* layers with smaller windows see less */
            }
            c->n_pools++;
            if ((st = init_pool(p, c, (int32_t)n_pages)) != JL_OK) {
                jl_kv_release(c);
                return st;
            }
        }
    return JL_OK;
}

void jl_kv_release(jl_kv_cache *c) {
    for (int i = 0; i < 2; i++) {
        jl_kv_pool *p = &c->pools[i];
        free(p->layers);
        free(p->data);
        free(p->refs);
        free(p->free_pages);
        free(p->table);
        free(p->first);
    }
    free(c->layer_pool);
    free(c->layer_slot);
    free(c->len);
    free(c->scratch);
    memset(c, 0, sizeof *c);
}

static int32_t *table_of(const jl_kv_pool *p, const jl_kv_cache *c, int32_t seq) {
    return p->table + (size_t)seq * c->max_pages;
}

/* (JL_KV_PAGE, Dk) K rows of the slot-th layer of a pool and one KV head in a page; V follows */
static uint8_t *pool_k(const jl_kv_cache *c, const jl_kv_pool *p, int32_t page, int slot, int head) {
    return p->data + (size_t)page * p->page_bytes + ((size_t)slot * c->n_head_kv + (size_t)head) * (c->k_bytes + c->v_bytes);
}

/* The first page a windowed pool keeps for a sequence of length pos: the window keeps positions
 * > pos - window, so the pages wholly below pos - window + 1 are seen by no later query; one page
 * of slack more is kept, so a sequence can always be cut back a few positions (a chat template
 * that renders the last answer's end differently, a stop string cut off). */
static int32_t first_seen_page(const jl_kv_pool *p, int64_t pos) {
    const int64_t kept_from = pos - p->window + 1 - JL_KV_PAGE;
    return p->window > 0 && kept_from > 0 ? (int32_t)(kept_from / JL_KV_PAGE) : 0;
}

/* A page handed out is zeroed: positions past a sequence's length hold finite values, which
 * the attention V step multiplies by zero weights. */
static int32_t take_page(jl_kv_pool *p) {
    const int32_t page = p->free_pages[--p->n_free];
    p->refs[page] = 1;
    memset(p->data + (size_t)page * p->page_bytes, 0, p->page_bytes);
    return page;
}

static void drop_page(jl_kv_pool *p, int32_t page) {
    if (page != JL_KV_NO_PAGE && --p->refs[page] == 0) p->free_pages[p->n_free++] = page;
}

/* The page at index k of seq's table becomes one only seq holds: copied if it was shared, a
 * fresh one if it was given back. */
static void own_page(jl_kv_pool *p, const jl_kv_cache *c, int32_t seq, int32_t k) {
    int32_t *slot = &table_of(p, c, seq)[k];
    if (*slot == JL_KV_NO_PAGE) {
        *slot = take_page(p);
        return;
    }
    if (p->refs[*slot] == 1) return;
    const int32_t copy = take_page(p);
    memcpy(p->data + (size_t)copy * p->page_bytes, p->data + (size_t)*slot * p->page_bytes, p->page_bytes);
    drop_page(p, *slot);
    *slot = copy;
}

static int needs_own(const jl_kv_pool *p, const jl_kv_cache *c, int32_t seq, int32_t k) {
    const int32_t page = table_of(p, c, seq)[k];
    return page == JL_KV_NO_PAGE || p->refs[page] > 1;
}

/* A windowed pool's table of seq holds one run of pages up to its length: keep the top run from
 * the first page its next query sees, give back everything below. */
static void trim_window(jl_kv_pool *p, const jl_kv_cache *c, int32_t seq) {
    if (p->window == 0) return;
    int32_t *table = table_of(p, c, seq);
    int32_t run = jl_kv_pages_for(c->len[seq]);
    while (run > 0 && table[run - 1] != JL_KV_NO_PAGE) run--;
    const int32_t seen = first_seen_page(p, c->len[seq]);
    const int32_t first = run > seen ? run : seen;
    for (int32_t k = 0; k < first; k++) {
        drop_page(p, table[k]);
        table[k] = JL_KV_NO_PAGE;
    }
    p->first[seq] = first;
}

int64_t jl_kv_pos_min(const jl_kv_cache *c, int32_t seq) {
    int64_t pos = 0;
    for (int i = 0; i < c->n_pools; i++) {
        const int64_t held = (int64_t)c->pools[i].first[seq] * JL_KV_PAGE;
        pos = held > pos ? held : pos;
    }
    return pos < c->len[seq] ? pos : c->len[seq];
}

int64_t jl_kv_cut_min(const jl_kv_cache *c, int32_t seq) {
    int64_t cut = 0;
    for (int i = 0; i < c->n_pools; i++) {
        const jl_kv_pool *p = &c->pools[i];
        /* a length n needs positions > n - window: from first * JL_KV_PAGE, n >= that + window - 1 */
        const int64_t need = p->first[seq] > 0 ? (int64_t)p->first[seq] * JL_KV_PAGE + p->window - 1 : 0;
        cut = need > cut ? need : cut;
    }
    return cut;
}

size_t jl_kv_bytes_in_use(const jl_kv_cache *c) {
    size_t bytes = 0;
    for (int i = 0; i < c->n_pools; i++) bytes += (size_t)(c->pools[i].n_pages - c->pools[i].n_free) * c->pools[i].page_bytes;
    return bytes;
}

/* each sequence's length after rows [0, n_rows) are appended: out (n_seq,) */
static void lengths_after(const jl_kv_cache *c, const int32_t *seq_ids, int64_t n_rows, const int64_t *len, int64_t *out) {
    memcpy(out, len, (size_t)c->n_seq * sizeof *out);
    for (int64_t r = 0; r < n_rows; r++) out[seq_ids[r]]++;
}

/* The plan's state in scratch: each sequence's length so far (n_seq,), a scratch row (n_seq,),
 * and per pool the first page each still holds (2, n_seq). */
void jl_kv_plan_begin(jl_kv_cache *c) {
    memcpy(c->scratch, c->len, (size_t)c->n_seq * sizeof *c->scratch);
    for (int i = 0; i < c->n_pools; i++) {
        for (int32_t s = 0; s < c->n_seq; s++) c->scratch[(size_t)(2 + i) * c->n_seq + s] = c->pools[i].first[s];
        c->plan_taken[i] = c->plan_need[i] = 0;
    }
}

void jl_kv_plan_chunk(jl_kv_cache *c, const int32_t *seq_ids, int64_t n_rows) {
    int64_t *len = c->scratch, *next = len + c->n_seq;
    lengths_after(c, seq_ids, n_rows, len, next);
    for (int i = 0; i < c->n_pools; i++) {
        const jl_kv_pool *p = &c->pools[i];
        int64_t *first = c->scratch + (size_t)(2 + i) * c->n_seq, taken = c->plan_taken[i];
        for (int32_t s = 0; s < c->n_seq; s++) {
            if (next[s] == len[s]) continue;
            const int32_t have = jl_kv_pages_for(len[s]);
            taken += jl_kv_pages_for(next[s]) - have;
            /* a partly filled last page is copied if it is still the shared one it was */
            if (len[s] % JL_KV_PAGE != 0 && len[s] == c->len[s] && needs_own(p, c, s, have - 1)) taken++;
        }
        if (taken > c->plan_need[i]) c->plan_need[i] = taken;
        /* the chunk's end gives back the windowed pages no later query sees: the ones this batch
         * wrote (from the batch's first partly filled page on, seq's own by then) and earlier ones
         * only seq holds */
        for (int32_t s = 0; s < c->n_seq; s++) {
            const int32_t seen = first_seen_page(p, next[s]), own_from = (int32_t)(c->len[s] / JL_KV_PAGE);
            for (int32_t k = (int32_t)first[s]; k < seen; k++)
                taken -= k >= own_from || p->refs[table_of(p, c, s)[k]] == 1;
            if (seen > first[s]) first[s] = seen;
        }
        c->plan_taken[i] = taken;
    }
    memcpy(len, next, (size_t)c->n_seq * sizeof *len);
}

void jl_kv_begin_chunk(jl_kv_cache *c, const int32_t *seq_ids, int64_t n_rows) {
    int64_t *next = c->scratch;
    lengths_after(c, seq_ids, n_rows, c->len, next);
    for (int i = 0; i < c->n_pools; i++) {
        jl_kv_pool *p = &c->pools[i];
        for (int32_t s = 0; s < c->n_seq; s++) {
            if (next[s] == c->len[s]) continue;
            const int32_t have = jl_kv_pages_for(c->len[s]), need = jl_kv_pages_for(next[s]);
            if (c->len[s] % JL_KV_PAGE != 0) own_page(p, c, s, have - 1);
            for (int32_t k = have; k < need; k++) table_of(p, c, s)[k] = take_page(p);
        }
    }
    memcpy(c->len, next, (size_t)c->n_seq * sizeof *next);
}

void jl_kv_end_chunk(jl_kv_cache *c) {
    for (int i = 0; i < c->n_pools; i++)
        for (int32_t s = 0; s < c->n_seq; s++) trim_window(&c->pools[i], c, s);
}

void jl_kv_truncate(jl_kv_cache *c, int32_t seq, int64_t new_len) {
    if (new_len >= c->len[seq]) return;
    const int32_t keep = jl_kv_pages_for(new_len), have = jl_kv_pages_for(c->len[seq]);
    for (int i = 0; i < c->n_pools; i++) {
        jl_kv_pool *p = &c->pools[i];
        int32_t *table = table_of(p, c, seq);
        for (int32_t k = keep; k < have; k++) {
            drop_page(p, table[k]);
            table[k] = JL_KV_NO_PAGE;
        }
        if (p->first[seq] > keep) p->first[seq] = keep;
    }
    c->len[seq] = new_len;
}

/* n values of type -> dst (a row of the cache) */
static void store_row(int type, const float *src, int n, uint8_t *dst) { jl_traits(type)->from_float(src, dst, n); }

/* V of page slots [from, from + n) of one (layer, head) block -> the same slots of another */
static void copy_v_slots(const jl_kv_cache *c, const uint8_t *src, uint8_t *dst, int64_t from, int64_t n) {
    if (!c->v_trans) {
        memcpy(dst + (size_t)from * c->v_row, src + (size_t)from * c->v_row, (size_t)n * c->v_row);
        return;
    }
    for (int dim = 0; dim < c->head_dim_v; dim++) {
        const size_t at = ((size_t)dim * JL_KV_PAGE + (size_t)from) * c->v_elem;
        memcpy(dst + at, src + at, (size_t)n * c->v_elem);
    }
}

void jl_kv_write(const jl_kv_cache *c, int layer, int32_t page, int head, int slot, const float *k, const float *v) {
    store_row(c->type_k, k, c->head_dim_k, jl_kv_k(c, layer, page, head) + (size_t)slot * c->k_row);
    uint8_t *vb = jl_kv_v(c, layer, page, head);
    if (!c->v_trans) {
        store_row(c->type_v, v, c->head_dim_v, vb + (size_t)slot * c->v_row);
        return;
    }
    /* transposed: this position is column `slot` of the (Dv, JL_KV_PAGE) block */
    if (c->type_v == JL_TYPE_F32) {
        for (int dim = 0; dim < c->head_dim_v; dim++) ((float *)vb)[(size_t)dim * JL_KV_PAGE + (size_t)slot] = v[dim];
        return;
    }
    enum { CHUNK = 64 };
    uint16_t halves[CHUNK];  /* (CHUNK,) of v as F16 */
    for (int d0 = 0; d0 < c->head_dim_v; d0 += CHUNK) {
        const int n = c->head_dim_v - d0 < CHUNK ? c->head_dim_v - d0 : CHUNK;
        store_row(c->type_v, v + d0, n, (uint8_t *)halves);
        for (int dim = 0; dim < n; dim++) ((uint16_t *)vb)[(size_t)(d0 + dim) * JL_KV_PAGE + (size_t)slot] = halves[dim];
    }
}

/* positions [from, from + n) of one page -> the same positions of another, every layer of the pool and head */
static void copy_positions(const jl_kv_cache *c, const jl_kv_pool *p, int32_t src_page, int32_t dst_page, int64_t from,
                           int64_t n) {
    for (int slot = 0; slot < p->n_layer; slot++)
        for (int g = 0; g < c->n_head_kv; g++) {
            const uint8_t *src_k = pool_k(c, p, src_page, slot, g);
            uint8_t *dst_k = pool_k(c, p, dst_page, slot, g);
            memcpy(dst_k + (size_t)from * c->k_row, src_k + (size_t)from * c->k_row, (size_t)n * c->k_row);
            copy_v_slots(c, src_k + c->k_bytes, dst_k + c->k_bytes, from, n);
        }
}

/* Whether seq holds position pos in a pool. */
static int holds(const jl_kv_pool *p, const jl_kv_cache *c, int32_t seq, int64_t pos) {
    return pos < c->len[seq] && table_of(p, c, seq)[pos / JL_KV_PAGE] != JL_KV_NO_PAGE;
}

/* Whether seq holds positions [lo, hi) in a pool (an empty range: yes); its pages there are one run. */
static int holds_range(const jl_kv_pool *p, const jl_kv_cache *c, int32_t seq, int64_t lo, int64_t hi) {
    return hi <= lo || (holds(p, c, seq, lo) && holds(p, c, seq, hi - 1));
}

/* The window of a length n: the positions a query at n sees in a pool, from lo on. */
static int64_t window_start(const jl_kv_pool *p, int64_t n) {
    return jl_kv_first_visible(n, p->window);
}

/* The page where p0 falls mid-page holds dst's own positions before p0: src's part is copied
 * into it, unless it is the very page src holds (nobody wrote into it since it was shared), or
 * one of the two no longer holds that page (then only the other's part can be seen). */
static int mixed_page(const jl_kv_pool *p, const jl_kv_cache *c, int32_t src, int32_t dst, int64_t p0, int64_t p1) {
    const int32_t k = (int32_t)(p0 / JL_KV_PAGE);
    const int32_t s = table_of(p, c, src)[k], d = table_of(p, c, dst)[k];
    return p0 % JL_KV_PAGE != 0 && p1 > p0 && s != d && s != JL_KV_NO_PAGE && d != JL_KV_NO_PAGE;
}

int jl_kv_can_cut(const jl_kv_cache *c, int32_t seq, int64_t n) {
    for (int i = 0; i < c->n_pools; i++)
        if (n > 0 && !holds_range(&c->pools[i], c, seq, window_start(&c->pools[i], n), n)) return 0;
    return 1;
}

jl_status jl_kv_copy(jl_kv_cache *c, int32_t src, int32_t dst, int64_t p0, int64_t p1) {
    /* the window of p1 comes from dst below p0 and from src above it: both must still hold it */
    for (int i = 0; i < c->n_pools; i++) {
        const jl_kv_pool *p = &c->pools[i];
        const int64_t lo = window_start(p, p1);
        if (!holds_range(p, c, dst, lo, p0 < p1 ? p0 : p1) || !holds_range(p, c, src, lo > p0 ? lo : p0, p1))
            return jl_fail(JL_ERR_INVALID_ARG,
                           "seq_cp: the sliding-window layers no longer hold positions [%lld, %lld) that a length of %lld "
                           "needs (sequence %d keeps them from %lld, sequence %d from %lld): recompute them",
                           (long long)lo, (long long)p1, (long long)p1, src, (long long)jl_kv_pos_min(c, src), dst,
                           (long long)jl_kv_pos_min(c, dst));
    }
    for (int i = 0; i < c->n_pools; i++) {
        const jl_kv_pool *p = &c->pools[i];
        if (mixed_page(p, c, src, dst, p0, p1) && p->refs[table_of(p, c, dst)[p0 / JL_KV_PAGE]] > 1 && p->n_free < 1)
            return jl_fail(JL_ERR_KV_FULL, "seq_cp: no free KV page to copy position %lld into", (long long)p0);
    }
    jl_kv_truncate(c, dst, p0);
    if (p1 <= p0) return JL_OK;
    for (int i = 0; i < c->n_pools; i++) {
        jl_kv_pool *p = &c->pools[i];
        int32_t *src_table = table_of(p, c, src), *dst_table = table_of(p, c, dst);
        int32_t k = (int32_t)(p0 / JL_KV_PAGE);
        if (p0 % JL_KV_PAGE != 0) {
            if (mixed_page(p, c, src, dst, p0, p1)) {
                own_page(p, c, dst, k);
                const int64_t end = (k + 1) * (int64_t)JL_KV_PAGE < p1 ? (k + 1) * (int64_t)JL_KV_PAGE : p1;
                copy_positions(c, p, src_table[k], dst_table[k], p0 % JL_KV_PAGE, end - p0);
            } else if (dst_table[k] == JL_KV_NO_PAGE && src_table[k] != JL_KV_NO_PAGE) {
                dst_table[k] = src_table[k];
                p->refs[src_table[k]]++;
            }
            k++;
        }
        for (; k < jl_kv_pages_for(p1); k++) {
            dst_table[k] = src_table[k];
            if (src_table[k] != JL_KV_NO_PAGE) p->refs[src_table[k]]++;
        }
    }
    c->len[dst] = p1;
    for (int i = 0; i < c->n_pools; i++) trim_window(&c->pools[i], c, dst);
    return JL_OK;
}

/* One pool's part of a shift: the new positions from q_lo on get their keys and values. */
static void shift_pool(jl_kv_cache *c, jl_kv_pool *p, int32_t seq, int64_t q_lo, int64_t n_discard, float *key,
                       const float *rope_cos, const float *rope_sin, int n_rot, int rope_layout) {
    const int Dk = c->head_dim_k, half = Dk / 2;
    const size_t k_row = c->k_row;
    const jl_to_float_fn load_k = jl_traits(c->type_k)->to_float;
    const int32_t *table = table_of(p, c, seq);
    /* ascending: a position is read before anything moves onto it (a quantized key is
     * dequantized, rotated and quantized again) */
    for (int64_t q = q_lo; q < c->len[seq] - n_discard; q++) {
        const int64_t from_pos = q + n_discard;
        const int32_t from = table[from_pos / JL_KV_PAGE], to = table[q / JL_KV_PAGE];
        const size_t from_slot = (size_t)(from_pos % JL_KV_PAGE), to_slot = (size_t)(q % JL_KV_PAGE);
        for (int slot = 0; slot < p->n_layer; slot++) {
            const int layer = p->layers[slot];
            for (int g = 0; g < c->n_head_kv; g++) {
                const uint8_t *k_from = pool_k(c, p, from, slot, g);
                uint8_t *k_to = pool_k(c, p, to, slot, g);
                load_k(k_from + from_slot * k_row, key, Dk);
                jl_rope(key, 1, Dk, n_rot, rope_layout, rope_cos + (size_t)layer * half, rope_sin + (size_t)layer * half);
                store_row(c->type_k, key, Dk, k_to + to_slot * k_row);
                const uint8_t *v_from = k_from + c->k_bytes;
                uint8_t *v_to = k_to + c->k_bytes;
                if (c->v_trans)
                    for (int dim = 0; dim < c->head_dim_v; dim++)
                        memcpy(v_to + ((size_t)dim * JL_KV_PAGE + to_slot) * c->v_elem,
                               v_from + ((size_t)dim * JL_KV_PAGE + from_slot) * c->v_elem, c->v_elem);
                else
                    memcpy(v_to + to_slot * c->v_row, v_from + from_slot * c->v_row, c->v_row);
            }
        }
    }
}

/* The first new position a pool's shift moves a key to: the kept ones stay, and a windowed pool
 * moves only what its new length's window sees. */
static int64_t shift_start(const jl_kv_pool *p, int64_t n_keep, int64_t new_len) {
    const int64_t lo = window_start(p, new_len);
    return n_keep > lo ? n_keep : lo;
}

int jl_kv_can_shift(const jl_kv_cache *c, int32_t seq, int64_t n_keep, int64_t n_discard) {
    const int64_t new_len = c->len[seq] - n_discard;
    for (int i = 0; i < c->n_pools; i++)
        if (!holds_range(&c->pools[i], c, seq, window_start(&c->pools[i], new_len), shift_start(&c->pools[i], n_keep, new_len)))
            return 0;
    return 1;
}

jl_status jl_kv_shift(jl_kv_cache *c, int32_t seq, int64_t n_keep, int64_t n_discard, const float *rope_cos,
                      const float *rope_sin, int n_rot, int rope_layout) {
    const int64_t new_len = c->len[seq] - n_discard;
    if (!jl_kv_can_shift(c, seq, n_keep, n_discard))
        return jl_fail(JL_ERR_INVALID_ARG,
                       "shift: the sliding-window layers of sequence %d no longer hold the kept positions that its new "
                       "length of %lld sees (they keep positions from %lld): recompute them",
                       seq, (long long)new_len, (long long)jl_kv_pos_min(c, seq));
    int64_t q_lo[2];
    for (int i = 0; i < c->n_pools; i++) q_lo[i] = shift_start(&c->pools[i], n_keep, new_len);
    /* the pages that receive moved positions are written: each must be seq's own */
    for (int i = 0; i < c->n_pools; i++) {
        const jl_kv_pool *p = &c->pools[i];
        int32_t copies = 0;
        for (int32_t k = (int32_t)(q_lo[i] / JL_KV_PAGE); k < jl_kv_pages_for(new_len); k++) copies += needs_own(p, c, seq, k);
        if (copies > p->n_free)
            return jl_fail(JL_ERR_KV_FULL, "shift: %d KV pages must be copied or taken, %d are free", copies, p->n_free);
    }
    float *key = malloc((size_t)c->head_dim_k * sizeof(float));
    if (!key) return jl_fail(JL_ERR_NOMEM, "shift: out of memory");
    for (int i = 0; i < c->n_pools; i++) {
        jl_kv_pool *p = &c->pools[i];
        for (int32_t k = (int32_t)(q_lo[i] / JL_KV_PAGE); k < jl_kv_pages_for(new_len); k++) own_page(p, c, seq, k);
        shift_pool(c, p, seq, q_lo[i], n_discard, key, rope_cos, rope_sin, n_rot, rope_layout);
    }
    free(key);
    jl_kv_truncate(c, seq, new_len);
    for (int i = 0; i < c->n_pools; i++) trim_window(&c->pools[i], c, seq);
    return JL_OK;
}
