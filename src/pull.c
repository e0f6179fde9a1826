/* pull.c: Hugging Face downloads for `dsocr pull` (see pull.h for the endpoints and the folder contract):
 * SHA-256 / SHA-1 through libcrypto, the listing parser (untrusted JSON), file selection, the per-user
 * cache folder, and resumable, verified transfers over libcurl. */
#include "pull.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* ---- hashes: OpenSSL's libcrypto (SHA-NI / AVX2 code paths: the hash keeps up with a fast link) ---- */

static void *md_new(const char *name) {
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    DS_ASSERT(c != NULL);
    DS_ASSERT(EVP_DigestInit_ex(c, !strcmp(name, "sha256") ? EVP_sha256() : EVP_sha1(), NULL) == 1);
    return c;
}

static void md_hex(void *ctx, char *hex) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    DS_ASSERT(EVP_DigestFinal_ex(ctx, d, &n) == 1);
    EVP_MD_CTX_free(ctx);
    for (unsigned i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

void pull_sha256_init(PullSha256 *s) { s->ctx = md_new("sha256"); }
void pull_sha256_update(PullSha256 *s, const void *data, size_t len) {
    DS_ASSERT(EVP_DigestUpdate(s->ctx, data, len) == 1);
}
void pull_sha256_final(PullSha256 *s, char hex[65]) {
    md_hex(s->ctx, hex);
    s->ctx = NULL;
}
void pull_sha1_init(PullSha1 *s) { s->ctx = md_new("sha1"); }
void pull_sha1_update(PullSha1 *s, const void *data, size_t len) { DS_ASSERT(EVP_DigestUpdate(s->ctx, data, len) == 1); }
void pull_sha1_final(PullSha1 *s, char hex[41]) {
    md_hex(s->ctx, hex);
    s->ctx = NULL;
}
void pull_sha256_abandon(PullSha256 *s) {
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
}
void pull_sha1_abandon(PullSha1 *s) {
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
}

/* The one hash a file is checked with: the git blob sha1 ("blob SIZE\0" + bytes) of a file stored in git, else
 * the sha256 of its bytes (LFS files). */
typedef struct FileHash {
    int git;
    PullSha256 sha;
    PullSha1 sha1;
    int live;
} FileHash;

static void fh_init(FileHash *h, int git, uint64_t size) {
    h->git = git;
    h->live = 1;
    if (!git) {
        pull_sha256_init(&h->sha);
        return;
    }
    pull_sha1_init(&h->sha1);
    char hdr[48];
    int hl = snprintf(hdr, sizeof hdr, "blob %llu", (unsigned long long)size);
    pull_sha1_update(&h->sha1, hdr, (size_t)hl + 1);
}
static void fh_update(FileHash *h, const void *p, size_t n) {
    if (h->git)
        pull_sha1_update(&h->sha1, p, n);
    else
        pull_sha256_update(&h->sha, p, n);
}
static void fh_final(FileHash *h, char hex[65]) {
    if (h->git)
        pull_sha1_final(&h->sha1, hex);
    else
        pull_sha256_final(&h->sha, hex);
    h->live = 0;
}
static void fh_abandon(FileHash *h) {
    if (!h->live) return;
    if (h->git)
        pull_sha1_abandon(&h->sha1);
    else
        pull_sha256_abandon(&h->sha);
    h->live = 0;
}

/* ---- listing ---- */

int pull_path_safe(const char *path) {
    size_t len = strlen(path);
    if (len == 0 || len > 1024 || path[0] == '/') return 0;
    const char *seg = path;
    for (const char *p = path;; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '/' || ch == 0) {
            size_t sl = (size_t)(p - seg);
            if (sl == 0 || (sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.')) return 0;
            if (!ch) return 1;
            seg = p + 1;
        } else if (ch < 0x20 || ch == 0x7f || ch == '\\') {
            return 0;
        }
    }
}

/* Copies a hex string of exactly n digits, lowercased, into out (n+1 bytes); 0 when it is not one. */
static int take_hex(const cJSON *v, size_t n, char *out) {
    if (!cJSON_IsString(v) || strlen(v->valuestring) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = v->valuestring[i];
        if (!isxdigit((unsigned char)ch)) return 0;
        out[i] = (char)tolower((unsigned char)ch);
    }
    out[n] = 0;
    return 1;
}

static int take_size(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* Display form of an untrusted string for messages: at most 60 bytes, control bytes as '?'. */
static const char *shown(const char *s, char buf[64]) {
    size_t i = 0;
    for (; s && s[i] && i < 60; i++) buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = 0;
    return buf;
}

void pull_listing_free(PullListing *l) {
    if (!l) return;
    for (int i = 0; i < l->n_files; i++) free(l->files[i].path);
    free(l->files);
    memset(l, 0, sizeof *l);
}

/* One file entry of either shape: name_key "rfilename" (model info) or "path" (tree). */
static DsocrStatus parse_entry(const cJSON *it, int tree, PullFile *f, DsError *e) {
    char b[64];
    if (!cJSON_IsObject(it)) return ds_fail(e, DSOCR_E_FORMAT, "a file entry is not a JSON object");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, tree ? "path" : "rfilename");
    if (!cJSON_IsString(name))
        return ds_fail(e, DSOCR_E_FORMAT, "a file entry has no \"%s\" string", tree ? "path" : "rfilename");
    if (!pull_path_safe(name->valuestring))
        return ds_fail(e, DSOCR_E_FORMAT, "the listing names an unsafe path '%s'", shown(name->valuestring, b));
    const cJSON *lfs = cJSON_GetObjectItemCaseSensitive(it, "lfs");
    if (lfs && !cJSON_IsNull(lfs)) {
        if (!cJSON_IsObject(lfs))
            return ds_fail(e, DSOCR_E_FORMAT, "'%s': \"lfs\" is not an object", shown(name->valuestring, b));
        if (!take_hex(cJSON_GetObjectItemCaseSensitive(lfs, tree ? "oid" : "sha256"), 64, f->sha256))
            return ds_fail(e, DSOCR_E_FORMAT, "'%s': the LFS sha256 is not 64 hex digits",
                           shown(name->valuestring, b));
        if (!take_size(cJSON_GetObjectItemCaseSensitive(lfs, "size"), &f->size))
            return ds_fail(e, DSOCR_E_FORMAT, "'%s': the LFS size is missing or not a byte count",
                           shown(name->valuestring, b));
    } else if (!take_size(cJSON_GetObjectItemCaseSensitive(it, "size"), &f->size)) {
        return ds_fail(e, DSOCR_E_FORMAT,
                       "'%s' has no size (a model-info listing needs ?blobs=true)", shown(name->valuestring, b));
    }
    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(it, tree ? "oid" : "blobId");
    if (oid && !take_hex(oid, 40, f->git_oid))
        return ds_fail(e, DSOCR_E_FORMAT, "'%s': the git blob id is not 40 hex digits", shown(name->valuestring, b));
    if (!(f->path = strdup(name->valuestring))) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    return DSOCR_OK;
}

static void take_license(const cJSON *root, PullListing *l) {
    const cJSON *card = cJSON_GetObjectItemCaseSensitive(root, "cardData");
    const cJSON *lic = card ? cJSON_GetObjectItemCaseSensitive(card, "license") : NULL;
    if (cJSON_IsArray(lic)) lic = cJSON_GetArrayItem(lic, 0);
    if (cJSON_IsString(lic)) {
        char b[64];
        snprintf(l->license, sizeof l->license, "%s", shown(lic->valuestring, b));
        return;
    }
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(root, "tags"), *t;
    cJSON_ArrayForEach(t, tags) {
        if (cJSON_IsString(t) && !strncmp(t->valuestring, "license:", 8)) {
            char b[64];
            snprintf(l->license, sizeof l->license, "%s", shown(t->valuestring + 8, b));
            return;
        }
    }
}

DsocrStatus pull_parse_listing(const char *json, size_t len, PullListing *out, DsError *e) {
    memset(out, 0, sizeof *out);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return ds_fail(e, DSOCR_E_FORMAT, "the file listing is not valid JSON");
    DsocrStatus st = DSOCR_OK;
    const cJSON *arr;
    int tree = cJSON_IsArray(root);
    if (tree) {
        arr = root;
    } else if (cJSON_IsObject(root)) {
        arr = cJSON_GetObjectItemCaseSensitive(root, "siblings");
        if (!cJSON_IsArray(arr)) {
            const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
            char b[64];
            st = cJSON_IsString(err) ? ds_fail(e, DSOCR_E_FORMAT, "the listing is an error: %s",
                                               shown(err->valuestring, b))
                                     : ds_fail(e, DSOCR_E_FORMAT, "the listing has no \"siblings\" array");
            goto out;
        }
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(root, "sha");
        if (sha && !take_hex(sha, 40, out->commit) && !take_hex(sha, 64, out->commit)) {
            st = ds_fail(e, DSOCR_E_FORMAT, "the listing's commit \"sha\" is not a hex commit id");
            goto out;
        }
        take_license(root, out);
    } else {
        st = ds_fail(e, DSOCR_E_FORMAT, "the file listing is neither an object nor an array");
        goto out;
    }
    int n = cJSON_GetArraySize(arr);
    if (n > 100000) {
        st = ds_fail(e, DSOCR_E_FORMAT, "the listing has %d entries (more than 100000)", n);
        goto out;
    }
    out->files = calloc(n ? (size_t)n : 1, sizeof *out->files);
    if (!out->files) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto out;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (tree) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(it, "type");
            if (cJSON_IsString(type) && strcmp(type->valuestring, "file") != 0) continue; /* directories */
        }
        PullFile *f = &out->files[out->n_files];
        if ((st = parse_entry(it, tree, f, e))) goto out;
        for (int j = 0; j < out->n_files; j++)
            if (!strcmp(out->files[j].path, f->path)) {
                char b[64];
                st = ds_fail(e, DSOCR_E_FORMAT, "the listing names '%s' twice", shown(f->path, b));
                free(f->path);
                f->path = NULL;
                goto out;
            }
        out->n_files++;
    }
out:
    cJSON_Delete(root);
    if (st) pull_listing_free(out);
    return st;
}

