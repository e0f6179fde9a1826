/* test_kvpool.c: the shared KV pool's block bookkeeping (kvpool.h): admission by reservation, tables that grow
 * within it, blocks never held twice, everything back on leaving, and a long random run of joins, growths and
 * leaves with the invariants checked after every call. */
#include <stdlib.h>

#include "check.h"
#include "kvpool.h"

static void test_bad_args(void) {
    CHECK(kvpool_new(-1, 16, 4, 8) == NULL);
    CHECK(kvpool_new(8, 0, 4, 8) == NULL);
    CHECK(kvpool_new(8, 16, 0, 8) == NULL);
    CHECK(kvpool_new(8, 16, 4, 0) == NULL);
    KvPool *p = kvpool_new(8, 16, 2, 8);
    REQUIRE(p);
    CHECK(kvpool_join(p, -1) == -1);
    CHECK(kvpool_grow(p, 0, 1) == -1); /* slot not joined */
    CHECK(kvpool_grow(p, 5, 1) == -1);
    CHECK(kvpool_table(p, 0) == NULL && kvpool_table(p, -1) == NULL);
    kvpool_leave(p, 1); /* not joined: nothing happens */
    CHECK(kvpool_free_blocks(p) == 8 && kvpool_reserved_blocks(p) == 0);
    kvpool_free(p);
    kvpool_free(NULL);
}

static void test_admission_and_tables(void) {
    KvPool *p = kvpool_new(10, 16, 3, 10);
    REQUIRE(p);
    const int a = kvpool_join(p, 100); /* 7 blocks */
    REQUIRE(a >= 0);
    CHECK(kvpool_reserved_blocks(p) == 7);
    CHECK(kvpool_join(p, 64) == -1); /* 4 more would pass the 10 blocks */
    const int b = kvpool_join(p, 48); /* 3 */
    REQUIRE(b >= 0 && b != a);
    CHECK(kvpool_reserved_blocks(p) == 10);
    CHECK(kvpool_join(p, 0) >= 0); /* nothing reserved: admitted (the last slot) */
    CHECK(kvpool_join(p, 0) == -1); /* no slot left */
    CHECK(kvpool_grow(p, a, 20) == 0);
    const int32_t *ta = kvpool_table(p, a);
    REQUIRE(ta);
    CHECK(ta[0] == 0 && ta[1] == 1 && ta[2] == -1); /* a lone sequence's first blocks in order */
    CHECK(kvpool_grow(p, b, 33) == 0);              /* 3 blocks */
    const int32_t *tb = kvpool_table(p, b);
    CHECK(tb[0] == 2 && tb[1] == 3 && tb[2] == 4 && tb[3] == -1);
    CHECK(kvpool_grow(p, b, 49) == -1); /* past its reservation */
    CHECK(kvpool_grow(p, a, 100) == 0 && kvpool_free_blocks(p) == 0);
    CHECK(kvpool_grow(p, a, 10) == 0 && kvpool_table(p, a)[6] >= 0); /* shrinking asks nothing back */
    kvpool_leave(p, a);
    CHECK(kvpool_free_blocks(p) == 7 && kvpool_reserved_blocks(p) == 3 && kvpool_table(p, a) == NULL);
    const int c = kvpool_join(p, 7 * 16);
    REQUIRE(c >= 0);
    CHECK(kvpool_grow(p, c, 7 * 16) == 0 && kvpool_free_blocks(p) == 0);
    kvpool_free(p);
}

/* Every block is either free or in exactly one joined table, each table holds a prefix of entries, and the
 * reservations add up. */
