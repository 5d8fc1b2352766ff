/* typical.c — locally typical sampling: keep the tokens whose surprise is closest to the
 * distribution's entropy until their probability passes p. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

typedef struct {
    jl_sampler base;
    float p;
    size_t min_keep;
    jl_token_data *scratch;  /* per sequence: grown on first use, never shared by clones */
    size_t scratch_size;
} typical_sampler;

static jl_status typical_apply(jl_sampler *self, jl_candidates *c) {
    typical_sampler *s = (typical_sampler *)self;
    if (s->p >= 1.0f || c->size == 0) return JL_OK;
    if (s->scratch_size < c->size) {
        free(s->scratch);
        s->scratch_size = 0;
        if (!(s->scratch = malloc(c->size * sizeof *s->scratch)))
            return jl_fail(JL_ERR_NOMEM, "typical_p scratch of %zu", c->size);
        s->scratch_size = c->size;
    }
    jl_candidates_softmax(c);
    float entropy = 0.0f;
    for (size_t i = 0; i < c->size; i++)
        if (c->data[i].p > 0.0f) entropy -= c->data[i].p * logf(c->data[i].p);  /* 0 log 0 = 0 */

    /* order by |surprise - entropy| ascending: sort on its negation, carrying the index as id */
    jl_token_data *order = s->scratch;
    for (size_t i = 0; i < c->size; i++)
        order[i] = (jl_token_data){(int32_t)i, -fabsf(-logf(c->data[i].p) - entropy), c->data[i].p};
    jl_candidates by_typicality = {.data = order, .size = c->size};
    jl_candidates_sort_top(&by_typicality, c->size);

    float cumulative = 0.0f;
    size_t keep = c->size;
    for (size_t i = 0; i < c->size; i++) {
        cumulative += order[i].p;
        if (cumulative > s->p && (s->min_keep == 0 || i + 1 >= s->min_keep)) {
            keep = i + 1;
            break;
        }
    }
    for (size_t i = 0; i < keep; i++) order[i] = c->data[order[i].id];
    memcpy(c->data, order, keep * sizeof *order);
    c->size = keep;
    c->n_sorted = 0;
    return JL_OK;
}

static jl_status typical_clone_buffers(const jl_sampler *self, jl_sampler *copy) {
    typical_sampler *dst = (typical_sampler *)copy;
    dst->scratch = NULL;
    dst->scratch_size = 0;
    return JL_OK;
}

static void typical_free_buffers(jl_sampler *self) { free(((typical_sampler *)self)->scratch); }

static const jl_sampler_iface typical_iface = {
    .name = "typical",
    .size = sizeof(typical_sampler),
    .apply = typical_apply,
    .clone_buffers = typical_clone_buffers,
    .free_buffers = typical_free_buffers,
};

jl_sampler *jl_sampler_typical_new(float p, size_t min_keep) {
    typical_sampler *s = (typical_sampler *)jl_sampler_new(&typical_iface);
    if (s) {
        s->p = p;
        s->min_keep = min_keep;
    }
    return (jl_sampler *)s;
}
