/* kvpool.h: the blocks of one KV cache pool (ops.h KvCache) shared out among sequences decoded together (issue 13,
 * continuous batching). A sequence joins with a reservation (the most positions it may reach: prompt + max
 * tokens), is admitted only if every admitted sequence's reservation fits the pool together, so that no sequence can
 * run out of blocks midway; it takes blocks as its positions grow (its block table, decoder.h tables_dev) and gives
 * them all back when it leaves. Host bookkeeping only: the pool's memory and the tables' backend copies are the
 * caller's.
 * What it is not: the scheduler (who runs each step), the KV memory itself. */
#ifndef DSOCR_KVPOOL_H
#define DSOCR_KVPOOL_H

#include <stdint.h>

typedef struct KvPool KvPool;

/* A pool of n_blocks blocks (0 or more) of block_size positions for at most max_seqs sequences at once, each
 * holding at most max_seq_blocks blocks (its table's length); NULL when out of memory or a size is not positive. */
KvPool *kvpool_new(int n_blocks, int block_size, int max_seqs, int max_seq_blocks);
/* The pool grows by `blocks` blocks (numbered after the ones it has; the caller has grown the memory behind them):
 * 0, or −1 when out of memory (nothing changed). */
int kvpool_add_blocks(KvPool *p, int blocks);
/* Blocks in the pool. */
int kvpool_blocks(const KvPool *p);
void kvpool_free(KvPool *p);

/* Admits a sequence that may reach `reserve` positions: its slot (0 .. max_seqs − 1), or −1 when the reservations
 * would pass the pool, it needs more than max_seq_blocks, or every slot is taken (the caller keeps it waiting: admission, never an out-of-memory
 * midway). */
int kvpool_join(KvPool *p, int reserve);
/* Makes sequence s hold positions [0, n) (blocks taken from the free list as needed): 0, or −1 when n is past its
 * reservation or s is not a joined slot. */
int kvpool_grow(KvPool *p, int s, int n);
/* Sequence s's block table: entry i is the pool block holding its positions [i·block_size, (i + 1)·block_size);
 * entries past what it holds are −1. NULL for a slot not joined. Valid until the next call on p. */
const int32_t *kvpool_table(const KvPool *p, int s);
/* Sequence s leaves: its blocks go back to the free list and its reservation is released. */
void kvpool_leave(KvPool *p, int s);

/* Blocks on the free list; blocks reserved by the joined sequences (held or not yet taken). */
int kvpool_free_blocks(const KvPool *p);
int kvpool_reserved_blocks(const KvPool *p);
/* Entries a block table has (max_seq_blocks: the most one sequence can hold). */
int kvpool_table_len(const KvPool *p);

#endif
