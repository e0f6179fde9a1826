/* image_dump: a small driver of the image pipeline for tests/py/test_image_pillow.py. Binary results go to
 * stdout after one text header line; errors go to stderr with exit status 1.
 *
 *   image_dump decode [--alpha-white] [--no-exif] FILE     "W H\n" + rgb [H][W][3]
 *   image_dump resize OW OH FILE                           "W H\n" + rgb of the decoded image resized
 *   image_dump views (--mode NAME | --base B --image I --crop 0|1) [--compat hf|vllm] [--norm] FILE
 *        "tw th tile_side global_side global_direct n_slots n_views\n" then each view (tiles row-major, then
 *        global): rgb [S][S][3] bytes, or with --norm float32 [3][S][S]
 *   image_dump grid W H T MIN MAX                          "tw th\n"
 *   image_dump grid -          the same for each "W H T MIN MAX" line of stdin
 *   image_dump fit W H S                                   "nw nh x0 y0\n"
 *   image_dump fit -           the same for each "W H S" line of stdin
 *   image_dump exif FILE                                   "orientation\n" of a raw EXIF block
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "util.h"

static int die(const DsError *e) {
    fprintf(stderr, "error: %s\n", e->msg);
    return 1;
}

static int load(const char *path, const ImageDecodeOptions *o, DsImage *im, DsError *e) {
    char *buf;
    size_t len;
    if (ds_read_file(path, (size_t)1 << 30, &buf, &len, e) != DSOCR_OK) return -1;
    DsocrStatus st = image_decode((const uint8_t *)buf, len, o, im, e);
    free(buf);
    return st == DSOCR_OK ? 0 : -1;
}

static void put_image(const DsImage *im) {
    printf("%d %d\n", im->w, im->h);
    fwrite(im->rgb, 1, (size_t)im->w * im->h * 3, stdout);
}

int main(int argc, char **argv) {
    DsError e = {0};
    if (argc < 2) {
        fprintf(stderr, "usage: see the header of tests/tools/image_dump.c\n");
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "grid") && argc == 3 && !strcmp(argv[2], "-")) {
        int w, h, t, lo, hi, tw, th;
        while (scanf("%d %d %d %d %d", &w, &h, &t, &lo, &hi) == 5) {
            image_grid(w, h, t, lo, hi, &tw, &th);
            printf("%d %d\n", tw, th);
        }
        return 0;
    }
    if (!strcmp(cmd, "fit") && argc == 3 && !strcmp(argv[2], "-")) {
        int w, h, s, nw, nh, x0, y0;
        while (scanf("%d %d %d", &w, &h, &s) == 3) {
            image_fit_size(w, h, s, &nw, &nh, &x0, &y0);
            printf("%d %d %d %d\n", nw, nh, x0, y0);
        }
        return 0;
    }
    if (!strcmp(cmd, "grid") && argc == 7) {
        int tw, th;
        image_grid(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), &tw, &th);
        printf("%d %d\n", tw, th);
        return 0;
    }
    if (!strcmp(cmd, "fit") && argc == 5) {
        int nw, nh, x0, y0;
        image_fit_size(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), &nw, &nh, &x0, &y0);
        printf("%d %d %d %d\n", nw, nh, x0, y0);
        return 0;
    }
    if (!strcmp(cmd, "exif") && argc == 3) {
        char *buf;
        size_t len;
        if (ds_read_file(argv[2], (size_t)1 << 26, &buf, &len, &e) != DSOCR_OK) return die(&e);
        printf("%d\n", exif_orientation((const uint8_t *)buf, len));
        free(buf);
        return 0;
    }
    ImageDecodeOptions o = {0};
    ImageMode m = {0, 0, 0};
    int have_mode = 0, max_tiles = IMAGE_MAX_TILES_HF, norm = 0;
    const char *file = NULL;
    int pos[2], npos = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--alpha-white")) o.alpha_white = 1;
        else if (!strcmp(a, "--no-exif")) o.ignore_exif = 1;
        else if (!strcmp(a, "--norm")) norm = 1;
        else if (!strcmp(a, "--mode") && i + 1 < argc) {
            if (image_mode_by_name(argv[++i], &m)) {
                fprintf(stderr, "error: unknown mode %s\n", argv[i]);
                return 1;
            }
            have_mode = 1;
        } else if (!strcmp(a, "--base") && i + 1 < argc) m.base_size = atoi(argv[++i]), have_mode = 1;
        else if (!strcmp(a, "--image") && i + 1 < argc) m.image_size = atoi(argv[++i]), have_mode = 1;
        else if (!strcmp(a, "--crop") && i + 1 < argc) m.crop_mode = atoi(argv[++i]), have_mode = 1;
        else if (!strcmp(a, "--compat") && i + 1 < argc) {
            const char *c = argv[++i];
            if (!strcmp(c, "vllm")) {
                max_tiles = IMAGE_MAX_TILES_VLLM;
                o.alpha_white = 1;
            } else if (strcmp(c, "hf")) {
                fprintf(stderr, "error: unknown profile %s\n", c);
                return 1;
            }
        } else if (a[0] != '-' && npos < 2 && strcmp(cmd, "decode") && strcmp(cmd, "views") && i + 1 < argc)
            pos[npos++] = atoi(a);
        else file = a;
    }
    if (!file) {
        fprintf(stderr, "error: no file\n");
        return 2;
    }
    DsImage im;
    if (load(file, &o, &im, &e)) return die(&e);
    if (!strcmp(cmd, "decode")) {
        put_image(&im);
    } else if (!strcmp(cmd, "resize") && npos == 2) {
        DsImage r;
        if (image_resize_bicubic(&im, pos[0], pos[1], &r, &e) != DSOCR_OK) return die(&e);
        put_image(&r);
        image_free(&r);
    } else if (!strcmp(cmd, "views") && have_mode) {
        ImagePlan p;
        if (image_plan(im.w, im.h, &m, max_tiles, &p, &e) != DSOCR_OK) return die(&e);
        DsImage views[33];
        if (image_make_views(&im, &p, views, &e) != DSOCR_OK) return die(&e);
        printf("%d %d %d %d %d %d %d\n", p.tw, p.th, p.tile_side, p.global_side, p.global_direct, p.n_slots,
               p.n_views);
        for (int v = 0; v < p.n_views; v++) {
            size_t n = (size_t)views[v].w * views[v].h;
            if (norm) {
                float *f = malloc(n * 3 * sizeof(float));
                if (!f) return 1;
                image_normalize(&views[v], f);
                fwrite(f, sizeof(float), n * 3, stdout);
                free(f);
            } else {
                fwrite(views[v].rgb, 1, n * 3, stdout);
            }
            image_free(&views[v]);
        }
    } else {
        fprintf(stderr, "error: bad command line\n");
        return 2;
    }
    image_free(&im);
    return 0;
}