/* ---- selection ---- */

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}
static int has_ci(const char *s, const char *needle) { return strcasestr(s, needle) != NULL; }

static int is_doc(const char *p) { return !strncasecmp(p, "LICENSE", 7) || !strcasecmp(p, "README.md"); }

DsocrStatus pull_select(const PullListing *l, const char *gguf, unsigned char *sel, DsError *e) {
    memset(sel, 0, (size_t)l->n_files);
    if (!gguf) {
        int weights = 0, config = 0;
        for (int i = 0; i < l->n_files; i++) {
            const char *p = l->files[i].path;
            if (strchr(p, '/')) continue;
            if (ends_with(p, ".safetensors")) sel[i] = 1, weights++;
            if (ends_with(p, ".json") || is_doc(p)) sel[i] = 1;
            if (!strcmp(p, "config.json")) config = 1;
        }
        if (!weights || !config)
            return ds_fail(e, DSOCR_E_MODEL,
                           "the repository has no %s at its top level: it is not a safetensors model folder%s",
                           !config ? "config.json" : "*.safetensors weights",
                           !weights ? " (for GGUF files use --gguf TYPE)" : "");
        return DSOCR_OK;
    }
    int model = -1, nmodel = 0, proj = -1, nproj = 0, proj_typed = -1;
    char types[512] = "";
    for (int i = 0; i < l->n_files; i++) {
        const char *p = l->files[i].path;
        if (strchr(p, '/')) continue;
        if (is_doc(p)) sel[i] = 1;
        if (!ends_with(p, ".gguf")) continue;
        int is_proj = !strncasecmp(p, "mmproj", 6);
        if (is_proj) {
            nproj++;
            if (proj < 0) proj = i;
            if (has_ci(p, gguf)) proj_typed = i;
            continue;
        }
        size_t tl = strlen(types);
        if (tl + strlen(p) + 3 < sizeof types) snprintf(types + tl, sizeof types - tl, "%s%s", tl ? ", " : "", p);
        if (has_ci(p, gguf)) model = i, nmodel++;
    }
    if (nmodel != 1)
        return ds_fail(e, DSOCR_E_MODEL, "%s GGUF model file names '%s'; the repository has: %s",
                       nmodel ? "more than one" : "no", gguf, types[0] ? types : "no *.gguf model files");
    if (nproj == 0)
        return ds_fail(e, DSOCR_E_MODEL, "the repository has no mmproj-*.gguf vision file to go with %s",
                       l->files[model].path);
    if (proj_typed < 0 && nproj > 1) {
        static const char *pref[] = {"f16", "bf16", "q8_0"};
        for (int k = 0; k < 3 && proj_typed < 0; k++)
            for (int i = 0; i < l->n_files; i++)
                if (!strchr(l->files[i].path, '/') && !strncasecmp(l->files[i].path, "mmproj", 6) &&
                    ends_with(l->files[i].path, ".gguf") && has_ci(l->files[i].path, pref[k])) {
                    proj_typed = i;
                    break;
                }
    }
    sel[model] = 1;
    sel[proj_typed >= 0 ? proj_typed : proj] = 1;
    return DSOCR_OK;
}

