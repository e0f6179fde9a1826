/* results.c: the saved-results folder with a cap. See results.h. */
#include "results.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct ResultsStore {
    pthread_mutex_t mu;
    int dirfd;
    int max;
    char (*names)[RESULTS_NAME_LEN + 1]; /* [cap] ring of kept names, oldest at head */
    int head, count, cap;
    long long last_ms;
};

int results_name_ok(const char *n) {
    if (strlen(n) != RESULTS_NAME_LEN || strncmp(n, "ocr_", 4) != 0 || n[17] != '_' || strcmp(n + 26, ".txt") != 0)
        return 0;
    for (int i = 4; i < 17; i++)
        if (n[i] < '0' || n[i] > '9') return 0;
    for (int i = 18; i < 26; i++)
        if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f'))) return 0;
    return 1;
}

static int cmp_names(const void *a, const void *b) { return strcmp(a, b); }

DsocrStatus results_open(const char *dir, int max, ResultsStore **out, DsError *e) {
    *out = NULL;
    if (max < 1) return ds_fail(e, DSOCR_E_INVALID_ARG, "the results cap must be at least 1");
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *q = path + 1; *q; q++) /* the parents first */
        if (*q == '/') {
            *q = 0;
            if (mkdir(path, 0700) != 0 && errno != EEXIST) break;
            *q = '/';
        }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return ds_fail(e, DSOCR_E_IO, "cannot create the results folder %s: %s", dir, strerror(errno));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ds_fail(e, DSOCR_E_IO, "cannot open the results folder %s: %s", dir, strerror(errno));
    ResultsStore *rs = calloc(1, sizeof *rs);
    if (!rs) {
        close(fd);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    pthread_mutex_init(&rs->mu, NULL);
    rs->dirfd = fd;
    rs->max = max;
    /* existing files of our pattern, oldest first */
    int dfd = dup(fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    char(*found)[RESULTS_NAME_LEN + 1] = NULL;
    int nf = 0, capf = 0;
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!results_name_ok(de->d_name)) continue;
            if (nf == capf) {
                int nc = capf ? capf * 2 : 64;
                void *np = realloc(found, sizeof *found * (size_t)nc);
                if (!np) break;
                found = np;
                capf = nc;
            }
            memcpy(found[nf++], de->d_name, RESULTS_NAME_LEN + 1);
        }
        closedir(d);
    } else if (dfd >= 0) {
        close(dfd);
    }
    if (nf) qsort(found, (size_t)nf, sizeof *found, cmp_names);
    rs->cap = (nf > max ? nf : max) + 1;
    rs->names = calloc((size_t)rs->cap, sizeof *rs->names);
    if (!rs->names) {
        free(found);
        results_close(rs);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory for a results cap of %d", max);
    }
    for (int i = 0; i < nf; i++) memcpy(rs->names[i], found[i], RESULTS_NAME_LEN + 1);
    rs->count = nf;
    free(found);
    while (rs->count > rs->max) {
        unlinkat(rs->dirfd, rs->names[rs->head], 0);
        rs->head = (rs->head + 1) % rs->cap;
        rs->count--;
    }
    *out = rs;
    return DSOCR_OK;
}

void results_close(ResultsStore *rs) {
    if (!rs) return;
    if (rs->dirfd >= 0) close(rs->dirfd);
    pthread_mutex_destroy(&rs->mu);
    free(rs->names);
    free(rs);
}

DsocrStatus results_save(ResultsStore *rs, const char *text, size_t len, char *name, DsError *e) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) rnd = (uint32_t)ts.tv_nsec ^ (uint32_t)getpid();
    pthread_mutex_lock(&rs->mu);
    if (ms <= rs->last_ms) ms = rs->last_ms + 1; /* strictly increasing, so names sort by age */
    rs->last_ms = ms;
    snprintf(name, RESULTS_NAME_LEN + 1, "ocr_%013lld_%08x.txt", ms % 10000000000000LL, rnd);
    DsocrStatus st = DSOCR_OK;
    int fd = openat(rs->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        st = ds_fail(e, DSOCR_E_IO, "cannot create result file %s: %s", name, strerror(errno));
        goto out;
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            st = ds_fail(e, DSOCR_E_IO, "cannot write result file %s: %s", name, strerror(errno));
            close(fd);
            unlinkat(rs->dirfd, name, 0);
            goto out;
        }
        off += (size_t)w;
    }
    close(fd);
    memcpy(rs->names[(rs->head + rs->count) % rs->cap], name, RESULTS_NAME_LEN + 1);
    rs->count++;
    while (rs->count > rs->max) {
        unlinkat(rs->dirfd, rs->names[rs->head], 0);
        rs->head = (rs->head + 1) % rs->cap;
        rs->count--;
    }
out:
    pthread_mutex_unlock(&rs->mu);
    if (st) name[0] = 0;
    return st;
}

DsocrStatus results_read(ResultsStore *rs, const char *name, char **out, size_t *len, DsError *e) {
    *out = NULL;
    *len = 0;
    if (!results_name_ok(name)) return ds_fail(e, DSOCR_E_IO, "no such result");
    int fd = openat(rs->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return ds_fail(e, DSOCR_E_IO, "no such result");
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > (1 << 28)) {
        close(fd);
        return ds_fail(e, DSOCR_E_IO, "no such result");
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    *out = buf;
    *len = got;
    return DSOCR_OK;
}

int results_count(ResultsStore *rs) {
    pthread_mutex_lock(&rs->mu);
    int n = rs->count;
    pthread_mutex_unlock(&rs->mu);
    return n;
}
