/* ops_dump: runs one op on float32 data read from stdin and writes the results (float32) to stdout, so that
 * tests/py/test_ops_torch.py can compare the C ops with PyTorch. Little-endian raw floats both ways.
 *   ops_dump bicubic C IH IW OH OW        in: x [C, IH, IW]                  out: ref [C, OH, OW] (CHW)
 *   ops_dump bicubic_hwc C IH IW OH OW    in: x [IH, IW, C]                  out: [OH, OW, C]
 *   ops_dump linear1d C IN OUT            in: t [IN, C]                      out: [OUT, C]
 *   ops_dump gelu N                       in: x [N]                          out: ref [N], cpu [N]
 *   ops_dump layernorm M N EPS            in: x [M, N], w [N], b [N] (bf16-exact; used as bf16)
 *                                         out: ref [M, N], cpu [M, N]
 *   ops_dump conv2d H W I O K STRIDE PAD  in: x [H, W, I], w [O, I, K, K], b [O] (bf16-exact; used as bf16)
 *                                         out: ref [Ho, Wo, O], cpu [Ho, Wo, O] */
#include <stdio.h>
#include <stdlib.h>

#include "ops.h"

static float *read_floats(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p || fread(p, sizeof *p, n, stdin) != n) {
        fprintf(stderr, "ops_dump: expected %zu floats on stdin\n", n);
        exit(2);
    }
    return p;
}
static void write_floats(const float *p, size_t n) {
    if (fwrite(p, sizeof *p, n, stdout) != n) exit(3);
}
static uint16_t *to_bf16(const float *p, size_t n) {
    uint16_t *r = malloc((n ? n : 1) * sizeof *r);
    for (size_t i = 0; i < n; i++) r[i] = f32_to_bf16(p[i]);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ops_dump OP ARGS... < input > output (see the header of ops_dump.c)\n");
        return 2;
    }
    int a[8] = {0};
    for (int i = 2; i < argc && i < 10; i++) a[i - 2] = atoi(argv[i]);
    const char *op = argv[1];
    if (!strcmp(op, "bicubic") || !strcmp(op, "bicubic_hwc")) {
        int C = a[0], ih = a[1], iw = a[2], oh = a[3], ow = a[4];
        float *x = read_floats((size_t)C * ih * iw), *y = malloc((size_t)C * oh * ow * sizeof *y);
        ops_resample_bicubic_aa(y, x, C, ih, iw, oh, ow, op[7] == '_');
        write_floats(y, (size_t)C * oh * ow);
    } else if (!strcmp(op, "linear1d")) {
        int C = a[0], in = a[1], out = a[2];
        float *x = read_floats((size_t)in * C), *y = malloc((size_t)out * C * sizeof *y);
        ops_resample_linear_1d(y, x, in, out, C);
        write_floats(y, (size_t)out * C);
    } else if (!strcmp(op, "gelu")) {
        size_t n = (size_t)a[0];
        float *x = read_floats(n), *y = malloc(n * sizeof *y);
        ops_gelu_ref(y, x, n);
        write_floats(y, n);
        ops_gelu_cpu(y, x, n);
        write_floats(y, n);
    } else if (!strcmp(op, "layernorm")) {
        int M = a[0], n = a[1];
        float eps = (float)atof(argv[4]);
        float *x = read_floats((size_t)M * n), *w = read_floats(n), *b = read_floats(n);
        uint16_t *wb = to_bf16(w, n), *bb = to_bf16(b, n);
        float *y = malloc((size_t)M * n * sizeof *y);
        ops_layernorm_ref(y, n, x, n, M, n, ds_w(wb, DS_BF16), ds_w(bb, DS_BF16), eps);
        write_floats(y, (size_t)M * n);
        ops_layernorm_cpu(y, n, x, n, M, n, ds_w(wb, DS_BF16), ds_w(bb, DS_BF16), eps);
        write_floats(y, (size_t)M * n);
    } else if (!strcmp(op, "conv2d")) {
        OpsConv2d c = {.in_h = a[0], .in_w = a[1], .in_c = a[2], .out_c = a[3], .kh = a[4], .kw = a[4],
                       .stride = a[5], .pad = a[6]};
        size_t kc = (size_t)c.in_c * c.kh * c.kw, ny = (size_t)ops_conv2d_out_h(&c) * ops_conv2d_out_w(&c) * c.out_c;
        float *x = read_floats((size_t)c.in_h * c.in_w * c.in_c), *w = read_floats(c.out_c * kc), *b = read_floats(c.out_c);
        uint16_t *wb = to_bf16(w, c.out_c * kc), *bb = to_bf16(b, c.out_c);
        size_t sn = ops_conv2d_scratch_floats(&c);
        float *y = malloc(ny * sizeof *y), *s = malloc((sn ? sn : 1) * sizeof *s);
        ops_conv2d_ref(y, x, &c, ds_w(wb, DS_BF16), ds_w(bb, DS_BF16), NULL, 0);
        write_floats(y, ny);
        ops_conv2d_cpu(y, x, &c, ds_w(wb, DS_BF16), ds_w(bb, DS_BF16), s, sn);
        write_floats(y, ny);
    } else {
        fprintf(stderr, "ops_dump: unknown op '%s'\n", op);
        return 2;
    }
    return 0;
}
