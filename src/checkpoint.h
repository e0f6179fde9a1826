/* checkpoint.h: a model's weights: finds the safetensors shards of a model folder (one file, or several listed by
 * model.safetensors.index.json), maps them, converts an fp32 checkpoint once into a bf16 cache file, and checks
 * every tensor the model needs by name, dtype and shape against the list derived from config.json.
 * GGUF files are the other source (checkpoint_gguf.c, docs/gguf.md): a single file written by `dsocr quantize`,
 * or llama.cpp's pair (text model + mmproj); their tensors are presented under the Hugging Face names and shapes,
 * and the config is rebuilt from their metadata.
 * It knows tensor names and shapes, not what the model does with them (model.c). */
#ifndef DSOCR_CHECKPOINT_H
#define DSOCR_CHECKPOINT_H

#include "config.h"
#include "gguf.h"
#include "safetensors.h"

typedef enum CkComponent {
    CK_SAM = 0,
    CK_CLIP,
    CK_PROJECTOR,  /* projector Linear, image_newline, view_seperator */
    CK_DEC_ATTN,   /* q/k/v/o projections */
    CK_DENSE_MLP,  /* layers before first_k_dense_replace */
    CK_ROUTED,     /* routed experts */
    CK_SHARED,     /* shared experts */
    CK_ROUTER,     /* MoE gates */
    CK_NORMS,      /* decoder RMSNorm weights */
    CK_EMBED,
    CK_LM_HEAD,
    CK_N_COMPONENTS
} CkComponent;
const char *checkpoint_component_name(CkComponent c);

/* One tensor the model expects. */
typedef struct CkExpected {
    char name[96];
    int ndim;
    int64_t shape[4];
    CkComponent comp;
} CkExpected;

/* The full list of tensors config c implies (2,710 for the official config). Caller frees *out. */
DsocrStatus checkpoint_expected(const ModelConfig *c, CkExpected **out, int *n, DsError *e);

typedef struct CkTensor {
    const StTensor *st;   /* in one of the shards */
    CkComponent comp;
} CkTensor;

typedef struct Checkpoint {
    ModelConfig config;
    StFile *shards;
    int n_shards;
    char **shard_paths;
    CkExpected *expected; /* sorted by name; expected[i] is described by tensors[i] */
    CkTensor *tensors;
    int n_tensors;
    int converted;        /* 1 when the weights come from a bf16 cache made from an fp32 checkpoint */
    char cache_path[1024];
    /* GGUF sources (n_gguf = 0 for a safetensors folder): shards[0] is then a table of views (no mapping of its
     * own) into these files or into owned[] (tensors widened or narrowed to what the engine takes). */
    GgufFile *gguf;
    int n_gguf;
    const GgufFile *gguf_tokenizer; /* the file whose metadata holds the tokenizer, or NULL */
    void **owned;
    int n_owned;
} Checkpoint;

typedef struct CheckpointOptions {
    void (*log)(void *user, const char *line); /* progress messages (conversion), may be NULL */
    void *log_user;
    const char *cache_dir; /* where an fp32 checkpoint's bf16 cache goes; NULL = the model folder, else
                              $XDG_CACHE_HOME/dsocr or ~/.cache/dsocr when the folder is read-only */
} CheckpointOptions;

/* Opens and validates a model: a safetensors model folder, a GGUF file (one written by `dsocr quantize`, or
 * llama.cpp's text-model GGUF with its mmproj GGUF beside it), or a folder holding GGUF files and no
 * config.json. On failure the message lists the problems found (missing, extra and misshapen tensors by name with
 * expected and actual shapes; corrupt files by path and cause). */
DsocrStatus checkpoint_open(const char *dir, const CheckpointOptions *opt, Checkpoint *ck, DsError *e);

/* 1 for the components whose 2-D weights may be block-quantised (Q8_0 / Q4_0): decoder attention, dense MLP,
 * routed and shared experts, lm_head. */
int checkpoint_component_quantizable(CkComponent c);

/* llama.cpp's GGUF name of a Hugging Face tensor name (docs/gguf.md). *expert is the expert index for routed
 * expert weights (stored stacked as one [E, rows, cols] tensor, blk.L.ffn_{gate,up,down}_exps), else -1.
 * *mmproj is 1 for tensors of the vision side (the mmproj file of llama.cpp's pair). Returns 0 when the name is
 * not one of the model's. */
int checkpoint_gguf_name(const char *hf, char *out, size_t n, int *expert, int *mmproj);

/* The split form of a fused GGUF tensor: CLIP layer I's attention, v.blk.I.attn_qkv.{weight,bias} ([3·W, W] and
 * [3·W]), may be stored as v.blk.I.attn_{q,k,v}.{weight,bias} (newer llama.cpp converters), each a third of the
 * rows, q then k then v. For such a name, writes the three part names into parts and returns 1; else returns 0.
 * The loader joins the parts by rows; `dsocr quantize --split-clip-qkv` writes them. */
int checkpoint_gguf_split(const char *gguf, char parts[3][GGUF_MAX_NAME]);

/* Internal to checkpoint.c / checkpoint_gguf.c. */
DsocrStatus checkpoint_open_gguf(const char *path, const CheckpointOptions *opt, Checkpoint *ck, DsError *e);
DsocrStatus checkpoint_validate(Checkpoint *ck, const char *what, DsError *e);
void checkpoint_close(Checkpoint *ck);
/* Gives back the pages of [p, p + n) when they lie in one of the checkpoint's file mappings (ds_map_release): for
 * tensors no longer read (quantised copies replace them). Returns the bytes given back. */
size_t checkpoint_release(const Checkpoint *ck, const void *p, size_t n);
/* The tensor with this name, or NULL. */
const StTensor *checkpoint_get(const Checkpoint *ck, const char *name);

/* Totals over the checkpoint. */
typedef struct CkSummary {
    uint64_t params, bytes;
    int n_tensors;
    uint64_t comp_params[CK_N_COMPONENTS], comp_bytes[CK_N_COMPONENTS];
    int dtype_count[16];
} CkSummary;
void checkpoint_summary(const Checkpoint *ck, CkSummary *s);

/* ---- shared by checkpoint.c and checkpoint_gguf.c (not for other modules) ---- */

/* Validation problems collected into one message: the first 8 in full, then a count. */
typedef struct CkProblems {
    char text[4096];
    size_t used;
    int n;
} CkProblems;
void ck_problem(CkProblems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "[d0, d1, ...]" into buf. */
void ck_fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape);

#endif
