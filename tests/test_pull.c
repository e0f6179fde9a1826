/* test_pull.c: the pieces of `dsocr pull` that need no network: SHA-256 and SHA-1 against the FIPS 180 vectors
 * (and across odd update splits), the listing parser on both Hub shapes and on bad input, safe paths, file
 * selection (safetensors and GGUF), the cache folder and the folder states. The transfers are tested against
 * a local Hub imitation in tests/py/test_pull.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "pull.h"

static void sha256_of(const void *p, size_t n, char hex[65]) {
    PullSha256 s;
    pull_sha256_init(&s);
    pull_sha256_update(&s, p, n);
    pull_sha256_final(&s, hex);
}

static void test_sha256_vectors(void) {
    char hex[65];
    sha256_of("", 0, hex);
    CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    sha256_of("abc", 3, hex);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56 bytes: padding spills */
    sha256_of(two, strlen(two), hex);
    CHECK(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    /* a million 'a' in uneven pieces gives the same digest as FIPS 180's */
    static char a[1000000];
    memset(a, 'a', sizeof a);
    PullSha256 s;
    pull_sha256_init(&s);
    size_t off = 0, step = 1;
    while (off < sizeof a) {
        size_t n = step < sizeof a - off ? step : sizeof a - off;
        pull_sha256_update(&s, a + off, n);
        off += n;
        step = step * 3 % 1021 + 1;
    }
    pull_sha256_final(&s, hex);
    CHECK(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
}

static void test_sha1_vectors(void) {
    char hex[41];
    PullSha1 s;
    pull_sha1_init(&s);
    pull_sha1_update(&s, "abc", 3);
    pull_sha1_final(&s, hex);
    CHECK(!strcmp(hex, "a9993e364706816aba3e25717850c26c9cd0d89d"));
    /* git's blob id of "hello\n" (git hash-object) */
    pull_sha1_init(&s);
    pull_sha1_update(&s, "blob 6\0", 7);
    pull_sha1_update(&s, "hello\n", 6);
    pull_sha1_final(&s, hex);
    CHECK(!strcmp(hex, "ce013625030ba8dba906f756967f9e9ca394464a"));
}

static const char *INFO =
    "{\"id\":\"deepseek-ai/DeepSeek-OCR\",\"sha\":\"0123456789ABCDEF0123456789abcdef01234567\","
    "\"cardData\":{\"license\":\"mit\"},\"siblings\":["
    "{\"rfilename\":\"config.json\",\"size\":2666,\"blobId\":\"ce013625030ba8dba906f756967f9e9ca394464a\"},"
    "{\"rfilename\":\"model-00001-of-000001.safetensors\",\"size\":134,\"blobId\":"
    "\"a9993e364706816aba3e25717850c26c9cd0d89d\",\"lfs\":{\"sha256\":"
    "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":6672212480,\"pointerSize\":134}},"
    "{\"rfilename\":\"model.safetensors.index.json\",\"size\":247000},"
    "{\"rfilename\":\"LICENSE\",\"size\":1065},{\"rfilename\":\"README.md\",\"size\":9000},"
    "{\"rfilename\":\"modeling_deepseekocr.py\",\"size\":40000},{\"rfilename\":\"assets/fig1.png\",\"size\":9},"
    "{\"rfilename\":\"pytorch_model.bin\",\"size\":9}]}";

static void test_parse_model_info(void) {
    PullListing l;
    DsError e = {0};
    REQUIRE(pull_parse_listing(INFO, strlen(INFO), &l, &e) == DSOCR_OK);
    CHECK(l.n_files == 8);
    CHECK(!strcmp(l.commit, "0123456789abcdef0123456789abcdef01234567")); /* lowercased */
    CHECK(!strcmp(l.license, "mit"));
    CHECK(!strcmp(l.files[1].path, "model-00001-of-000001.safetensors"));
    CHECK(l.files[1].size == 6672212480ull); /* the LFS object's size, not the pointer's */
    CHECK(!strcmp(l.files[1].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    CHECK(l.files[0].sha256[0] == 0 && !strcmp(l.files[0].git_oid, "ce013625030ba8dba906f756967f9e9ca394464a"));
    unsigned char sel[8];
    REQUIRE(pull_select(&l, NULL, sel, &e) == DSOCR_OK);
    const unsigned char want[8] = {1, 1, 1, 1, 1, 0, 0, 0}; /* no code, no nested assets, no .bin */
    CHECK(!memcmp(sel, want, 8));
    CHECK(pull_select(&l, "Q8_0", sel, &e) != DSOCR_OK);
    CHECK_STR_CONTAINS(e.msg, "no GGUF model file");
    pull_listing_free(&l);
}

static void test_parse_tree_and_gguf(void) {
    const char *tree =
        "[{\"type\":\"directory\",\"oid\":\"x\",\"size\":0,\"path\":\"assets\"},"
        "{\"type\":\"file\",\"oid\":\"a9993e364706816aba3e25717850c26c9cd0d89d\",\"size\":1065,\"path\":\"LICENSE\"},"
        "{\"type\":\"file\",\"size\":100,\"path\":\"DeepSeek-OCR-Q8_0.gguf\",\"lfs\":{\"oid\":"
        "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":3000000000}},"
        "{\"type\":\"file\",\"size\":100,\"path\":\"DeepSeek-OCR-F16.gguf\",\"lfs\":{\"oid\":"
        "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":6000000000}},"
        "{\"type\":\"file\",\"size\":100,\"path\":\"mmproj-DeepSeek-OCR-F16.gguf\",\"lfs\":{\"oid\":"
        "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":800000000}},"
        "{\"type\":\"file\",\"size\":100,\"path\":\"mmproj-DeepSeek-OCR-Q8_0.gguf\",\"lfs\":{\"oid\":"
        "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":400000000}}]";
    PullListing l;
    DsError e = {0};
    REQUIRE(pull_parse_listing(tree, strlen(tree), &l, &e) == DSOCR_OK);
    CHECK(l.n_files == 5 && l.commit[0] == 0);
    CHECK(l.files[1].size == 3000000000ull);
    unsigned char sel[5];
    REQUIRE(pull_select(&l, "q8_0", sel, &e) == DSOCR_OK);
    const unsigned char want[5] = {1, 1, 0, 0, 1};
    CHECK(!memcmp(sel, want, 5));
    REQUIRE(pull_select(&l, "F16", sel, &e) == DSOCR_OK);
    const unsigned char want16[5] = {1, 0, 1, 1, 0};
    CHECK(!memcmp(sel, want16, 5));
    CHECK(pull_select(&l, "Q4_K_M", sel, &e) != DSOCR_OK);
    CHECK_STR_CONTAINS(e.msg, "DeepSeek-OCR-Q8_0.gguf");
    CHECK(pull_select(&l, NULL, sel, &e) != DSOCR_OK);
    CHECK_STR_CONTAINS(e.msg, "--gguf");
    pull_listing_free(&l);
}

