/* vision.h: the DeepEncoder (spec §5): SAM ViT-B with windowed/global attention and decomposed relative
 * positions, neck and strided convolutions; CLIP-L body fed with SAM's features; the linear projector.
 * One view at a time; the caller assembles views into the image-token block (engine.c).
 * What it is not: preprocessing (image.c), the token layout (engine.c). */
#ifndef DSOCR_VISION_H
#define DSOCR_VISION_H

#include "model.h"

/* Working memory for views up to max_side px, sized once (vision_work_new) and reused. */
typedef struct VisionWork VisionWork;

/* scratch: NULL, or a backend region of at least vision_scratch_bytes(m, max_side, m->lean) bytes that holds the
 * view's own buffers (everything but the position tables); the caller keeps it and may use it for other things
 * between vision_encode calls (the session's KV pool: engine.c), since nothing in it outlives a view. */
DsocrStatus vision_work_new(const Model *m, int max_side, void *scratch, VisionWork **out, DsError *e);
void vision_work_free(VisionWork *w);
/* The largest view side w was sized for (0 for NULL). */
int vision_work_max_side(const VisionWork *w);
/* Bytes held by a VisionWork for max_side: in its smaller form when lean (what vision_work_new makes for a model
 * with Model.lean set). */
size_t vision_work_bytes(const Model *m, int max_side, int lean);
/* The part of it that a scratch region holds (vision_work_new). */
size_t vision_scratch_bytes(const Model *m, int max_side, int lean);

typedef struct VisionOptions {
    int bf16;              /* 1: the official bf16 rounding points (spec §12, §16) */
    const char *dump_dir;  /* write the stage dumps of this view (NULL: none) */
    const char *view_name; /* dump name prefix ("global", "tile0", ...) */
    int graph_tag;         /* anything else the recorded ops depend on (the backend's product mode): views are
                              recorded per (side, bf16, graph_tag) */
} VisionOptions;

/* Encodes one view: chw [3, side, side] normalised pixels (host memory) -> out [n², hidden] projected features
 * (backend memory), n = side/64
 * (row-major over the n × n grid). side must be a multiple of 64 and <= the work's max_side. */
DsocrStatus vision_encode(const Model *m, VisionWork *w, const float *chw, int side, const VisionOptions *o,
                          float *out, DsError *e);

#endif
