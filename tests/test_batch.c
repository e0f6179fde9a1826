/* test_batch.c: rows of several sequences in one decoder pass (decoder.h DecoderStep.seq_dev, issue 13's batched
 * decode) on the small random model (tests/ckpt_fixture.h), CPU backend: two sequences with their own prompts and
 * block tables in one shared KV pool, prefilled one after the other, then decoded together a row each step, give
 * every step's logits bit for bit as each sequence decoded alone in a pool of its own, in fp32 and bf16 mode; and
 * engine_ocr_batch: pages of different sizes (so different prompt lengths) decoded together give each page the
 * tokens, text and stop reason dsocr_ocr gives it alone, with and without EOS stops, in both compat modes. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "ckpt_fixture.h"
#include "decoder.h"
#include "dsocr.h"
#include "engine.h"
#include "model.h"
#include "ops.h"

enum { SEQS = 2, STEPS = 4, BS = 16, BLOCKS = 8 };

static char *g_dir;
static Model *g_m;
static int *g_counts1; /* the counter whose on_token stops its page at 3 */

static int setup(void) {
    DsError e = {0};
    if (fixture_tiny_model(&g_dir, &g_m) || model_place(g_m, backend_cpu(), &e) != DSOCR_OK) return -1;
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

/* on_token: counts a page's pieces (user: its counter); the page counting into g_counts1 stops at 3 */
static int count_token(void *user, int id, const char *text, size_t len) {
    (void)id, (void)text, (void)len;
    int *c = user;
    ++*c;
    return c == g_counts1 && *c >= 3;
}

static void page_done(void *user, int page, const DsocrResult *r) {
    struct Done {
        int *seen, n;
    } *d = user;
    if (page >= 0 && page < 5 && r && r->tokens) d->seen[page]++;
    d->n++;
}

/* on_done for the fairness check: the pages in the order they end */
static void order_done(void *user, int page, const DsocrResult *r) {
    (void)r;
    int *ord = user; /* ord[0]: how many so far, then the pages */
    if (ord[0] < 8) ord[1 + ord[0]++] = page;
}

static void test_engine_batch(void) {
    const char *files[3] = {"tests/images/small.png", "tests/images/portrait.jpg", "tests/images/wide.png"};
    EnginePage pages[3];
    char *buf[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        size_t len = 0;
        REQUIRE(ds_read_file(files[i], 1 << 24, &buf[i], &len, NULL) == 0);
        pages[i] = (EnginePage){.image = buf[i], .len = len};
    }
    DsocrModel *dm = NULL;
    DsocrSession *s = NULL;
    char err[512];
    REQUIRE(dsocr_model_load(g_dir, NULL, &dm, err, sizeof err) == DSOCR_OK);
    REQUIRE(dsocr_session_new(dm, NULL, &s, err, sizeof err) == DSOCR_OK);
    for (int k = 0; k < 4; k++) {
        DsocrOcrOptions o;
        dsocr_ocr_options_default(&o);
        o.mode = k < 2 ? "small" : "gundam";
        o.max_tokens = 10 + 7 * k;
        o.ignore_eos = k % 2 == 0;
        o.compat = k == 3 ? DSOCR_COMPAT_VLLM : DSOCR_COMPAT_HF;
        if (k == 1) o.no_repeat_ngram = 1; /* the guard bans every id seen before (mask_ids, argmax_rows) */
        DsocrResult batch[3], alone;
        REQUIRE(engine_ocr_batch(s, pages, 3, &o, batch) == DSOCR_OK);
        for (int i = 0; i < 3; i++) {
            REQUIRE(dsocr_ocr(s, pages[i].image, pages[i].len, &o, &alone) == DSOCR_OK);
            CHECKF(batch[i].n_prompt == alone.n_prompt && batch[i].n_tokens == alone.n_tokens &&
                       !memcmp(batch[i].tokens, alone.tokens, sizeof(int) * (size_t)alone.n_tokens) &&
                       batch[i].stop == alone.stop && !strcmp(batch[i].text, alone.text),
                   "case %d page %d: the batch gave %d tokens (stop %d), alone %d (stop %d)", k, i, batch[i].n_tokens,
                   batch[i].stop, alone.n_tokens, alone.stop);
            dsocr_result_free(&alone);
        }
        printf("  case %d (%s, max %d, ignore_eos %d, compat %d, ngram %d): prompts %d / %d / %d, tokens %d / %d / %d\n", k, o.mode,
               o.max_tokens, o.ignore_eos, (int)o.compat, o.no_repeat_ngram, batch[0].n_prompt, batch[1].n_prompt, batch[2].n_prompt,
               batch[0].n_tokens, batch[1].n_tokens, batch[2].n_tokens);
        for (int i = 0; i < 3; i++) dsocr_result_free(&batch[i]);
    }
    /* five pages, at most two at a time (each joins at a token boundary when one leaves, the pool growing for
     * the larger prompts): the same results; on_done hears of each page once, when it stops */
    {
        EnginePage five[5] = {pages[0], pages[1], pages[2], pages[1], pages[0]};
        DsocrOcrOptions o;
        dsocr_ocr_options_default(&o);
        o.mode = "tiny";
        o.max_tokens = 9;
        o.ignore_eos = 1;
        DsocrResult rq[5], alone;
        int seen[5] = {0};
        struct Done {
            int *seen, n;
        } done = {seen, 0};
        REQUIRE(engine_ocr_queue(s, five, 5, 2, &o, rq, page_done, &done) == DSOCR_OK);
        CHECK(done.n == 5);
        for (int i = 0; i < 5; i++) {
            CHECKF(seen[i] == 1, "page %d reported %d times", i, seen[i]);
            REQUIRE(dsocr_ocr(s, five[i].image, five[i].len, &o, &alone) == DSOCR_OK);
            CHECKF(rq[i].n_tokens == alone.n_tokens && !memcmp(rq[i].tokens, alone.tokens, sizeof(int) * (size_t)alone.n_tokens) &&
                       !strcmp(rq[i].text, alone.text),
                   "queued page %d differs from its run alone", i);
            dsocr_result_free(&alone);
            dsocr_result_free(&rq[i]);
        }
    }
    /* fairness: a long page (30 tokens) first, then four short ones (4 tokens), two rows at a time: the short ones
     * take the other row in turn while the long one goes on (none waits for it), so it ends last; every page's
     * tokens as alone */
    {
        DsocrOcrOptions lo, so;
        dsocr_ocr_options_default(&lo);
        lo.mode = "tiny", lo.max_tokens = 30, lo.ignore_eos = 1;
        so = lo;
        so.max_tokens = 4;
        EnginePage five[5];
        for (int i = 0; i < 5; i++) five[i] = (EnginePage){.image = pages[i % 3].image, .len = pages[i % 3].len,
                                                            .opt = i ? &so : &lo};
        DsocrResult rq[5], alone;
        int ord[9] = {0};
        REQUIRE(engine_ocr_queue(s, five, 5, 2, NULL, rq, order_done, ord) == DSOCR_OK);
        CHECKF(ord[0] == 5 && ord[1] == 1 && ord[2] == 2 && ord[3] == 3 && ord[4] == 4 && ord[5] == 0,
               "pages ended in the order %d %d %d %d %d (of %d), want 1 2 3 4 0", ord[1], ord[2], ord[3], ord[4], ord[5],
               ord[0]);
        for (int i = 0; i < 5; i++) {
            REQUIRE(dsocr_ocr(s, five[i].image, five[i].len, five[i].opt, &alone) == DSOCR_OK);
            CHECKF(rq[i].n_tokens == alone.n_tokens && !memcmp(rq[i].tokens, alone.tokens, sizeof(int) * (size_t)alone.n_tokens),
                   "fairness page %d differs from its run alone", i);
            dsocr_result_free(&alone);
            dsocr_result_free(&rq[i]);
        }
    }
    /* pages with options of their own in one batch: modes, lengths, compat and the n-gram guard differ; page 1's
     * on_token stops it after 3 tokens, page 2's counts its pieces; each result as alone */
    {
        DsocrOcrOptions po[3];
        int counts[3] = {0, 0, 0};
        g_counts1 = &counts[1];
        for (int i = 0; i < 3; i++) {
            dsocr_ocr_options_default(&po[i]);
            po[i].mode = i == 0 ? "tiny" : i == 1 ? "small" : "base";
            po[i].max_tokens = 6 + 5 * i;
            po[i].ignore_eos = 1;
            po[i].compat = i == 2 ? DSOCR_COMPAT_VLLM : DSOCR_COMPAT_HF;
            po[i].on_token = i ? count_token : NULL;
            po[i].user = &counts[i];
        }
        EnginePage own[3];
        for (int i = 0; i < 3; i++) own[i] = (EnginePage){.image = pages[i].image, .len = pages[i].len, .opt = &po[i]};
        DsocrResult rq[3], alone;
        REQUIRE(engine_ocr_queue(s, own, 3, 3, NULL, rq, NULL, NULL) == DSOCR_OK);
        CHECK(rq[1].n_tokens == 3 && rq[1].stop == DSOCR_STOP_CALLBACK && counts[1] == 3);
        CHECK(rq[2].n_tokens == 16 && counts[2] == 16);
        for (int i = 0; i < 3; i++) {
            counts[1] = counts[2] = 0;
            REQUIRE(dsocr_ocr(s, own[i].image, own[i].len, &po[i], &alone) == DSOCR_OK);
            CHECKF(rq[i].n_prompt == alone.n_prompt && rq[i].n_tokens == alone.n_tokens && rq[i].stop == alone.stop &&
                       !memcmp(rq[i].tokens, alone.tokens, sizeof(int) * (size_t)alone.n_tokens) &&
                       !strcmp(rq[i].text, alone.text),
                   "page %d with its own options differs from its run alone", i);
            dsocr_result_free(&alone);
            dsocr_result_free(&rq[i]);
        }
    }
    /* bad sizes are refused with a message, and the session goes on */
    DsocrResult r[1];
    CHECK(engine_ocr_batch(s, pages, 0, NULL, r) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(dsocr_session_error(s), "at least one page");
    EnginePage bad[2] = {pages[0], {.image = "not an image", .len = 12}};
    DsocrResult rb[2];
    CHECK(engine_ocr_batch(s, bad, 2, NULL, rb) != DSOCR_OK);
    CHECK_STR_CONTAINS(dsocr_session_error(s), "page 1");
    CHECK(rb[0].tokens != NULL && rb[0].n_tokens > 0 && rb[1].tokens == NULL); /* the good page's result is kept */
    dsocr_result_free(&rb[0]);
    DsocrOcrOptions o;
    dsocr_ocr_options_default(&o);
    o.max_tokens = 4;
    CHECK(engine_ocr_batch(s, pages, 1, &o, r) == DSOCR_OK && r[0].n_tokens > 0);
    dsocr_result_free(&r[0]);
    dsocr_session_free(s);
    dsocr_model_free(dm);
    for (int i = 0; i < 3; i++) free(buf[i]);
}

int main(void) {
    SETUP_OR_FAIL(setup() == 0);
    RUN(test_two_sequences);
    RUN(test_engine_batch);
    model_free(g_m);
    fixture_rmdir(g_dir);
    return check_summary();
}
