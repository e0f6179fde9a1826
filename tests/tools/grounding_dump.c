/* grounding_dump.c: runs the grounding post-processing on stdin (raw model text) for a W x H page and prints
 * the blocks as JSON ({"blocks": [{"label", "text", "boxes"}], "markdown", "text"}), so that tests can compare
 * it with Python's re on random inputs. Usage: grounding_dump W H < raw */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "postprocess.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf) return 1;
    PpOptions o = {.width = atoi(argv[1]), .height = atoi(argv[2]), .image_prefix = "p", .page = 1};
    PpPage p;
    DsError e = {0};
    if (postprocess_page(buf, n, &o, &p, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    cJSON *j = cJSON_CreateObject(), *bl = cJSON_AddArrayToObject(j, "blocks");
    for (int i = 0; i < p.n_blocks; i++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "label", p.blocks[i].label);
        cJSON_AddStringToObject(b, "text", p.blocks[i].text);
        cJSON_AddBoolToObject(b, "image", p.blocks[i].is_image);
        cJSON *bx = cJSON_AddArrayToObject(b, "boxes");
        for (int k = 0; k < p.blocks[i].n_boxes; k++) {
            int v[4] = {p.blocks[i].boxes[k].x1, p.blocks[i].boxes[k].y1, p.blocks[i].boxes[k].x2,
                        p.blocks[i].boxes[k].y2};
            cJSON_AddItemToArray(bx, cJSON_CreateIntArray(v, 4));
        }
        cJSON_AddItemToArray(bl, b);
    }
    cJSON_AddStringToObject(j, "markdown", p.markdown);
    cJSON_AddStringToObject(j, "text", p.text);
    char *s = cJSON_PrintUnformatted(j);
    puts(s);
    free(s);
    cJSON_Delete(j);
    postprocess_page_free(&p);
    free(buf);
    return 0;
}
