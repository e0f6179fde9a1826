/* check_model.c: `dsocr check-model [DIR]`: validates a model folder (config, every tensor's name, dtype and
 * shape) and prints a one-screen summary: parameters, dtypes, bytes by component. */
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "cli/cli.h"

static void log_line(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "dsocr: %s\n", line);
}

static void human(char *buf, size_t n, uint64_t b) {
    if (b >= (1ull << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(buf, n, "%.1f MiB", (double)b / (1ull << 20));
    else
        snprintf(buf, n, "%.1f KiB", (double)b / 1024);
}

static void commas(char *buf, size_t n, uint64_t v) {
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v), o = 0;
    for (int i = 0; i < len && (size_t)o + 2 < n; i++) {
        if (i && (len - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
}

int cli_check_model(int argc, char **argv) {
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: dsocr check-model [DIR]\n\nValidates a model folder (config.json, safetensors shards or "
                   "index, every tensor's name,\ndtype and shape) and prints a summary. DIR defaults to "
                   "$DSOCR_MODEL, else ./models/deepseek-ocr.\n");
            return 0;
        }
        if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "dsocr check-model: unexpected argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
        dir = argv[i];
    }
    if (!dir) dir = cli_default_model_dir();
    Checkpoint ck;
    DsError e = {0};
    CheckpointOptions o = {.log = log_line};
    if (checkpoint_open(dir, &o, &ck, &e) != DSOCR_OK) {
        fprintf(stderr, "dsocr check-model: %s\n", e.msg);
        return 1;
    }
    CkSummary s;
    checkpoint_summary(&ck, &s);
    const ModelConfig *c = &ck.config;
    char a[64], b[64];
    commas(a, sizeof a, s.params);
    human(b, sizeof b, s.bytes);
    printf("model folder   %s%s\n", dir, ck.converted ? " (fp32, read through its bf16 cache)" : "");
    printf("config         model_type \"%s\", decoder %d layers x %d wide, %d heads x %d, %d routed experts "
           "(top-%d) + %d shared, vocab %d\n",
           c->model_type, c->num_hidden_layers, c->hidden_size, c->num_attention_heads, c->head_dim,
           c->n_routed_experts, c->num_experts_per_tok, c->n_shared_experts, c->vocab_size);
    printf("               SAM %d x %d (%d heads, window %d, neck %d), CLIP %d x %d (%d heads), projector "
           "%d -> %d\n",
           c->sam.layers, c->sam.width, c->sam.heads, c->sam.window_size, c->sam.out_chans, c->clip.layers,
           c->clip.width, c->clip.heads, c->projector_input_dim, c->projector_n_embed);
    printf("shards         %d file%s\n", ck.n_shards, ck.n_shards > 1 ? "s" : "");
    printf("parameters     %s in %d tensors, %s\n", a, s.n_tensors, b);
    printf("dtypes        ");
    for (int t = 0; t < 16; t++)
        if (s.dtype_count[t]) printf(" %s: %d tensors", ds_dtype_name((DsDtype)t), s.dtype_count[t]);
    printf("\n\n  %-20s %16s %12s\n", "component", "parameters", "bytes");
    for (int k = 0; k < CK_N_COMPONENTS; k++) {
        commas(a, sizeof a, s.comp_params[k]);
        human(b, sizeof b, s.comp_bytes[k]);
        printf("  %-20s %16s %12s\n", checkpoint_component_name((CkComponent)k), a, b);
    }
    printf("\nok: every tensor has the expected name, dtype and shape\n");
    checkpoint_close(&ck);
    return 0;
}
