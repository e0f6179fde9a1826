/* test_tokenizer.c: the tokenizer against Hugging Face's own outputs (data/tokenizer/encode.jsonl, decode.jsonl),
 * plus golden prompts, both merge formats, ignore_merges, added-token flags, streaming decode, threads,
 * pathological long inputs, and malformed tokenizer.json files that must fail with a message naming the problem. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "gguf.h"
#include "tokenizer.h"
#include "util.h"

#define TOK_JSON "data/tokenizer/tokenizer.json"

static Tokenizer *g_tok;

static int ids_equal(const int32_t *a, size_t na, const cJSON *arr) {
    if ((size_t)cJSON_GetArraySize(arr) != na) return 0;
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsNumber(it) || it->valuedouble != (double)a[i]) return 0;
        i++;
    }
    return 1;
}

static int32_t *ids_of(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) ids[i++] = (int32_t)it->valuedouble;
    return ids;
}

/* Calls fn on every line of a JSONL file; returns the number of lines. */
static size_t each_line(const char *path, void (*fn)(const cJSON *obj, size_t line, void *user), void *user) {
    char *data = NULL;
    size_t len = 0;
    DsError e = {0};
    if (ds_read_file(path, 64u << 20, &data, &len, &e)) {
        fprintf(stderr, "  %s\n", e.msg);
        return 0;
    }
    size_t lines = 0;
    for (char *p = data, *nl; p < data + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(data + len - p));
        if (!nl) nl = data + len;
        if (nl == p) continue;
        cJSON *obj = cJSON_ParseWithLength(p, (size_t)(nl - p));
        lines++;
        if (!obj) {
            fprintf(stderr, "  %s:%zu: bad JSON\n", path, lines);
            continue;
        }
        fn(obj, lines, user);
        cJSON_Delete(obj);
    }
    free(data);
    return lines;
}

static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t b = (uint8_t)s[i];
        size_t k = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if (((uint8_t)s[i + j] & 0xC0) != 0x80) return 0;
        i += k;
    }
    return 1;
}

typedef struct Tally {
    size_t ok, bad;
} Tally;

static void check_encode_line(const cJSON *obj, size_t line, void *user) {
    Tally *t = user;
    const cJSON *text = cJSON_GetObjectItem(obj, "text"), *want = cJSON_GetObjectItem(obj, "ids");
    int32_t *ids = NULL;
    size_t n = 0;
    DsError e = {0};
    const char *s = cJSON_GetStringValue(text);
    DsocrStatus st = tokenizer_encode(g_tok, s, strlen(s), &ids, &n, &e);
    int good = st == DSOCR_OK && ids_equal(ids, n, want);
    /* The ids must also decode back to the text exactly. */
    char *back = NULL;
    size_t blen = 0;
    if (good && tokenizer_decode(g_tok, ids, n, 0, &back, &blen, &e) == DSOCR_OK)
        good = blen == strlen(s) && !memcmp(back, s, blen);
    else good = 0;
    if (good) t->ok++;
    else if (t->bad++ < 5) {
        char *w = cJSON_PrintUnformatted(want);
        fprintf(stderr, "  encode.jsonl:%zu mismatch (st %d %s): want %.300s\n  got", line, st, e.msg, w);
        for (size_t i = 0; i < n && i < 60; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
        free(w);
    }
    free(back);
    free(ids);
}

static void test_encode_jsonl(void) {
    REQUIRE(g_tok);
    Tally t = {0};
    size_t lines = each_line("data/tokenizer/encode.jsonl", check_encode_line, &t);
    CHECKF(lines == 3289, "%zu lines", lines);
    CHECKF(t.bad == 0 && t.ok == lines, "%zu of %zu lines differ", t.bad, lines);
}

static void check_decode_line(const cJSON *obj, size_t line, void *user) {
    Tally *t = user;
    size_t n;
    int32_t *ids = ids_of(cJSON_GetObjectItem(obj, "ids"), &n);
    int good = 1;
    for (int skip = 0; skip < 2; skip++) {
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(obj, skip ? "text_skip_special" : "text"));
        char *got = NULL;
        size_t len = 0;
        DsError e = {0};
        if (tokenizer_decode(g_tok, ids, n, skip, &got, &len, &e) != DSOCR_OK || len != strlen(want) ||
            memcmp(got, want, len)) {
            good = 0;
            if (t->bad < 5) fprintf(stderr, "  decode.jsonl:%zu skip=%d: want \"%.200s\" got \"%.200s\"\n", line, skip, want, got ? got : "");
        }
        /* Streaming gives the same text, in valid UTF-8 pieces. */
        TokenizerStream *ts = NULL;
        struct {
            char *p;
            size_t n;
        } all = {0};
        if (tokenizer_stream_new(g_tok, skip, &ts, &e) == DSOCR_OK) {
            const char *piece;
            size_t pl;
            for (size_t i = 0; i <= n; i++) {
                DsocrStatus st = i < n ? tokenizer_stream_push(ts, ids[i], &piece, &pl, &e)
                                       : tokenizer_stream_flush(ts, &piece, &pl, &e);
                if (st) {
                    good = 0;
                    break;
                }
                if (!valid_utf8(piece, pl)) good = 0;
                char *np = realloc(all.p, all.n + pl + 1);
                all.p = np;
                memcpy(all.p + all.n, piece, pl);
                all.n += pl;
            }
            if (all.n != strlen(want) || (all.n && memcmp(all.p, want, all.n))) {
                good = 0;
                if (t->bad < 5) fprintf(stderr, "  decode.jsonl:%zu skip=%d: stream differs\n", line, skip);
            }
        } else {
            good = 0;
        }
        free(all.p);
        tokenizer_stream_free(ts);
        free(got);
    }
    if (good) t->ok++;
    else t->bad++;
    free(ids);
}

