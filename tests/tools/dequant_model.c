/* dequant_model: writes a model folder whose weights are exactly what the engine computes with after quantising
 * at load (dsocr ocr --quant): every tensor as F32 in model-00001-of-000001.safetensors, quantised weights
 * dequantised by the quant.h _ref functions, the others widened exactly; config.json and the tokenizer files are
 * copied. The PyTorch reference (tools/reference) run on that folder is the yardstick of the quantised engine
 * (tests/py/test_quant_reference.py). Errors go to stderr with exit status 1.
 *
 *   dequant_model --model DIR [--quant q8_0|q4] --out DIR
 * Without --quant, weights already quantised in the checkpoint (a GGUF file) are dequantised. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "quant.h"

static int copy_file(const char *from, const char *to) {
    char *buf;
    size_t len;
    DsError e = {0};
    if (ds_read_file(from, (size_t)1 << 30, &buf, &len, &e) != DSOCR_OK) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f && fclose(f)) ok = 0;
    free(buf);
    return ok ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *quant = NULL, *out = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--quant")) quant = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
    }
    DsDtype target = !quant ? DS_DTYPE_UNKNOWN : !strcmp(quant, "q8_0") ? DS_Q8_0 : !strcmp(quant, "q4") ? DS_Q4_0
                                                                                                         : DS_BOOL;
    if (!dir || !out || target == DS_BOOL) {
        fprintf(stderr, "usage: dequant_model --model DIR [--quant q8_0|q4] --out DIR\n");
        return 2;
    }
    DsError e = {0};
    CheckpointOptions co = {0};
    Model *m;
    if (model_load(dir, &co, &m, &e) || (target != DS_DTYPE_UNKNOWN && model_quantize(m, target, &e))) {
        fprintf(stderr, "error: %s\n", e.msg);
        return 1;
    }
    if (mkdir(out, 0755) && errno != EEXIST) {
        fprintf(stderr, "error: %s: %s\n", out, strerror(errno));
        return 1;
    }
    char path[4096], from[4096];
    snprintf(path, sizeof path, "%s/model-00001-of-000001.safetensors", out);
    if (model_write_f32(m, path, &e)) {
        fprintf(stderr, "error: %s\n", e.msg);
        return 1;
    }
    static const char *files[] = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "processor_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(from, sizeof from, "%s/%s", dir, files[i]);
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        struct stat sb;
        if (stat(from, &sb)) {
            if (i < 2) {
                fprintf(stderr, "error: %s: %s\n", from, strerror(errno));
                return 1;
            }
            continue;
        }
        if (copy_file(from, path)) {
            fprintf(stderr, "error: cannot copy %s to %s\n", from, path);
            return 1;
        }
    }
    printf("%d weights quantised (%.1f MiB held), %d tensors written as F32 to %s\n", model_n_block_weights(m),
           (double)model_weight_bytes(m) / (1 << 20), m->ck.n_tensors, out);
    model_free(m);
    return 0;
}
