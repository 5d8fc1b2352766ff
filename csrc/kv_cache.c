/* kv_cache.c — pages, page tables and the per-sequence operations on them (kv_cache.h). */
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

jl_status jl_kv_init(jl_kv_cache *c, int n_layer, int n_head_kv, int head_dim_k, int head_dim_v, int type_k,
                     int type_v, int64_t n_ctx, int32_t n_seq, int64_t n_cells) {
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
    c->page_bytes = (size_t)n_layer * n_head_kv * (c->k_bytes + c->v_bytes);
    c->n_pages = c->n_free = (int32_t)n_pages;
    c->n_seq = n_seq;
    c->n_ctx = n_ctx;
    c->max_pages = jl_kv_pages_for(n_ctx);
    /* calloc of this size maps fresh zero pages that the OS commits on first write */
    c->pool = calloc((size_t)n_pages, c->page_bytes);
    c->refs = calloc((size_t)n_pages, sizeof *c->refs);
    c->free_pages = malloc((size_t)n_pages * sizeof *c->free_pages);
    c->table = calloc((size_t)n_seq * (size_t)c->max_pages, sizeof *c->table);
    c->len = calloc((size_t)n_seq, sizeof *c->len);
    if (!c->pool || !c->refs || !c->free_pages || !c->table || !c->len) {
        jl_kv_release(c);
        return jl_fail(JL_ERR_NOMEM, "context: out of memory for a KV cache of %lld pages of %zu bytes",
                       (long long)n_pages, c->page_bytes);
    }
    for (int32_t i = 0; i < c->n_pages; i++) c->free_pages[i] = c->n_pages - 1 - i;  /* page 0 on top */
    return JL_OK;
}

void jl_kv_release(jl_kv_cache *c) {
    free(c->pool);
    free(c->refs);
    free(c->free_pages);
    free(c->table);
    free(c->len);
    memset(c, 0, sizeof *c);
}

/* A page handed out is zeroed: positions past a sequence's length hold finite values, which
 * the attention V step multiplies by zero weights. */
static int32_t take_page(jl_kv_cache *c) {
    const int32_t page = c->free_pages[--c->n_free];
    c->refs[page] = 1;
    memset(c->pool + (size_t)page * c->page_bytes, 0, c->page_bytes);
    return page;
}

static void drop_page(jl_kv_cache *c, int32_t page) {
    if (--c->refs[page] == 0) c->free_pages[c->n_free++] = page;
}

/* The page at index k of seq's table becomes one only seq holds, copied if it was shared. */
static void own_page(jl_kv_cache *c, int32_t seq, int32_t k) {
    int32_t *slot = &c->table[(size_t)seq * c->max_pages + (size_t)k];
    if (c->refs[*slot] == 1) return;
    const int32_t copy = take_page(c);
    memcpy(c->pool + (size_t)copy * c->page_bytes, c->pool + (size_t)*slot * c->page_bytes, c->page_bytes);
    drop_page(c, *slot);
    *slot = copy;
}

static int shared(const jl_kv_cache *c, int32_t seq, int32_t k) {
    return c->refs[c->table[(size_t)seq * c->max_pages + (size_t)k]] > 1;
}

int32_t jl_kv_pages_to_grow(const jl_kv_cache *c, int32_t seq, int64_t new_len) {
    const int64_t len = c->len[seq];
    if (new_len <= len) return 0;
    const int32_t have = jl_kv_pages_for(len);
    return jl_kv_pages_for(new_len) - have + (len % JL_KV_PAGE != 0 && shared(c, seq, have - 1));
}

void jl_kv_grow(jl_kv_cache *c, int32_t seq, int64_t new_len) {
    const int64_t len = c->len[seq];
    if (new_len <= len) return;
    const int32_t have = jl_kv_pages_for(len), need = jl_kv_pages_for(new_len);
    if (len % JL_KV_PAGE != 0) own_page(c, seq, have - 1);
    for (int32_t k = have; k < need; k++) c->table[(size_t)seq * c->max_pages + (size_t)k] = take_page(c);
    c->len[seq] = new_len;
}

void jl_kv_truncate(jl_kv_cache *c, int32_t seq, int64_t new_len) {
    const int32_t keep = jl_kv_pages_for(new_len), have = jl_kv_pages_for(c->len[seq]);
    for (int32_t k = keep; k < have; k++) drop_page(c, c->table[(size_t)seq * c->max_pages + (size_t)k]);
    if (new_len < c->len[seq]) c->len[seq] = new_len;
}

/* n values of type -> dst (a row of the cache); F16 has no activation quantizer in the table */
static void store_row(int type, const float *src, int n, uint8_t *dst) {
    if (type == JL_TYPE_F16)
        for (int i = 0; i < n; i++) ((uint16_t *)dst)[i] = jl_f32_to_half(src[i]);
    else
        jl_traits(type)->from_float(src, dst, n);
}

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

void jl_kv_write(const jl_kv_cache *c, int32_t page, int layer, int head, int slot, const float *k, const float *v) {
    store_row(c->type_k, k, c->head_dim_k, jl_kv_k(c, page, layer, head) + (size_t)slot * c->k_row);
    uint8_t *vb = jl_kv_v(c, page, layer, head);
    if (!c->v_trans) {
        store_row(c->type_v, v, c->head_dim_v, vb + (size_t)slot * c->v_row);
        return;
    }
    /* transposed: this position is column `slot` of the (Dv, JL_KV_PAGE) block */
    for (int dim = 0; dim < c->head_dim_v; dim++) {
        uint8_t *at = vb + ((size_t)dim * JL_KV_PAGE + (size_t)slot) * c->v_elem;
        if (c->type_v == JL_TYPE_F16) *(uint16_t *)at = jl_f32_to_half(v[dim]);
        else *(float *)at = v[dim];
    }
}