static void test_decode_jsonl(void) {
    REQUIRE(g_tok);
    Tally t = {0};
    size_t lines = each_line("data/tokenizer/decode.jsonl", check_decode_line, &t);
    CHECKF(lines == 480, "%zu lines", lines);
    CHECKF(t.bad == 0 && t.ok == lines, "%zu of %zu lines differ", t.bad, lines);
}

/* Encodes s and compares with the expected ids. */
static int enc_is(const Tokenizer *tk, const char *s, size_t len, const int32_t *want, size_t nwant) {
    int32_t *ids = NULL;
    size_t n = 0;
    DsError e = {0};
    if (tokenizer_encode(tk, s, len, &ids, &n, &e) != DSOCR_OK) {
        fprintf(stderr, "  encode failed: %s\n", e.msg);
        return 0;
    }
    int ok = n == nwant && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!ok) {
        fprintf(stderr, "  \"%.60s\": got", s);
        for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
    return ok;
}
#define ENC_IS(tk, s, ...)                                                                                    \
    do {                                                                                                      \
        static const int32_t w_[] = {__VA_ARGS__};                                                            \
        CHECKF(enc_is(tk, s, strlen(s), w_, sizeof w_ / sizeof *w_), "encode \"%s\"", s);                      \
    } while (0)

static void test_golden_prompts(void) {
    REQUIRE(g_tok);
    /* spec/tokenizer.md §9.4 */
    ENC_IS(g_tok, "<image>\n<|grounding|>Convert the document to markdown.", 128815, 201, 128820, 21842, 270, 4940,
           304, 2121, 7919, 16);
    ENC_IS(g_tok, "<image>\nFree OCR.", 128815, 201, 21431, 126041, 16);
    ENC_IS(g_tok, "Hello world! 12345 你好世界", 19923, 2058, 3, 223, 6895, 1883, 223, 30594, 3427);
    ENC_IS(g_tok, "don't WE'LL it's .NET #include", 20385, 1664, 33418, 9, 3699, 436, 734, 1204, 32438, 1823, 5211);
    ENC_IS(g_tok, "line1\r\nline2\n\n\n   \n", 1836, 19, 204, 201, 1836, 20, 6328, 14320);
    int32_t *ids = NULL;
    size_t n = 5;
    DsError e = {0};
    CHECK(tokenizer_encode(g_tok, "", 0, &ids, &n, &e) == DSOCR_OK && n == 0 && ids == NULL);
    CHECK(tokenizer_vocab_size(g_tok) == 128827);
    CHECK(tokenizer_token_id(g_tok, "<image>") == 128815);
    CHECK(tokenizer_token_id(g_tok, "<|Assistant|>") == 128826);
    CHECK(tokenizer_token_id(g_tok, "<｜begin▁of▁sentence｜>") == 0);
    CHECK(tokenizer_token_id(g_tok, "Ġ") == 223);
    CHECK(tokenizer_token_id(g_tok, "<imag") == -1);
    CHECK(tokenizer_token_id(g_tok, "") == -1);
    /* decode examples of §6.6 and §9.4 */
    static const int32_t d1[] = {0, 6366, 1, 128815, 128820, 128821, 128826}, d2[] = {225, 53769}, d3[] = {6366, 999999, 6366, -5};
    char *s = NULL;
    CHECK(tokenizer_decode(g_tok, d1, 7, 0, &s, NULL, &e) == DSOCR_OK &&
          !strcmp(s, "<｜begin▁of▁sentence｜>hi<｜end▁of▁sentence｜><image><|grounding|><td><|Assistant|>"));
    free(s);
    CHECK(tokenizer_decode(g_tok, d1, 7, 1, &s, NULL, &e) == DSOCR_OK && !strcmp(s, "hi"));
    free(s);
    CHECK(tokenizer_decode(g_tok, d2, 2, 0, &s, NULL, &e) == DSOCR_OK && !strcmp(s, "\xEF\xBF\xBD \xEF\xBF\xBD"));
    free(s);
    CHECK(tokenizer_decode(g_tok, d3, 4, 0, &s, NULL, &e) == DSOCR_OK && !strcmp(s, "hihi"));
    free(s);
}

