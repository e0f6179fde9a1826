/* test_batch.c: rows of several sequences in one decoder pass (decoder.h DecoderStep.seq_dev, issue 13's batched
 * decode) on the small random model (tests/ckpt_fixture.h), CPU backend: two sequences with their own prompts and
 * block tables in one shared KV pool, prefilled one after the other, then decoded together a row each step, give
 * every step's logits bit for bit as each sequence decoded alone in a pool of its own, in fp32 and bf16 mode. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "ckpt_fixture.h"
#include "decoder.h"
#include "model.h"
#include "ops.h"

enum { SEQS = 2, STEPS = 4, BS = 16, BLOCKS = 8 };

static char *g_dir;
static Model *g_m;

static int setup(void) {
    if (!(g_dir = fixture_tiny_model_dir())) return -1;
    DsError e = {0};
    CheckpointOptions co = {0};
    if (model_load(g_dir, &co, &g_m, &e) != DSOCR_OK || model_place(g_m, backend_cpu(), &e) != DSOCR_OK) {
        fprintf(stderr, "load: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Prefills ids [n] of one sequence (block table tbl) into kv; its last row's logits into logits. */
static DsocrStatus prefill(DecoderWork *w, KvCache *kv, const int32_t *tbl, const int32_t *ids, int n, int bf16,
                           float *logits, DsError *e) {
    const int D = g_m->cfg.hidden_size;
    float *x = malloc(sizeof(float) * (size_t)n * D);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) pos[i] = i;
    const int32_t *tabs[1] = {tbl};
    decoder_embed(g_m, ids, n, x);
    DecoderStep s = {.x = x, .n = n, .pos0 = 0, .pos_dev = pos, .table = tbl, .tables_dev = tabs, .kv = kv,
                     .bf16 = bf16, .logits = logits};
    DsocrStatus st = decoder_forward(g_m, w, &s, e);
    free(x), free(pos);
    return st;
}

static void test_two_sequences(void) {
    const int D = g_m->cfg.hidden_size, V = g_m->cfg.vocab_size, L = g_m->cfg.num_hidden_layers;
    const int len[SEQS] = {7, 19};
    /* sequence 0 in blocks 0, 1, 2 of the shared pool, sequence 1 in 5, 3, 6 (not in order) */
    const int32_t tabs_shared[SEQS][3] = {{0, 1, 2}, {5, 3, 6}}, tab_alone[3] = {0, 1, 2};
    int32_t ids[SEQS][32];
    for (int s = 0; s < SEQS; s++)
        for (int i = 0; i < len[s]; i++) ids[s][i] = (int32_t)((i * 7919 + s * 104729 + 13) % (V - 1)) + 1;
    for (int bf = 0; bf < 2; bf++) {
        DsError e = {0};
        DecoderWork *w = NULL;
        REQUIRE(decoder_work_new(g_m, 32, &w, &e) == DSOCR_OK);
        /* alone: each sequence in its own pool; its inputs each step: the previous step's argmax */
        static float alone[SEQS][STEPS + 1][1 << 17];
        REQUIRE((size_t)V <= sizeof alone[0][0] / sizeof(float));
        int32_t toks[SEQS][STEPS];
        for (int s = 0; s < SEQS; s++) {
            KvCache kv;
            REQUIRE(kvcache_new_typed(&kv, L, D, BS, BLOCKS, bf ? DS_BF16 : DS_F32, &e) == DSOCR_OK);
            REQUIRE(prefill(w, &kv, tab_alone, ids[s], len[s], bf, alone[s][0], &e) == DSOCR_OK);
            const int32_t *tabs[1] = {tab_alone};
            for (int t = 0; t < STEPS; t++) {
                toks[s][t] = argmax(alone[s][t], V);
                int32_t pos = len[s] + t;
                float x[4096];
                REQUIRE(D <= 4096);
                decoder_embed(g_m, &toks[s][t], 1, x);
                DecoderStep st = {.x = x, .n = 1, .pos_dev = &pos, .tables_dev = tabs, .kv = &kv, .bf16 = bf,
                                  .logits = alone[s][t + 1]};
                REQUIRE(decoder_forward(g_m, w, &st, &e) == DSOCR_OK);
            }
            kvcache_free(&kv);
        }
        /* together: one pool, both prefilled, then one row of each sequence a step */
        KvCache kv;
        REQUIRE(kvcache_new_typed(&kv, L, D, BS, BLOCKS, bf ? DS_BF16 : DS_F32, &e) == DSOCR_OK);
        float *logits = malloc(sizeof(float) * (size_t)SEQS * V);
        int same_prefill = 1, same_step = 1;
        for (int s = 0; s < SEQS; s++) {
            REQUIRE(prefill(w, &kv, tabs_shared[s], ids[s], len[s], bf, logits, &e) == DSOCR_OK);
            same_prefill &= !memcmp(logits, alone[s][0], sizeof(float) * (size_t)V);
        }
        const int32_t *tabs[SEQS] = {tabs_shared[0], tabs_shared[1]}, seq[SEQS] = {0, 1};
        for (int t = 0; t < STEPS; t++) {
            int32_t pos[SEQS], tk[SEQS];
            for (int s = 0; s < SEQS; s++) pos[s] = len[s] + t, tk[s] = toks[s][t];
            float *x = malloc(sizeof(float) * (size_t)SEQS * D);
            decoder_embed(g_m, tk, SEQS, x);
            DecoderStep st = {.x = x, .n = SEQS, .pos_dev = pos, .tables_dev = tabs, .seq_dev = seq, .kv = &kv,
                              .bf16 = bf, .logits = logits};
            REQUIRE(decoder_forward(g_m, w, &st, &e) == DSOCR_OK);
            for (int s = 0; s < SEQS; s++) {
                const int ok = !memcmp(logits + (size_t)s * V, alone[s][t + 1], sizeof(float) * (size_t)V);
                CHECKF(ok, "bf16 %d step %d: sequence %d's logits in the batch differ from its own run", bf, t, s);
                same_step &= ok;
            }
            free(x);
        }
        CHECKF(same_prefill, "bf16 %d: a prefill into the shared pool differs from one into a pool of its own", bf);
        printf("  bf16 %d: %d sequences x %d steps, logits the same as alone: %s\n", bf, SEQS, STEPS,
               same_step && same_prefill ? "yes" : "no");
        free(logits);
        kvcache_free(&kv);
        decoder_work_free(w);
    }
}

int main(void) {
    if (setup() != 0) {
        fprintf(stderr, "setup failed\n");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_two_sequences);
    model_free(g_m);
    fixture_rmdir(g_dir);
    return check_summary();
}
