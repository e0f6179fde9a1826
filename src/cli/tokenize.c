/* tokenize.c: the `dsocr tokenize` verb, the tool to check the tokenizer by hand and from tests.
 *
 *   dsocr tokenize [--tokenizer FILE]                   JSON strings in (one a line), JSON arrays of ids out
 *   dsocr tokenize [--tokenizer FILE] --decode [--skip-special]   JSON arrays of ids in, JSON strings out
 *
 * Blank lines are skipped. Encoding adds no BOS. The first bad line stops the run with exit status 1 and a message
 * naming the line. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f, "usage: dsocr tokenize [--tokenizer FILE] [--decode [--skip-special]]\n\n"
               "Reads stdin one line at a time. Without --decode each line is a JSON string and the output line is\n"
               "the JSON array of its token ids (no BOS). With --decode each line is a JSON array of ids and the\n"
               "output line is the decoded text as a JSON string; --skip-special drops special tokens.\n"
               "FILE defaults to tokenizer.json in the model folder ($DSOCR_MODEL, else ./models/deepseek-ocr).\n");
}

/* A JSON string has a \u0000 escape (cJSON would cut the string there). */
static int has_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 5 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && !strncmp(s + i + 2, "0000", 4)) return 1;
        i++; /* skip the escaped character */
    }
    return 0;
}

static int encode_line(const Tokenizer *t, const char *line, size_t n, size_t lineno) {
    cJSON *j = cJSON_ParseWithLength(line, n);
    if (!cJSON_IsString(j)) {
        fprintf(stderr, "dsocr tokenize: line %zu: expected a JSON string\n", lineno);
        cJSON_Delete(j);
        return 1;
    }
    if (has_nul_escape(line, n)) {
        fprintf(stderr, "dsocr tokenize: line %zu: \\u0000 in the text is not supported by this tool\n", lineno);
        cJSON_Delete(j);
        return 1;
    }
    int32_t *ids = NULL;
    size_t nid = 0;
    DsError e = {0};
    if (tokenizer_encode(t, j->valuestring, strlen(j->valuestring), &ids, &nid, &e)) {
        fprintf(stderr, "dsocr tokenize: line %zu: %s\n", lineno, e.msg);
        cJSON_Delete(j);
        return 1;
    }
    putchar('[');
    for (size_t i = 0; i < nid; i++) printf(i ? ",%d" : "%d", ids[i]);
    fputs("]\n", stdout);
    free(ids);
    cJSON_Delete(j);
    return 0;
}

static int decode_line(const Tokenizer *t, const char *line, size_t n, size_t lineno, int skip_special) {
    cJSON *j = cJSON_ParseWithLength(line, n);
    if (!cJSON_IsArray(j)) {
        fprintf(stderr, "dsocr tokenize: line %zu: expected a JSON array of ids\n", lineno);
        cJSON_Delete(j);
        return 1;
    }
    size_t nid = (size_t)cJSON_GetArraySize(j), i = 0;
    int32_t *ids = malloc((nid ? nid : 1) * sizeof *ids);
    const cJSON *it;
    int rc = 0;
    if (!ids) {
        fprintf(stderr, "dsocr tokenize: out of memory\n");
        cJSON_Delete(j);
        return 1;
    }
    cJSON_ArrayForEach(it, j) {
        double v = cJSON_IsNumber(it) ? it->valuedouble : 0.5;
        if (v != (double)(long long)v || v < -2147483648.0 || v > 2147483647.0) {
            fprintf(stderr, "dsocr tokenize: line %zu: element %zu is not an integer id\n", lineno, i);
            rc = 1;
            break;
        }
        ids[i++] = (int32_t)v;
    }
    char *text = NULL;
    DsError e = {0};
    if (!rc && tokenizer_decode(t, ids, nid, skip_special, &text, NULL, &e)) {
        fprintf(stderr, "dsocr tokenize: line %zu: %s\n", lineno, e.msg);
        rc = 1;
    }
    if (!rc) {
        cJSON *s = cJSON_CreateString(text);
        char *out = s ? cJSON_PrintUnformatted(s) : NULL;
        if (out) {
            puts(out);
        } else {
            fprintf(stderr, "dsocr tokenize: out of memory\n");
            rc = 1;
        }
        free(out);
        cJSON_Delete(s);
    }
    free(text);
    free(ids);
    cJSON_Delete(j);
    return rc;
}

int cli_tokenize(int argc, char **argv) {
    const char *path = NULL;
    int decode = 0, skip_special = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (!strcmp(argv[i], "--skip-special")) skip_special = 1;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dsocr tokenize: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (skip_special && !decode) {
        fprintf(stderr, "dsocr tokenize: --skip-special only applies with --decode\n");
        return 2;
    }
    char def[4096];
    if (!path) {
        snprintf(def, sizeof def, "%s/tokenizer.json", cli_default_model_dir());
        path = def;
    }
    Tokenizer *t = NULL;
    DsError e = {0};
    if (tokenizer_load_json(path, &t, &e)) {
        fprintf(stderr, "dsocr tokenize: %s\n", e.msg);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        size_t k = 0;
        while (k < (size_t)n && (line[k] == ' ' || line[k] == '\t')) k++;
        if (k == (size_t)n) continue;
        rc = decode ? decode_line(t, line, (size_t)n, lineno, skip_special) : encode_line(t, line, (size_t)n, lineno);
    }
    free(line);
    tokenizer_free(t);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "dsocr tokenize: cannot write the output\n");
        rc = 1;
    }
    return rc;
}