static void test_bad_utf8_rejected(void) {
    REQUIRE(g_tok);
    static const char *bad[] = {"ab\xC3", "\x80", "a\xED\xA0\x80", "\xF4\x90\x80\x80", "x\xC0\xAF"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        DsError e = {0};
        CHECK(tokenizer_encode(g_tok, bad[i], strlen(bad[i]), &ids, &n, &e) == DSOCR_E_INVALID_ARG);
        CHECK_STR_CONTAINS(e.msg, "not valid UTF-8");
        CHECK(ids == NULL);
    }
    /* NUL bytes are ordinary characters */
    int32_t want[] = {tokenizer_token_id(g_tok, "a"), tokenizer_token_id(g_tok, "\xC4\x80"), 0};
    want[2] = want[0];
    CHECK(want[0] >= 0 && want[1] == 191 && enc_is(g_tok, "a\0a", 3, want, 3)); /* U+0100 stands for byte 0 */
}

/* Pathological long inputs finish quickly (no quadratic work) and round-trip exactly. */
static void test_long_inputs(void) {
    REQUIRE(g_tok);
    const size_t N = 1 << 20;
    char *s = malloc(N + 1);
    static const char *const units[] = {"a", "abcdefghij", "\xE4\xBD\xA0", "7", " ", "\n ", "<", "<|ref", "!",
                                        "\xCC\x81", "\x01", "e\xCC\x81"};
    double worst = 0;
    for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
        size_t ul = strlen(units[u]), n = 0;
        while (n + ul <= N) memcpy(s + n, units[u], ul), n += ul;
        s[n] = 0;
        int32_t *ids = NULL;
        size_t nid = 0;
        DsError e = {0};
        double t0 = ds_now();
        DsocrStatus st = tokenizer_encode(g_tok, s, n, &ids, &nid, &e);
        double dt = ds_now() - t0;
        CHECKF(st == DSOCR_OK, "unit %zu: %s", u, e.msg);
        if (dt > worst) worst = dt;
        CHECKF(dt < 2.0, "1 MB of unit %zu took %.2f s", u, dt);
        char *back = NULL;
        size_t bl = 0;
        CHECK(st || (tokenizer_decode(g_tok, ids, nid, 0, &back, &bl, &e) == DSOCR_OK && bl == n && !memcmp(back, s, n)));
        free(back);
        free(ids);
    }
    printf("slowest 1 MB pathological text: %.3f s\n", worst);
    free(s);
}

typedef struct ThreadJob {
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    int ok;
} ThreadJob;

static void *thread_encode(void *arg) {
    ThreadJob *j = arg;
    DsError e = {0};
    j->ok = 1;
    for (int r = 0; r < 5 && j->ok; r++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(g_tok, j->text, j->len, &ids, &n, &e)) j->ok = 0;
        else if (j->ids && (n != j->n || memcmp(ids, j->ids, n * sizeof *ids))) j->ok = 0;
        if (!j->ids) j->ids = ids, j->n = n;
        else free(ids);
    }
    return NULL;
}