static int consistent(const KvPool *p, int max_seqs, const int *reserve) {
    const int nb = kvpool_table_len(p);
    int *owner = calloc((size_t)nb, sizeof(int)), held = 0, reserved = 0;
    int ok = owner != NULL;
    for (int s = 0; ok && s < max_seqs; s++) {
        const int32_t *t = kvpool_table(p, s);
        if (!t) continue;
        reserved += (reserve[s] + 15) / 16;
        int end = 0;
        while (end < nb && t[end] >= 0) end++;
        for (int i = end; i < nb; i++) ok &= t[i] == -1;
        for (int i = 0; i < end; i++) {
            ok &= t[i] < nb && owner[t[i]] == 0;
            if (t[i] < nb) owner[t[i]] = s + 1;
        }
        held += end;
    }
    ok &= held + kvpool_free_blocks(p) == nb && reserved == kvpool_reserved_blocks(p) && reserved <= nb;
    free(owner);
    return ok;
}

static void test_random_run(void) {
    enum { NB = 64, MS = 8, OPS = 20000 };
    KvPool *p = kvpool_new(NB, 16, MS, NB);
    REQUIRE(p);
    int reserve[MS] = {0}, len[MS] = {0};
    unsigned long r = 12345;
    int ok = 1, grows = 0, refused = 0;
    for (int i = 0; i < OPS && ok; i++) {
        r = r * 6364136223846793005ul + 1442695040888963407ul;
        const int op = (int)(r >> 60) % 3, s = (int)(r >> 40) % MS, amount = (int)((r >> 20) % 400);
        if (op == 0) {
            const int free_res = NB - kvpool_reserved_blocks(p), slot = kvpool_join(p, amount);
            if (slot >= 0) {
                ok &= (amount + 15) / 16 <= free_res;
                reserve[slot] = amount, len[slot] = 0;
            } else {
                refused++;
            }
        } else if (op == 1 && kvpool_table(p, s)) {
            const int n = len[s] + amount % 40;
            const int want = n <= reserve[s] ? 0 : -1;
            ok &= kvpool_grow(p, s, n) == want; /* within the reservation it never fails */
            if (!want) len[s] = n, grows++;
        } else if (op == 2) {
            kvpool_leave(p, s);
        }
        ok &= consistent(p, MS, reserve);
    }
    CHECKF(ok, "the pool's invariants broke");
    CHECK(grows > 1000 && refused > 100);
    printf("  %d operations: %d growths, %d joins refused by admission\n", OPS, grows, refused);
    kvpool_free(p);
}

/* A pool that starts empty and grows: the new blocks are taken after the older free ones, tables stay valid, a
 * sequence's table is capped at max_seq_blocks. */
static void test_grow_pool(void) {
    KvPool *p = kvpool_new(0, 16, 2, 4);
    REQUIRE(p);
    CHECK(kvpool_join(p, 1) == -1); /* nothing to reserve yet */
    CHECK(kvpool_add_blocks(p, 3) == 0 && kvpool_blocks(p) == 3 && kvpool_free_blocks(p) == 3);
    const int a = kvpool_join(p, 40);
    REQUIRE(a >= 0);
    CHECK(kvpool_grow(p, a, 20) == 0 && kvpool_table(p, a)[0] == 0 && kvpool_table(p, a)[1] == 1);
    CHECK(kvpool_join(p, 17) == -1); /* 2 more blocks: the pool has 3, 3 reserved */
    CHECK(kvpool_add_blocks(p, 2) == 0 && kvpool_blocks(p) == 5);
    const int b = kvpool_join(p, 17);
    REQUIRE(b >= 0);
    CHECK(kvpool_grow(p, b, 17) == 0 && kvpool_table(p, b)[0] == 2 && kvpool_table(p, b)[1] == 3);
    CHECK(kvpool_grow(p, a, 40) == 0 && kvpool_table(p, a)[2] == 4);
    kvpool_leave(p, a);
    CHECK(kvpool_add_blocks(p, 20) == 0 && kvpool_join(p, 5 * 16) == -1); /* past max_seq_blocks */
    CHECK(kvpool_join(p, 4 * 16) >= 0);
    CHECK(kvpool_add_blocks(p, -1) == -1 && kvpool_add_blocks(p, 0) == 0);
    kvpool_free(p);
}

int main(void) {
    RUN(test_bad_args);
    RUN(test_admission_and_tables);
    RUN(test_random_run);
    RUN(test_grow_pool);
    return check_summary();
}
