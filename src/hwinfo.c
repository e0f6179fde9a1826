/* hwinfo.c: machine probing (CPUID, /proc, cgroups, the CUDA driver and runtime through dlopen) and the
 * settings advice of `dsocr check`. See hwinfo.h. */
#include "hwinfo.h"

#include "backend.h"

#include <ctype.h>
#include <dlfcn.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

/* ---- CPU ---- */

static void probe_cpu(HwInfo *h) {
    static struct utsname u;
    h->arch = uname(&u) == 0 ? u.machine : "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) && strncmp(line, "Model", 5)) continue;
            char *c = strchr(line, ':');
            if (!c) continue;
            for (c++; *c == ' ' || *c == '\t'; c++) {
            }
            size_t l = strcspn(c, "\n");
            snprintf(h->cpu_model, sizeof h->cpu_model, "%.*s", (int)l, c);
            break;
        }
        fclose(f);
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    h->avx2 = __builtin_cpu_supports("avx2") != 0;
    h->fma = __builtin_cpu_supports("fma") != 0;
    h->avx512f = __builtin_cpu_supports("avx512f") != 0;
    h->avx512bw = __builtin_cpu_supports("avx512bw") != 0;
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) h->f16c = (c >> 29) & 1;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) h->amx_bf16 = (d >> 22) & 1;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        h->avx_vnni = (a >> 4) & 1;
        h->avx512_bf16 = h->avx512f && ((a >> 5) & 1);
    }
#endif
    long on = sysconf(_SC_NPROCESSORS_ONLN);
    h->cpus_online = on > 0 ? (int)on : 1;
    cpu_set_t set;
    h->cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : h->cpus_online;
    if (h->cpus <= 0) h->cpus = h->cpus_online;
}

/* A cgroup value in bytes; 0 for "max", absent, or an absurd "no limit" figure. */
static uint64_t read_limit(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = "";
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
    if (!isdigit((unsigned char)buf[0])) return 0;
    unsigned long long v = strtoull(buf, NULL, 10);
    return v >= (1ull << 60) ? 0 : (uint64_t)v;
}

static uint64_t read_u64(const char *path) { return read_limit(path); }

static void probe_ram(HwInfo *h) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) h->ram_total = (uint64_t)kb * 1024;
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) h->ram_available = (uint64_t)kb * 1024;
        }
        fclose(f);
    }
    if (!h->ram_available) h->ram_available = h->ram_total;
    uint64_t lim = read_limit("/sys/fs/cgroup/memory.max"), used = 0;
    if (lim)
        used = read_u64("/sys/fs/cgroup/memory.current");
    else if ((lim = read_limit("/sys/fs/cgroup/memory/memory.limit_in_bytes")))
        used = read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes");
    if (lim && (!h->ram_total || lim < h->ram_total)) {
        h->cgroup_limit = lim;
        uint64_t room = lim > used ? lim - used : 0;
        if (room < h->ram_available) h->ram_available = room;
    }
}

/* ---- GPUs through the CUDA driver API (dlopen) ---- */

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
enum { CU_ATTR_SM_COUNT = 16, CU_ATTR_CC_MAJOR = 75, CU_ATTR_CC_MINOR = 76 };

typedef struct CuApi {
    CUresult (*Init)(unsigned);
    CUresult (*DriverGetVersion)(int *);
    CUresult (*DeviceGetCount)(int *);
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*DeviceGetName)(char *, int, CUdevice);
    CUresult (*DeviceGetAttribute)(int *, int, CUdevice);
    CUresult (*DeviceTotalMem)(size_t *, CUdevice);
    CUresult (*PrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*PrimaryCtxRelease)(CUdevice);
    CUresult (*CtxPushCurrent)(CUcontext);
    CUresult (*CtxPopCurrent)(CUcontext *);
    CUresult (*MemGetInfo)(size_t *, size_t *);
    CUresult (*GetErrorString)(CUresult, const char **);
} CuApi;

static void *sym(void *lib, const char *a, const char *b) {
    void *p = dlsym(lib, a);
    return p || !b ? p : dlsym(lib, b);
}

static const char *cu_err(const CuApi *cu, CUresult r) {
    const char *s = NULL;
    if (cu->GetErrorString && cu->GetErrorString(r, &s) == 0 && s) return s;
    return "unknown error";
}