static void test_threads(void) {
    REQUIRE(g_tok);
    char *data = NULL;
    size_t len = 0;
    DsError e = {0};
    REQUIRE(ds_read_file("data/tokenizer/encode.jsonl", 64u << 20, &data, &len, &e) == DSOCR_OK);
    /* the raw JSONL is valid UTF-8 text: good enough as a long mixed input */
    ThreadJob jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (ThreadJob){data, len, NULL, 0, 0};
        pthread_create(&th[i], NULL, thread_encode, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) {
        CHECK(jobs[i].ok);
        CHECK(jobs[i].n == jobs[0].n && !memcmp(jobs[i].ids, jobs[0].ids, jobs[0].n * sizeof(int32_t)));
    }
    for (int i = 0; i < 4; i++) free(jobs[i].ids);
    free(data);
}

/* ---- small hand-made tokenizers ---- */

/* A JSON tokenizer over the full byte alphabet plus the given extra vocab, merges and added tokens. */
static char *mini_json(const char *extra_vocab, const char *merges, const char *added, const char *model_extra,
                       const char *pre) {
    cJSON *root = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject();
    int id = 0;
    for (int b = 0; b < 256; b++) {
        int cp = b;
        if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
            int k = 0;
            for (int x = 0; x < b; x++)
                if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) k++;
            cp = 0x100 + k;
        }
        char u[4] = {0};
        if (cp < 0x80) u[0] = (char)cp;
        else u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F));
        cJSON_AddNumberToObject(vocab, u, id++);
    }
    cJSON *ev = cJSON_Parse(extra_vocab);
    cJSON *it;
    cJSON_ArrayForEach(it, ev) cJSON_AddNumberToObject(vocab, it->valuestring, id++);
    cJSON_Delete(ev);
    cJSON *model = cJSON_Parse(model_extra ? model_extra : "{\"type\":\"BPE\"}");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", cJSON_Parse(merges));
    cJSON_AddItemToObject(root, "added_tokens", cJSON_Parse(added ? added : "[]"));
    cJSON_AddItemToObject(root, "normalizer", cJSON_CreateNull());
    cJSON_AddItemToObject(root, "pre_tokenizer",
                          cJSON_Parse(pre ? pre : "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"));
    cJSON_AddItemToObject(root, "post_processor", cJSON_Parse("{\"type\":\"TemplateProcessing\"}"));
    cJSON_AddItemToObject(root, "model", model);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static Tokenizer *load_str(const char *json, DsError *e) {
    Tokenizer *t = NULL;
    tokenizer_load_json_buffer(json, strlen(json), &t, e);
    return t;
}

static void test_merge_formats_and_ignore_merges(void) {
    /* vocab ids: 256 "ab", 257 "abc", 258 "bc", 259 "abcabc" */
    const char *vocab = "[\"ab\",\"abc\",\"bc\",\"abcabc\"]";
    char *j1 = mini_json(vocab, "[\"a b\",\"ab c\",\"b c\",\"abc abc\"]", NULL, NULL, NULL);
    char *j2 = mini_json(vocab, "[[\"a\",\"b\"],[\"ab\",\"c\"],[\"b\",\"c\"],[\"abc\",\"abc\"]]", NULL, NULL, NULL);
    /* rank order matters: with "b c" first, "abc" is a + bc, and "a bc" is no merge: a, bc */
    char *j3 = mini_json(vocab, "[\"b c\",\"a b\",\"ab c\"]", NULL, NULL, NULL);
    char *j4 = mini_json(vocab, "[\"b c\",\"a b\",\"ab c\"]", NULL, "{\"type\":\"BPE\",\"ignore_merges\":true}", NULL);
    DsError e = {0};
    Tokenizer *t1 = load_str(j1, &e), *t2 = load_str(j2, &e), *t3 = load_str(j3, &e), *t4 = load_str(j4, &e);
    CHECKF(t1 && t2 && t3 && t4, "%s", e.msg);
    if (t1 && t2 && t3 && t4) {
        ENC_IS(t1, "abcabc", 259);
        ENC_IS(t2, "abcabc", 259);
        ENC_IS(t1, "abca", 257, 'a');
        ENC_IS(t3, "abc", 'a', 258);
        ENC_IS(t4, "abc", 257); /* the whole piece is in the vocab */
        ENC_IS(t4, "abcab", 'a', 258, 256);
        ENC_IS(t1, "ab ab", 256, ' ', 256); /* GPT-2 split: "ab", " ab"; byte b has id b here */
    }
    tokenizer_free(t1);
    tokenizer_free(t2);
    tokenizer_free(t3);
    tokenizer_free(t4);
    free(j1);
    free(j2);
    free(j3);
    free(j4);
}

