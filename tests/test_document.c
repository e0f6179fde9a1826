/* test_document.c: the document layer without a model (a recogniser that answers a committed grounded page):
 * a 200-page PDF streams with flat memory (peak RSS of 200 pages within 10% of 5), page selections, formats,
 * PDFs and images from memory with no output folder (the server's entry point), the renderer's limits. */
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "ckpt_fixture.h"
#include "document.h"

static char *g_dir;
static char *g_raw;
static size_t g_raw_len;
static int g_calls;

/* Answers every page with the committed grounded output, one "token" per byte run of 16. */
static DsocrStatus fake_ocr(void *user, DsocrSession *s, const void *image, size_t len, const DsocrOcrOptions *o,
                            const EngineDebug *dbg, DsocrResult *out) {
    (void)user, (void)s, (void)image, (void)len, (void)dbg;
    memset(out, 0, sizeof *out);
    g_calls++;
    int n = (int)((g_raw_len + 15) / 16);
    out->text = malloc(g_raw_len + 1);
    out->tokens = malloc(sizeof(int) * (size_t)n);
    memcpy(out->text, g_raw, g_raw_len + 1);
    out->text_len = g_raw_len;
    for (int i = 0; i < n; i++) {
        out->tokens[i] = 1000 + i;
        size_t a = (size_t)i * 16, l = g_raw_len - a < 16 ? g_raw_len - a : 16;
        if (o->on_token) o->on_token(o->user, 1000 + i, g_raw + a, l);
    }
    out->n_tokens = n;
    out->n_prompt = 100;
    out->n_views = 1;
    out->stop = DSOCR_STOP_EOS;
    return DSOCR_OK;
}

static void opts(DocOptions *o) {
    document_options_default(o);
    o->ocr.mode = "tiny";
    o->recognize = fake_ocr;
    o->dpi = 72;
}

/* Peak RSS (KiB) of a child that runs pages 1..last of the 200-page PDF into its own folder. */
static long rss_child(const char *pdf, const char *pages, const char *out) {
    int fd[2];
    if (pipe(fd)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        DocOptions o;
        opts(&o);
        o.pages = pages;
        o.out_dir = out;
        o.out_stem = "big";
        o.formats = DOC_FMT_MD | DOC_FMT_JSON | DOC_FMT_TXT | DOC_FMT_RAW | DOC_FMT_BOXES | DOC_FMT_CROPS;
        Document *d = NULL;
        DsError e = {0};
        long r = -1;
        if (document_open(pdf, &o, &d, &e) == DSOCR_OK && document_run(NULL, d, &o, NULL, &e) == DSOCR_OK) {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            r = ru.ru_maxrss;
        } else {
            fprintf(stderr, "child: %s\n", e.msg);
        }
        document_close(d);
        if (write(fd[1], &r, sizeof r) != sizeof r) _exit(1);
        _exit(0);
    }
    close(fd[1]);
    long r = -1;
    if (read(fd[0], &r, sizeof r) != sizeof r) r = -1;
    close(fd[0]);
    waitpid(pid, NULL, 0);
    return r;
}

static void test_flat_memory_200_pages(void) {
    char pdf[600], cmd[2000], out5[600], out200[600];
    snprintf(pdf, sizeof pdf, "%s/big.pdf", g_dir);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"from PIL import Image, ImageDraw\n"
             "ims=[]\nfor i in range(200):\n im=Image.new('RGB',(160,200),(255,255,255))\n"
             " ImageDraw.Draw(im).text((10,10),'page %%d'%%(i+1),fill=(0,0,0))\n ims.append(im)\n"
             "ims[0].save('%s','PDF',save_all=True,append_images=ims[1:],resolution=72)\"",
             pdf);
    REQUIRE(system(cmd) == 0);
    snprintf(out5, sizeof out5, "%s/o5", g_dir);
    snprintf(out200, sizeof out200, "%s/o200", g_dir);
    long r5 = rss_child(pdf, "1-5", out5), r200 = rss_child(pdf, NULL, out200);
    printf("peak RSS: 5 pages %ld KiB, 200 pages %ld KiB\n", r5, r200);
    REQUIRE(r5 > 0 && r200 > 0);
    CHECKF(r200 <= r5 + r5 / 10, "200 pages %ld KiB vs 5 pages %ld KiB", r200, r5);
    /* every page has its outputs */
    int missing = 0;
    for (int p = 1; p <= 200; p++) {
        char f[800];
        struct stat st;
        snprintf(f, sizeof f, "%s/big.pages/%04d.json", out200, p);
        missing += stat(f, &st) != 0;
        snprintf(f, sizeof f, "%s/big.pages/%04d-boxes.jpg", out200, p);
        missing += stat(f, &st) != 0;
        snprintf(f, sizeof f, "%s/images/big-%04d-1.jpg", out200, p);
        missing += stat(f, &st) != 0;
    }
    CHECK(missing == 0);
    char *md = NULL;
    size_t n;
    snprintf(cmd, sizeof cmd, "%s/big.md", out200);
    REQUIRE(ds_read_file(cmd, 1 << 26, &md, &n, NULL) == DSOCR_OK);
    int splits = 0;
    for (char *p = md; (p = strstr(p, "<--- Page Split --->")); p++) splits++;
    CHECK(splits == 199);
    CHECK_STR_CONTAINS(md, "![](images/big-0200-1.jpg)");
    free(md);
}