/* ---- folders ---- */

int pull_cache_dir(const char *repo, char *buf, size_t n) {
    if (!repo) repo = PULL_DEFAULT_REPO;
    const char *x = getenv("XDG_CACHE_HOME");
    int len;
    if (x && x[0] == '/') {
        len = snprintf(buf, n, "%s/dsocr/models/%s", x, repo);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home) {
            struct passwd *pw = getpwuid(getuid());
            home = pw ? pw->pw_dir : NULL;
        }
        if (!home || !*home) return -1;
        len = snprintf(buf, n, "%s/.cache/dsocr/models/%s", home, repo);
    }
    return len < 0 || (size_t)len >= n ? -1 : 0;
}

static int path_join(char *buf, size_t n, const char *a, const char *b, const char *suffix) {
    int len = snprintf(buf, n, "%s/%s%s", a, b, suffix ? suffix : "");
    return len < 0 || (size_t)len >= n ? -1 : 0;
}

static int file_size(const char *path, uint64_t *size) {
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode)) return -1;
    *size = (uint64_t)st.st_size;
    return 0;
}

static int has_gguf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d))) found = ends_with(de->d_name, ".gguf");
    closedir(d);
    return found;
}

PullState pull_folder_state(const char *dir, char *why, size_t n) {
    char path[PATH_MAX];
    char tmp[8];
    if (!why) why = tmp, n = sizeof tmp;
    why[0] = 0;
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        snprintf(why, n, "no folder %s", dir);
        return PULL_ABSENT;
    }
    if (path_join(path, sizeof path, dir, PULL_MARKER, NULL)) return PULL_ABSENT;
    char *txt = NULL;
    size_t len = 0;
    DsError e = {0};
    if (ds_read_file(path, 64u << 20, &txt, &len, &e) != DSOCR_OK) {
        uint64_t sz;
        if ((!path_join(path, sizeof path, dir, "config.json", NULL) && !file_size(path, &sz)) || has_gguf(dir))
            return PULL_COMPLETE;
        snprintf(why, n, "no config.json in %s", dir);
        return PULL_ABSENT;
    }
    PullState state = PULL_COMPLETE;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    const cJSON *files = root ? cJSON_GetObjectItemCaseSensitive(root, "files") : NULL;
    const cJSON *complete = root ? cJSON_GetObjectItemCaseSensitive(root, "complete") : NULL;
    if (!cJSON_IsArray(files)) {
        snprintf(why, n, "%s/%s is unreadable", dir, PULL_MARKER);
        state = PULL_INCOMPLETE;
        goto out;
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, files) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(f, "path");
        uint64_t want, have;
        if (!cJSON_IsString(p) || !pull_path_safe(p->valuestring) ||
            !take_size(cJSON_GetObjectItemCaseSensitive(f, "size"), &want) ||
            path_join(path, sizeof path, dir, p->valuestring, NULL)) {
            snprintf(why, n, "%s/%s is unreadable", dir, PULL_MARKER);
            state = PULL_INCOMPLETE;
            goto out;
        }
        if (file_size(path, &have) || have != want) {
            char b[64];
            snprintf(why, n, "%s is %s", shown(p->valuestring, b), file_size(path, &have) ? "missing" : "mis-sized");
            state = PULL_INCOMPLETE;
            goto out;
        }
    }
    if (!cJSON_IsTrue(complete)) {
        snprintf(why, n, "an interrupted pull into %s", dir);
        state = PULL_INCOMPLETE;
    }
out:
    cJSON_Delete(root);
    return state;
}


/* ---- HTTP ---- */

typedef struct Xfer {
    /* response facts, reset at each status line (redirects) */
    char err_code[64], err_msg[256];
    long range_start; /* Content-Range start of the response, -1 when none */
    /* memory sink (listing) */
    char *mem;
    size_t mem_len, mem_cap, mem_max;
    /* file sink */
    int fd;
    uint64_t offset;  /* bytes already in the file before this response */
    uint64_t written; /* bytes of this response written */
    uint64_t total;   /* expected full size */
    int started, too_big, write_errno;
    FileHash hash;
    /* an error body (HTTP >= 400) kept for messages */
    char body[512];
    size_t body_len;
    /* progress */
    const PullOptions *opt;
    const char *name;
    double t0, last;
    CURL *c;
} Xfer;