static void test_added_token_flags(void) {
    const char *added = "[{\"id\":300,\"content\":\"<x>\",\"special\":true,\"normalized\":false},"
                        "{\"id\":301,\"content\":\"<x>>\",\"special\":false,\"normalized\":true},"
                        "{\"id\":302,\"content\":\"[L]\",\"special\":true,\"normalized\":false,\"lstrip\":true,\"rstrip\":true},"
                        "{\"id\":303,\"content\":\"ww\",\"special\":false,\"normalized\":false,\"single_word\":true}]";
    char *j = mini_json("[]", "[]", added, NULL, NULL);
    DsError e = {0};
    Tokenizer *t = load_str(j, &e);
    CHECKF(t, "%s", e.msg);
    if (t) {
        CHECK(tokenizer_vocab_size(t) == 304);
        /* the normalized=false pass runs first, so "<x>" wins over the longer "<x>>" */
        ENC_IS(t, "<x>>", 300, '>');
        ENC_IS(t, "a  [L]  b", 'a', 302, 'b');
        ENC_IS(t, "ww", 303);
        ENC_IS(t, "aww", 'a', 'w', 'w');
        static const int32_t ids[] = {300, 301, 302};
        char *s = NULL;
        CHECK(tokenizer_decode(t, ids, 3, 1, &s, NULL, &e) == DSOCR_OK && !strcmp(s, "<x>>"));
        free(s);
    }
    tokenizer_free(t);
    free(j);
}

static void test_new_from_parts(void) {
    REQUIRE(g_tok);
    /* Rebuild a small tokenizer from parts the way a GGUF loader will, using the real vocab's first 300 ids and
     * every merge among them, and check it agrees with the JSON one on a text made of those tokens. */
    static const char *vocab[256 + 2];
    char bufs[256][3];
    for (int b = 0; b < 256; b++) {
        int cp = b;
        if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
            int k = 0;
            for (int x = 0; x < b; x++)
                if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) k++;
            cp = 0x100 + k;
        }
        memset(bufs[b], 0, 3);
        if (cp < 0x80) bufs[b][0] = (char)cp;
        else bufs[b][0] = (char)(0xC0 | (cp >> 6)), bufs[b][1] = (char)(0x80 | (cp & 0x3F));
        vocab[b] = bufs[b];
    }
    vocab[256] = "he";
    vocab[257] = "hel";
    static const char *merges[] = {"h", "e", "he", "l"};
    TokenizerAddedToken added[] = {{.id = 258, .content = "<image>", .special = 1}};
    TokenizerParts p = {vocab, 258, merges, 2, added, 1, NULL, 0, 0};
    Tokenizer *t = NULL;
    DsError e = {0};
    CHECKF(tokenizer_new(&p, &t, &e) == DSOCR_OK, "%s", e.msg);
    if (t) {
        ENC_IS(t, "<image>hello", 258, 257, 'l', 'o');
        ENC_IS(t, "12345", '1', '2', '3', '4', '5');
        CHECK(tokenizer_token_id(t, "hel") == 257);
    }
    tokenizer_free(t);
    /* a merge whose result is not in the vocab */
    static const char *bad_merges[] = {"l", "o"};
    p.merges = bad_merges;
    p.n_merges = 1;
    CHECK(tokenizer_new(&p, &t, &e) == DSOCR_E_FORMAT && t == NULL);
    CHECK_STR_CONTAINS(e.msg, "not in the vocab");
    /* a regex that does not compile */
    static const char *bad_rx[] = {"[a-"};
    p.merges = merges;
    p.split_regexes = bad_rx;
    p.n_split_regexes = 1;
    CHECK(tokenizer_new(&p, &t, &e) == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "does not compile");
}

