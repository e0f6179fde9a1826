/* pull.h: `dsocr pull`: downloads a model folder from the Hugging Face Hub (or a mirror) with libcurl.
 *
 * What it talks to (the Hub's public HTTP API, the same one huggingface_hub uses):
 *   GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=True
 *       the revision's commit ("sha"), model card data ("cardData.license") and every file ("siblings":
 *       rfilename, size, blobId = git blob sha1, lfs.sha256 for files stored with Git LFS)
 *   GET {endpoint}/{repo}/resolve/{commit}/{path}
 *       the file's bytes, usually through a redirect to a CDN; "Range: bytes=N-" resumes a partial file
 * {endpoint} is $HF_ENDPOINT (mirrors) or https://huggingface.co; $HF_TOKEN is sent as
 * "Authorization: Bearer TOKEN" to the endpoint's host only (never to a CDN it redirects to).
 *
 * Each file is written to PATH.part, resumed from there after a failure, checked against its sha256 (LFS) or
 * git blob sha1, and renamed into place only when complete and verified; a mismatch deletes the partial file.
 * The folder records the pull in .dsocr-pull.json ("complete": false while files are missing).
 * The default folder is a per-user cache: $XDG_CACHE_HOME/dsocr/models/OWNER/NAME, else
 * ~/.cache/dsocr/models/OWNER/NAME; `ocr`, `serve` and `check` look there when no folder is given.
 *
 * This module does not print: lines and progress go through the callbacks in PullOptions. It is not a
 * general Hub client (no uploads, no datasets, no Xet protocol: files come through `resolve`). */
#ifndef DSOCR_PULL_H
#define DSOCR_PULL_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PULL_DEFAULT_REPO "deepseek-ai/DeepSeek-OCR"
#define PULL_DEFAULT_GGUF_REPO "ggml-org/DeepSeek-OCR-GGUF"
#define PULL_DEFAULT_ENDPOINT "https://huggingface.co"
#define PULL_MARKER ".dsocr-pull.json"

/* ---- hashes (SHA-256, SHA-1), used to verify downloads ---- */
/* A running hash: init, any number of updates, then final (which frees it and writes lowercase hex, NUL
 * included) or abandon (frees it without a result). */
typedef struct PullSha256 {
    void *ctx;
} PullSha256;
void pull_sha256_init(PullSha256 *s);
void pull_sha256_update(PullSha256 *s, const void *data, size_t len);
void pull_sha256_final(PullSha256 *s, char hex[65]);
void pull_sha256_abandon(PullSha256 *s);

typedef struct PullSha1 {
    void *ctx;
} PullSha1;
void pull_sha1_init(PullSha1 *s);
void pull_sha1_update(PullSha1 *s, const void *data, size_t len);
void pull_sha1_final(PullSha1 *s, char hex[41]);
void pull_sha1_abandon(PullSha1 *s);

/* ---- the repository listing (untrusted bytes from the network) ---- */
typedef struct PullFile {
    char *path;       /* path in the repository, checked safe: relative, no "..", no control characters */
    uint64_t size;    /* bytes (the LFS object's size for LFS files) */
    char sha256[65];  /* LFS sha256, lowercase hex; "" for a file stored in git itself */
    char git_oid[41]; /* git blob sha1, lowercase hex; "" when the listing does not give it */
} PullFile;

typedef struct PullListing {
    PullFile *files;
    int n_files;
    char commit[65];   /* the revision's commit id; "" when the listing does not give it */
    char license[128]; /* the model card's licence id (e.g. "mit"); "" when unknown */
} PullListing;

/* Parses a listing in either of the Hub's two shapes: the model-info object of
 * /api/models/{repo}/revision/{rev}?blobs=True ({"sha", "cardData", "siblings": [{"rfilename", "size", "blobId",
 * "lfs": {"sha256", "size"}}]}) or the array of /api/models/{repo}/tree/{rev} ([{"type", "path", "size", "oid",
 * "lfs": {"oid", "size"}}], directories skipped). A malformed document, a file without a size, a hash that is
 * not hex of the right length, or an unsafe path is refused with a message naming it. Free with
 * pull_listing_free (safe on a zeroed or failed listing). */
DsocrStatus pull_parse_listing(const char *json, size_t len, PullListing *out, DsError *e);
void pull_listing_free(PullListing *l);