static void test_buffer_no_output(void) {
    char *png = NULL, *pdf = NULL;
    size_t pl, fl;
    REQUIRE(ds_read_file("tests/images/small.png", 1 << 24, &png, &pl, NULL) == DSOCR_OK);
    DocOptions o;
    opts(&o);
    Document *d = NULL;
    cJSON *js = NULL;
    REQUIRE(document_open_buffer(png, pl, "upload.png", &o, &d, NULL) == DSOCR_OK);
    CHECK(!document_is_pdf(d) && document_page_count(d) == 1);
    REQUIRE(document_run(NULL, d, &o, &js, NULL) == DSOCR_OK);
    const cJSON *pages = cJSON_GetObjectItem(js, "pages");
    CHECK(cJSON_GetArraySize(pages) == 1);
    const cJSON *p0 = cJSON_GetArrayItem(pages, 0);
    CHECK(!strcmp(cJSON_GetObjectItem(p0, "status")->valuestring, "ok"));
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(p0, "blocks")) == 6);
    CHECK(!strcmp(cJSON_GetObjectItem(js, "source")->valuestring, "upload.png"));
    cJSON_Delete(js);
    document_close(d);
    /* a PDF from memory, pages 2-3 */
    char path[600];
    snprintf(path, sizeof path, "%s/big.pdf", g_dir);
    REQUIRE(ds_read_file(path, 1 << 26, &pdf, &fl, NULL) == DSOCR_OK);
    o.pages = "2-3";
    REQUIRE(document_open_buffer(pdf, fl, "upload.pdf", &o, &d, NULL) == DSOCR_OK);
    CHECK(document_is_pdf(d) && document_page_count(d) == 200);
    REQUIRE(document_run(NULL, d, &o, &js, NULL) == DSOCR_OK);
    pages = cJSON_GetObjectItem(js, "pages");
    CHECK(cJSON_GetArraySize(pages) == 2 && cJSON_GetArrayItem(pages, 0) &&
          cJSON_GetObjectItem(cJSON_GetArrayItem(pages, 0), "page")->valueint == 2);
    cJSON_Delete(js);
    document_close(d);
    /* junk bytes that claim to be a PDF: an error naming the upload, not the temporary file */
    const char junk[] = "%PDF-1.4 not really";
    DsError e = {0};
    CHECK(document_open_buffer(junk, sizeof junk - 1, "junk.pdf", &o, &d, &e) == DSOCR_E_FORMAT && d == NULL);
    CHECK_STR_CONTAINS(e.msg, "junk.pdf");
    CHECK(strstr(e.msg, "dsocr-pdf-") == NULL);
    CHECK(document_open_buffer("hello", 5, "x.txt", &o, &d, &e) == DSOCR_E_IMAGE);
    free(png);
    free(pdf);
}

static void test_selections(void) {
    unsigned char sel[10];
    char err[256];
    CHECK(document_parse_pages("1-3,7", 10, sel, err, sizeof err) == 4 && sel[0] && sel[2] && !sel[3] && sel[6]);
    CHECK(document_parse_pages("9-", 10, sel, err, sizeof err) == 2 && sel[8] && sel[9]);
    CHECK(document_parse_pages("5-20", 10, sel, err, sizeof err) == 6);
    CHECK(document_parse_pages(NULL, 10, sel, err, sizeof err) == 10);
    CHECK(document_parse_pages("11-12", 10, sel, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "selects no page");
    const char *bad[] = {"0", "3-1", "a", "1,,2", "-3", "1-2x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(document_parse_pages(bad[i], 10, sel, err, sizeof err) == -1, "%s", bad[i]);
    unsigned f;
    CHECK(document_parse_formats("md,boxes", &f, err, sizeof err) == 0 && f == (DOC_FMT_MD | DOC_FMT_BOXES));
    CHECK(document_parse_formats("md,pdf", &f, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "pdf");
}

static void test_child_limits(void) {
    PdfOptions o;
    pdf_options_default(&o);
    o.timeout_s = 1;
    char *out = NULL, err[256];
    size_t n;
    int status;
    DsError e = {0};
    char *sl[] = {"/bin/sleep", "5", NULL};
    double t0 = ds_now();
    CHECK(pdf_run_child(sl, &o, &out, &n, err, sizeof err, &status, &e) == DSOCR_E_IO);
    CHECK(ds_now() - t0 < 3);
    CHECK_STR_CONTAINS(e.msg, "longer than");
    o.timeout_s = 10;
    o.max_output = 1000;
    char *yes[] = {"/usr/bin/yes", NULL};
    CHECK(pdf_run_child(yes, &o, &out, &n, err, sizeof err, &status, &e) == DSOCR_E_IO);
    CHECK_STR_CONTAINS(e.msg, "more than");
    char *ok[] = {"/bin/echo", "hi", NULL};
    REQUIRE(pdf_run_child(ok, &o, &out, &n, err, sizeof err, &status, &e) == DSOCR_OK);
    CHECK(status == 0 && n == 3 && !strcmp(out, "hi\n"));
    free(out);
}

int main(void) {
    g_dir = fixture_tmpdir();
    if (!g_dir || ds_read_file("tests/fixtures/grounded/doc_page.raw.md", 1 << 20, &g_raw, &g_raw_len, NULL)) return 1;
    RUN(test_selections);
    RUN(test_child_limits);
    RUN(test_flat_memory_200_pages);
    RUN(test_buffer_no_output);
    fixture_rmdir(g_dir);
    free(g_raw);
    return check_summary();
}