static void expect_load_error(const char *json, DsocrStatus code, const char *needle) {
    DsError e = {0};
    Tokenizer *t = NULL;
    DsocrStatus st = tokenizer_load_json_buffer(json, strlen(json), &t, &e);
    CHECKF(st == code && t == NULL, "status %d (want %d) for %.80s", st, code, json);
    CHECKF(strstr(e.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", e.msg, needle);
    tokenizer_free(t);
}

static void test_malformed_json(void) {
    char *good = mini_json("[\"ab\"]", "[\"a b\"]", NULL, NULL, NULL);
    DsError e = {0};
    Tokenizer *t = load_str(good, &e);
    CHECKF(t != NULL, "%s", e.msg);
    tokenizer_free(t);
    /* truncated at every eighth byte: never a crash, always an error */
    size_t n = strlen(good);
    for (size_t cut = 0; cut < n; cut += 8) {
        t = NULL;
        CHECK(tokenizer_load_json_buffer(good, cut, &t, &e) != DSOCR_OK && t == NULL);
    }
    free(good);
    expect_load_error("", DSOCR_E_FORMAT, "not a JSON object");
    expect_load_error("[1,2]", DSOCR_E_FORMAT, "not a JSON object");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}", DSOCR_E_FORMAT, "model has no \"merges\"");
    expect_load_error("{\"added_tokens\":[]}", DSOCR_E_FORMAT, "no \"model\"");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}}",
                      DSOCR_E_FORMAT, "model.vocab is not an object");
    char *j = mini_json("[]", "[]", NULL, "{\"type\":\"WordPiece\"}", NULL);
    expect_load_error(j, DSOCR_E_UNSUPPORTED, "WordPiece");
    free(j);
    j = mini_json("[]", "[]", NULL, NULL, "{\"type\":\"Metaspace\"}");
    expect_load_error(j, DSOCR_E_UNSUPPORTED, "Metaspace");
    free(j);
    j = mini_json("[]", "[]", NULL, NULL, "null");
    expect_load_error(j, DSOCR_E_UNSUPPORTED, "no ByteLevel stage");
    char *nfc = strstr(j, "\"normalizer\":null");
    REQUIRE(nfc);
    char *j2 = NULL;
    REQUIRE(asprintf(&j2, "%.*s\"normalizer\":{\"type\":\"NFC\"}%s", (int)(nfc - j), j, nfc + strlen("\"normalizer\":null")) > 0);
    expect_load_error(j2, DSOCR_E_UNSUPPORTED, "NFC");
    free(j2);
    free(j);
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}, \"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}}",
                      DSOCR_E_FORMAT, "byte-level symbol");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}}", DSOCR_E_FORMAT,
                      "ids must be integers");
    expect_load_error("{\"model\":{\"vocab\":{\"a\":1,}}}", DSOCR_E_FORMAT, "JSON syntax error");
    expect_load_error("{\"model\":{\"vocab\":{\"a\\q\":1}}}", DSOCR_E_FORMAT, "unknown escape");
    expect_load_error("{\"model\":{\"vocab\":{\"\\ud800\":1}}}", DSOCR_E_FORMAT, "surrogate");
    expect_load_error("{\"model\":{}} x", DSOCR_E_FORMAT, "trailing");
    /* semantic errors in a tokenizer that is otherwise complete */
    struct {
        const char *vocab, *merges, *added, *model, *pre, *needle;
    } cases[] = {
        {"[\"ab\"]", "[\"a b\", \"ab zz\"]", NULL, NULL, NULL, "merges[1]: \"zz\" is not in the vocab"},
        {"[\"ab\"]", "[\"a c\"]", NULL, NULL, NULL, "merges[0] \"a\" + \"c\": the result is not in the vocab"},
        {"[\"ab\"]", "[\"ab\"]", NULL, NULL, NULL, "not two tokens separated by one space"},
        {"[\"ab\"]", "[[\"a\"]]", NULL, NULL, NULL, "must be a pair of strings"},
        {"[\"ab\"]", "[7]", NULL, NULL, NULL, "neither a string nor an array"},
        {"[\"ab\"]", "{}", NULL, NULL, NULL, "model.merges is not an array"},
        {"[\"ab\"]", "[]", "[{\"id\":1}]", NULL, NULL, "added_tokens[0]: content missing"},
        {"[\"ab\"]", "[]", "[{\"id\":\"x\",\"content\":\"x\"}]", NULL, NULL, "added_tokens[0]: id missing"},
        {"[\"ab\"]", "[]", "[{\"id\":5,\"content\":\"\"}]", NULL, NULL, "empty content"},
        {"[\"ab\"]", "[]", "[{\"id\":5,\"content\":\"x\"},{\"id\":6,\"content\":\"x\"}]", NULL, NULL,
         "already added token 5"},
        {"[\"ab\"]", "[]", "[{\"id\":5,\"content\":\"x\",\"special\":1}]", NULL, NULL, "not a boolean"},
        {"[\"ab\"]", "[]", NULL, "{\"type\":\"BPE\",\"dropout\":0.1}", NULL, "dropout"},
        {"[\"ab\"]", "[]", NULL, "{\"type\":\"BPE\",\"ignore_merges\":3}", NULL, "ignore_merges is not a boolean"},
        {"[\"ab\"]", "[]", NULL, NULL,
         "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\",\"invert\":false}",
         "does not compile"},
        {"[\"ab\"]", "[]", NULL, NULL,
         "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Removed\",\"invert\":false}",
         "behavior Isolated"},
        {"[\"ab\"]", "[]", NULL, NULL, "{\"type\":\"ByteLevel\",\"add_prefix_space\":true}", "add_prefix_space"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        j = mini_json(cases[i].vocab, cases[i].merges, cases[i].added, cases[i].model, cases[i].pre);
        t = NULL;
        memset(&e, 0, sizeof e);
        DsocrStatus st = tokenizer_load_json_buffer(j, strlen(j), &t, &e);
        CHECKF(st != DSOCR_OK && t == NULL && strstr(e.msg, cases[i].needle), "case %zu: status %d, \"%s\"", i, st,
               e.msg);
        tokenizer_free(t);
        free(j);
    }
    /* duplicate token and duplicate id in the vocab */
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}}",
                      DSOCR_E_FORMAT, "appears twice");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}}",
                      DSOCR_E_FORMAT, "id 0 is given to both");
    /* a missing file names the path */
    CHECK(tokenizer_load_json("data/tokenizer/no-such-file.json", &t, &e) == DSOCR_E_IO);
    CHECK_STR_CONTAINS(e.msg, "no-such-file.json");
}