static void test_parse_refuses(void) {
    static const struct {
        const char *json, *msg;
    } bad[] = {
        {"", "not valid JSON"},
        {"42", "neither an object nor an array"},
        {"{\"error\":\"Repository not found\"}", "Repository not found"},
        {"{\"siblings\":[{\"rfilename\":\"../x\",\"size\":1}]}", "unsafe path"},
        {"{\"siblings\":[{\"rfilename\":\"/etc/passwd\",\"size\":1}]}", "unsafe path"},
        {"{\"siblings\":[{\"rfilename\":\"a/./b\",\"size\":1}]}", "unsafe path"},
        {"{\"siblings\":[{\"rfilename\":\"a\\\\b\",\"size\":1}]}", "unsafe path"},
        {"{\"siblings\":[{\"rfilename\":\"a\\nb\",\"size\":1}]}", "unsafe path"},
        {"{\"siblings\":[{\"rfilename\":\"a\"}]}", "has no size"},
        {"{\"siblings\":[{\"rfilename\":\"a\",\"size\":-1}]}", "has no size"},
        {"{\"siblings\":[{\"rfilename\":\"a\",\"size\":1.5}]}", "has no size"},
        {"{\"siblings\":[{\"rfilename\":\"a\",\"size\":1,\"lfs\":{\"sha256\":\"abc\",\"size\":1}}]}", "sha256"},
        {"{\"siblings\":[{\"rfilename\":\"a\",\"size\":1,\"lfs\":{\"sha256\":"
         "\"zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":1}}]}",
         "sha256"},
        {"{\"siblings\":[{\"rfilename\":\"a\",\"size\":1,\"blobId\":\"12\"}]}", "git blob id"},
        {"{\"siblings\":[{\"rfilename\":\"a\",\"size\":1},{\"rfilename\":\"a\",\"size\":2}]}", "twice"},
        {"{\"sha\":\"nothex\",\"siblings\":[]}", "commit"},
        {"[{\"type\":\"file\",\"path\":7,\"size\":1}]", "\"path\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PullListing l;
        DsError e = {0};
        CHECKF(pull_parse_listing(bad[i].json, strlen(bad[i].json), &l, &e) != DSOCR_OK, "%s", bad[i].json);
        CHECKF(strstr(e.msg, bad[i].msg) != NULL, "%s: '%s'", bad[i].json, e.msg);
        CHECK(l.files == NULL && l.n_files == 0);
        pull_listing_free(&l);
    }
    CHECK(pull_path_safe("config.json") && pull_path_safe("a/b.c") && pull_path_safe("..x"));
    CHECK(!pull_path_safe("") && !pull_path_safe("a/") && !pull_path_safe("a//b") && !pull_path_safe(".."));
}

