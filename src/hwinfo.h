/* hwinfo.h: what this machine has (CPU features, usable cores, RAM and any cgroup limit; NVIDIA GPUs with name,
 * compute capability, total and free memory, bf16 support, driver and runtime versions) and which dsocr
 * settings fit it, with their expected memory. For `dsocr check`.
 *
 * GPUs are found through the CUDA driver library (libcuda.so.1) and the runtime (libcudart.so*) loaded with
 * dlopen at run time, so this works in CPU-only builds and on machines without an NVIDIA driver; nothing here
 * needs CUDA headers or libraries at build time. It does not choose what the engine does; it advises. */
#ifndef DSOCR_HWINFO_H
#define DSOCR_HWINFO_H

#include <stddef.h>
#include <stdint.h>

#define HW_MAX_GPUS 16

typedef struct HwGpu {
    char name[128];
    int cc_major, cc_minor; /* compute capability */
    int sm_count;
    uint64_t total_bytes;
    uint64_t free_bytes; /* as the driver reports it after creating a context; valid when free_known */
    int free_known;
    int bf16; /* native bf16 arithmetic (compute capability 8.0 or later; older GPUs emulate it) */
} HwGpu;

typedef struct HwInfo {
    char cpu_model[128];
    const char *arch; /* "x86_64", "aarch64", ... */
    int avx2, fma, f16c, avx512f, avx512bw, avx512_bf16, avx_vnni, amx_bf16; /* x86 only; 0 elsewhere */
    int cpus;                 /* logical CPUs this process may run on (affinity mask) */
    int cpus_online;          /* logical CPUs online */
    uint64_t ram_total;       /* MemTotal */
    uint64_t ram_available;   /* MemAvailable, capped by the cgroup's room */
    uint64_t cgroup_limit;    /* the memory cgroup's limit, 0 when none */
    int cuda_build;           /* 1 when this binary was built with the CUDA backend */
    int driver_loaded;        /* 1 when libcuda.so.1 was found */
    int driver_version;       /* cuDriverGetVersion, e.g. 12040; 0 unknown */
    int runtime_version;      /* cudaRuntimeGetVersion of a libcudart found at run time; 0 none */
    char gpu_note[256];       /* why no GPU is listed ("no NVIDIA driver ...", "cuInit: ..."), else "" */
    int n_gpus;
    HwGpu gpus[HW_MAX_GPUS];
} HwInfo;

/* Fills h. probe_gpus = 0 skips the GPU libraries. $DSOCR_LIBCUDA names another driver library to load
 * (tests use a fake one; "none" behaves as if there were no driver). Never fails: what it cannot learn stays 0
 * with a note. */
void hwinfo_probe(HwInfo *h, int probe_gpus);

/* The CPU's model name ("unknown" when none was found) with quotes and backslashes blanked, to print inside a JSON
 * string (the benchmarks' "machine"). */
void hwinfo_cpu_name(char *out, size_t n);

/* What a model needs, in bytes. */
typedef struct HwModelNeeds {
    uint64_t weight_bytes;       /* the checkpoint's bf16 weights */
    uint64_t routed_bytes;       /* of which routed MoE experts */
    uint64_t embed_bytes;        /* of which the token embeddings */
    uint64_t kv_bytes_per_token; /* bf16 KV cache: 2 x layers x hidden x 2 bytes */
    int max_context;             /* tokens a session is sized for */
    uint64_t act_gpu_bytes, act_cpu_bytes; /* activation buffers (estimates) */
} HwModelNeeds;

/* The official DeepSeek-OCR checkpoint's figures (6,672,212,480 bytes of weights, 12 layers x 1280, 8192
 * tokens: 60 KiB of bf16 KV cache per token). */
void hwinfo_needs_default(HwModelNeeds *n);

typedef enum HwSettingId {
    HW_GPU_BF16 = 0,  /* everything on one GPU in bf16 */
    HW_GPU_Q8,        /* Q8_0 weights on one GPU */
    HW_GPU_Q4_EXPERTS,/* 4-bit routed experts, Q8_0 elsewhere, on one GPU */
    HW_GPU_HYBRID,    /* routed experts on the CPU, the rest on the GPU within --gpu-mem */
    HW_CPU_FP32,      /* the CPU engine: bf16 weights, fp32 arithmetic and KV cache */
    HW_N_SETTINGS
} HwSettingId;

typedef struct HwSetting {
    HwSettingId id;
    const char *name;     /* "gpu-bf16", ... */
    const char *device;   /* "cuda" or "cpu" */
    const char *dtype;    /* weights / arithmetic */
    char flags[96];       /* the options that select it */
    uint64_t gpu_bytes;   /* expected peak on the GPU (0 for the CPU) */
    uint64_t ram_bytes;   /* expected peak in RAM */
    int built;            /* this build can run it */
    const char *missing;  /* when not built: what brings it */
    int fits;             /* fits this machine's memory (and the GPU budget) */
    char why[192];        /* why it does not fit or is not built; "" when usable */
} HwSetting;

/* Evaluates every setting on h for a model needing n. gpu_budget: bytes of GPU memory dsocr may use (0 = the
 * best GPU's free memory minus a 5% margin). Fills out[HW_N_SETTINGS] in the order of HwSettingId and returns
 * the recommended one: the first that is built and fits (the CPU when none does; -1 when not even the CPU
 * fits). *would_fit gets the first setting that fits whether built or not (what a later version will use), or
 * -1. */
int hwinfo_recommend(const HwInfo *h, const HwModelNeeds *n, uint64_t gpu_budget, HwSetting out[HW_N_SETTINGS],
                     int *would_fit);

/* Parses a size like "2G", "1.5GiB", "512M", "6000000000" (G/M/K are powers of 1024). 0 on success. */
int hwinfo_parse_size(const char *s, uint64_t *out);

#endif