/* The real vocab with its merges rewritten as ["a","b"] arrays encodes the same. */
static void test_real_array_merges(void) {
    REQUIRE(g_tok);
    char *data = NULL;
    size_t len = 0;
    DsError e = {0};
    REQUIRE(ds_read_file(TOK_JSON, 64u << 20, &data, &len, &e) == DSOCR_OK);
    cJSON *root = cJSON_ParseWithLength(data, len);
    free(data);
    REQUIRE(root);
    cJSON *model = cJSON_GetObjectItem(root, "model");
    cJSON *merges = cJSON_GetObjectItem(model, "merges"), *arr = cJSON_CreateArray(), *it;
    cJSON_ArrayForEach(it, merges) {
        const char *s = it->valuestring, *sp = strchr(s, ' ');
        char *a = strndup(s, (size_t)(sp - s));
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(a));
        cJSON_AddItemToArray(pair, cJSON_CreateString(sp + 1));
        cJSON_AddItemToArray(arr, pair);
        free(a);
    }
    cJSON_ReplaceItemInObject(model, "merges", arr);
    cJSON_AddItemToObject(model, "ignore_merges", cJSON_CreateFalse());
    char *out = cJSON_Print(root); /* pretty-printed, as a save_pretrained file would be */
    cJSON_Delete(root);
    Tokenizer *t = NULL;
    CHECKF(tokenizer_load_json_buffer(out, strlen(out), &t, &e) == DSOCR_OK, "%s", e.msg);
    free(out);
    if (!t) return;
    ENC_IS(t, "<image>\n<|grounding|>Convert the document to markdown.", 128815, 201, 128820, 21842, 270, 4940, 304,
           2121, 7919, 16);
    ENC_IS(t, "  leading\n\n\ttabs  \xC2\xA0nbsp ~~~ 2\xC2\xB2\xC2\xBD\xE2\x91\xA0 caf\xC3\xA9 e\xCC\x81 \xF0\x9F\x98\x80",
           223, 6646, 271, 17299, 10284, 262, 2162, 28706, 42617, 96, 223, 20, 1628, 23951, 16994, 57664, 312, 17793,
           53769, 225);
    CHECK(tokenizer_vocab_size(t) == 128827);
    tokenizer_free(t);
}


/* The tokenizer written as GGUF metadata (tokenizer_json_to_gguf) and loaded back (tokenizer_load_gguf), with our
 * exact dsocr.* keys and with llama.cpp's keys only, reproduces Hugging Face's encodings and decodings. */