/* positions [from, from + n) of one page -> the same positions of another, every layer and head */
static void copy_positions(const jl_kv_cache *c, int32_t src_page, int32_t dst_page, int64_t from, int64_t n) {
    for (int layer = 0; layer < c->n_layer; layer++)
        for (int g = 0; g < c->n_head_kv; g++) {
            memcpy(jl_kv_k(c, dst_page, layer, g) + (size_t)from * c->k_row,
                   jl_kv_k(c, src_page, layer, g) + (size_t)from * c->k_row, (size_t)n * c->k_row);
            copy_v_slots(c, jl_kv_v(c, src_page, layer, g), jl_kv_v(c, dst_page, layer, g), from, n);
        }
}

jl_status jl_kv_copy(jl_kv_cache *c, int32_t src, int32_t dst, int64_t p0, int64_t p1) {
    int32_t *src_table = c->table + (size_t)src * c->max_pages, *dst_table = c->table + (size_t)dst * c->max_pages;
    int32_t k = (int32_t)(p0 / JL_KV_PAGE);
    /* the page where p0 falls mid-page holds dst's own positions before p0: src's part is copied
     * into it, unless it is the very page src holds (nobody wrote into it since it was shared) */
    const int mixed = p0 % JL_KV_PAGE != 0 && p1 > p0 && dst_table[k] != src_table[k];
    if (mixed && shared(c, dst, k) && c->n_free < 1)
        return jl_fail(JL_ERR_KV_FULL, "seq_cp: no free KV page to copy position %lld into", (long long)p0);
    jl_kv_truncate(c, dst, p0);
    if (p1 <= p0) return JL_OK;
    if (p0 % JL_KV_PAGE != 0) {
        if (mixed) {
            own_page(c, dst, k);
            const int64_t end = (k + 1) * (int64_t)JL_KV_PAGE < p1 ? (k + 1) * (int64_t)JL_KV_PAGE : p1;
            copy_positions(c, src_table[k], dst_table[k], p0 % JL_KV_PAGE, end - p0);
        }
        k++;
    }
    for (; k < jl_kv_pages_for(p1); k++) {
        dst_table[k] = src_table[k];
        c->refs[src_table[k]]++;
    }
    c->len[dst] = p1;
    return JL_OK;
}

jl_status jl_kv_shift(jl_kv_cache *c, int32_t seq, int64_t n_keep, int64_t n_discard, const float *rope_cos,
                      const float *rope_sin, int n_rot, int rope_layout) {
    const int64_t len = c->len[seq], new_len = len - n_discard;
    const int Dk = c->head_dim_k, half = Dk / 2;
    /* the pages that receive moved positions are written: each must be seq's own */
    const int32_t first = (int32_t)(n_keep / JL_KV_PAGE), last = jl_kv_pages_for(new_len);
    int32_t copies = 0;
    for (int32_t k = first; k < last; k++) copies += shared(c, seq, k);
    if (copies > c->n_free)
        return jl_fail(JL_ERR_KV_FULL, "shift: %d shared KV pages must be copied, %d are free", copies, c->n_free);
    float *key = malloc((size_t)Dk * sizeof(float));
    if (!key) return jl_fail(JL_ERR_NOMEM, "shift: out of memory");
    for (int32_t k = first; k < last; k++) own_page(c, seq, k);
    const size_t k_row = c->k_row;
    const jl_to_float_fn load_k = jl_traits(c->type_k)->to_float;
    /* ascending: a position is read before anything moves onto it (a quantized key is
     * dequantized, rotated and quantized again) */
    for (int64_t p = n_keep + n_discard; p < len; p++) {
        const int64_t q = p - n_discard;
        const int32_t from = jl_kv_page(c, seq, p), to = jl_kv_page(c, seq, q);
        const size_t from_slot = (size_t)(p % JL_KV_PAGE), to_slot = (size_t)(q % JL_KV_PAGE);
        for (int layer = 0; layer < c->n_layer; layer++)
            for (int g = 0; g < c->n_head_kv; g++) {
                load_k(jl_kv_k(c, from, layer, g) + from_slot * k_row, key, Dk);
                jl_rope(key, 1, Dk, n_rot, rope_layout, rope_cos + (size_t)layer * half, rope_sin + (size_t)layer * half);
                store_row(c->type_k, key, Dk, jl_kv_k(c, to, layer, g) + to_slot * k_row);
                const uint8_t *v_from = jl_kv_v(c, from, layer, g);
                uint8_t *v_to = jl_kv_v(c, to, layer, g);
                if (c->v_trans)
                    for (int dim = 0; dim < c->head_dim_v; dim++)
                        memcpy(v_to + ((size_t)dim * JL_KV_PAGE + to_slot) * c->v_elem,
                               v_from + ((size_t)dim * JL_KV_PAGE + from_slot) * c->v_elem, c->v_elem);
                else
                    memcpy(v_to + to_slot * c->v_row, v_from + from_slot * c->v_row, c->v_row);
            }
    }
    free(key);
    jl_kv_truncate(c, seq, new_len);
    return JL_OK;
}