static void lcopy_header(char *dst, size_t n, const char *v, size_t len) {
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) len--;
    while (len && *v == ' ') v++, len--;
    if (len >= n) len = n - 1;
    for (size_t i = 0; i < len; i++) dst[i] = ((unsigned char)v[i] < 0x20) ? '?' : v[i];
    dst[len] = 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *user) {
    Xfer *x = user;
    size_t len = size * nitems;
    if (len >= 5 && !strncmp(buf, "HTTP/", 5)) {
        x->err_code[0] = x->err_msg[0] = 0;
        x->range_start = -1;
        return len;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon) return len;
    size_t kl = (size_t)(colon - buf);
    const char *v = colon + 1;
    size_t vl = len - kl - 1;
    if (kl == 12 && !strncasecmp(buf, "x-error-code", kl)) lcopy_header(x->err_code, sizeof x->err_code, v, vl);
    if (kl == 15 && !strncasecmp(buf, "x-error-message", kl)) lcopy_header(x->err_msg, sizeof x->err_msg, v, vl);
    if (kl == 13 && !strncasecmp(buf, "content-range", kl)) {
        char tmp[96];
        lcopy_header(tmp, sizeof tmp, v, vl);
        unsigned long long s;
        if (sscanf(tmp, "bytes %llu-", &s) == 1) x->range_start = (long)s;
    }
    return len;
}

static void keep_body(Xfer *x, const char *p, size_t len) {
    size_t room = sizeof x->body - 1 - x->body_len;
    if (len > room) len = room;
    memcpy(x->body + x->body_len, p, len);
    x->body_len += len;
    x->body[x->body_len] = 0;
}

static size_t on_mem(char *p, size_t size, size_t nmemb, void *user) {
    Xfer *x = user;
    size_t len = size * nmemb;
    long code = 0;
    curl_easy_getinfo(x->c, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 300) {
        keep_body(x, p, len);
        return len;
    }
    if (x->mem_len + len > x->mem_max) {
        x->too_big = 1;
        return 0;
    }
    if (x->mem_len + len + 1 > x->mem_cap) {
        size_t nc = x->mem_cap ? x->mem_cap : 65536;
        while (nc < x->mem_len + len + 1) nc *= 2;
        char *nm = realloc(x->mem, nc);
        if (!nm) return 0;
        x->mem = nm, x->mem_cap = nc;
    }
    memcpy(x->mem + x->mem_len, p, len);
    x->mem_len += len;
    x->mem[x->mem_len] = 0;
    return len;
}

static size_t on_file(char *p, size_t size, size_t nmemb, void *user) {
    Xfer *x = user;
    size_t len = size * nmemb;
    long code = 0;
    curl_easy_getinfo(x->c, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 300) {
        keep_body(x, p, len);
        return len;
    }
    if (!x->started) {
        x->started = 1;
        if (code == 206) {
            if (x->range_start != (long)x->offset) return 0; /* a range we did not ask for */
        } else if (x->offset) {                              /* 200: the server ignored the range */
            if (ftruncate(x->fd, 0) || lseek(x->fd, 0, SEEK_SET) < 0) {
                x->write_errno = errno;
                return 0;
            }
            x->offset = 0;
            int git = x->hash.git;
            fh_abandon(&x->hash);
            fh_init(&x->hash, git, x->total);
        }
    }
    if (x->offset + x->written + len > x->total) {
        x->too_big = 1;
        return 0;
    }
    for (size_t done = 0; done < len;) {
        ssize_t w = write(x->fd, p + done, len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            x->write_errno = errno;
            return 0;
        }
        done += (size_t)w;
    }
    fh_update(&x->hash, p, len);
    x->written += len;
    return len;
}

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    Xfer *x = user;
    if (!x->opt->progress) return 0;
    double now = ds_now();
    if (now - x->last < 0.1) return 0;
    x->last = now;
    double rate = now > x->t0 ? (double)x->written / (now - x->t0) : 0;
    x->opt->progress(x->opt->user, x->name, x->offset + x->written, x->total, rate);
    return 0;
}

typedef struct Http {
    const char *token;
    char auth[4096 + 32];
} Http;

/* One GET. range_from > 0 asks for bytes range_from-. Returns the curl code; *code gets the HTTP status. */
static CURLcode http_get(const Http *h, const char *url, Xfer *x, int to_file, uint64_t range_from, long *code) {
    CURL *c = curl_easy_init();
    if (!c) return CURLE_FAILED_INIT;
    x->c = c;
    x->range_start = -1;
    struct curl_slist *hdrs = NULL;
    if (h->token) hdrs = curl_slist_append(hdrs, h->auth);
    hdrs = curl_slist_append(hdrs, "Accept: application/json, */*");
    char ua[64];
    snprintf(ua, sizeof ua, "dsocr/%s", DSOCR_VERSION);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_USERAGENT, ua);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    /* custom Authorization headers are not sent to another host:port after a redirect (curl >= 7.58) */
    curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L); /* stalled 60 s: treated as a lost connection */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_file ? on_file : on_mem);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    if (to_file) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
    }
    char range[48];
    if (range_from) {
        snprintf(range, sizeof range, "%llu-", (unsigned long long)range_from);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    }
    CURLcode rc = curl_easy_perform(c);
    *code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    x->c = NULL;
    return rc;
}