static Tokenizer *gguf_tokenizer(int dsocr_keys) {
    DsError e = {0};
    GgufWriter *w = gguf_writer_new();
    char path[] = "/tmp/dsocr_tok_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    Tokenizer *t = NULL;
    GgufFile g;
    int ok = w && f && tokenizer_json_to_gguf(TOK_JSON, 129280, 0, 1, dsocr_keys, w, &e) == DSOCR_OK &&
             gguf_writer_write_header(w, f, &e) == DSOCR_OK;
    if (f) fclose(f);
    CHECKF(ok, "%s", e.msg);
    if (ok) {
        CHECKF(gguf_open(path, &g, &e) == DSOCR_OK, "%s", e.msg);
        CHECKF(tokenizer_load_gguf(&g, &t, &e) == DSOCR_OK, "%s", e.msg);
        gguf_close(&g);
    }
    unlink(path);
    gguf_writer_free(w);
    return t;
}

static void test_gguf_tokenizer(void) {
    for (int keys = 1; keys >= 0; keys--) {
        Tokenizer *t = gguf_tokenizer(keys), *saved = g_tok;
        REQUIRE(t);
        CHECK(tokenizer_vocab_size(t) == 128827); /* the [PADn] fillers up to the model's 129280 are not ids */
        CHECK(tokenizer_token_id(t, "<image>") == 128815);
        g_tok = t;
        Tally a = {0}, b = {0};
        size_t la = each_line("data/tokenizer/encode.jsonl", check_encode_line, &a);
        size_t lb = each_line("data/tokenizer/decode.jsonl", check_decode_line, &b);
        g_tok = saved;
        CHECKF(la == 3289 && a.bad == 0, "dsocr keys %d: %zu of %zu encode lines differ", keys, a.bad, la);
        CHECKF(lb > 0 && b.bad == 0, "dsocr keys %d: %zu of %zu decode lines differ", keys, b.bad, lb);
        tokenizer_free(t);
    }
}

static void test_gguf_tokenizer_malformed(void) {
    /* a file without tokenizer keys, and one whose tokenizer model is not BPE */
    GgufWriter *w = gguf_writer_new();
    gguf_writer_str(w, "tokenizer.ggml.model", "llama");
    char path[] = "/tmp/dsocr_tok_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    DsError e = {0};
    REQUIRE(gguf_writer_write_header(w, f, &e) == DSOCR_OK);
    fclose(f);
    GgufFile g;
    REQUIRE(gguf_open(path, &g, &e) == DSOCR_OK);
    Tokenizer *t = NULL;
    CHECK(tokenizer_load_gguf(&g, &t, &e) == DSOCR_E_UNSUPPORTED && !t);
    CHECK_STR_CONTAINS(e.msg, "llama");
    gguf_close(&g);
    unlink(path);
    gguf_writer_free(w);
}

static void test_load_time(void) {
    double best = 1e9;
    for (int i = 0; i < 3; i++) {
        Tokenizer *t = NULL;
        DsError e = {0};
        double t0 = ds_now();
        DsocrStatus st = tokenizer_load_json(TOK_JSON, &t, &e);
        double dt = ds_now() - t0;
        CHECKF(st == DSOCR_OK, "%s", e.msg);
        if (dt < best) best = dt;
        tokenizer_free(t);
    }
    printf("tokenizer.json load: %.1f ms (best of 3)\n", best * 1e3);
    CHECKF(best < 0.5, "load took %.0f ms", best * 1e3); /* the 50 ms target is measured by bench_tokenizer */
}

int main(void) {
    DsError e = {0};
    if (tokenizer_load_json(TOK_JSON, &g_tok, &e)) fprintf(stderr, "cannot load %s: %s\n", TOK_JSON, e.msg);
    RUN(test_encode_jsonl);
    RUN(test_decode_jsonl);
    RUN(test_golden_prompts);
    RUN(test_bad_utf8_rejected);
    RUN(test_long_inputs);
    RUN(test_threads);
    RUN(test_merge_formats_and_ignore_merges);
    RUN(test_added_token_flags);
    RUN(test_new_from_parts);
    RUN(test_malformed_json);
    RUN(test_real_array_merges);
    RUN(test_gguf_tokenizer);
    RUN(test_gguf_tokenizer_malformed);
    RUN(test_load_time);
    tokenizer_free(g_tok);
    return check_summary();
}
