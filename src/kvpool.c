/* kvpool.c: see kvpool.h. The free list is a stack of block indices; each slot keeps its table (pool-sized,
 * −1 past what it holds), the blocks it holds and the blocks it reserved. */
#include "kvpool.h"

#include <stdlib.h>
#include <string.h>

typedef struct Seq {
    int joined;
    int held;     /* blocks in its table */
    int reserved; /* blocks it may hold at most */
    int reserve;  /* positions it may reach at most */
    int32_t *table;
} Seq;

struct KvPool {
    int n_blocks, block_size, max_seqs, max_seq_blocks;
    int n_free, reserved;
    int32_t *free_list; /* [n_blocks], the top at n_free − 1 */
    Seq *seqs;          /* [max_seqs] */
};

KvPool *kvpool_new(int n_blocks, int block_size, int max_seqs, int max_seq_blocks) {
    if (n_blocks < 0 || block_size <= 0 || max_seqs <= 0 || max_seq_blocks <= 0) return NULL;
    KvPool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->max_seqs = max_seqs;
    p->max_seq_blocks = max_seq_blocks;
    p->free_list = malloc(sizeof(int32_t) * (size_t)(n_blocks > 0 ? n_blocks : 1));
    p->seqs = calloc((size_t)max_seqs, sizeof *p->seqs);
    if (!p->free_list || !p->seqs) {
        kvpool_free(p);
        return NULL;
    }
    for (int i = 0; i < max_seqs; i++)
        if (!(p->seqs[i].table = malloc(sizeof(int32_t) * (size_t)max_seq_blocks))) {
            kvpool_free(p);
            return NULL;
        }
    /* block 0 on top: a lone sequence takes blocks 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) p->free_list[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    return p;
}

void kvpool_free(KvPool *p) {
    if (!p) return;
    for (int i = 0; p->seqs && i < p->max_seqs; i++) free(p->seqs[i].table);
    free(p->seqs);
    free(p->free_list);
    free(p);
}

static int blocks_for(const KvPool *p, long positions) {
    return (int)((positions + p->block_size - 1) / p->block_size);
}

int kvpool_join(KvPool *p, int reserve) {
    if (reserve < 0) return -1;
    const int nb = blocks_for(p, reserve);
    if (nb > p->n_blocks - p->reserved || nb > p->max_seq_blocks) return -1;
    for (int s = 0; s < p->max_seqs; s++) {
        Seq *q = &p->seqs[s];
        if (q->joined) continue;
        q->joined = 1;
        q->held = 0;
        q->reserved = nb;
        q->reserve = reserve;
        for (int i = 0; i < p->max_seq_blocks; i++) q->table[i] = -1;
        p->reserved += nb;
        return s;
    }
    return -1;
}

static Seq *joined(const KvPool *p, int s) {
    return s >= 0 && s < p->max_seqs && p->seqs[s].joined ? &p->seqs[s] : NULL;
}

int kvpool_grow(KvPool *p, int s, int n) {
    Seq *q = joined(p, s);
    if (!q || n < 0 || n > q->reserve) return -1;
    const int nb = blocks_for(p, n);
    /* the reservations admitted fit the pool, so the free list holds what the sequence may still take */
    while (q->held < nb) q->table[q->held++] = p->free_list[--p->n_free];
    return 0;
}

const int32_t *kvpool_table(const KvPool *p, int s) {
    const Seq *q = joined(p, s);
    return q ? q->table : NULL;
}

void kvpool_leave(KvPool *p, int s) {
    Seq *q = joined(p, s);
    if (!q) return;
    while (q->held > 0) {
        p->free_list[p->n_free++] = q->table[--q->held];
        q->table[q->held] = -1;
    }
    p->reserved -= q->reserved;
    q->reserved = 0;
    q->joined = 0;
}

int kvpool_free_blocks(const KvPool *p) { return p->n_free; }
int kvpool_reserved_blocks(const KvPool *p) { return p->reserved; }
int kvpool_table_len(const KvPool *p) { return p->max_seq_blocks; }
int kvpool_blocks(const KvPool *p) { return p->n_blocks; }

int kvpool_add_blocks(KvPool *p, int blocks) {
    if (blocks <= 0) return blocks == 0 ? 0 : -1;
    int32_t *f = realloc(p->free_list, sizeof(int32_t) * (size_t)(p->n_blocks + blocks));
    if (!f) return -1;
    p->free_list = f;
    /* under the free blocks, so that the lowest free ones are still taken first */
    memmove(f + blocks, f, sizeof(int32_t) * (size_t)p->n_free);
    for (int i = 0; i < blocks; i++) f[i] = p->n_blocks + blocks - 1 - i;
    p->n_free += blocks;
    p->n_blocks += blocks;
    return 0;
}