static int transient_curl(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

/* Message for an HTTP failure status from the Hub. what = "listing REPO" or a file name. */
static DsocrStatus http_fail(DsError *e, long code, const Xfer *x, const PullOptions *o, const char *endpoint,
                             const char *repo, const char *what) {
    char detail[300] = "";
    if (x->err_msg[0])
        snprintf(detail, sizeof detail, " (\"%s\")", x->err_msg);
    else if (x->err_code[0])
        snprintf(detail, sizeof detail, " (%s)", x->err_code);
    if (code == 401) {
        if (o->token)
            return ds_fail(e, DSOCR_E_IO,
                           "%s: 401 Unauthorized from %s%s: the token in HF_TOKEN was refused; check that it is "
                           "valid and can read %s",
                           what, endpoint, detail, repo);
        return ds_fail(e, DSOCR_E_IO,
                       "%s: 401 Unauthorized from %s%s: %s is private or gated, or does not exist (the Hub "
                       "answers 401 for both). If you have access, set HF_TOKEN to a read token (from "
                       "%s/settings/tokens) and run again",
                       what, endpoint, detail, repo, endpoint);
    }
    if (code == 403)
        return ds_fail(e, DSOCR_E_IO,
                       "%s: 403 Forbidden from %s%s: this token does not give access to %s; for a gated model, "
                       "accept its conditions on %s/%s first",
                       what, endpoint, detail, repo, endpoint, repo);
    if (code == 404) {
        if (!strcmp(x->err_code, "RevisionNotFound"))
            return ds_fail(e, DSOCR_E_IO, "%s: 404 from %s%s: %s has no revision '%s' (a branch, tag or commit)",
                           what, endpoint, detail, repo, o->revision ? o->revision : "main");
        return ds_fail(e, DSOCR_E_IO, "%s: 404 Not Found from %s%s: check the repository name '%s'%s", what,
                       endpoint, detail, repo, o->revision ? " and --revision" : "");
    }
    if (code == 429)
        return ds_fail(e, DSOCR_E_IO, "%s: 429 Too Many Requests from %s%s: wait a while and run again%s", what,
                       endpoint, detail, o->token ? "" : " (requests with HF_TOKEN set get a higher limit)");
    return ds_fail(e, DSOCR_E_IO, "%s: HTTP %ld from %s%s", what, code, endpoint, detail);
}

/* Percent-encodes s for a URL path; keeps '/' when keep_slash. */
static int url_escape(char *out, size_t n, const char *s, int keep_slash) {
    static const char hexd[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int plain = isalnum(*p) || strchr("-._~", *p) || (keep_slash && *p == '/');
        if (o + 4 > n) return -1;
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hexd[*p >> 4];
            out[o++] = hexd[*p & 15];
        }
    }
    out[o] = 0;
    return 0;
}

static int repo_name_ok(const char *r) {
    int slashes = 0;
    size_t len = strlen(r);
    if (len == 0 || len > 200 || r[0] == '/' || r[len - 1] == '/' || strstr(r, "..") || strstr(r, "//")) return 0;
    for (const char *p = r; *p; p++) {
        if (*p == '/')
            slashes++;
        else if (!isalnum((unsigned char)*p) && !strchr("-_.", *p))
            return 0;
    }
    return slashes <= 1;
}

static void say(const PullOptions *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const PullOptions *o, const char *fmt, ...) {
    if (!o->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    o->log(o->user, line);
}

static void human(char *buf, size_t n, uint64_t b) {
    if (b >= 1000000000ull)
        snprintf(buf, n, "%.2f GB", (double)b / 1e9);
    else if (b >= 1000000ull)
        snprintf(buf, n, "%.1f MB", (double)b / 1e6);
    else if (b >= 1000ull)
        snprintf(buf, n, "%.1f kB", (double)b / 1e3);
    else
        snprintf(buf, n, "%llu B", (unsigned long long)b);
}

/* Hashes a whole file with its FileHash kind (git = 1: git blob sha1). */
static int hash_file(const char *path, int git, uint64_t size, char *hex) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    char *buf = malloc(1 << 20);
    if (!buf) {
        close(fd);
        return -1;
    }
    FileHash h;
    fh_init(&h, git, size);
    int rc = 0;
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 20);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = -1;
        if (r <= 0) break;
        fh_update(&h, buf, (size_t)r);
    }
    free(buf);
    close(fd);
    if (rc)
        fh_abandon(&h);
    else
        fh_final(&h, hex);
    return rc;
}

/* The pull record: every selected file with its size and hash; complete = 1 once all are in place. */
static int write_marker(const char *dir, const PullListing *l, const unsigned char *sel, const char *repo,
                        const char *revision, const char *endpoint, int complete) {
    cJSON *root = cJSON_CreateObject(), *files = cJSON_CreateArray();
    if (!root || !files) {
        cJSON_Delete(root);
        cJSON_Delete(files);
        return -1;
    }
    cJSON_AddStringToObject(root, "repo", repo);
    cJSON_AddStringToObject(root, "revision", revision);
    cJSON_AddStringToObject(root, "commit", l->commit);
    cJSON_AddStringToObject(root, "endpoint", endpoint);
    cJSON_AddStringToObject(root, "license", l->license);
    cJSON_AddBoolToObject(root, "complete", complete);
    cJSON_AddNumberToObject(root, "time", (double)time(NULL));
    cJSON_AddItemToObject(root, "files", files);
    for (int i = 0; i < l->n_files; i++) {
        if (!sel[i]) continue;
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "path", l->files[i].path);
        cJSON_AddNumberToObject(f, "size", (double)l->files[i].size);
        if (l->files[i].sha256[0]) cJSON_AddStringToObject(f, "sha256", l->files[i].sha256);
        if (l->files[i].git_oid[0]) cJSON_AddStringToObject(f, "git_oid", l->files[i].git_oid);
        cJSON_AddItemToArray(files, f);
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    if (!txt) return -1;
    char path[PATH_MAX], tmp[PATH_MAX];
    int rc = -1;
    if (!path_join(path, sizeof path, dir, PULL_MARKER, NULL) &&
        !path_join(tmp, sizeof tmp, dir, PULL_MARKER, ".tmp")) {
        FILE *f = fopen(tmp, "w");
        if (f) {
            int ok = fputs(txt, f) >= 0 && fputc('\n', f) != EOF;
            ok = (fclose(f) == 0) && ok;
            rc = ok && !rename(tmp, path) ? 0 : -1;
            if (rc) unlink(tmp);
        }
    }
    free(txt);
    return rc;
}