/* 1 when path is a safe relative path (what pull_parse_listing accepts), else 0. */
int pull_path_safe(const char *path);

/* Chooses the files to download: with gguf == NULL the model's safetensors folder (top-level *.json,
 * *.safetensors, LICENSE*, README.md; code, images and other weight formats skipped); with gguf = a type
 * ("Q8_0", "Q4_K_M", "F16", ...) the one top-level *.gguf model file whose name contains it (case-insensitive)
 * and its mmproj-*.gguf vision file (the one naming the same type, else the only one, else F16/BF16/Q8_0), plus
 * README.md and LICENSE*. Sets sel[i] = 1 for chosen files. On failure (no weights, no file of that type, several
 * candidates) the message lists what the repository has. */
DsocrStatus pull_select(const PullListing *l, const char *gguf, unsigned char *sel, DsError *e);

/* ---- folders ---- */

/* The default folder for repo (NULL = PULL_DEFAULT_REPO): $XDG_CACHE_HOME/dsocr/models/REPO, else
 * $HOME/.cache/dsocr/models/REPO. Returns 0, or -1 when no home folder is known or buf is too small. */
int pull_cache_dir(const char *repo, char *buf, size_t n);

typedef enum PullState {
    PULL_ABSENT = 0,     /* no folder, or no config.json / *.gguf and no pull record */
    PULL_INCOMPLETE = 1, /* a pull record says files are missing, or a recorded file is missing or mis-sized */
    PULL_COMPLETE = 2    /* a complete pull record whose files are all present with their sizes, or (no
                            record) a folder with config.json or a *.gguf file */
} PullState;
/* What the folder holds. why (n bytes, may be NULL) gets a one-line reason for ABSENT or INCOMPLETE. */
PullState pull_folder_state(const char *dir, char *why, size_t n);

/* ---- pulling ---- */
typedef struct PullOptions {
    const char *repo;     /* "owner/name"; NULL = PULL_DEFAULT_REPO (PULL_DEFAULT_GGUF_REPO with gguf) */
    const char *revision; /* branch, tag or commit; NULL = "main" */
    const char *dir;      /* destination; NULL = pull_cache_dir(repo) */
    const char *endpoint; /* NULL = $HF_ENDPOINT, else PULL_DEFAULT_ENDPOINT */
    const char *token;    /* NULL = $HF_TOKEN (none when unset or empty) */
    const char *gguf;     /* NULL: the safetensors folder; else a GGUF type (see pull_select) */
    int retries;          /* attempts after a network failure, per file, resuming each time; < 0 = 5 */
    double retry_delay;   /* seconds before the first retry, doubled each time (at most 30); <= 0 = 1 */
    /* One line of news per call ("listing ...", "licence: mit", "config.json: 2.6 KiB, sha1 ok"). */
    void (*log)(void *user, const char *line);
    /* Progress of one file: done and total bytes (resumed bytes included), bytes/s of this attempt; called
     * at most ~10 times a second and once at the end of each file (done == total). */
    void (*progress)(void *user, const char *file, uint64_t done, uint64_t total, double rate);
    void *user;
} PullOptions;

/* Downloads the listed files of opt->repo at opt->revision into the folder (created as needed) and writes its
 * pull record. Files already present with the recorded hash are kept; partial files are resumed. dir_out
 * (n bytes, may be NULL) gets the folder. Errors a person can act on: 401/403/404 from the Hub (what to do
 * about the token or the name), no space left (how much is needed), network loss after the retries (what was
 * kept; running again resumes), a hash mismatch (the partial file is deleted). */
DsocrStatus pull_model(const PullOptions *opt, char *dir_out, size_t n, DsError *e);

/* For `ocr --pull` and `serve --pull`: when dir (NULL = the default cache folder of PULL_DEFAULT_REPO) holds no
 * complete model, pulls PULL_DEFAULT_REPO into it with default options and the given callbacks (log/progress,
 * may be NULL). Returns DSOCR_OK at once when the folder is complete. */
DsocrStatus pull_model_if_missing(const char *dir, void (*log)(void *user, const char *line),
                                  void (*progress)(void *user, const char *file, uint64_t done, uint64_t total,
                                                   double rate),
                                  void *user, DsError *e);

#endif
