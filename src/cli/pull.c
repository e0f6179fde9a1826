/* pull.c (cli): `dsocr pull [REPO]`: downloads a model folder from the Hugging Face Hub into the per-user cache
 * (or --dir), resumable and verified, with a progress bar on a terminal. The work is in src/pull.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "pull.h"

typedef struct View {
    int quiet, tty;
    int last_decile; /* non-terminal output: the last 10% step printed */
    const char *last_file;
} View;

static void log_line(void *user, const char *line) {
    View *v = user;
    if (v->quiet) return;
    fprintf(stderr, "%s%s\n", v->tty ? "\r\033[K" : "", line);
}

static void fmt_bytes(char *b, size_t n, double x) {
    if (x >= 1e9)
        snprintf(b, n, "%.2f GB", x / 1e9);
    else if (x >= 1e6)
        snprintf(b, n, "%.1f MB", x / 1e6);
    else
        snprintf(b, n, "%.0f kB", x / 1e3);
}

static void progress(void *user, const char *file, uint64_t done, uint64_t total, double rate) {
    View *v = user;
    if (v->quiet || !total) return;
    int pct10 = (int)(done * 10 / total);
    if (v->last_file != file) v->last_file = file, v->last_decile = -1;
    char a[32], b[32], r[32];
    fmt_bytes(a, sizeof a, (double)done);
    fmt_bytes(b, sizeof b, (double)total);
    fmt_bytes(r, sizeof r, rate);
    if (v->tty) {
        if (done == total) return; /* the log line that follows says it is done */
        char bar[31];
        int fill = (int)(done * 30 / total);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        char eta[32] = "";
        if (rate > 0) {
            double s = (double)(total - done) / rate;
            snprintf(eta, sizeof eta, "ETA %dm%02ds", (int)(s / 60), (int)s % 60);
        }
        fprintf(stderr, "\r\033[K%-34.34s [%s] %5.1f%% %s / %s  %s/s  %s", file, bar, 100.0 * (double)done / (double)total,
                a, b, r, eta);
        fflush(stderr);
    } else if (total >= (64u << 20) && pct10 != v->last_decile && done < total) {
        v->last_decile = pct10;
        fprintf(stderr, "%s: %d%% (%s of %s, %s/s)\n", file, pct10 * 10, a, b, r);
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsocr pull [REPO] [options]\n\n"
            "Downloads a model from the Hugging Face Hub (default %s; with --gguf, %s)\n"
            "into a per-user cache folder that `dsocr ocr`, `serve` and `check` find by themselves:\n"
            "  $XDG_CACHE_HOME/dsocr/models/REPO, else ~/.cache/dsocr/models/REPO\n"
            "Files are verified (LFS sha256, git sha1) and moved into place only when complete; an interrupted\n"
            "download resumes where it stopped when the same command runs again.\n\n"
            "options:\n"
            "  --revision R     branch, tag or commit (default main)\n"
            "  --dir DIR        download into DIR instead of the cache folder\n"
            "  --gguf TYPE      fetch a GGUF pair (model + mmproj) of that type, e.g. Q8_0, instead of safetensors\n"
            "  --endpoint URL   the Hub or a mirror (default $HF_ENDPOINT, else %s)\n"
            "  --retries N      attempts after a network failure, per file (default 5)\n"
            "  --if-missing     do nothing when the folder already holds a complete model (no network)\n"
            "  --show-dir       print the folder the model goes to, and exit\n"
            "  --quiet          print errors only\n\n"
            "environment: HF_TOKEN (sent as 'Authorization: Bearer', for private or gated repositories),\n"
            "HF_ENDPOINT (mirrors), XDG_CACHE_HOME.\n",
            PULL_DEFAULT_REPO, PULL_DEFAULT_GGUF_REPO, PULL_DEFAULT_ENDPOINT);
}

int cli_pull(int argc, char **argv) {
    PullOptions o = {.retries = -1};
    View v = {.tty = isatty(2), .last_decile = -1};
    int if_missing = 0, show_dir = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            v.quiet = 1;
        } else if (!strcmp(a, "--if-missing")) {
            if_missing = 1;
        } else if (!strcmp(a, "--show-dir")) {
            show_dir = 1;
        } else if (!strcmp(a, "--revision") || !strcmp(a, "--dir") || !strcmp(a, "--gguf") ||
                   !strcmp(a, "--endpoint") || !strcmp(a, "--retries")) {
            if (!val) {
                fprintf(stderr, "dsocr pull: %s needs a value (see --help)\n", a);
                return 2;
            }
            i++;
            if (!strcmp(a, "--revision")) o.revision = val;
            if (!strcmp(a, "--dir")) o.dir = val;
            if (!strcmp(a, "--gguf")) o.gguf = val;
            if (!strcmp(a, "--endpoint")) o.endpoint = val;
            if (!strcmp(a, "--retries")) {
                char *end;
                long r = strtol(val, &end, 10);
                if (*end || r < 0 || r > 100) {
                    fprintf(stderr, "dsocr pull: --retries wants a number from 0 to 100, not '%s'\n", val);
                    return 2;
                }
                o.retries = (int)r;
            }
        } else if (a[0] == '-' || o.repo) {
            fprintf(stderr, "dsocr pull: unexpected argument '%s' (see --help)\n", a);
            return 2;
        } else {
            o.repo = a;
        }
    }
    const char *repo = o.repo ? o.repo : (o.gguf ? PULL_DEFAULT_GGUF_REPO : PULL_DEFAULT_REPO);
    char dir[4096];
    if (o.dir)
        snprintf(dir, sizeof dir, "%s", o.dir);
    else if (pull_cache_dir(repo, dir, sizeof dir)) {
        fprintf(stderr, "dsocr pull: no home folder to put the model cache in: give --dir DIR\n");
        return 1;
    }
    if (show_dir) {
        printf("%s\n", dir);
        return 0;
    }
    if (if_missing && pull_folder_state(dir, NULL, 0) == PULL_COMPLETE) {
        if (!v.quiet) fprintf(stderr, "dsocr pull: %s already holds a complete model\n", dir);
        return 0;
    }
    o.dir = dir;
    o.log = log_line;
    o.progress = progress;
    o.user = &v;
    DsError e = {0};
    if (pull_model(&o, NULL, 0, &e) != DSOCR_OK) {
        if (v.tty) fprintf(stderr, "\r\033[K");
        fprintf(stderr, "dsocr pull: %s\n", e.msg);
        return 1;
    }
    char def[4096];
    if (!v.quiet && !o.gguf) {
        const char *env = getenv("DSOCR_MODEL");
        int found = !pull_cache_dir(NULL, def, sizeof def) && !strcmp(def, dir) && !(env && *env) &&
                    access("models/deepseek-ocr/config.json", F_OK) != 0;
        if (found)
            fprintf(stderr, "\nNext: %s ocr IMAGE   (ocr, serve and check find this folder by themselves)\n",
                    program_invocation_name);
        else
            fprintf(stderr, "\nNext: %s ocr --model %s IMAGE\n", program_invocation_name, dir);
    }
    return 0;
}