/* The hash the previous complete pull recorded for path, when it matches (size, sha256/oid); 1 if it does. */
static int recorded_same(const cJSON *old, const PullFile *f) {
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(old, "files"), *it;
    cJSON_ArrayForEach(it, files) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "path");
        if (!cJSON_IsString(p) || strcmp(p->valuestring, f->path)) continue;
        uint64_t sz;
        if (!take_size(cJSON_GetObjectItemCaseSensitive(it, "size"), &sz) || sz != f->size) return 0;
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(it, f->sha256[0] ? "sha256" : "git_oid");
        return cJSON_IsString(h) && !strcmp(h->valuestring, f->sha256[0] ? f->sha256 : f->git_oid);
    }
    return 0;
}

/* Downloads one file into place (see pull.h). */
static DsocrStatus fetch_file(const Http *h, const PullOptions *o, const char *endpoint, const char *repo,
                              const char *rev_enc, const char *dir, const PullFile *f, DsError *e) {
    char final[PATH_MAX], part[PATH_MAX], url[8192], penc[4096], hb[32];
    if (path_join(final, sizeof final, dir, f->path, NULL) || path_join(part, sizeof part, dir, f->path, ".part") ||
        url_escape(penc, sizeof penc, f->path, 1))
        return ds_fail(e, DSOCR_E_IO, "%s: path too long", f->path);
    snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", endpoint, repo, rev_enc, penc);
    if (ds_mkdirs(final, 0)) return ds_fail(e, DSOCR_E_IO, "cannot create the folder for %s: %s", final, strerror(errno));
    int git = !f->sha256[0] && f->git_oid[0];
    int resumed_any = 0;
    int retries = o->retries < 0 ? 5 : o->retries;
    double delay = o->retry_delay > 0 ? o->retry_delay : 1.0;
    for (int attempt = 0;; attempt++) {
        int fd = open(part, O_RDWR | O_CREAT, 0644);
        if (fd < 0) return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", part, strerror(errno));
        struct stat st;
        uint64_t have = fstat(fd, &st) ? 0 : (uint64_t)st.st_size;
        if (have > f->size) have = 0; /* longer than the file: start again */
        if (ftruncate(fd, (off_t)have) || lseek(fd, (off_t)have, SEEK_SET) < 0) {
            close(fd);
            return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", part, strerror(errno));
        }
        Xfer x;
        memset(&x, 0, sizeof x);
        x.fd = fd, x.offset = have, x.total = f->size, x.opt = o, x.name = f->path;
        x.t0 = x.last = ds_now();
        fh_init(&x.hash, git, f->size);
        if (have) { /* the bytes already here go into the hash first */
            resumed_any = 1;
            char tb[32];
            human(hb, sizeof hb, have);
            human(tb, sizeof tb, f->size);
            say(o, "%s: resuming at %s of %s", f->path, hb, tb);
            char *buf = malloc(1 << 20);
            if (!buf) {
                close(fd);
                fh_abandon(&x.hash);
                return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            }
            uint64_t left = have;
            off_t pos = 0;
            while (left) {
                ssize_t r = pread(fd, buf, left < (1u << 20) ? (size_t)left : (1u << 20), pos);
                if (r <= 0) break;
                fh_update(&x.hash, buf, (size_t)r);
                left -= (uint64_t)r, pos += r;
            }
            free(buf);
            if (left) {
                close(fd);
                fh_abandon(&x.hash);
                return ds_fail(e, DSOCR_E_IO, "cannot read %s", part);
            }
        }
        long code = 0;
        CURLcode rc = CURLE_OK;
        if (have < f->size) rc = http_get(h, url, &x, 1, have, &code);
        else code = 206; /* nothing left to fetch: only the check */
        int sync_fail = fsync(fd) != 0;
        close(fd);
        char hex[65];
        fh_final(&x.hash, hex); /* every path below ends this attempt */
        uint64_t got = x.offset + x.written;
        if (rc == CURLE_WRITE_ERROR && x.write_errno == ENOSPC) {
            struct statvfs vs;
            char free_b[32];
            human(free_b, sizeof free_b, statvfs(dir, &vs) ? 0 : (uint64_t)vs.f_bavail * vs.f_frsize);
            human(hb, sizeof hb, f->size - got);
            return ds_fail(e, DSOCR_E_IO,
                           "no space left on the device of %s while writing %s (%s still to come, %s free); free "
                           "some space and run again: the download resumes",
                           dir, f->path, hb, free_b);
        }
        if (rc == CURLE_WRITE_ERROR && x.write_errno)
            return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", part, strerror(x.write_errno));
        if (x.too_big) {
            unlink(part);
            return ds_fail(e, DSOCR_E_IO, "%s: the server sent more than the %llu bytes the listing gives; the "
                                          "partial file was deleted",
                           f->path, (unsigned long long)f->size);
        }
        if (rc == CURLE_WRITE_ERROR && x.started && code == 206 && x.range_start != (long)x.offset) {
            unlink(part);
            return ds_fail(e, DSOCR_E_IO, "%s: the server answered a different byte range than asked", f->path);
        }
        if (rc == CURLE_OK && code == 416) { /* our partial file does not fit the server's: start over */
            unlink(part);
            if (attempt < retries) continue;
        }
        if (rc == CURLE_OK && code >= 400 && code != 429 && code < 500)
            return http_fail(e, code, &x, o, endpoint, repo, f->path);
        int transient = rc != CURLE_OK ? transient_curl(rc) : (code >= 500 || code == 429 || got < f->size);
        if (rc != CURLE_OK && !transient)
            return ds_fail(e, DSOCR_E_IO, "%s: %s", f->path, curl_easy_strerror(rc));
        if (transient) {
            if (attempt < retries) {
                say(o, "%s: %s after %llu of %llu bytes; retrying in %.1f s (%d of %d)", f->path,
                    rc != CURLE_OK ? curl_easy_strerror(rc) : code >= 400 ? "server error" : "connection closed",
                    (unsigned long long)got, (unsigned long long)f->size, delay, attempt + 1, retries);
                struct timespec ts = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
                nanosleep(&ts, NULL);
                delay = delay * 2 > 30 ? 30 : delay * 2;
                continue;
            }
            human(hb, sizeof hb, got);
            return ds_fail(e, DSOCR_E_IO,
                           "network: %s while downloading %s from %s (%d attempts); the %s received are kept in "
                           "%s: run the same command again to resume",
                           rc != CURLE_OK ? curl_easy_strerror(rc)
                                          : (code >= 400 ? "the server kept failing" : "the connection kept closing"),
                           f->path, endpoint, attempt + 1, hb, part);
        }
        if (sync_fail) return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", part, strerror(errno));
        const char *want = git ? f->git_oid : f->sha256;
        if (want[0] && strcmp(hex, want)) {
            unlink(part);
            if (resumed_any && attempt < retries) { /* the old partial bytes may be what is wrong */
                say(o, "%s: %s mismatch after a resumed download; downloading it afresh", f->path,
                    git ? "git sha1" : "sha256");
                resumed_any = 0;
                continue;
            }
            return ds_fail(e, DSOCR_E_MODEL,
                           "%s: %s mismatch: the listing says %s, the download has %s; the file was deleted (a "
                           "corrupt mirror or a proxy that alters downloads?)",
                           f->path, git ? "git sha1" : "sha256", want, hex);
        }
        if (rename(part, final))
            return ds_fail(e, DSOCR_E_IO, "cannot move %s into place: %s", final, strerror(errno));
        if (o->progress) o->progress(o->user, f->path, f->size, f->size, 0);
        human(hb, sizeof hb, f->size);
        say(o, "%s: %s, %s", f->path, hb, want[0] ? (git ? "git sha1 ok" : "sha256 ok") : "size ok (no hash listed)");
        return DSOCR_OK;
    }
}

