/* batch.h — the rows of one chunk of a batch as the forward pass sees them: each row's position,
 * sequence and last position it attends to, the rows whose logits are wanted, and the groups of
 * rows that attention work items take (rows of one sequence, so an item reads one page table). */
#ifndef JANLIB_BATCH_H
#define JANLIB_BATCH_H

#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t n_rows;
    int64_t *pos;          /* (n_batch,) */
    int64_t *last;         /* (n_batch,) the last position the row attends to: its own, its block's last
                              (a non-causal block), or its sequence's last after the batch (an encoder) */
    int32_t *seq;          /* (n_batch,) */
    int64_t *out_rows;     /* (n_batch,) strictly increasing: the rows whose logits are wanted */
    int64_t n_out;
    int32_t *group_rows;   /* (n_batch,) the rows, grouped: a group is rows of one sequence in row order */
    int64_t *group_start;  /* (n_batch + 1,) group i is group_rows[group_start[i] .. group_start[i + 1]) */
    int64_t n_groups;
    int64_t *seq_count;    /* (n_seq + 1,) scratch of the grouping */
} jl_chunk;

/* Group the rows by sequence (a counting sort, stable), at most max_rows per group. */
static inline void jl_chunk_group_rows(jl_chunk *ch, int32_t n_seq, int max_rows) {
    int64_t *start = ch->seq_count;
    memset(start, 0, (size_t)(n_seq + 1) * sizeof *start);
    for (int64_t r = 0; r < ch->n_rows; r++) start[ch->seq[r] + 1]++;
    for (int32_t s = 0; s < n_seq; s++) start[s + 1] += start[s];
    for (int64_t r = 0; r < ch->n_rows; r++) ch->group_rows[start[ch->seq[r]]++] = (int32_t)r;
    /* start[s] is now the end of sequence s's rows */
    ch->n_groups = 0;
    int64_t i = 0;
    for (int32_t s = 0; s < n_seq; s++)
        while (i < start[s]) {
            ch->group_start[ch->n_groups++] = i;
            i = i + max_rows < start[s] ? i + max_rows : start[s];
        }
    ch->group_start[ch->n_groups] = ch->n_rows;
}

#endif