static void probe_gpus(HwInfo *h) {
    const char *name = getenv("DSOCR_LIBCUDA");
    if (!name || !*name) name = "libcuda.so.1";
    void *lib = strcmp(name, "none") ? dlopen(name, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!lib) {
        snprintf(h->gpu_note, sizeof h->gpu_note, "no NVIDIA driver (%s not found)", name);
        return;
    }
    h->driver_loaded = 1;
    CuApi cu;
    *(void **)&cu.Init = sym(lib, "cuInit", NULL);
    *(void **)&cu.DriverGetVersion = sym(lib, "cuDriverGetVersion", NULL);
    *(void **)&cu.DeviceGetCount = sym(lib, "cuDeviceGetCount", NULL);
    *(void **)&cu.DeviceGet = sym(lib, "cuDeviceGet", NULL);
    *(void **)&cu.DeviceGetName = sym(lib, "cuDeviceGetName", NULL);
    *(void **)&cu.DeviceGetAttribute = sym(lib, "cuDeviceGetAttribute", NULL);
    *(void **)&cu.DeviceTotalMem = sym(lib, "cuDeviceTotalMem_v2", "cuDeviceTotalMem");
    *(void **)&cu.PrimaryCtxRetain = sym(lib, "cuDevicePrimaryCtxRetain", NULL);
    *(void **)&cu.PrimaryCtxRelease = sym(lib, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease");
    *(void **)&cu.CtxPushCurrent = sym(lib, "cuCtxPushCurrent_v2", "cuCtxPushCurrent");
    *(void **)&cu.CtxPopCurrent = sym(lib, "cuCtxPopCurrent_v2", "cuCtxPopCurrent");
    *(void **)&cu.MemGetInfo = sym(lib, "cuMemGetInfo_v2", "cuMemGetInfo");
    *(void **)&cu.GetErrorString = sym(lib, "cuGetErrorString", NULL);
    if (!cu.Init || !cu.DeviceGetCount || !cu.DeviceGet || !cu.DeviceGetName || !cu.DeviceGetAttribute ||
        !cu.DeviceTotalMem) {
        snprintf(h->gpu_note, sizeof h->gpu_note, "%s lacks the CUDA driver API functions dsocr needs", name);
        return; /* the library stays loaded: unloading a driver library is not worth the risk */
    }
    if (cu.DriverGetVersion) cu.DriverGetVersion(&h->driver_version);
    CUresult r = cu.Init(0);
    if (r != 0) {
        snprintf(h->gpu_note, sizeof h->gpu_note, "the NVIDIA driver is installed but cuInit failed: %s (%d)",
                 cu_err(&cu, r), r);
        return;
    }
    int n = 0;
    if ((r = cu.DeviceGetCount(&n)) != 0 || n <= 0) {
        snprintf(h->gpu_note, sizeof h->gpu_note, "the NVIDIA driver sees no GPU%s", r ? " (cuDeviceGetCount failed)" : "");
        return;
    }
    if (n > HW_MAX_GPUS) n = HW_MAX_GPUS;
    for (int i = 0; i < n; i++) {
        CUdevice dev;
        if (cu.DeviceGet(&dev, i) != 0) continue;
        HwGpu *g = &h->gpus[h->n_gpus];
        memset(g, 0, sizeof *g);
        if (cu.DeviceGetName(g->name, (int)sizeof g->name - 1, dev) != 0) snprintf(g->name, sizeof g->name, "GPU %d", i);
        cu.DeviceGetAttribute(&g->cc_major, CU_ATTR_CC_MAJOR, dev);
        cu.DeviceGetAttribute(&g->cc_minor, CU_ATTR_CC_MINOR, dev);
        cu.DeviceGetAttribute(&g->sm_count, CU_ATTR_SM_COUNT, dev);
        size_t tot = 0;
        if (cu.DeviceTotalMem(&tot, dev) == 0) g->total_bytes = tot;
        g->bf16 = g->cc_major >= 8;
        CUcontext ctx = NULL;
        if (cu.PrimaryCtxRetain && cu.PrimaryCtxRelease && cu.CtxPushCurrent && cu.CtxPopCurrent &&
            cu.MemGetInfo && cu.PrimaryCtxRetain(&ctx, dev) == 0) {
            if (cu.CtxPushCurrent(ctx) == 0) {
                size_t fr = 0, t2 = 0;
                if (cu.MemGetInfo(&fr, &t2) == 0) g->free_bytes = fr, g->free_known = 1;
                CUcontext popped;
                cu.CtxPopCurrent(&popped);
            }
            cu.PrimaryCtxRelease(dev);
        }
        h->n_gpus++;
    }
    /* the runtime dsocr's CUDA build links, or any installed one */
    static const char *rt[] = {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"};
    for (size_t i = 0; i < sizeof rt / sizeof rt[0] && !h->runtime_version; i++) {
        void *l = dlopen(rt[i], RTLD_NOW | RTLD_LOCAL);
        if (!l) continue;
        int (*get)(int *);
        *(void **)&get = dlsym(l, "cudaRuntimeGetVersion");
        if (get) get(&h->runtime_version);
    }
}

void hwinfo_probe(HwInfo *h, int gpus) {
    memset(h, 0, sizeof *h);
    h->cuda_build = backend_cuda_built();
    probe_cpu(h);
    probe_ram(h);
    if (gpus)
        probe_gpus(h);
    else
        snprintf(h->gpu_note, sizeof h->gpu_note, "GPUs not probed");
}

/* ---- advice ---- */

void hwinfo_needs_default(HwModelNeeds *n) {
    memset(n, 0, sizeof *n);
    n->weight_bytes = 6672212480ull;
    n->embed_bytes = 129280ull * 1280 * 2;
    /* 64 routed experts x 11 MoE layers x 3 matrices of 1280 x 896, bf16 */
    n->routed_bytes = 64ull * 11 * 3 * 1280 * 896 * 2;
    n->kv_bytes_per_token = 2ull * 12 * 1280 * 2;
    n->max_context = 8192;
    n->act_gpu_bytes = 256ull << 20;
    n->act_cpu_bytes = 320ull << 20;
}

int hwinfo_parse_size(const char *s, uint64_t *out) {
    if (!s || !*s) return -1;
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || v > 1e18) return -1;
    double mul = 1;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1024.0; break;
        case 'M': mul = 1024.0 * 1024; break;
        case 'G': mul = 1024.0 * 1024 * 1024; break;
        case 'T': mul = 1024.0 * 1024 * 1024 * 1024; break;
        case 'B': mul = 1; break;
        default: return -1;
        }
        end++;
        if (toupper((unsigned char)end[-1]) != 'B') {
            if (*end == 'i' || *end == 'I') end++;
            if (*end == 'B' || *end == 'b') end++;
        }
        if (*end) return -1;
    }
    *out = (uint64_t)(v * mul);
    return 0;
}

