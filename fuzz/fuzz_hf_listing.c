/* fuzz_hf_listing.c: the Hugging Face file-listing parser of `dsocr pull` on arbitrary bytes (a mirror or a
 * proxy controls them). An accepted listing holds only safe relative paths, hex hashes of the right length and
 * NUL-terminated strings; file selection on it either succeeds with at least one file or names its cause. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pull.h"

static int hex_ok(const char *s, size_t n) {
    size_t l = strlen(s);
    if (l == 0) return 1;
    if (l != n) return 0;
    for (size_t i = 0; i < l; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    PullListing l;
    DsError e = {0};
    if (pull_parse_listing((const char *)data, size, &l, &e) != DSOCR_OK) {
        if (!e.msg[0] || l.files || l.n_files) abort();
        return 0;
    }
    if (strlen(l.commit) >= sizeof l.commit || strlen(l.license) >= sizeof l.license) abort();
    for (int i = 0; i < l.n_files; i++) {
        const PullFile *f = &l.files[i];
        if (!f->path || !pull_path_safe(f->path)) abort();
        if (!hex_ok(f->sha256, 64) || !hex_ok(f->git_oid, 40)) abort();
    }
    unsigned char *sel = malloc(l.n_files ? (size_t)l.n_files : 1);
    if (!sel) abort();
    static const char *types[] = {NULL, "Q8_0", "f16"};
    for (int t = 0; t < 3; t++) {
        DsError e2 = {0};
        if (pull_select(&l, types[t], sel, &e2) == DSOCR_OK) {
            int n = 0;
            for (int i = 0; i < l.n_files; i++) n += sel[i];
            if (n == 0) abort();
        } else if (!e2.msg[0]) {
            abort();
        }
    }
    free(sel);
    pull_listing_free(&l);
    return 0;
}