DsocrStatus pull_model(const PullOptions *opt, char *dir_out, size_t n, DsError *e) {
    PullOptions o = *opt;
    const char *repo = o.repo ? o.repo : (o.gguf ? PULL_DEFAULT_GGUF_REPO : PULL_DEFAULT_REPO);
    const char *revision = o.revision && *o.revision ? o.revision : "main";
    if (!o.token) o.token = getenv("HF_TOKEN");
    if (o.token && !*o.token) o.token = NULL;
    const char *ep_env = getenv("HF_ENDPOINT");
    char endpoint[1024];
    snprintf(endpoint, sizeof endpoint, "%s", o.endpoint ? o.endpoint : (ep_env && *ep_env ? ep_env : PULL_DEFAULT_ENDPOINT));
    for (size_t l = strlen(endpoint); l && endpoint[l - 1] == '/'; l--) endpoint[l - 1] = 0;
    if (strncmp(endpoint, "http://", 7) && strncmp(endpoint, "https://", 8))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "the endpoint '%s' is not an http:// or https:// URL", endpoint);
    if (!repo_name_ok(repo))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "'%s' is not a repository name like owner/name", repo);
    if (o.token && (strlen(o.token) > 4096 || strpbrk(o.token, "\r\n")))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "HF_TOKEN is not a token (too long, or a line break in it)");
    char dir[PATH_MAX];
    if (o.dir) {
        if (snprintf(dir, sizeof dir, "%s", o.dir) >= (int)sizeof dir)
            return ds_fail(e, DSOCR_E_INVALID_ARG, "the folder name is too long");
    } else if (pull_cache_dir(repo, dir, sizeof dir)) {
        return ds_fail(e, DSOCR_E_INVALID_ARG, "no home folder to put the model cache in: give --dir DIR");
    }
    if (dir_out && n) snprintf(dir_out, n, "%s", dir);

    Http h = {.token = o.token};
    if (o.token) snprintf(h.auth, sizeof h.auth, "Authorization: Bearer %s", o.token);
    char rev_enc[1024], url[4096];
    if (url_escape(rev_enc, sizeof rev_enc, revision, 0))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "the revision name is too long");
    snprintf(url, sizeof url, "%s/api/models/%s/revision/%s?blobs=True", endpoint, repo, rev_enc);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return ds_fail(e, DSOCR_E_IO, "cannot start libcurl");

    DsocrStatus st = DSOCR_OK;
    PullListing l = {0};
    unsigned char *sel = NULL;
    cJSON *old = NULL;
    say(&o, "listing %s at %s from %s", repo, revision, endpoint);
    Xfer x;
    memset(&x, 0, sizeof x);
    x.mem_max = 64u << 20;
    long code = 0;
    CURLcode rc = CURLE_OK;
    int retries = o.retries < 0 ? 2 : o.retries < 2 ? o.retries : 2; /* no network: say so within seconds */
    double delay = o.retry_delay > 0 ? o.retry_delay : 1.0;
    for (int attempt = 0;; attempt++) {
        x.mem_len = 0;
        x.body_len = 0;
        rc = http_get(&h, url, &x, 0, 0, &code);
        int transient = rc != CURLE_OK ? transient_curl(rc) : (code >= 500 || code == 429);
        if (!transient || attempt >= retries) break;
        say(&o, "listing: %s; retrying in %.1f s", rc != CURLE_OK ? curl_easy_strerror(rc) : "server error", delay);
        struct timespec ts = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
        nanosleep(&ts, NULL);
        delay = delay * 2 > 30 ? 30 : delay * 2;
    }
    char what[300];
    snprintf(what, sizeof what, "listing %s", repo);
    if (rc != CURLE_OK) {
        st = x.too_big ? ds_fail(e, DSOCR_E_FORMAT, "%s: the listing is larger than 64 MiB", what)
                       : ds_fail(e, DSOCR_E_IO, "network: %s: %s (%s); check the connection%s", what,
                                 curl_easy_strerror(rc), endpoint,
                                 ep_env && *ep_env ? " and HF_ENDPOINT" : ", or set HF_ENDPOINT to a mirror");
        goto out;
    }
    if (code != 200) {
        st = http_fail(e, code, &x, &o, endpoint, repo, what);
        goto out;
    }
    if ((st = pull_parse_listing(x.mem ? x.mem : "", x.mem_len, &l, e))) {
        ds_error_prefix(e, "%s", what);
        goto out;
    }
    if (!(sel = malloc(l.n_files ? (size_t)l.n_files : 1))) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto out;
    }
    if ((st = pull_select(&l, o.gguf, sel, e))) {
        ds_error_prefix(e, "%s", repo);
        goto out;
    }
    /* from here on every file comes from the same commit, even if the branch moves during the download */
    char pinned[1024];
    snprintf(pinned, sizeof pinned, "%s", l.commit[0] ? l.commit : rev_enc);
    say(&o, "licence: %s (from the model card of %s%s%s); by downloading you accept it", l.license[0] ? l.license : "not stated",
        repo, l.commit[0] ? " at commit " : "", l.commit);

    if (ds_mkdirs(dir, 1)) {
        st = ds_fail(e, DSOCR_E_IO, "cannot create %s: %s", dir, strerror(errno));
        goto out;
    }
    {
        char mp[PATH_MAX], *txt = NULL;
        size_t len = 0;
        if (!path_join(mp, sizeof mp, dir, PULL_MARKER, NULL) && !ds_read_file(mp, 64u << 20, &txt, &len, NULL)) {
            old = cJSON_ParseWithLength(txt, len);
            if (old && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(old, "complete"))) {
                cJSON_Delete(old);
                old = NULL;
            }
            free(txt);
        }
    }
    /* what is already here, and whether the rest fits on the disk */
    uint64_t need = 0, total = 0;
    int todo = 0;
    unsigned char *keep = calloc(l.n_files ? (size_t)l.n_files : 1, 1);
    if (!keep) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < l.n_files; i++) {
        if (!sel[i]) continue;
        const PullFile *f = &l.files[i];
        char fp[PATH_MAX];
        uint64_t sz = 0, psz = 0;
        total += f->size;
        if (path_join(fp, sizeof fp, dir, f->path, NULL)) continue;
        if (!file_size(fp, &sz) && sz == f->size) {
            char hex[65];
            int git = !f->sha256[0];
            if (old && recorded_same(old, f)) {
                keep[i] = 1;
            } else if (f->sha256[0] || f->git_oid[0]) {
                keep[i] = !hash_file(fp, git, f->size, hex) && !strcmp(hex, git ? f->git_oid : f->sha256);
            }
            if (keep[i]) continue;
        }
        todo++;
        char pp[PATH_MAX];
        if (!path_join(pp, sizeof pp, dir, f->path, ".part") && !file_size(pp, &psz) && psz <= f->size)
            need += f->size - psz;
        else
            need += f->size;
    }
    char tb[32], nb[32];
    human(tb, sizeof tb, total);
    human(nb, sizeof nb, need);
    if (!todo) {
        say(&o, "%s is complete in %s (%s); nothing to download", repo, dir, tb);
    } else {
        struct statvfs vs;
        if (!statvfs(dir, &vs)) {
            uint64_t avail = (uint64_t)vs.f_bavail * vs.f_frsize;
            if (avail < need + (16u << 20)) {
                char ab[32];
                human(ab, sizeof ab, avail);
                st = ds_fail(e, DSOCR_E_IO,
                             "no space left: %s needs %s more in %s, and %s is free there; free some space or "
                             "choose another folder with --dir",
                             repo, nb, dir, ab);
                free(keep);
                goto out;
            }
        }
        say(&o, "downloading %d file%s (%s of %s) into %s", todo, todo == 1 ? "" : "s", nb, tb, dir);
    }
    if (write_marker(dir, &l, sel, repo, revision, endpoint, 0)) {
        st = ds_fail(e, DSOCR_E_IO, "cannot write %s/%s: %s", dir, PULL_MARKER, strerror(errno));
        free(keep);
        goto out;
    }
    /* small files first: the config and tokenizer are there early, the weights last */
    for (int pass = 0; pass < 2 && !st; pass++)
        for (int i = 0; i < l.n_files && !st; i++) {
            if (!sel[i] || keep[i] || (pass == 0) != (l.files[i].size < (64u << 20))) continue;
            st = fetch_file(&h, &o, endpoint, repo, pinned, dir, &l.files[i], e);
        }
    free(keep);
    if (st) goto out;
    if (write_marker(dir, &l, sel, repo, revision, endpoint, 1)) {
        st = ds_fail(e, DSOCR_E_IO, "cannot write %s/%s: %s", dir, PULL_MARKER, strerror(errno));
        goto out;
    }
    for (int i = 0; i < l.n_files; i++)
        if (sel[i] && !strncasecmp(l.files[i].path, "LICENSE", 7))
            say(&o, "licence text: %s/%s", dir, l.files[i].path);
    say(&o, "done: %s in %s", repo, dir);
out:
    cJSON_Delete(old);
    free(sel);
    free(x.mem);
    pull_listing_free(&l);
    curl_global_cleanup();
    return st;
}

DsocrStatus pull_model_if_missing(const char *dir, void (*log)(void *user, const char *line),
                                  void (*progress)(void *user, const char *file, uint64_t done, uint64_t total,
                                                   double rate),
                                  void *user, DsError *e) {
    char def[PATH_MAX];
    if (!dir) {
        if (pull_cache_dir(NULL, def, sizeof def))
            return ds_fail(e, DSOCR_E_INVALID_ARG, "no home folder to put the model cache in");
        dir = def;
    }
    if (pull_folder_state(dir, NULL, 0) == PULL_COMPLETE) return DSOCR_OK;
    PullOptions o = {.dir = dir, .retries = -1, .log = log, .progress = progress, .user = user};
    return pull_model(&o, NULL, 0, e);
}