/* The oldest GPUs the Makefile's default CUDA_ARCH targets (sm_75). */
#define HW_MIN_CC 75

static void gib(char *buf, size_t n, uint64_t b) { snprintf(buf, n, "%.1f GiB", (double)b / (1ull << 30)); }

int hwinfo_recommend(const HwInfo *h, const HwModelNeeds *n, uint64_t gpu_budget, HwSetting out[HW_N_SETTINGS],
                     int *would_fit) {
    /* the GPU: the one with the most free (else total) memory */
    const HwGpu *g = NULL;
    for (int i = 0; i < h->n_gpus; i++) {
        uint64_t a = h->gpus[i].free_known ? h->gpus[i].free_bytes : h->gpus[i].total_bytes;
        uint64_t b = g ? (g->free_known ? g->free_bytes : g->total_bytes) : 0;
        if (!g || a > b) g = &h->gpus[i];
    }
    uint64_t budget = gpu_budget;
    if (!budget && g) {
        uint64_t fr = g->free_known ? g->free_bytes : g->total_bytes;
        budget = fr - fr / 20;
    }
    const uint64_t W = n->weight_bytes, ctx = (uint64_t)n->max_context;
    const uint64_t kv16 = n->kv_bytes_per_token * ctx, kv32 = 2 * kv16;
    const uint64_t routed = n->routed_bytes, rest = W > routed ? W - routed : 0;
    const uint64_t q8 = W * 34 / 64; /* Q8_0: 32 int8 + an fp16 scale per 32 weights */
    const uint64_t q4e = routed * 18 / 64 + rest * 34 / 64; /* 4-bit blocks of 32: 16 bytes + fp16 scale */
    const uint64_t host_small = 512ull << 20;               /* the process, tokenizer, image, results */
    uint64_t hybrid_gpu = (rest > n->embed_bytes ? rest - n->embed_bytes : 0) * 34 / 64 + kv16 + n->act_gpu_bytes;
    struct {
        const char *name, *device, *dtype, *flags, *missing;
        uint64_t gpu, ram;
        int built;
    } def[HW_N_SETTINGS] = {
        [HW_GPU_BF16] = {"gpu-bf16", "cuda", "bf16 weights and arithmetic", "--device cuda --precision bf16",
                         "the CUDA backend (issue 6)", W + kv16 + n->act_gpu_bytes, host_small, h->cuda_build},
        [HW_GPU_Q8] = {"gpu-q8_0", "cuda", "Q8_0 weights, bf16 arithmetic", "--device cuda --quant q8_0",
                       "the CUDA backend", q8 + kv16 + n->act_gpu_bytes, host_small, h->cuda_build},
        [HW_GPU_Q4_EXPERTS] = {"gpu-q4-experts", "cuda", "4-bit routed experts, Q8_0 elsewhere",
                               "--device cuda --quant q4", "the CUDA backend",
                               q4e + kv16 + n->act_gpu_bytes, host_small, h->cuda_build},
        [HW_GPU_HYBRID] = {"gpu-hybrid", "cuda", "routed experts on the CPU (bf16), the rest on the GPU (Q8_0)",
                           "--device cuda --quant q8_0 --gpu-mem SIZE", "the CUDA backend", hybrid_gpu,
                           host_small + routed + n->embed_bytes + n->act_cpu_bytes, h->cuda_build},
        [HW_CPU_FP32] = {"cpu-fp32", "cpu", "bf16 weights, fp32 arithmetic and KV cache",
                         "--precision fp32", NULL, 0, host_small + W + kv32 + n->act_cpu_bytes, 1},
    };
    int best = -1;
    if (would_fit) *would_fit = -1;
    for (int i = 0; i < HW_N_SETTINGS; i++) {
        HwSetting *s = &out[i];
        memset(s, 0, sizeof *s);
        s->id = (HwSettingId)i;
        s->name = def[i].name;
        s->device = def[i].device;
        s->dtype = def[i].dtype;
        snprintf(s->flags, sizeof s->flags, "%s", def[i].flags);
        s->gpu_bytes = def[i].gpu;
        s->ram_bytes = def[i].ram;
        s->built = def[i].built;
        s->missing = def[i].built ? NULL : def[i].missing;
        char a[32], b[32];
        if (i == HW_GPU_HYBRID) {
            uint64_t want = gpu_budget ? gpu_budget : s->gpu_bytes;
            snprintf(s->flags, sizeof s->flags, "--device cuda --quant q8_0 --gpu-mem %.1fG",
                     (double)want / (1ull << 30));
        }
        s->fits = 1;
        if (s->gpu_bytes) {
            if (!g) {
                s->fits = 0;
                snprintf(s->why, sizeof s->why, "no GPU");
            } else if (g->cc_major * 10 + g->cc_minor < HW_MIN_CC) {
                s->fits = 0;
                snprintf(s->why, sizeof s->why, "%s has compute capability %d.%d; dsocr's CUDA build targets %d.%d+",
                         g->name, g->cc_major, g->cc_minor, HW_MIN_CC / 10, HW_MIN_CC % 10);
            } else if (s->gpu_bytes > budget) {
                s->fits = 0;
                gib(a, sizeof a, s->gpu_bytes);
                gib(b, sizeof b, budget);
                snprintf(s->why, sizeof s->why, "needs %s of GPU memory, %s %s", a, b,
                         gpu_budget ? "allowed by --gpu-mem" : "free");
            }
        }
        if (s->fits && h->ram_available && s->ram_bytes > h->ram_available) {
            s->fits = 0;
            gib(a, sizeof a, s->ram_bytes);
            gib(b, sizeof b, h->ram_available);
            snprintf(s->why, sizeof s->why, "needs %s of RAM, %s available", a, b);
        }
        if (s->fits && !s->built) snprintf(s->why, sizeof s->why, "not built yet: needs %s", s->missing);
        if (s->fits && would_fit && *would_fit < 0) *would_fit = i;
        if (s->fits && s->built && best < 0) best = i;
    }
    if (best < 0 && out[HW_CPU_FP32].fits) best = HW_CPU_FP32;
    return best;
}

void hwinfo_cpu_name(char *out, size_t n) {
    HwInfo h;
    hwinfo_probe(&h, 0);
    snprintf(out, n, "%s", h.cpu_model[0] ? h.cpu_model : "unknown");
    for (char *q = out; *q; q++)
        if (*q == '"' || *q == '\\') *q = ' ';
}
