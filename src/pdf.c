/* pdf.c: PDF rendering through a child process (contract in pdf.h). */
#include "pdf.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define PDF_MAX_PAGES 100000

struct PdfDoc {
    char *path;
    char exe[1024];
    int poppler; /* 0 mutool, 1 pdftoppm */
    PdfOptions o;
    int n_pages;
    unsigned char *exists; /* [n_pages] */
    double *size_pt;       /* [n_pages][2] MediaBox width, height in points (0 when unknown) */
};

void pdf_options_default(PdfOptions *o) {
    o->renderer = NULL;
    o->timeout_s = 60;
    o->max_output = (size_t)256 << 20;
    o->max_memory = (size_t)3 << 30;
    o->max_pixels = 40000000LL;
}

int pdf_sniff(const uint8_t *b, size_t n) {
    if (n > 1024) n = 1024;
    return n >= 5 && memmem(b, n, "%PDF-", 5) != NULL;
}

/* An executable named name on $PATH into buf; 0 when found. */
static int find_exe(const char *name, char *buf, size_t n) {
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *c = strchr(path, ':');
        size_t l = c ? (size_t)(c - path) : strlen(path);
        if (l && (size_t)snprintf(buf, n, "%.*s/%s", (int)l, path, name) < n && access(buf, X_OK) == 0) return 0;
        path += l + (c ? 1 : 0);
    }
    return -1;
}