static void test_cache_dir(void) {
    char buf[4096];
    setenv("XDG_CACHE_HOME", "/tmp/xdg", 1);
    REQUIRE(pull_cache_dir(NULL, buf, sizeof buf) == 0);
    CHECK(!strcmp(buf, "/tmp/xdg/dsocr/models/deepseek-ai/DeepSeek-OCR"));
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/home/u", 1);
    REQUIRE(pull_cache_dir("a/b", buf, sizeof buf) == 0);
    CHECK(!strcmp(buf, "/home/u/.cache/dsocr/models/a/b"));
    setenv("XDG_CACHE_HOME", "relative", 1); /* the XDG spec ignores relative paths */
    REQUIRE(pull_cache_dir("a/b", buf, sizeof buf) == 0);
    CHECK(!strcmp(buf, "/home/u/.cache/dsocr/models/a/b"));
    CHECK(pull_cache_dir("a/b", buf, 10) == -1);
}

static void put(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) fputs(text, f), fclose(f);
}

static void test_folder_state(void) {
    char dir[] = "/tmp/dsocr_test_pull_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char why[256];
    CHECK(pull_folder_state("/nonexistent/dsocr", why, sizeof why) == PULL_ABSENT);
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_ABSENT);
    CHECK_STR_CONTAINS(why, "no config.json");
    put(dir, "config.json", "{}"); /* a hand-made folder: no record, config.json present */
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_COMPLETE);
    put(dir, PULL_MARKER, "{\"complete\":false,\"files\":[{\"path\":\"config.json\",\"size\":2}]}");
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_INCOMPLETE);
    CHECK_STR_CONTAINS(why, "interrupted");
    put(dir, PULL_MARKER, "{\"complete\":true,\"files\":[{\"path\":\"config.json\",\"size\":2},"
                          "{\"path\":\"w.safetensors\",\"size\":5}]}");
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_INCOMPLETE);
    CHECK_STR_CONTAINS(why, "w.safetensors is missing");
    put(dir, "w.safetensors", "1234");
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_INCOMPLETE);
    CHECK_STR_CONTAINS(why, "mis-sized");
    put(dir, "w.safetensors", "12345");
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_COMPLETE);
    put(dir, PULL_MARKER, "{\"complete\":true,\"files\":[{\"path\":\"../etc/passwd\",\"size\":2}]}");
    CHECK(pull_folder_state(dir, why, sizeof why) == PULL_INCOMPLETE);
    char p[512];
    const char *names[] = {"config.json", "w.safetensors", PULL_MARKER};
    for (int i = 0; i < 3; i++) snprintf(p, sizeof p, "%s/%s", dir, names[i]), unlink(p);
    rmdir(dir);
}

int main(void) {
    RUN(test_sha256_vectors);
    RUN(test_sha1_vectors);
    RUN(test_parse_model_info);
    RUN(test_parse_tree_and_gguf);
    RUN(test_parse_refuses);
    RUN(test_cache_dir);
    RUN(test_folder_state);
    return check_summary();
}
