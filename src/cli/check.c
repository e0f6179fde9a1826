/* check.c: `dsocr check`: what this machine has (CPU, RAM, NVIDIA GPUs through the driver loaded at run time),
 * whether the model folder is complete and valid, and which settings fit, with their expected memory.
 * Human-readable by default, --json for scripts. Works without any NVIDIA driver and in CPU-only builds. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli/cli.h"
#include "hwinfo.h"
#include "pull.h"

static void usage(FILE *f) {
    fprintf(f, "usage: dsocr check [--json] [--model DIR] [--gpu-mem SIZE] [--no-gpu]\n\n"
               "Reports the CPU (features, usable cores), RAM, each NVIDIA GPU (name, compute capability, total and\n"
               "free memory, bf16, driver and runtime versions), whether the model folder is complete and valid,\n"
               "and the settings that fit this machine with their expected peak memory.\n\n"
               "  --json          one JSON object on stdout, for scripts\n"
               "  --model DIR     the model folder (default $DSOCR_MODEL, ./models/deepseek-ocr, or the folder\n"
               "                  'dsocr pull' fills)\n"
               "  --gpu-mem SIZE  GPU memory dsocr may use, e.g. 2G or 1.5GiB (default: the free memory)\n"
               "  --no-gpu        do not load the NVIDIA driver library\n");
}

static void gib(char *b, size_t n, uint64_t x) {
    if (x >= (1ull << 30))
        snprintf(b, n, "%.1f GiB", (double)x / (1ull << 30));
    else
        snprintf(b, n, "%.0f MiB", (double)x / (1ull << 20));
}

typedef struct ModelReport {
    const char *dir;
    PullState state;
    char why[512];
    int checked, valid;
    char error[512];
    int n_tensors;
    char repo[256], commit[80], license[128];
} ModelReport;

static void read_record(ModelReport *r) {
    char path[4200], *txt = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", r->dir, PULL_MARKER);
    if (ds_read_file(path, 1u << 20, &txt, &len, NULL)) return;
    cJSON *j = cJSON_ParseWithLength(txt, len);
    free(txt);
    const char *keys[3] = {"repo", "commit", "license"};
    char *dst[3] = {r->repo, r->commit, r->license};
    size_t cap[3] = {sizeof r->repo, sizeof r->commit, sizeof r->license};
    for (int i = 0; i < 3 && j; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (cJSON_IsString(v)) snprintf(dst[i], cap[i], "%s", v->valuestring);
    }
    cJSON_Delete(j);
}

static void check_model(ModelReport *r, HwModelNeeds *n) {
    r->state = pull_folder_state(r->dir, r->why, sizeof r->why);
    read_record(r);
    if (r->state == PULL_ABSENT) return;
    r->checked = 1;
    Checkpoint ck;
    DsError e = {0};
    CheckpointOptions o = {0};
    if (checkpoint_open(r->dir, &o, &ck, &e) != DSOCR_OK) {
        snprintf(r->error, sizeof r->error, "%s", e.msg);
        return;
    }
    r->valid = 1;
    CkSummary s;
    checkpoint_summary(&ck, &s);
    r->n_tensors = s.n_tensors;
    const ModelConfig *c = &ck.config;
    n->weight_bytes = s.bytes;
    n->routed_bytes = s.comp_bytes[CK_ROUTED];
    n->embed_bytes = s.comp_bytes[CK_EMBED];
    n->kv_bytes_per_token = 2ull * (uint64_t)c->num_hidden_layers * (uint64_t)c->hidden_size * 2;
    n->max_context = c->max_position_embeddings;
    checkpoint_close(&ck);
}

static cJSON *json_report(const HwInfo *h, const ModelReport *m, const HwModelNeeds *n, const HwSetting *s,
                          int best, int would, uint64_t budget, const char *cmd) {
    cJSON *root = cJSON_CreateObject();
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    cJSON_AddStringToObject(root, "dsocr_version", DSOCR_VERSION);
    cJSON_AddStringToObject(root, "host", host);
    cJSON *b = cJSON_AddObjectToObject(root, "build");
    cJSON_AddBoolToObject(b, "cuda", h->cuda_build);
    cJSON *cpu = cJSON_AddObjectToObject(root, "cpu");
    cJSON_AddStringToObject(cpu, "model", h->cpu_model);
    cJSON_AddStringToObject(cpu, "arch", h->arch ? h->arch : "");
    cJSON_AddNumberToObject(cpu, "cpus", h->cpus);
    cJSON_AddNumberToObject(cpu, "cpus_online", h->cpus_online);
    cJSON *feat = cJSON_AddArrayToObject(cpu, "features");
    const char *names[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx_vnni", "amx_bf16"};
    const int have[] = {h->avx2, h->fma, h->f16c, h->avx512f, h->avx512bw, h->avx512_bf16, h->avx_vnni, h->amx_bf16};
    for (int i = 0; i < 8; i++)
        if (have[i]) cJSON_AddItemToArray(feat, cJSON_CreateString(names[i]));
    cJSON *ram = cJSON_AddObjectToObject(root, "ram");
    cJSON_AddNumberToObject(ram, "total_bytes", (double)h->ram_total);
    cJSON_AddNumberToObject(ram, "available_bytes", (double)h->ram_available);
    cJSON_AddNumberToObject(ram, "cgroup_limit_bytes", (double)h->cgroup_limit);
    cJSON *cuda = cJSON_AddObjectToObject(root, "cuda");
    cJSON_AddBoolToObject(cuda, "driver_loaded", h->driver_loaded);
    cJSON_AddNumberToObject(cuda, "driver_version", h->driver_version);
    cJSON_AddNumberToObject(cuda, "runtime_version", h->runtime_version);
    cJSON_AddStringToObject(cuda, "note", h->gpu_note);
    cJSON *gpus = cJSON_AddArrayToObject(root, "gpus");
    for (int i = 0; i < h->n_gpus; i++) {
        const HwGpu *g = &h->gpus[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", i);
        cJSON_AddStringToObject(o, "name", g->name);
        char cc[16];
        snprintf(cc, sizeof cc, "%d.%d", g->cc_major, g->cc_minor);
        cJSON_AddStringToObject(o, "compute_capability", cc);
        cJSON_AddNumberToObject(o, "sm_count", g->sm_count);
        cJSON_AddNumberToObject(o, "total_bytes", (double)g->total_bytes);
        if (g->free_known)
            cJSON_AddNumberToObject(o, "free_bytes", (double)g->free_bytes);
        else
            cJSON_AddNullToObject(o, "free_bytes");
        cJSON_AddBoolToObject(o, "bf16", g->bf16);
        cJSON_AddItemToArray(gpus, o);
    }
    cJSON *mo = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(mo, "dir", m->dir);
    cJSON_AddStringToObject(mo, "state", m->state == PULL_COMPLETE ? "complete" : m->state == PULL_INCOMPLETE ? "incomplete" : "absent");
    if (m->why[0]) cJSON_AddStringToObject(mo, "reason", m->why);
    cJSON_AddBoolToObject(mo, "valid", m->valid);
    if (m->error[0]) cJSON_AddStringToObject(mo, "error", m->error);
    if (m->valid) cJSON_AddNumberToObject(mo, "tensors", m->n_tensors);
    if (m->repo[0]) cJSON_AddStringToObject(mo, "repo", m->repo);
    if (m->commit[0]) cJSON_AddStringToObject(mo, "commit", m->commit);
    if (m->license[0]) cJSON_AddStringToObject(mo, "license", m->license);
    if (m->state == PULL_ABSENT || (m->state == PULL_INCOMPLETE))
        cJSON_AddStringToObject(mo, "fetch_command", "dsocr pull");
    cJSON *nd = cJSON_AddObjectToObject(root, "needs");
    cJSON_AddBoolToObject(nd, "from_model_folder", m->valid);
    cJSON_AddNumberToObject(nd, "weight_bytes", (double)n->weight_bytes);
    cJSON_AddNumberToObject(nd, "routed_expert_bytes", (double)n->routed_bytes);
    cJSON_AddNumberToObject(nd, "kv_bytes_per_token_bf16", (double)n->kv_bytes_per_token);
    cJSON_AddNumberToObject(nd, "max_context", n->max_context);
    cJSON_AddNumberToObject(nd, "activation_bytes_gpu_estimate", (double)n->act_gpu_bytes);
    cJSON_AddNumberToObject(nd, "activation_bytes_cpu_estimate", (double)n->act_cpu_bytes);
    if (budget) cJSON_AddNumberToObject(root, "gpu_mem_budget_bytes", (double)budget);
    cJSON *arr = cJSON_AddArrayToObject(root, "settings");
    for (int i = 0; i < HW_N_SETTINGS; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", s[i].name);
        cJSON_AddStringToObject(o, "device", s[i].device);
        cJSON_AddStringToObject(o, "dtype", s[i].dtype);
        cJSON_AddStringToObject(o, "flags", s[i].flags);
        cJSON_AddNumberToObject(o, "gpu_bytes", (double)s[i].gpu_bytes);
        cJSON_AddNumberToObject(o, "ram_bytes", (double)s[i].ram_bytes);
        cJSON_AddBoolToObject(o, "built", s[i].built);
        cJSON_AddBoolToObject(o, "fits", s[i].fits);
        if (s[i].why[0]) cJSON_AddStringToObject(o, "why", s[i].why);
        cJSON_AddItemToArray(arr, o);
    }
    if (best >= 0)
        cJSON_AddStringToObject(root, "recommended", s[best].name);
    else
        cJSON_AddNullToObject(root, "recommended");
    cJSON_AddStringToObject(root, "recommended_mode", "gundam");
    if (cmd[0]) cJSON_AddStringToObject(root, "recommended_command", cmd);
    if (would >= 0 && would != best) cJSON_AddStringToObject(root, "best_when_built", s[would].name);
    return root;
}

static void print_human(const HwInfo *h, const ModelReport *m, const HwModelNeeds *n, const HwSetting *s, int best,
                        int would, const char *cmd) {
    char a[32], b[32], c[32];
    printf("dsocr %s, %s\n\n", DSOCR_VERSION,
           h->cuda_build ? "built with the CUDA backend" : "CPU-only build (no CUDA backend compiled in)");
    printf("CPU    %s (%s): %d logical CPU%s usable of %d online;", h->cpu_model[0] ? h->cpu_model : "unknown model",
           h->arch, h->cpus, h->cpus == 1 ? "" : "s", h->cpus_online);
    const char *names[] = {"AVX2", "FMA", "F16C", "AVX-512F", "AVX-512BW", "AVX-512 BF16", "AVX-VNNI", "AMX-BF16"};
    const int have[] = {h->avx2, h->fma, h->f16c, h->avx512f, h->avx512bw, h->avx512_bf16, h->avx_vnni, h->amx_bf16};
    int any = 0;
    for (int i = 0; i < 8; i++)
        if (have[i]) printf(" %s", names[i]), any = 1;
    printf("%s\n", any ? "" : " no AVX2 (the CPU engine's fast paths need AVX2)");
    gib(a, sizeof a, h->ram_total);
    gib(b, sizeof b, h->ram_available);
    printf("RAM    %s total, %s available", a, b);
    if (h->cgroup_limit) gib(c, sizeof c, h->cgroup_limit), printf(" (cgroup limit %s)", c);
    printf("\n");
    if (!h->n_gpus) printf("GPU    none: %s\n", h->gpu_note);
    for (int i = 0; i < h->n_gpus; i++) {
        const HwGpu *g = &h->gpus[i];
        gib(a, sizeof a, g->total_bytes);
        gib(b, sizeof b, g->free_bytes);
        printf("GPU %d  %s, compute %d.%d, %d SMs, %s total, %s free, bf16 %s\n", i, g->name, g->cc_major,
               g->cc_minor, g->sm_count, a, g->free_known ? b : "unknown", g->bf16 ? "yes" : "no (before 8.0)");
    }
    if (h->driver_loaded) {
        printf("CUDA   driver API %d.%d", h->driver_version / 1000, (h->driver_version % 1000) / 10);
        if (h->runtime_version)
            printf(", runtime %d.%d\n", h->runtime_version / 1000, (h->runtime_version % 1000) / 10);
        else
            printf(", no CUDA runtime library found\n");
    }
    printf("\nModel  %s: ", m->dir);
    if (m->state == PULL_ABSENT)
        printf("none (%s). '%s pull' downloads %s.\n", m->why, program_invocation_name, PULL_DEFAULT_REPO);
    else if (m->state == PULL_INCOMPLETE)
        printf("incomplete (%s); '%s pull' finishes it.\n", m->why, program_invocation_name);
    else if (!m->valid)
        printf("present but not usable: %s\n", m->error);
    else
        printf("complete and valid, %d tensors%s%s%s%s\n", m->n_tensors, m->repo[0] ? ", pulled from " : "", m->repo,
               m->commit[0] ? " at " : "", m->commit);
    if (m->license[0]) printf("       licence: %s\n", m->license);

    char d[32];
    gib(a, sizeof a, n->weight_bytes);
    gib(b, sizeof b, n->kv_bytes_per_token * (uint64_t)n->max_context);
    gib(c, sizeof c, n->act_gpu_bytes);
    gib(d, sizeof d, n->act_cpu_bytes);
    printf("\nMemory %s: weights %s (bf16); KV cache %.0f KiB/token in bf16, %s for the %d-token context (twice that "
           "in fp32 on the CPU);\n       activations about %s on a GPU, %s on the CPU (estimates)\n",
           m->valid ? "(this model)" : "(the official model)", a, (double)n->kv_bytes_per_token / 1024, b,
           n->max_context, c, d);
    printf("\nSettings (expected peak memory):\n");
    for (int i = 0; i < HW_N_SETTINGS; i++) {
        char g[32] = "-", r[32];
        if (s[i].gpu_bytes) gib(g, sizeof g, s[i].gpu_bytes);
        gib(r, sizeof r, s[i].ram_bytes);
        printf("  %s %-15s GPU %-9s RAM %-9s %s%s\n", i == best ? "*" : " ", s[i].name, g, r,
               i == best ? "recommended" : (s[i].fits && s[i].built ? "fits" : ""), s[i].why);
    }
    if (best >= 0) {
        printf("\nRecommended: %s (%s), mode gundam (every mode needs the same memory; --mode small is faster)\n  %s\n",
               s[best].name, s[best].dtype, cmd);
    } else {
        printf("\nNothing fits this machine's memory.\n");
    }
    if (would >= 0 && would != best)
        printf("When %s lands, %s will fit here (%s).\n", s[would].missing, s[would].name, s[would].dtype);
}

int cli_check(int argc, char **argv) {
    int json = 0, no_gpu = 0;
    const char *model = NULL;
    uint64_t budget = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--no-gpu")) {
            no_gpu = 1;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--gpu-mem")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dsocr check: %s needs a value (see --help)\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--model")) {
                model = v;
            } else if (cli_gpu_mem("check", v, &budget)) {
                return 2;
            }
        } else {
            fprintf(stderr, "dsocr check: unexpected argument '%s' (see --help)\n", a);
            return 2;
        }
    }
    HwInfo h;
    hwinfo_probe(&h, !no_gpu);
    HwModelNeeds n;
    hwinfo_needs_default(&n);
    ModelReport m = {0};
    m.dir = model ? model : cli_default_model_dir();
    check_model(&m, &n);
    HwSetting s[HW_N_SETTINGS];
    int would = -1;
    int best = hwinfo_recommend(&h, &n, budget, s, &would);
    char cmd[4400] = "";
    if (best >= 0) {
        int default_dir = !model;
        snprintf(cmd, sizeof cmd, "%s ocr %s%s%s%s IMAGE", program_invocation_name, default_dir ? "" : "--model ",
                 default_dir ? "" : m.dir, default_dir ? "" : " ", s[best].flags);
    }
    if (json) {
        cJSON *root = json_report(&h, &m, &n, s, best, would, budget, cmd);
        char *txt = cJSON_Print(root);
        cJSON_Delete(root);
        if (!txt) {
            fprintf(stderr, "dsocr check: out of memory\n");
            return 1;
        }
        printf("%s\n", txt);
        free(txt);
    } else {
        print_human(&h, &m, &n, s, best, would, cmd);
    }
    return 0;
}