DsocrStatus pdf_run_child(char *const argv[], const PdfOptions *opt, char **out, size_t *out_len, char *err,
                          size_t errlen, int *status, DsError *e) {
    PdfOptions def;
    pdf_options_default(&def);
    if (!opt) opt = &def;
    *out = NULL;
    *out_len = 0;
    if (errlen) err[0] = 0;
    *status = -1;
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC)) return ds_fail(e, DSOCR_E_IO, "pipe: %s", strerror(errno));
    if (pipe2(pe, O_CLOEXEC)) {
        close(po[0]), close(po[1]);
        return ds_fail(e, DSOCR_E_IO, "pipe: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(po[0]), close(po[1]), close(pe[0]), close(pe[1]);
        return ds_fail(e, DSOCR_E_IO, "fork: %s", strerror(errno));
    }
    if (pid == 0) { /* child: only async-signal-safe calls until exec */
        int dn = open("/dev/null", O_RDONLY);
        if (dn < 0 || dup2(dn, 0) < 0 || dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0) _exit(126);
        struct rlimit r;
        r.rlim_cur = r.rlim_max = opt->max_memory;
        setrlimit(RLIMIT_AS, &r);
        r.rlim_cur = r.rlim_max = (rlim_t)(opt->timeout_s + 1);
        setrlimit(RLIMIT_CPU, &r);
        r.rlim_cur = r.rlim_max = opt->max_output;
        setrlimit(RLIMIT_FSIZE, &r);
        r.rlim_cur = r.rlim_max = 0;
        setrlimit(RLIMIT_CORE, &r);
        for (int fd = 3; fd < 1024; fd++) close(fd);
        execv(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t cap = 0, n = 0, ne = 0;
    char *buf = NULL;
    DsocrStatus st = DSOCR_OK;
    double deadline = ds_now() + opt->timeout_s;
    int open_o = 1, open_e = 1, killed = 0;
    while (open_o || open_e) {
        double left = deadline - ds_now();
        if (left <= 0) {
            st = ds_fail(e, DSOCR_E_IO, "%s took longer than %.0f s and was stopped", argv[0], opt->timeout_s);
            break;
        }
        struct pollfd pf[2] = {{open_o ? po[0] : -1, POLLIN, 0}, {open_e ? pe[0] : -1, POLLIN, 0}};
        int pr = poll(pf, 2, (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR) {
            st = ds_fail(e, DSOCR_E_IO, "poll: %s", strerror(errno));
            break;
        }
        if (pr <= 0) continue;
        if (open_o && (pf[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (n + 65536 + 1 > cap) {
                size_t nc = cap ? cap * 2 : 1 << 20;
                char *nb = realloc(buf, nc);
                if (!nb) {
                    st = ds_fail(e, DSOCR_E_NOMEM, "out of memory reading %s's output", argv[0]);
                    break;
                }
                buf = nb;
                cap = nc;
            }
            ssize_t r = read(po[0], buf + n, 65536);
            if (r > 0) {
                n += (size_t)r;
                if (n > opt->max_output) {
                    st = ds_fail(e, DSOCR_E_IO, "%s wrote more than %zu bytes and was stopped", argv[0],
                                 opt->max_output);
                    break;
                }
            } else if (r == 0 || errno != EINTR) {
                open_o = 0;
            }
        }
        if (open_e && (pf[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            char tmp[4096];
            ssize_t r = read(pe[0], tmp, sizeof tmp);
            if (r > 0) {
                size_t k = (size_t)r;
                if (errlen && ne + 1 < errlen) {
                    size_t c = errlen - 1 - ne < k ? errlen - 1 - ne : k;
                    memcpy(err + ne, tmp, c);
                    ne += c;
                    err[ne] = 0;
                }
            } else if (r == 0 || errno != EINTR) {
                open_e = 0;
            }
        }
    }
    if (st) {
        kill(pid, SIGKILL);
        killed = 1;
    }
    close(po[0]);
    close(pe[0]);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    *status = WIFEXITED(ws) ? WEXITSTATUS(ws) : WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : -1;
    if (!st && WIFSIGNALED(ws) && !killed)
        st = ds_fail(e, DSOCR_E_IO, "%s was stopped by signal %d (a limit was hit: memory %zu MiB, CPU %.0f s)",
                     argv[0], WTERMSIG(ws), opt->max_memory >> 20, opt->timeout_s + 1);
    if (st) {
        free(buf);
        return st;
    }
    if (!buf) buf = malloc(1);
    if (!buf) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    buf[n] = 0;
    *out = buf;
    *out_len = n;
    return DSOCR_OK;
}

/* The renderer's message: its last "error:" line, else its last non-empty line. */
static void child_message(const char *err, char *msg, size_t n) {
    const char *best = NULL, *last = NULL;
    size_t bl = 0, ll = 0;
    for (const char *p = err; *p;) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l) {
            last = p, ll = l;
            if (!strncmp(p, "error:", 6) && !strstr(p, "cannot draw")) best = p, bl = l;
        }
        p += l + (e ? 1 : 0);
    }
    if (!best) best = last, bl = ll;
    if (!best) snprintf(msg, n, "no message");
    else snprintf(msg, n, "%.*s", (int)(bl > 300 ? 300 : bl), best);
}

DsocrStatus pdf_parse_listing(const char *s, int *n_pages, unsigned char **exists, double **size_pt, DsError *e) {
    *n_pages = 0;
    *exists = NULL;
    *size_pt = NULL;
    int maxp = 0;
    for (const char *p = s; (p = strstr(p, "<page pagenum=\"")); p++) {
        long v = strtol(p + 15, NULL, 10);
        if (v > maxp && v <= PDF_MAX_PAGES) maxp = (int)v;
    }
    if (maxp < 1) return ds_fail(e, DSOCR_E_FORMAT, "no pages");
    unsigned char *ex = calloc((size_t)maxp, 1);
    double *sz = calloc((size_t)maxp * 2, sizeof(double));
    if (!ex || !sz) {
        free(ex);
        free(sz);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    for (const char *p = s; (p = strstr(p, "<page pagenum=\"")); p++) {
        long v = strtol(p + 15, NULL, 10);
        if (v < 1 || v > maxp) continue;
        const char *end = strstr(p, "</page>");
        const char *mb = strstr(p, "<MediaBox ");
        if (!end || !mb || mb > end) continue;
        double l = 0, b = 0, r = 0, t = 0;
        if (sscanf(mb, "<MediaBox l=\"%lf\" b=\"%lf\" r=\"%lf\" t=\"%lf\"", &l, &b, &r, &t) == 4 && isfinite(l) &&
            isfinite(b) && isfinite(r) && isfinite(t)) {
            ex[v - 1] = 1;
            sz[2 * (v - 1)] = fabs(r - l);
            sz[2 * (v - 1) + 1] = fabs(t - b);
        }
    }
    *n_pages = maxp;
    *exists = ex;
    *size_pt = sz;
    return DSOCR_OK;
}

DsocrStatus pdf_open(const char *path, const PdfOptions *opt, PdfDoc **out, DsError *e) {
    *out = NULL;
    PdfDoc *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    pdf_options_default(&d->o);
    if (opt) d->o = *opt;
    DsocrStatus st = DSOCR_OK;
    char *txt = NULL;
    size_t tl;
    char err[4096], msg[400];
    int status;
    if (d->o.renderer) {
        snprintf(d->exe, sizeof d->exe, "%s", d->o.renderer);
        const char *base = strrchr(d->exe, '/');
        d->poppler = strstr(base ? base : d->exe, "pdftoppm") != NULL;
        if (access(d->exe, X_OK)) {
            st = ds_fail(e, DSOCR_E_UNSUPPORTED, "PDF renderer %s is not an executable", d->exe);
            goto fail;
        }
    } else if (find_exe("mutool", d->exe, sizeof d->exe) == 0) {
        d->poppler = 0;
    } else if (find_exe("pdftoppm", d->exe, sizeof d->exe) == 0) {
        d->poppler = 1;
    } else {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED,
                     "%s: PDFs need mupdf-tools (mutool) or poppler-utils (pdftoppm); neither is installed "
                     "(Debian: apt-get install mupdf-tools)", path);
        goto fail;
    }
    if (access(path, R_OK)) {
        st = ds_fail(e, DSOCR_E_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!d->poppler) {
        char *argv[] = {d->exe, "pages", d->path, NULL};
        if ((st = pdf_run_child(argv, &d->o, &txt, &tl, err, sizeof err, &status, e))) goto fail;
        if (status != 0 || !strstr(txt, "<page ")) {
            child_message(err, msg, sizeof msg);
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: not a readable PDF (mutool: %s)", path, msg);
            goto fail;
        }
        if ((st = pdf_parse_listing(txt, &d->n_pages, &d->exists, &d->size_pt, e))) {
            ds_error_prefix(e, "%s", path);
            goto fail;
        }
    } else {
        char info[1024];
        const char *slash = strrchr(d->exe, '/');
        snprintf(info, sizeof info, "%.*spdfinfo", slash ? (int)(slash - d->exe + 1) : 0, d->exe);
        char *argv[] = {info, d->path, NULL};
        if ((st = pdf_run_child(argv, &d->o, &txt, &tl, err, sizeof err, &status, e))) goto fail;
        const char *p = strstr(txt, "\nPages:");
        if (!p && !strncmp(txt, "Pages:", 6)) p = txt - 1;
        long v = p ? strtol(p + 7, NULL, 10) : 0;
        if (status != 0 || v < 1 || v > PDF_MAX_PAGES) {
            child_message(err, msg, sizeof msg);
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: not a readable PDF (pdfinfo: %s)", path, msg);
            goto fail;
        }
        d->n_pages = (int)v;
        d->exists = malloc((size_t)v);
        d->size_pt = calloc((size_t)v * 2, sizeof(double));
        if (!d->exists || !d->size_pt) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        memset(d->exists, 1, (size_t)v);
    }
    free(txt);
    *out = d;
    return DSOCR_OK;
fail:
    free(txt);
    pdf_close(d);
    return st;
}

void pdf_close(PdfDoc *d) {
    if (!d) return;
    free(d->path);
    free(d->exists);
    free(d->size_pt);
    free(d);
}

int pdf_page_count(const PdfDoc *d) { return d->n_pages; }
int pdf_page_exists(const PdfDoc *d, int page) { return page >= 1 && page <= d->n_pages && d->exists[page - 1]; }
const char *pdf_renderer_name(const PdfDoc *d) { return d->poppler ? "pdftoppm" : "mutool"; }

DsocrStatus pdf_render(PdfDoc *d, int page, int dpi, char **png, size_t *len, DsError *e) {
    *png = NULL;
    *len = 0;
    if (page < 1 || page > d->n_pages)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "%s: page %d is outside 1..%d", d->path, page, d->n_pages);
    if (!d->exists[page - 1])
        return ds_fail(e, DSOCR_E_FORMAT, "%s: page %d is counted by the document but missing from its page tree",
                       d->path, page);
    if (dpi < 18 || dpi > 1200) return ds_fail(e, DSOCR_E_INVALID_ARG, "dpi %d is outside 18..1200", dpi);
    /* a size cap that keeps the area within max_pixels (and each side within 20000 px) */
    double wpt = d->size_pt[2 * (page - 1)], hpt = d->size_pt[2 * (page - 1) + 1];
    long maxw = 20000, maxh = 20000;
    if (wpt > 0 && hpt > 0) {
        double w = wpt * dpi / 72.0, h = hpt * dpi / 72.0;
        if (w * h > (double)d->o.max_pixels) {
            double s = sqrt((double)d->o.max_pixels / (w * h));
            maxw = (long)(w * s);
            maxh = (long)(h * s);
            if (maxw < 1) maxw = 1;
            if (maxh < 1) maxh = 1;
        }
    }
    char pg[32], res[32], ws[32], hs[32];
    snprintf(pg, sizeof pg, "%d", page);
    snprintf(res, sizeof res, "%d", dpi);
    snprintf(ws, sizeof ws, "%ld", maxw);
    snprintf(hs, sizeof hs, "%ld", maxh);
    char err[4096], msg[400];
    int status;
    DsocrStatus st;
    if (!d->poppler) {
        char *argv[] = {d->exe, "draw", "-q", "-r", res, "-w", ws, "-h", hs, "-c", "rgb", "-F", "png", "-o", "-",
                        d->path, pg, NULL};
        st = pdf_run_child(argv, &d->o, png, len, err, sizeof err, &status, e);
    } else {
        char *argv[16] = {d->exe, "-r", res, "-f", pg, "-l", pg, "-png", "-singlefile"};
        int a = 9;
        if (maxw < 20000) { /* capped: scale to the width, height following the aspect ratio */
            argv[a++] = "-scale-to-x";
            argv[a++] = ws;
            argv[a++] = "-scale-to-y";
            argv[a++] = "-1";
        }
        argv[a++] = d->path;
        argv[a] = NULL;
        st = pdf_run_child(argv, &d->o, png, len, err, sizeof err, &status, e);
    }
    if (st) {
        ds_error_prefix(e, "%s page %d", d->path, page);
        return st;
    }
    if (status != 0 || *len < 8 || memcmp(*png, "\x89PNG", 4)) {
        child_message(err, msg, sizeof msg);
        free(*png);
        *png = NULL;
        *len = 0;
        return ds_fail(e, DSOCR_E_FORMAT, "%s page %d cannot be rendered (%s: %s)", d->path, page,
                       pdf_renderer_name(d), msg);
    }
    return DSOCR_OK;
}
