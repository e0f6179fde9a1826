/* ops_cpu.c: the fast CPU versions of the ops in ops.h: OpenMP threads, AVX2/FMA kernels chosen at run time
 * (with a portable fallback), OpenBLAS sgemm on widened weight tiles.
 *
 * Each op equals its _ref up to floating-point summation order and never depends on the number of threads:
 * threads only ever split output rows/columns or independent (batch, head, query block) tasks, and every
 * blocking below is a fixed constant or a function of the shapes alone. Stack use is bounded (see ops.h). */
#include <cblas.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ops.h"
#include "cpu/scratch.h"
#include "quant.h"

void openblas_set_num_threads(int num_threads);
char *openblas_get_corename(void);

const char *ops_blas_coretype(void) { return openblas_get_corename(); }

const char *ops_blas_better_coretype(void) {
    if (getenv("OPENBLAS_CORETYPE")) return NULL;
    const char *core = openblas_get_corename();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    static const char *weak[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge", "Atom",
                                 "Katmai", "Coppermine", "Northwood", "Banias", "Unknown"};
    int is_weak = !core;
    for (size_t i = 0; core && i < sizeof weak / sizeof weak[0]; i++) is_weak |= !strcasecmp(core, weak[i]);
    if (avx512 && (is_weak || !strcasecmp(core, "Haswell") || !strcasecmp(core, "Zen"))) return "SkylakeX";
    if (avx2 && is_weak) return "Haswell";
    return NULL;
}

void ops_blas_reexec_if_better(char **argv) {
    const char *core = ops_blas_better_coretype();
    if (core && setenv("OPENBLAS_CORETYPE", core, 1) == 0) {
        execv("/proc/self/exe", argv);
        unsetenv("OPENBLAS_CORETYPE");
    }
}

/* Transparent huge pages for OpenBLAS's own buffers. OpenBLAS maps its per-call buffers itself (mmap, 128 MiB each
 * for its "Zen" core), so the engine cannot hint them the usual way. With transparent huge pages on "madvise" only
 * (Debian's default), those buffers get 4 KiB pages, and on a 2-core AMD EPYC VM (Zen 1) sgemm on the vision
 * encoder's tiles then ran at 22-25 GFLOPS, or 45-65 after the warm-up below but not in every process, against 62-71
 * from the first call once the buffers were hinted (bench/results/cpu-issue12-vm-session15.txt). So the engine
 * defines mmap: it forwards every call to the next definition (the C library's) unchanged, and only when the caller
 * is OpenBLAS and the mapping is anonymous and 4 MiB or more does it add madvise(MADV_HUGEPAGE), before the first
 * touch. A hint: where huge pages are off it changes nothing. DSOCR_BLAS_HUGEPAGES=0 turns it off (bench_blas
 * compares both). Left out under AddressSanitizer, whose runtime intercepts mmap itself. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DS_NO_MMAP_HOOK 1
#endif
#endif
#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(DS_NO_MMAP_HOOK)
typedef void *mmap_fn(void *, size_t, int, int, int, off_t);
static mmap_fn *next_mmap;
static const void *openblas_base; /* where libopenblas is loaded; (void *)1 when it could not be found */

static int called_from_openblas(const void *ret) {
    const void *base = __atomic_load_n(&openblas_base, __ATOMIC_ACQUIRE);
    if (!base) {
        Dl_info info;
        void *sym = dlsym(RTLD_DEFAULT, "openblas_get_corename");
        base = sym && dladdr(sym, &info) && info.dli_fbase ? info.dli_fbase : (const void *)1;
        __atomic_store_n(&openblas_base, base, __ATOMIC_RELEASE);
    }
    Dl_info info;
    return base != (const void *)1 && dladdr(ret, &info) && info.dli_fbase == base;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    mmap_fn *next = __atomic_load_n(&next_mmap, __ATOMIC_ACQUIRE);
    if (!next) {
        next = (mmap_fn *)dlsym(RTLD_NEXT, "mmap");
        if (!next) {
            errno = ENOSYS;
            return MAP_FAILED;
        }
        __atomic_store_n(&next_mmap, next, __ATOMIC_RELEASE);
    }
    void *p = next(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && (flags & MAP_ANONYMOUS) && len >= ((size_t)4 << 20) &&
        called_from_openblas(__builtin_return_address(0))) {
        const char *knob = getenv("DSOCR_BLAS_HUGEPAGES");
        if (!knob || strcmp(knob, "0")) (void)madvise(p, len, MADV_HUGEPAGE);
    }
    return p;
}
#endif

/* OpenBLAS with one thread of its own (ours share the tiles out), its per-call buffers warmed for every thread of
 * ours. Its pthread build hands each concurrent sgemm the lowest free buffer of a global pool, so T OpenMP threads use
 * buffers 0..T-1. On a 2-core AMD EPYC VM (Zen 1, OpenBLAS 0.3.21 "Zen" kernels, transparent huge pages on madvise
 * only) a buffer whose first calls packed small panels stayed slow for good (sgemm 512 x 256 x 768 on one thread:
 * 12 GFLOPS) until one call packed a panel of over 512 KiB (then 37: bench/results/cpu-issue12-vm-session14.txt;
 * with transparent huge pages always on, fast from the start). So before our first products every thread of the
 * team runs 512-cubed sgemms at once (a barrier first, so that they hold different buffers), again whenever the
 * thread count has grown (called inside a parallel region, it counts as a team of one: it warms one buffer). Each
 * thread runs WARM_CALLS of them back to back, so that a thread the host starts late still finds the others inside
 * a call: with one call, a late thread could take the buffer just freed and leave one cold (the likely cause of one
 * run of session 14 whose vision took 28 s where the same binary took 20 s four times). */
static pthread_mutex_t blas_lock = PTHREAD_MUTEX_INITIALIZER;
static int blas_warm; /* threads whose buffers were warmed */
static void blas_warm_team(int nt) {
    enum { W = 512, WARM_CALLS = 4 };
#pragma omp parallel num_threads(nt)
    {
        float *a = calloc((size_t)W * W, sizeof(float)), *c = malloc(sizeof(float) * (size_t)W * W);
#pragma omp barrier
        for (int r = 0; a && c && r < WARM_CALLS; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, W, W, W, 1.0f, a, W, a, W, 0.0f, c, W);
        free(a), free(c);
    }
}
static void blas_ready(void) {
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (__atomic_load_n(&blas_warm, __ATOMIC_ACQUIRE) >= nt) return;
    pthread_mutex_lock(&blas_lock);
    if (blas_warm == 0) openblas_set_num_threads(1);
    if (blas_warm < nt) {
        blas_warm_team(nt);
        __atomic_store_n(&blas_warm, nt, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&blas_lock);
}

static inline int cpu_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
/* The block-quantised kernels also convert the fp16 scales with F16C (every AVX2 CPU has it, but it is checked,
 * by CPUID: clang's __builtin_cpu_supports knows no "f16c", which broke `make fuzz`). */
static int f16c_found(void) {
    unsigned a, b, c, d;
    return cpu_avx2() && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
static pthread_once_t f16c_once = PTHREAD_ONCE_INIT;
static int f16c_ok, avx512_ok;
/* Every fp16 value as fp32 (256 KB), for the block kernels' scales: a broadcast from memory is a load, where
 * widening an fp16 scale in registers (vpbroadcastw, vcvtph2ps) took two shuffle-port operations a block, and the
 * shuffle port was the Q8_0 GEMV's bottleneck (four sign extensions a block already run there). */
static float f16_tab[65536];
static void f16c_init(void) {
    f16c_ok = f16c_found();
    avx512_ok = f16c_ok && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && !getenv("DSOCR_NO_AVX512");
    for (uint32_t h = 0; h < 65536; h++) f16_tab[h] = fp16_to_f32((uint16_t)h);
}
/* Asked once: CPUID serialises the core, and in a virtual machine it traps to the hypervisor (asked per GEMV call,
 * it made the block GEMV ten times slower). */
static inline int cpu_avx2_f16c(void) {
    pthread_once(&f16c_once, f16c_init);
    return f16c_ok;
}
/* AVX-512 F, BW and VL for the 16-lane Q8_0 decode GEMV (DSOCR_NO_AVX512 set: the 8-lane kernel) */
static inline int cpu_avx512(void) {
    pthread_once(&f16c_once, f16c_init);
    return avx512_ok;
}

/* Work below this many elements runs on the calling thread only (a parallel region costs microseconds). */
enum { PAR_MIN = 1 << 14 };

/* The sum of 8 lanes, in the order every 8-lane kernel here sums them (halves, then pairs, then the last two) */
__attribute__((target("avx2"))) static inline float hsum8(__m256 a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* Widens n weights starting at element off into dst (fp32). */
/* bf16 to fp32 in eight lanes (the GEMM tiles' and MoE experts' weights: widening was their largest cost) */
__attribute__((target("avx2"))) static void widen_bf16_avx2(float *dst, const uint16_t *s, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(v, 16));
    }
    for (; i < n; i++) {
        uint32_t u = (uint32_t)s[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

/* dequant_q8_0_ref on 8 lanes (the same q · d products: d from f16_tab, fp16_to_f32's values) */
__attribute__((target("avx2"))) static void dequant_q8_0_avx2(float *dst, const BlockQ8_0 *src, int n) {
    for (int b = 0; b < n / QK; b++, dst += QK) {
        const __m256 d = _mm256_set1_ps(f16_tab[src[b].d]);
        for (int j = 0; j < QK; j += 8) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src[b].q + j)));
            _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

static void w_widen(float *dst, DsW w, size_t off, int n) {
    if (w.dtype == DS_BF16 && cpu_avx2()) {
        widen_bf16_avx2(dst, (const uint16_t *)w.data + off, n);
    } else if (w.dtype == DS_BF16) {
        const uint16_t *s = (const uint16_t *)w.data + off;
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            memcpy(&dst[i], &u, 4);
        }
    } else if (w.dtype == DS_F32) {
        memcpy(dst, (const float *)w.data + off, (size_t)n * sizeof(float));
    } else if (quant_is_block(w.dtype) && off % QK == 0 && n % QK == 0) {
        /* whole blocks (the GEMM tiles: K and the tile width are multiples of 32): dequantise in place */
        if (w.dtype == DS_Q8_0 && cpu_avx2_f16c())
            dequant_q8_0_avx2(dst, (const BlockQ8_0 *)w.data + off / QK, n);
        else if (w.dtype == DS_Q8_0)
            dequant_q8_0_ref(dst, (const BlockQ8_0 *)w.data + off / QK, n);
        else
            dequant_q4_0_ref(dst, (const BlockQ4_0 *)w.data + off / QK, n);
    } else {
        for (int i = 0; i < n; i++) dst[i] = ds_w_get(w, off + i);
    }
}

/* ================================================ linear ================================================ */

/* Direct GEMV for a few rows: out[m] = x[m]·w_row for m < MR. K summed in 16-wide lanes, then horizontally. */
#define GEMV_DEFINE(NAME, MR, WT, LOADW)                                                                          \
    __attribute__((target("avx2,fma"))) static inline void NAME(float *out, const float *x, int ldx,           \
                                                                const WT *w, int K) {                           \
        __m256 a0[MR], a1[MR];                                                                                  \
        for (int m = 0; m < MR; m++) a0[m] = a1[m] = _mm256_setzero_ps();                                       \
        int k = 0;                                                                                              \
        for (; k + 16 <= K; k += 16) {                                                                          \
            __m256 w0, w1;                                                                                      \
            LOADW(w + k, w0, w1);                                                                               \
            for (int m = 0; m < MR; m++) {                                                                      \
                a0[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (size_t)m * ldx + k), w0, a0[m]);                   \
                a1[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (size_t)m * ldx + k + 8), w1, a1[m]);               \
            }                                                                                                   \
        }                                                                                                       \
        for (int m = 0; m < MR; m++) {                                                                          \
            float r = hsum8(_mm256_add_ps(a0[m], a1[m]));                                                       \
            for (int kk = k; kk < K; kk++) r += x[(size_t)m * ldx + kk] * WSCALAR(w[kk]);                     \
            out[m] = r;                                                                                         \
        }                                                                                                       \
    }

/* bf16 widened by halves of 32-bit words: a word holds elements 2i (its low half) and 2i + 1 (its high half); the
 * word masked to its high half is element 2i + 1 as fp32, and the word shifted left by 16 is element 2i. That is one
 * operation for 8 elements where widening them in order took two (a zero extension and a shift, both on Zen 1's one
 * shift pipe, which bound the bf16 loops there). The fp32 operand they meet is then held in "split" order, per group
 * of 32 elements (two runs of 16):
 *     [evens of run 0 (8) | evens of run 1 (8) | odds of run 0 (8) | odds of run 1 (8)],
 * elements after the last whole group in place. */
enum { SPLIT_GRP = 32 };
/* dst[place of c] = src[c] (to split order: to = 1) or dst[c] = src[place of c] (back: to = 0), c < D */
static void split_order(float *dst, const float *src, int D, int to) {
    int c = 0;
    for (; c + SPLIT_GRP <= D; c += SPLIT_GRP)
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < 8; i++)
                for (int odd = 0; odd < 2; odd++) {
                    const int n = c + 16 * r + 2 * i + odd, s = c + 16 * odd + 8 * r + i;
                    if (to)
                        dst[s] = src[n];
                    else
                        dst[n] = src[s];
                }
    for (; c < D; c++) dst[c] = src[c];
}
#define LOAD_BF16(p, w0, w1)                                                                                    \
    do {                                                                                                        \
        __m256i wi_ = _mm256_loadu_si256((const __m256i *)(p));                                                 \
        w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(wi_)), 16));   \
        w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(wi_, 1)), 16)); \
    } while (0)
#define LOAD_F32(p, w0, w1)                                                                                     \
    do {                                                                                                        \
        w0 = _mm256_loadu_ps(p);                                                                                \
        w1 = _mm256_loadu_ps((p) + 8);                                                                          \
    } while (0)

#define WSCALAR(v) (v)
GEMV_DEFINE(gemv1_f32, 1, float, LOAD_F32)
GEMV_DEFINE(gemv2_f32, 2, float, LOAD_F32)
GEMV_DEFINE(gemv3_f32, 3, float, LOAD_F32)
GEMV_DEFINE(gemv4_f32, 4, float, LOAD_F32)
#undef WSCALAR

/* One row of x, in split order (split_order), against one bf16 weight row: four 8-lane FMA chains over 32 inputs a
 * step, one per quarter of the group (two chains of 4-cycle FMAs stream at most 16 inputs per 4 cycles, about 30 GB/s
 * on one Zen 4 core: less than its read bandwidth), then a 16-input step into chains 0 and 1 (in order: no whole
 * group there), the lanes summed as hsum8((a0 + a1) + (a2 + a3)), the last < 16 inputs one by one. pf > 0 adds a
 * software prefetch pf bytes ahead into L2 once per cache line (the same sums in the same order): the decode's rows
 * are adjacent, one sequential stream, which on the Zen 4 VM the hardware prefetchers follow best alone (a 2 KiB L1
 * prefetch made it slower in 6 of 8 pairs, four interleaved rows slower still:
 * bench/results/cpu-bf16-gemv-prefetch-vm-session11.txt), while on Intel a prefetch 4 KiB ahead helps (decode_pf).
 * Inlined, so that bf16_dot's pf = 0 costs nothing. Every bf16 GEMV output (any M, any grouping of rows) is this
 * function's, so the batch's rows and a page alone get the same bits. */
__attribute__((target("avx2,fma"), always_inline)) static inline float bf16_dot_pf(const float *x, const uint16_t *w,
                                                                                  int K, int pf) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w0, w1, w2, w3;
    int k = 0;
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (; k + SPLIT_GRP <= K; k += SPLIT_GRP) {
        if (pf) _mm_prefetch((const char *)(w + k) + pf, _MM_HINT_T1);
        const __m256i u0 = _mm256_loadu_si256((const __m256i *)(w + k));
        const __m256i u1 = _mm256_loadu_si256((const __m256i *)(w + k + 16));
        w0 = _mm256_castsi256_ps(_mm256_slli_epi32(u0, 16)), w1 = _mm256_castsi256_ps(_mm256_slli_epi32(u1, 16));
        w2 = _mm256_castsi256_ps(_mm256_and_si256(u0, hi)), w3 = _mm256_castsi256_ps(_mm256_and_si256(u1, hi));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), w2, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), w3, a3);
    }
    if (k + 16 <= K) {
        LOAD_BF16(w + k, w0, w1);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, a1);
        k += 16;
    }
    float v = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) v += x[k] * bf16_to_f32(w[k]);
    return v;
}
__attribute__((target("avx2,fma"))) static inline float bf16_dot(const float *x, const uint16_t *w, int K) {
    return bf16_dot_pf(x, w, K, 0);
}
/* The decode GEMVs' far software prefetch, in bytes ahead of the load, into L2 (0: none), read once. On Intel 4 KiB:
 * on the 16-core Xeon (a VM) it took bf16 decode from 52 to 61-63 tok/s, and with guided scheduling (gemv_schedule)
 * to 74 (bench/results/cpu-decode-knobs-xeon-session12.txt); on the Zen 4 VM far prefetches made the Q8_0 kernel
 * slower (session 10), so elsewhere none. DSOCR_PF=N sets it (0 turns it off). */
static int decode_pf(void) {
    static int pf = -1;
    if (pf < 0) {
        const char *e = getenv("DSOCR_PF");
        const int v = e ? atoi(e) : __builtin_cpu_is("intel") ? 4096 : 0;
        pf = v > 0 && v <= (1 << 20) ? v : 0;
    }
    return pf;
}
/* 4 adjacent weight rows against one row of x (decode, M = 1), one after the other */
__attribute__((target("avx2,fma"))) static inline void gemv_r4_bf16(float *out, const float *x, const uint16_t *w,
                                                                    int K) {
    const int pf = decode_pf();
    if (pf)
        for (int r = 0; r < 4; r++) out[r] = bf16_dot_pf(x, w + (size_t)r * K, K, pf);
    else
        for (int r = 0; r < 4; r++) out[r] = bf16_dot(x, w + (size_t)r * K, K);
}

/* Block-quantised GEMV (Q4_0; Q8_0 goes through the 16-bit kernels below): out[m] = x[m]·dequant(row) for m < MR
 * over nb blocks. Each block's 32 weights are widened to fp32 in registers (nibble − 8), multiplied with x by FMA into one
 * 8-lane partial per row, which is then scaled by the block's d and added to the row's accumulator:
 *   acc += d_b · Σ_j q_j·x_j  (lanes summed horizontally at the end). */
#define QWIDEN_Q4_0(blk, w0, w1, w2, w3)                                                                        \
    do {                                                                                                        \
        __m128i r_ = _mm_loadu_si128((const __m128i *)(blk)->q), m_ = _mm_set1_epi8(0x0f), e_ = _mm_set1_epi8(8); \
        __m128i lo_ = _mm_sub_epi8(_mm_and_si128(r_, m_), e_);                                                  \
        __m128i hi_ = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(r_, 4), m_), e_);                               \
        w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo_));                                                     \
        w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo_, 8)));                                  \
        w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi_));                                                     \
        w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi_, 8)));                                  \
    } while (0)
#define GEMVQ_DEFINE(NAME, MR, BT, WIDEN)                                                                       \
    __attribute__((target("avx2,fma,f16c"))) static inline void NAME(float *out, const float *x, int ldx,      \
                                                                     const BT *w, int nb) {                     \
        __m256 acc[MR];                                                                                         \
        for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_ps();                                              \
        for (int b = 0; b < nb; b++) {                                                                          \
            __m256 w0, w1, w2, w3;                                                                              \
            WIDEN(&w[b], w0, w1, w2, w3);                                                                       \
            __m256 d = _mm256_broadcast_ss(&f16_tab[w[b].d]);                                                  \
            for (int m = 0; m < MR; m++) {                                                                      \
                const float *xm = x + (size_t)m * ldx + (size_t)b * QK;                                         \
                __m256 p = _mm256_mul_ps(_mm256_loadu_ps(xm), w0);                                              \
                p = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 8), w1, p);                                            \
                p = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 16), w2, p);                                           \
                p = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 24), w3, p);                                           \
                acc[m] = _mm256_fmadd_ps(p, d, acc[m]);                                                         \
            }                                                                                                   \
        }                                                                                                       \
        for (int m = 0; m < MR; m++) out[m] = hsum8(acc[m]);                                                   \
    }
GEMVQ_DEFINE(gemv1_q4_0, 1, BlockQ4_0, QWIDEN_Q4_0)
GEMVQ_DEFINE(gemv2_q4_0, 2, BlockQ4_0, QWIDEN_Q4_0)
GEMVQ_DEFINE(gemv3_q4_0, 3, BlockQ4_0, QWIDEN_Q4_0)
GEMVQ_DEFINE(gemv4_q4_0, 4, BlockQ4_0, QWIDEN_Q4_0)

/* One activation row against 4 weight rows (decode, M = 1): the x block is loaded once for the 4 rows. Four
 * short interleaved streams defeat the hardware prefetcher, so each row prefetches the same block of the next
 * group of 4 rows (software prefetch never faults, also past the end). Each
 * output is computed with exactly the operations of the 1-row kernel above, so the grouping never changes a
 * result. */
#define GEMVQ_R4_DEFINE(NAME, BT, WIDEN)                                                                        \
    __attribute__((target("avx2,fma,f16c"))) static inline void NAME(float *out, const float *x, const BT *w,  \
                                                                     int nb) {                                  \
        __m256 acc[4];                                                                                          \
        for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();                                               \
        for (int b = 0; b < nb; b++) {                                                                          \
            const float *xb = x + (size_t)b * QK;                                                               \
            __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8), x2 = _mm256_loadu_ps(xb + 16);       \
            __m256 x3 = _mm256_loadu_ps(xb + 24);                                                               \
            for (int r = 0; r < 4; r++) {                                                                       \
                const BT *blk = w + (size_t)r * nb + b;                                                         \
                _mm_prefetch((const char *)(blk + 4 * (size_t)nb), _MM_HINT_T0);                                \
                __m256 w0, w1, w2, w3;                                                                          \
                WIDEN(blk, w0, w1, w2, w3);                                                                     \
                __m256 d = _mm256_broadcast_ss(&f16_tab[blk->d]);                                              \
                __m256 p = _mm256_mul_ps(x0, w0);                                                               \
                p = _mm256_fmadd_ps(x1, w1, p);                                                                 \
                p = _mm256_fmadd_ps(x2, w2, p);                                                                 \
                p = _mm256_fmadd_ps(x3, w3, p);                                                                 \
                acc[r] = _mm256_fmadd_ps(p, d, acc[r]);                                                         \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < 4; r++) out[r] = hsum8(acc[r]);                                                    \
    }
GEMVQ_R4_DEFINE(gemv_r4_q4_0, BlockQ4_0, QWIDEN_Q4_0)
/* The Q8_0 GEMV on an AVX-512 CPU (F, BW, VL): x is first quantised to 16-bit integers per block of 32 (xq_rows:
 * x ≈ 2^-e·q, one power of two a block, |q| < 2^15), once per product; then a block's 32 weights are one sign
 * extension to 16 bits, one vpmaddwd against the block's q (16 lanes of int32 sums of two products, exact), one
 * conversion to fp32 (exact: |sum| < 2^24) and one FMA by the block's scale d·2^-e (exact). That is 4 vector
 * operations a block where widening the weights to fp32 took 7 (two sign extensions, two conversions, three FMAs);
 * on the Zen 4 development VM, which runs 512-bit operations at half rate, the fp32 kernel bound the GEMV at
 * ~5 % fewer bytes a second than bf16's (bench/results/cpu-q8-decode-vm-session9.txt). The only rounding added is
 * x's to 15 significant bits of its block's largest magnitude (relative error under 2^-15 of that magnitude;
 * products of small integers, such as test_quant's exact cases, stay exact). All outputs of 1 to 4 rows and the
 * 4-row decode kernel do the same operations in the same order, so they agree bit for bit; an AVX2-only CPU (or
 * DSOCR_NO_AVX512) runs the same products in 8 lanes (below), whose outputs differ in rounding. */
__attribute__((target("avx512f,avx512vl,avx512bw"))) static inline float hsum16(__m512 a) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(a), hi));
}
/* x prepared once per product for the SIMD GEMVs: for Q8_0 quantised, row m's block b is q[m·K + 32b ..] ·
 * s[m·K/32 + b]; for bf16 in split order (split_order), row m at xs + m·K */
typedef struct {
    const int16_t *q;
    const float *s;
    int K;
    const float *xs;
} XQ;
/* One block of 32 (ops_cpu_xq_quantize, below): qb and its scale *s */
static void xq_block(int16_t *qb, float *s, const float *xb) {
    float amax = 0;
    int finite = 1;
    for (int j = 0; j < QK; j++) {
        float a = fabsf(xb[j]);
        finite &= isfinite(a);
        amax = a > amax ? a : amax;
    }
    if (!finite || amax == 0) { /* zeros; or NaN through the scale so the output is NaN as x·w would be */
        for (int j = 0; j < QK; j++) qb[j] = finite ? 0 : 1;
        *s = finite ? 0.0f : NAN;
        return;
    }
    int ex;
    frexpf(amax, &ex); /* amax < 2^ex */
    const float up = ldexpf(1.0f, 15 - ex), down = ldexpf(1.0f, ex - 15);
    for (int j = 0; j < QK; j++) {
        float v = rintf(xb[j] * up);
        qb[j] = (int16_t)(v > 32767.0f ? 32767.0f : v < -32767.0f ? -32767.0f : v);
    }
    *s = down;
}
/* ops_cpu_xq_quantize's loop in eight lanes, the same bits: the same products by the same power of two, rounded to
 * nearest even (rintf's rounding) and clamped; blocks of zeros or of non-finite values go to xq_block. (Scalar, this
 * was a serial part of every decode product: rintf is a libm call on a baseline x86-64 build.) */
__attribute__((target("avx2"))) static void xq_quantize_avx2(int16_t *q, float *s, const float *x, int ldx, int M,
                                                             int K) {
    const int nb = K / QK;
    const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(32767.0f),
                 lo = _mm256_set1_ps(-32767.0f);
    for (int m = 0; m < M; m++)
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (size_t)m * ldx + (size_t)b * QK;
            int16_t *qb = q + (size_t)m * K + (size_t)b * QK;
            float *sb = s + (size_t)m * nb + b;
            __m256 v[4], mx = _mm256_setzero_ps();
            int bad = 0;
            for (int i = 0; i < 4; i++) {
                v[i] = _mm256_loadu_ps(xb + 8 * i);
                const __m256 a = _mm256_andnot_ps(sign, v[i]);
                bad |= _mm256_movemask_ps(_mm256_cmp_ps(a, inf, _CMP_NLT_UQ)); /* infinite or NaN */
                mx = _mm256_max_ps(mx, a);
            }
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
            if (bad || amax == 0) {
                xq_block(qb, sb, xb);
                continue;
            }
            int ex;
            frexpf(amax, &ex);
            const __m256 up = _mm256_set1_ps(ldexpf(1.0f, 15 - ex));
            __m256i r[4];
            for (int i = 0; i < 4; i++) {
                const __m256 t =
                    _mm256_round_ps(_mm256_mul_ps(v[i], up), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                r[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), hi));
            }
            /* packs works within 128-bit lanes: [0-3 of a, 0-3 of b, 4-7 of a, 4-7 of b], put back in order */
            _mm256_storeu_si256((__m256i *)qb, _mm256_permute4x64_epi64(_mm256_packs_epi32(r[0], r[1]), 0xd8));
            _mm256_storeu_si256((__m256i *)(qb + 16), _mm256_permute4x64_epi64(_mm256_packs_epi32(r[2], r[3]), 0xd8));
            *sb = ldexpf(1.0f, ex - 15);
        }
}
/* Rows [0, M) of x (stride ldx, K a multiple of 32) quantised into q (M·K) and s (M·K/32): per block the power of
 * two 2^-e with max|x| · 2^e < 2^15, q = rint(x · 2^e) (clamped to ±32767 for the value that rounds up to 2^15),
 * s = 2^-e; a block of zeros (or of non-finite values' NaN) gets s = 0 or NaN as x does. */
void ops_cpu_xq_quantize(int16_t *q, float *s, const float *x, int ldx, int M, int K, int portable) {
    if (cpu_avx2() && !portable) {
        xq_quantize_avx2(q, s, x, ldx, M, K);
        return;
    }
    const int nb = K / QK;
    for (int m = 0; m < M; m++)
        for (int b = 0; b < nb; b++)
            xq_block(q + (size_t)m * K + (size_t)b * QK, s + (size_t)m * nb + b, x + (size_t)m * ldx + (size_t)b * QK);
}
/* Bytes of M rows of K prepared for weights of dtype dt: bf16 split (floats), else quantised (q, then s) */
static size_t xq_bytes(DsDtype dt, int M, int K) {
    if (dt == DS_BF16) return (size_t)M * K * sizeof(float);
    return (size_t)M * K * sizeof(int16_t) + (size_t)M * (K / QK) * sizeof(float);
}
/* M rows of x prepared for dtype dt into buf (xq_bytes of them), described by *out */
static void xq_into(XQ *out, uint8_t *buf, DsDtype dt, const float *x, int ldx, int M, int K) {
    if (dt == DS_BF16) {
        float *xs = (float *)buf;
        for (int m = 0; m < M; m++) split_order(xs + (size_t)m * K, x + (size_t)m * ldx, K, 1);
        *out = (XQ){NULL, NULL, K, xs};
        return;
    }
    int16_t *q = (int16_t *)buf;
    float *s = (float *)(buf + (size_t)M * K * sizeof(int16_t));
    ops_cpu_xq_quantize(q, s, x, ldx, M, K, 0);
    *out = (XQ){q, s, K, NULL};
}
/* x prepared in the calling thread's scratch (cpu/scratch.h), or NULL when memory runs out (then the caller
 * takes the portable kernels). */
static const XQ *xq_rows(XQ *out, DsDtype dt, const float *x, int ldx, int M, int K) {
    uint8_t *buf = cpu_scratch(SCRATCH_XQ, xq_bytes(dt, M, K));
    if (!buf) return NULL;
    xq_into(out, buf, dt, x, ldx, M, K);
    return out;
}
/* One block of a row's sums: acc + d·s · Σ q_j·w_j (lanes: the sums of pairs 2l, 2l + 1) */
__attribute__((target("avx512f,avx512vl,avx512bw"))) static inline __m512 q8_0_xq_block(__m512 acc, const int16_t *qb,
                                                                                        float sb,
                                                                                        const BlockQ8_0 *blk) {
    const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)blk->q));
    const __m512i p = _mm512_madd_epi16(w, _mm512_loadu_si512((const void *)qb));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(f16_tab[blk->d] * sb), acc);
}
/* out[m] = xq row m · row, m < MR, the weight block widened once for the MR rows. Two accumulators a row (even
 * and odd blocks, added at the end), so that a row's chain of FMAs is not one block per FMA latency. */
#define GEMVQ_X_DEFINE(NAME, MR)                                                                                \
    __attribute__((target("avx512f,avx512vl,avx512bw"))) static void NAME(float *out, const XQ *xq, int m0,    \
                                                                         const BlockQ8_0 *w, int nb) {          \
        __m512 acc[MR][2];                                                                                      \
        for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();                               \
        for (int b = 0; b < nb; b++) {                                                                          \
            const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)w[b].q));              \
            const float d = f16_tab[w[b].d];                                                                    \
            for (int m = 0; m < MR; m++) {                                                                      \
                const size_t r = (size_t)(m0 + m);                                                              \
                const __m512i p =                                                                               \
                    _mm512_madd_epi16(wv, _mm512_loadu_si512((const void *)(xq->q + r * xq->K + (size_t)b * QK))); \
                acc[m][b & 1] =                                                                                 \
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(d * xq->s[r * nb + b]), acc[m][b & 1]); \
            }                                                                                                   \
        }                                                                                                       \
        for (int m = 0; m < MR; m++) out[m] = hsum16(_mm512_add_ps(acc[m][0], acc[m][1]));                     \
    }
GEMVQ_X_DEFINE(gemv1_q8_0_x, 1)
GEMVQ_X_DEFINE(gemv2_q8_0_x, 2)
GEMVQ_X_DEFINE(gemv3_q8_0_x, 3)
GEMVQ_X_DEFINE(gemv4_q8_0_x, 4)
/* 4 weight rows against xq's row 0 (decode), one row after the other. A thread's rows are adjacent in memory (runs
 * of whole 16-row blocks, gemv_schedule), so this reads one sequential stream; once per two blocks (68 bytes) it
 * prefetches 2 KiB ahead into L1 (software prefetch never faults, also past the end). With the fp32 kernel, a
 * further prefetch 8 KiB ahead into L2 had helped (bench/results/cpu-q8-decode-vm-session8.txt, an Intel VM); with
 * this one, on the Zen 4 VM, bench_quant's Q8_0 shapes from memory stream 33-35 GB/s with the L1 prefetch alone,
 * 25-31 with both (bench/results/cpu-q8-decode-vm-session10.txt). On Intel a far prefetch into L2 is back
 * (decode_pf). Each row's sums are gemv1_q8_0_x's, in the same order, so the results are unchanged. */
__attribute__((target("avx512f,avx512vl,avx512bw"))) static void gemv_r4_q8_0_x(float *out, const XQ *xq,
                                                                                const BlockQ8_0 *w, int nb) {
    enum { PF_L1 = 2048 };
    const int pf = decode_pf();
    for (int r = 0; r < 4; r++) {
        const BlockQ8_0 *row = w + (size_t)r * nb;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(); /* even, odd blocks */
        int b = 0;
        for (; b + 2 <= nb; b += 2) {
            _mm_prefetch((const char *)(row + b) + PF_L1, _MM_HINT_T0);
            if (pf) _mm_prefetch((const char *)(row + b) + pf, _MM_HINT_T1);
            acc0 = q8_0_xq_block(acc0, xq->q + (size_t)b * QK, xq->s[b], row + b);
            acc1 = q8_0_xq_block(acc1, xq->q + (size_t)(b + 1) * QK, xq->s[b + 1], row + b + 1);
        }
        if (b < nb) acc0 = q8_0_xq_block(acc0, xq->q + (size_t)b * QK, xq->s[b], row + b);
        out[r] = hsum16(_mm512_add_ps(acc0, acc1));
    }
}
/* The same 16-bit products in 8 lanes (AVX2: a CPU without AVX-512, or DSOCR_NO_AVX512): a block is two sign
 * extensions, two vpmaddwd and one integer add (each lane the exact sum of 4 products), where widening to fp32 took
 * 13 operations. */
__attribute__((target("avx2,fma,f16c"))) static inline __m256i q8_0_madd8(const BlockQ8_0 *blk, const int16_t *qb) {
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->q));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk->q + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)qb)),
                            _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(qb + 16))));
}
/* One weight row against one row of x quantised (q, its block scales s), in 8 lanes. Four blocks at a time: their
 * lane sums folded by two rounds of vphaddd into one vector (lanes j and j + 4 hold block j's halves, each the sum
 * of 16 products, converted to fp32, rounded only past 2^24), then one FMA by the four scales d·s; a conversion,
 * broadcast and FMA for every block made bench_quant's Q8_0 shapes 8-17 % slower on the 2-core Zen VM
 * (bench/results/cpu-issue12-vm-session17.txt). The last nb % 4 blocks go one at a time. pf > 0: an L1 prefetch
 * that far ahead of every 68 bytes of the row (the decode's 4-row kernel). Always inlined: as a call (pf then a
 * variable) the same loop ran 4-6 % slower than the per-block one. Every AVX2 Q8_0 GEMV output is this function's,
 * for any batch shape; the outputs differ in rounding from the 16-lane kernels'. */
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline float
q8_0_dot8(const BlockQ8_0 *row, const int16_t *q, const float *s, int nb, int pf) {
    __m256 acc = _mm256_setzero_ps();
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        if (pf) {
            _mm_prefetch((const char *)(row + b) + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)(row + b + 2) + pf, _MM_HINT_T0);
        }
        const __m256i p01 = _mm256_hadd_epi32(q8_0_madd8(row + b, q + (size_t)b * QK),
                                              q8_0_madd8(row + b + 1, q + (size_t)(b + 1) * QK));
        const __m256i p23 = _mm256_hadd_epi32(q8_0_madd8(row + b + 2, q + (size_t)(b + 2) * QK),
                                              q8_0_madd8(row + b + 3, q + (size_t)(b + 3) * QK));
        const __m128 d = _mm_setr_ps(f16_tab[row[b].d], f16_tab[row[b + 1].d], f16_tab[row[b + 2].d],
                                     f16_tab[row[b + 3].d]);
        const __m128 sc = _mm_mul_ps(d, _mm_loadu_ps(s + b));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(p01, p23)), _mm256_set_m128(sc, sc), acc);
    }
    for (; b < nb; b++) {
        const __m256i p = q8_0_madd8(row + b, q + (size_t)b * QK);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16_tab[row[b].d] * s[b]), acc);
    }
    return hsum8(acc);
}
/* mr rows of x (from row m0) against one weight row */
__attribute__((target("avx2,fma,f16c"))) static void gemv_q8_0_x8(float *out, const XQ *xq, int m0, int mr,
                                                                  const BlockQ8_0 *w, int nb) {
    for (int m = 0; m < mr; m++) {
        const size_t r = (size_t)(m0 + m);
        out[m] = q8_0_dot8(w, xq->q + r * xq->K, xq->s + r * nb, nb, 0);
    }
}
/* 4 rows against xq's row 0, one after the other, with gemv_r4_q8_0_x's prefetch distance */
__attribute__((target("avx2,fma,f16c"))) static void gemv_r4_q8_0_x8(float *out, const XQ *xq, const BlockQ8_0 *w,
                                                                     int nb) {
    enum { PF_L1 = 2048 };
    for (int r = 0; r < 4; r++) out[r] = q8_0_dot8(w + (size_t)r * nb, xq->q, xq->s, nb, PF_L1);
}

/* The portable block GEMV: each block dequantised to 32 floats on the stack, then the Q4_0 kernels' sums (8 lanes
 * per block, scaled by d, lanes added at the end; the AVX2 Q8_0 one scales four blocks at a time). */
static void gemvq_scalar(float *out, const float *x, int ldx, int mr, DsW w, int n, int K) {
    int nb = K / QK;
    size_t rb = quant_row_bytes(w.dtype, K);
    const uint8_t *row = (const uint8_t *)w.data + (size_t)n * rb;
    float acc[4][8] = {{0}};
    for (int b = 0; b < nb; b++) {
        float wq[QK], d; /* wq: the integer values q (Q8_0) or nibble − 8 (Q4_0), as floats */
        if (w.dtype == DS_Q8_0) {
            const BlockQ8_0 *blk = (const BlockQ8_0 *)row + b;
            for (int j = 0; j < QK; j++) wq[j] = blk->q[j];
            d = fp16_to_f32(blk->d);
        } else {
            const BlockQ4_0 *blk = (const BlockQ4_0 *)row + b;
            for (int j = 0; j < QK / 2; j++) {
                wq[j] = (float)((blk->q[j] & 0x0f) - 8);
                wq[j + QK / 2] = (float)((blk->q[j] >> 4) - 8);
            }
            d = fp16_to_f32(blk->d);
        }
        for (int m = 0; m < mr; m++) {
            const float *xm = x + (size_t)m * ldx + (size_t)b * QK;
            float p[8];
            for (int l = 0; l < 8; l++) p[l] = xm[l] * wq[l];
            for (int g = 8; g < QK; g += 8)
                for (int l = 0; l < 8; l++) p[l] += xm[g + l] * wq[g + l];
            for (int l = 0; l < 8; l++) acc[m][l] += p[l] * d;
        }
    }
    for (int m = 0; m < mr; m++) {
        float *a = acc[m];
        out[m] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    }
}

/* xq: NULL, or x quantised from row m0 for the 16-bit Q8_0 kernels (wants_xq) */
static void gemvq_rows(float *out, const float *x, int ldx, int mr, DsW w, int n, int K, int simd, const XQ *xq,
                       int m0) {
    if (!simd) {
        gemvq_scalar(out, x, ldx, mr, w, n, K);
        return;
    }
    int nb = K / QK;
    if (xq && cpu_avx512()) {
        const BlockQ8_0 *wr = (const BlockQ8_0 *)w.data + (size_t)n * nb;
        switch (mr) {
        case 1: gemv1_q8_0_x(out, xq, m0, wr, nb); return;
        case 2: gemv2_q8_0_x(out, xq, m0, wr, nb); return;
        case 3: gemv3_q8_0_x(out, xq, m0, wr, nb); return;
        default: gemv4_q8_0_x(out, xq, m0, wr, nb); return;
        }
    }
    if (xq) {
        gemv_q8_0_x8(out, xq, m0, mr, (const BlockQ8_0 *)w.data + (size_t)n * nb, nb);
        return;
    }
    DS_ASSERT(w.dtype == DS_Q4_0 && "Q8_0 products get x quantised (wants_xq)");
    const BlockQ4_0 *wr = (const BlockQ4_0 *)w.data + (size_t)n * nb;
    switch (mr) {
    case 1: gemv1_q4_0(out, x, ldx, wr, nb); return;
    case 2: gemv2_q4_0(out, x, ldx, wr, nb); return;
    case 3: gemv3_q4_0(out, x, ldx, wr, nb); return;
    default: gemv4_q4_0(out, x, ldx, wr, nb); return;
    }
}

/* Forces the portable kernels (tests compare them with the SIMD ones; 0 = dispatch by CPU features). */
static int g_force_scalar;
void ops_cpu_force_scalar(int on) { g_force_scalar = on; }

/* out[m] = x[m]·row(n) for m < mr (<= 4), any weight dtype; xq: see gemvq_rows. */
static void gemv_rows(float *out, const float *x, int ldx, int mr, DsW w, int n, int K, int avx2, const XQ *xq,
                      int m0) {
    if (quant_is_block(w.dtype)) {
        gemvq_rows(out, x, ldx, mr, w, n, K, avx2 && cpu_avx2_f16c(), xq, m0);
        return;
    }
    if (avx2 && w.dtype == DS_BF16) { /* x in split order (xq->xs) */
        const uint16_t *wr = (const uint16_t *)w.data + (size_t)n * K;
        DS_ASSERT(xq && xq->xs);
        for (int m = 0; m < mr; m++) out[m] = bf16_dot(xq->xs + (size_t)(m0 + m) * K, wr, K);
        return;
    }
    if (avx2 && w.dtype == DS_F32) {
        const float *wr = (const float *)w.data + (size_t)n * K;
        switch (mr) {
        case 1: gemv1_f32(out, x, ldx, wr, K); return;
        case 2: gemv2_f32(out, x, ldx, wr, K); return;
        case 3: gemv3_f32(out, x, ldx, wr, K); return;
        default: gemv4_f32(out, x, ldx, wr, K); return;
        }
    }
    for (int m = 0; m < mr; m++) {
        float acc[8] = {0};
        int k = 0;
        for (; k + 8 <= K; k += 8)
            for (int l = 0; l < 8; l++) acc[l] += x[(size_t)m * ldx + k + l] * ds_w_get(w, (size_t)n * K + k + l);
        float r = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; k < K; k++) r += x[(size_t)m * ldx + k] * ds_w_get(w, (size_t)n * K + k);
        out[m] = r;
    }
}

/* out[0..4) = x · rows n .. n + 3 (decode, M = 1) by the 4-row kernel of w's dtype (bf16 or a block type) */
static void gemv_r4(float *out, const float *x, DsW w, int n, int K, const XQ *xq) {
    const int nb = K / QK;
    if (w.dtype == DS_BF16)
        gemv_r4_bf16(out, xq->xs, (const uint16_t *)w.data + (size_t)n * K, K);
    else if (xq && cpu_avx512())
        gemv_r4_q8_0_x(out, xq, (const BlockQ8_0 *)w.data + (size_t)n * nb, nb);
    else if (xq)
        gemv_r4_q8_0_x8(out, xq, (const BlockQ8_0 *)w.data + (size_t)n * nb, nb);
    else
        gemv_r4_q4_0(out, x, (const BlockQ4_0 *)w.data + (size_t)n * nb, nb);
}

enum { GEMV_NB = 16, GEMV_MAX_M = 16, GEMM_MB = 512, GEMM_NB = 256, GEMM_KB = 256 };

/* Outputs [bi·GEMV_NB, +GEMV_NB) of linear_gemv's product: the unit its threads share out, so that a product
 * computed in such blocks, by whatever thread, has the same bits. */
static void gemv_block(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags,
                       int avx2, const XQ *xq, int bi) {
    int n1 = (bi + 1) * GEMV_NB < N ? (bi + 1) * GEMV_NB : N;
    int n = bi * GEMV_NB;
    if (M == 1 && avx2 && (w.dtype == DS_BF16 || (quant_is_block(w.dtype) && cpu_avx2_f16c())))
        for (; n + 4 <= n1; n += 4) { /* decode: 4 weight rows at a time */
            float r[4];
            gemv_r4(r, x, w, n, K, xq);
            for (int j = 0; j < 4; j++) {
                float b = bias.data ? ds_w_get(bias, n + j) : 0.0f;
                y[n + j] = (flags & OPS_ACCUM) ? y[n + j] + (r[j] + b) : r[j] + b;
            }
        }
    for (; n < n1; n++) {
        float b = bias.data ? ds_w_get(bias, n) : 0.0f;
        for (int m0 = 0; m0 < M; m0 += 4) {
            int mr = M - m0 < 4 ? M - m0 : 4;
            float r[4];
            gemv_rows(r, x + (size_t)m0 * ldx, ldx, mr, w, n, K, avx2, xq, m0);
            for (int m = 0; m < mr; m++) {
                float *o = &y[(size_t)(m0 + m) * ldy + n];
                *o = (flags & OPS_ACCUM) ? *o + (r[m] + b) : r[m] + b;
            }
        }
    }
}

/* Whether a product on w prepares x first (xq_into): quantised for the 16-bit Q8_0 kernels (AVX-512 or AVX2), split
 * for the bf16 ones */
static int wants_xq(DsW w, int avx2) { return avx2 && ((w.dtype == DS_Q8_0 && cpu_avx2_f16c()) || w.dtype == DS_BF16); }

/* How the GEMVs' 16-row blocks are shared out among the threads: guided (default: each thread first takes a long
 * run of blocks, then smaller ones as they are left, so a thread that fell behind, such as a vCPU the host
 * descheduled, no longer holds up the region's barrier; 52 -> 60-63 tok/s bf16 decode on the 16-core Xeon, see
 * decode_pf), or DSOCR_GEMV_SCHED=static (each thread one equal run) or dynamic[,chunk]. A block computes the same
 * bits whichever thread takes it. */
static void gemv_schedule(void) {
    static int kind = -1, chunk = 0;
    if (kind < 0) {
        const char *e = getenv("DSOCR_GEMV_SCHED");
        kind = omp_sched_guided;
        if (e && !strncmp(e, "static", 6)) kind = omp_sched_static;
        if (e && !strncmp(e, "guided", 6)) kind = omp_sched_guided;
        if (e && !strncmp(e, "dynamic", 7)) kind = omp_sched_dynamic;
        const char *c = e ? strchr(e, ',') : NULL;
        chunk = c ? atoi(c + 1) : 0;
    }
    omp_set_schedule((omp_sched_t)kind, chunk);
}

static void linear_gemv(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags) {
    int avx2 = cpu_avx2() && !g_force_scalar;
    int nblk = (N + GEMV_NB - 1) / GEMV_NB;
    XQ xqs;
    const XQ *xq = wants_xq(w, avx2) ? xq_rows(&xqs, w.dtype, x, ldx, M, K) : NULL;
    if (!xq && wants_xq(w, avx2)) avx2 = 0; /* no memory for x's prepared copy: the portable kernel */
    gemv_schedule();
#pragma omp parallel for schedule(runtime) if ((size_t)N * K >= PAR_MIN)
    for (int bi = 0; bi < nblk; bi++) gemv_block(y, ldy, x, ldx, M, K, w, N, bias, flags, avx2, xq, bi);
}

/* Several one-row products y_j = x_j · w_jᵀ (decode) as one parallel region: their output blocks in order, shared
 * out among the threads (one barrier for all, each thread reading a long run of weights), each block as
 * linear_gemv computes it, so each y_j has ops_linear_cpu's bits. */
typedef struct {
    float *y;
    const float *x;
    DsW w;
    int N, K;
} GemvJob;
static void gemv_jobs(const GemvJob *jobs, int n_jobs) {
    enum { MAXJ = 2 * 17 };
    DS_ASSERT(n_jobs <= MAXJ);
    int start[MAXJ + 1], total = 0;
    for (int j = 0; j < n_jobs; j++) {
        start[j] = total;
        total += (jobs[j].N + GEMV_NB - 1) / GEMV_NB;
    }
    start[n_jobs] = total;
    int avx2 = cpu_avx2() && !g_force_scalar;
    /* the jobs' x prepared (xq_into), once for jobs in a row that share it and their dtype (an expert's gate and
     * up) */
    XQ xq[MAXJ];
    const XQ *xqp[MAXJ] = {0};
    size_t bytes = 0;
#define SHARES_PREV(j) ((j) && jobs[(j) - 1].x == jobs[j].x && jobs[(j) - 1].w.dtype == jobs[j].w.dtype)
    for (int j = 0; j < n_jobs; j++)
        if (wants_xq(jobs[j].w, avx2) && !SHARES_PREV(j)) bytes += xq_bytes(jobs[j].w.dtype, 1, jobs[j].K);
    uint8_t *buf = bytes ? cpu_scratch(SCRATCH_XQ, bytes) : NULL;
    if (bytes && !buf) avx2 = 0; /* no memory for x's prepared copies: the portable kernels */
    for (int j = 0; buf && j < n_jobs; j++) {
        if (!wants_xq(jobs[j].w, avx2)) continue;
        if (SHARES_PREV(j)) {
            xqp[j] = xqp[j - 1];
            continue;
        }
        xq_into(&xq[j], buf, jobs[j].w.dtype, jobs[j].x, jobs[j].K, 1, jobs[j].K);
        buf += xq_bytes(jobs[j].w.dtype, 1, jobs[j].K);
        xqp[j] = &xq[j];
    }
#undef SHARES_PREV
    gemv_schedule();
#pragma omp parallel for schedule(runtime)
    for (int t = 0; t < total; t++) {
        int j = 0;
        while (t >= start[j + 1]) j++;
        const GemvJob *b = &jobs[j];
        gemv_block(b->y, b->N, b->x, b->K, 1, b->K, b->w, b->N, ds_w_none(), 0, avx2, xqp[j], t - start[j]);
    }
}

void ops_expert_ffn1_many_cpu(float *const *y, const float *x, int d_model, const int *d_ff, const DsW *gate,
                              const DsW *up, const DsW *down, int n, int flags) {
    DS_ASSERT(n >= 0 && n <= 17);
    if (!n) return;
    size_t fsum = 0;
    for (int i = 0; i < n; i++) fsum += (size_t)d_ff[i];
    float *g = cpu_scratch(SCRATCH_FFN, sizeof(float) * 2 * fsum);
    DS_ASSERT(g && "out of memory for the decode step's expert scratch");
    GemvJob jobs[2 * 17];
    float *gi = g;
    for (int i = 0; i < n; i++) { /* gate, up of every expert */
        jobs[2 * i] = (GemvJob){gi, x, gate[i], d_ff[i], d_model};
        jobs[2 * i + 1] = (GemvJob){gi + d_ff[i], x, up[i], d_ff[i], d_model};
        gi += 2 * (size_t)d_ff[i];
    }
    gemv_jobs(jobs, 2 * n);
    gi = g;
    for (int i = 0; i < n; i++) { /* ops_expert_ffn_cpu's middle, per expert */
        float *u = gi + d_ff[i];
        if (flags & OPS_BF16) {
            ops_round_bf16_cpu(gi, (size_t)d_ff[i]);
            ops_round_bf16_cpu(u, (size_t)d_ff[i]);
        }
        ops_silu_mul_cpu(gi, gi, u, (size_t)d_ff[i], flags);
        jobs[i] = (GemvJob){y[i], gi, down[i], d_model, d_ff[i]};
        gi += 2 * (size_t)d_ff[i];
    }
    gemv_jobs(jobs, n);
    if (flags & OPS_BF16)
        for (int i = 0; i < n; i++) ops_round_bf16_cpu(y[i], (size_t)d_model);
}

/* A weight widened to fp32 once for a product of many row tiles (the vision encoder's: 4,096 rows), in a buffer of
 * the calling thread kept for its next call, at most WIDE_MAX floats (the encoder's largest weight is 4M); NULL when
 * it does not fit or memory runs out (the tiles then widen their own parts, as before). The buffer is the calling
 * thread's (cpu/scratch.h). */
enum { WIDE_MAX = 8 << 20 };
static const float *widen_all(DsW w, int N, int K) {
    const size_t need = (size_t)N * K;
    if (need > WIDE_MAX) return NULL;
    float *dst = cpu_scratch(SCRATCH_WIDE, need * sizeof(float));
    if (!dst) return NULL;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) w_widen(dst + (size_t)n * K, w, (size_t)n * K, K);
    return dst;
}

/* linear_gemm's tiles of a product of M rows and N outputs: at most GEMM_MB rows × GEMM_NB outputs, smaller (down
 * to 128 rows then 64 outputs) until the product has GEMM_TASKS of them, so that many threads share even a small
 * product (a prefill's 283 rows, CLIP's 257); the rows split evenly over the row tiles (m_lo). The plan depends on
 * the shape alone: the same bits whatever the thread count. */
enum { GEMM_TASKS = 64 };
typedef struct {
    int mt, nt, nb;
} GemmPlan;
static GemmPlan gemm_plan(int M, int N) {
    int mb = GEMM_MB, nb = GEMM_NB;
#define TILES(m, n) (((M + (m) - 1) / (m)) * ((N + (n) - 1) / (n)))
    while (TILES(mb, nb) < GEMM_TASKS && nb > 128) nb /= 2;
    while (TILES(mb, nb) < GEMM_TASKS && mb > 128) mb /= 2;
    while (TILES(mb, nb) < GEMM_TASKS && nb > 64) nb /= 2;
#undef TILES
    return (GemmPlan){(M + mb - 1) / mb, (N + nb - 1) / nb, nb};
}
/* rows [m_lo(i), m_lo(i + 1)) are row tile i of mt over M rows */
static int m_lo(int i, int mt, int M) { return (int)((long long)M * i / mt); }

/* Tile t of product (y, x, w) under plan p: sgemm on the widened weights wf when given, else the tile widens its
 * weight part GEMM_KB columns at a time into a 256 KiB stack buffer and accumulates. */
static void gemm_tile(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, const float *wf, int N,
                      DsW bias, int flags, GemmPlan p, int t) {
    const int mi = t / p.nt, m0 = m_lo(mi, p.mt, M), mb = m_lo(mi + 1, p.mt, M) - m0;
    const int n0 = (t % p.nt) * p.nb, nb = N - n0 < p.nb ? N - n0 : p.nb;
    float *yt = y + (size_t)m0 * ldy + n0;
    const float *xt = x + (size_t)m0 * ldx;
    if (wf) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mb, nb, K, 1.0f, xt, ldx, wf + (size_t)n0 * K, K,
                    (flags & OPS_ACCUM) ? 1.0f : 0.0f, yt, ldy);
    } else {
        float tile[GEMM_NB * GEMM_KB] __attribute__((aligned(64)));
        for (int k0 = 0; k0 < K; k0 += GEMM_KB) {
            int kb = K - k0 < GEMM_KB ? K - k0 : GEMM_KB;
            for (int n = 0; n < nb; n++) w_widen(tile + (size_t)n * kb, w, (size_t)(n0 + n) * K + k0, kb);
            float beta = (k0 > 0 || (flags & OPS_ACCUM)) ? 1.0f : 0.0f;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mb, nb, kb, 1.0f, xt + k0, ldx, tile, kb, beta, yt,
                        ldy);
        }
    }
    if (bias.data) {
        float bv[GEMM_NB];
        w_widen(bv, bias, n0, nb);
        for (int m = 0; m < mb; m++)
            for (int n = 0; n < nb; n++) yt[(size_t)m * ldy + n] += bv[n];
    }
}

/* The product in gemm_plan's tiles, sgemm on each. A 16-bit or block weight is widened whole first when the
 * product has several row tiles (widen_all); else each tile widens its own part (gemm_tile). */
static void linear_gemm(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags) {
    blas_ready();
    const GemmPlan p = gemm_plan(M, N);
    const float *wf = w.dtype == DS_F32 ? (const float *)w.data : p.mt >= 2 ? widen_all(w, N, K) : NULL;
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < p.mt * p.nt; t++) gemm_tile(y, ldy, x, ldx, M, K, w, wf, N, bias, flags, p, t);
}

/* Several products y_j [M_j, N_j] = x_j [M_j, K_j] · w_jᵀ (dense rows) as one parallel region: every job's units
 * (linear_gemv's output blocks under GEMV_MAX_M rows, else gemm_plan's tiles) shared out among the threads. A job's
 * bits are ops_linear_cpu's, except that a job of several row tiles on 16-bit or block weights widens each tile's
 * weights itself (gemm_tile without wf: the sums in GEMM_KB steps) rather than the whole weight first. */
typedef struct {
    float *y;
    const float *x;
    DsW w;
    int M, K, N;
} LinJob;
static void lin_jobs(const LinJob *jobs, int n) {
    if (n <= 0) return;
    blas_ready();
    int avx2 = cpu_avx2() && !g_force_scalar, total = 0;
    int *start = malloc(sizeof(int) * ((size_t)n + 1));
    GemmPlan *pl = malloc(sizeof *pl * (size_t)n);
    XQ *xq = malloc(sizeof *xq * (size_t)n);
    const XQ **xqp = calloc((size_t)n, sizeof *xqp);
    DS_ASSERT(start && pl && xq && xqp && "out of memory for a MoE layer's job list");
    size_t bytes = 0;
    for (int j = 0; j < n; j++) {
        const LinJob *b = &jobs[j];
        start[j] = total;
        if (b->M <= 0) continue;
        if (b->M < GEMV_MAX_M) {
            total += (b->N + GEMV_NB - 1) / GEMV_NB;
            if (wants_xq(b->w, avx2)) bytes += xq_bytes(b->w.dtype, b->M, b->K);
        } else {
            pl[j] = gemm_plan(b->M, b->N);
            total += pl[j].mt * pl[j].nt;
        }
    }
    start[n] = total;
    uint8_t *buf = bytes ? cpu_scratch(SCRATCH_XQ, bytes) : NULL;
    if (bytes && !buf) avx2 = 0; /* no memory for x's prepared copies: the portable kernels */
    for (int j = 0; buf && j < n; j++)
        if (jobs[j].M > 0 && jobs[j].M < GEMV_MAX_M && wants_xq(jobs[j].w, avx2)) {
            xq_into(&xq[j], buf, jobs[j].w.dtype, jobs[j].x, jobs[j].K, jobs[j].M, jobs[j].K);
            buf += xq_bytes(jobs[j].w.dtype, jobs[j].M, jobs[j].K);
            xqp[j] = &xq[j];
        }
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < total; t++) {
        int lo = 0, hi = n - 1; /* the job of unit t: the last j with start[j] <= t */
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (start[mid] <= t) lo = mid;
            else hi = mid - 1;
        }
        const LinJob *b = &jobs[lo];
        if (b->M < GEMV_MAX_M)
            gemv_block(b->y, b->N, b->x, b->K, b->M, b->K, b->w, b->N, ds_w_none(), 0, avx2, xqp[lo], t - start[lo]);
        else
            gemm_tile(b->y, b->N, b->x, b->K, b->M, b->K, b->w, b->w.dtype == DS_F32 ? (const float *)b->w.data : NULL,
                      b->N, ds_w_none(), 0, pl[lo], t - start[lo]);
    }
    free(start), free(pl), free(xq), free(xqp);
}

void ops_linear_cpu(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags) {
    DS_ASSERT(M >= 0 && K > 0 && N > 0 && ldx >= K && ldy >= N && w.data);
    DS_ASSERT(!quant_is_block(w.dtype) || K % QK == 0);
    if (M == 0) return;
    if (M < GEMV_MAX_M)
        linear_gemv(y, ldy, x, ldx, M, K, w, N, bias, flags);
    else
        linear_gemm(y, ldy, x, ldx, M, K, w, N, bias, flags);
}

/* ================================================ norms ================================================= */

enum { NORM_MAX = 16384 };

void ops_layernorm_cpu(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW b, float eps) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    if (n > NORM_MAX) {
        ops_layernorm_ref(y, ldy, x, ldx, M, n, w, b, eps);
        return;
    }
    float wf[NORM_MAX], bf[NORM_MAX];
    w_widen(wf, w, 0, n);
    if (b.data)
        w_widen(bf, b, 0, n);
    else
        memset(bf, 0, sizeof(float) * n);
#pragma omp parallel for schedule(static) if ((size_t)M * n >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * ldx;
        float *yr = y + (size_t)m * ldy;
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= n;
        float mf = (float)mean, inv = (float)(1.0 / sqrt(var + eps));
        for (int i = 0; i < n; i++) yr[i] = (xr[i] - mf) * inv * wf[i] + bf[i];
    }
}

void ops_rmsnorm_cpu(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps, int flags) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    if (n > NORM_MAX) {
        ops_rmsnorm_ref(y, ldy, x, ldx, M, n, w, eps, flags);
        return;
    }
    float wf[NORM_MAX];
    w_widen(wf, w, 0, n);
#pragma omp parallel for schedule(static) if ((size_t)M * n >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * ldx;
        float *yr = y + (size_t)m * ldy;
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(ss / n + eps));
        if (flags & OPS_BF16) {
            for (int i = 0; i < n; i++) yr[i] = bf16_round(bf16_round(xr[i] * r) * wf[i]);
        } else {
            for (int i = 0; i < n; i++) yr[i] = xr[i] * r * wf[i];
        }
    }
}

/* ============================================== elementwise ============================================= */

static inline float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }
static inline float quick_gelu1(float x) { return x / (1.0f + expf(-1.702f * x)); }

void ops_gelu_cpu(float *out, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = gelu1(x[i]);
}

void ops_quick_gelu_cpu(float *out, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = quick_gelu1(x[i]);
}

/* rbf(act(v)) for every bf16 input v (its 16 bits index the table), computed once with the expressions above */
static uint16_t g_act_tab[2][65536];
static pthread_once_t g_act_once = PTHREAD_ONCE_INIT;
static void act_tab_init(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float v = bf16_to_f32((uint16_t)h);
        g_act_tab[0][h] = f32_to_bf16(gelu1(v));
        g_act_tab[1][h] = f32_to_bf16(quick_gelu1(v));
    }
}

void ops_act_bf16_table_cpu(float *y, size_t n, int quick) {
    pthread_once(&g_act_once, act_tab_init);
    const uint16_t *t = g_act_tab[quick ? 1 : 0];
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &y[i], 4);
        u = (uint32_t)t[u >> 16] << 16;
        memcpy(&y[i], &u, 4);
    }
}

void ops_add_cpu(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void ops_scale_add_cpu(float *y, float s, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += s * x[i];
}

/* bf16_round on 8 lanes: u + 0x7fff + (bit 16 of u), the low half cleared; a NaN keeps its top half, made quiet */
__attribute__((target("avx2"))) static inline __m256 bf16_round8(__m256 v) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000),
                  one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff),
                  top = _mm256_set1_epi32((int)0xffff0000u), quiet = _mm256_set1_epi32(0x00400000);
    const __m256i u = _mm256_castps_si256(v);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
    r = _mm256_blendv_epi8(_mm256_and_si256(r, top), _mm256_and_si256(_mm256_or_si256(u, quiet), top), nan);
    return _mm256_castsi256_ps(r);
}
__attribute__((target("avx2"))) static void round_bf16_avx2(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, bf16_round8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) x[i] = bf16_round(x[i]);
}

enum { ROUND_CHUNK = 1 << 14 };

/* e^x in eight lanes: Cephes's single-precision exp (x = k·ln2 + r with ln2 split in two, a degree-6 polynomial for
 * e^r, 2^k by the exponent bits; about 1 ulp). Inputs below −87.3 are clamped there (~1e-38 instead of a denormal
 * or 0) and above 88 to 88 (~1.7e38 instead of up to infinity); a NaN stays NaN. */
__attribute__((target("avx2,fma"))) static inline __m256 exp8_avx2(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), c1 = _mm256_set1_ps(0.693359375f),
                 c2 = _mm256_set1_ps(-2.12194440e-4f), one = _mm256_set1_ps(1.f);
    const __m256 p0 = _mm256_set1_ps(1.9875691500e-4f), p1 = _mm256_set1_ps(1.3981999507e-3f),
                 p2 = _mm256_set1_ps(8.3334519073e-3f), p3 = _mm256_set1_ps(4.1665795894e-2f),
                 p4 = _mm256_set1_ps(1.6666665459e-1f), p5 = _mm256_set1_ps(5.0000001201e-1f);
    /* max and min return their second operand when either is NaN */
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fnmadd_ps(k, c2, _mm256_fnmadd_ps(k, c1, x));
    __m256 y = _mm256_fmadd_ps(p0, r, p1);
    y = _mm256_fmadd_ps(y, r, p2);
    y = _mm256_fmadd_ps(y, r, p3);
    y = _mm256_fmadd_ps(y, r, p4);
    y = _mm256_fmadd_ps(y, r, p5);
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), one);
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
/* out = g / (1 + e^−g) · u (bf: each of the two results rounded to bf16), elements [0, n) */
static void silu_mul_scalar(float *out, const float *g, const float *u, size_t n, int bf) {
    for (size_t i = 0; i < n; i++)
        out[i] = bf ? bf16_round(bf16_round(g[i] / (1.0f + expf(-g[i]))) * u[i]) : g[i] / (1.0f + expf(-g[i])) * u[i];
}
/* the same in eight lanes with exp8_avx2 for expf (about 1 ulp apart; below −88, ~1e-37 · g where expf's infinity
 * gave −0). Serial in a decode step (896 elements an expert), where expf one by one took ~60 us a MoE layer. */
__attribute__((target("avx2,fma"))) static void silu_mul_avx2(float *out, const float *g, const float *u, size_t n,
                                                              int bf) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        __m256 a = _mm256_div_ps(gv, _mm256_add_ps(one, exp8_avx2(_mm256_xor_ps(gv, sign))));
        if (bf) a = bf16_round8(a);
        a = _mm256_mul_ps(a, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(out + i, bf ? bf16_round8(a) : a);
    }
    silu_mul_scalar(out + i, g + i, u + i, n - i, bf);
}
void ops_silu_mul_cpu(float *out, const float *g, const float *u, size_t n, int flags) {
    const int bf = (flags & OPS_BF16) != 0, avx2 = cpu_avx2() && !g_force_scalar;
    const size_t chunks = (n + ROUND_CHUNK - 1) / ROUND_CHUNK;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < chunks; c++) {
        const size_t o = c * ROUND_CHUNK, m = n - o < ROUND_CHUNK ? n - o : ROUND_CHUNK;
        if (avx2)
            silu_mul_avx2(out + o, g + o, u + o, m, bf);
        else
            silu_mul_scalar(out + o, g + o, u + o, m, bf);
    }
}
void ops_round_bf16_cpu(float *x, size_t n) {
    const int avx2 = cpu_avx2() && !g_force_scalar;
    const size_t chunks = (n + ROUND_CHUNK - 1) / ROUND_CHUNK;
#pragma omp parallel for schedule(static) if (n >= 4 * PAR_MIN)
    for (size_t c = 0; c < chunks; c++) {
        float *p = x + c * ROUND_CHUNK;
        const size_t m = n - c * ROUND_CHUNK < ROUND_CHUNK ? n - c * ROUND_CHUNK : ROUND_CHUNK;
        if (avx2) {
            round_bf16_avx2(p, m);
        } else {
            for (size_t i = 0; i < m; i++) p[i] = bf16_round(p[i]);
        }
    }
}

void ops_round_bf16_rows_cpu(float *y, int ldy, int M, int N) {
    if (ldy == N || M <= 1) {
        ops_round_bf16_cpu(y, (size_t)M * N);
        return;
    }
#pragma omp parallel for schedule(static) if ((size_t)M * N >= 4 * PAR_MIN)
    for (int i = 0; i < M; i++) ops_round_bf16_cpu(y + (size_t)i * ldy, (size_t)N);
}

void ops_softmax_cpu(float *y, int ldy, const float *x, int ldx, int M, int n) {
    DS_ASSERT(M >= 0 && n > 0);
#pragma omp parallel for schedule(static) if ((size_t)M * n >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * ldx;
        float *yr = y + (size_t)m * ldy;
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = xr[i] > mx ? xr[i] : mx;
        double sum = 0;
        for (int i = 0; i < n; i++) {
            float e = expf(xr[i] - mx);
            yr[i] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < n; i++) yr[i] *= inv;
    }
}

/* =============================================== attention ============================================== */

enum { ATT_QB = 128, ATT_KB = 256, ATT_DMAX = 256, ATT_GMAX = 128 };

/* s[i] = exp(s[i] − m) for i < n (every s[i] − m finite), returning their sum. AVX2: exp8_avx2, sums in eight
 * lanes; elsewhere expf one by one. The scores' exp was the attention's largest cost on the CPU. */
__attribute__((target("avx2,fma"))) static float exp_shift_sum_avx2(float *s, int n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 y = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
        _mm256_storeu_ps(s + i, y);
        acc = _mm256_add_ps(acc, y);
    }
    float t[8], sum = 0;
    _mm256_storeu_ps(t, acc);
    for (int j = 0; j < 8; j++) sum += t[j];
    for (; i < n; i++) {
        s[i] = expf(s[i] - m);
        sum += s[i];
    }
    return sum;
}
static float exp_shift_sum(float *s, int n, float m) {
    if (cpu_avx2()) return exp_shift_sum_avx2(s, n, m);
    float sum = 0;
    for (int i = 0; i < n; i++) {
        s[i] = expf(s[i] - m);
        sum += s[i];
    }
    return sum;
}

/* A score row's relative-position bias (rh: this query's terms by key row, rw: by key column; NULL: none) added to
 * s[0..nk) for keys j0 + jj = (row, column) of a grid gw wide, each sum rounded to bf16 when bf, as the reference
 * adds its bias tensor; returns the largest of s[0..nvis). Runs along one key row, no division per key. */
static float bias_max_scalar(float *s, int nk, int nvis, int j0, const float *rh, const float *rw, int gw, int bf) {
    if (rh)
        for (int jj = 0, jr = j0 / gw, jc = j0 % gw; jj < nk; jr++, jc = 0) {
            const int run = nk - jj < gw - jc ? nk - jj : gw - jc;
            for (int t = 0; t < run; t++) s[jj + t] += bf ? bf16_round(rh[jr] + rw[jc + t]) : rh[jr] + rw[jc + t];
            jj += run;
        }
    float mx = -INFINITY;
    for (int jj = 0; jj < nvis; jj++) mx = s[jj] > mx ? s[jj] : mx;
    return mx;
}
/* the same, eight lanes (bf16 rounding as f32_to_bf16: to nearest even, NaN kept NaN) */
__attribute__((target("avx2,fma"))) static float bias_max_avx2(float *s, int nk, int nvis, int j0, const float *rh,
                                                               const float *rw, int gw, int bf) {
    if (rh)
        for (int jj = 0, jr = j0 / gw, jc = j0 % gw; jj < nk; jr++, jc = 0) {
            const int run = nk - jj < gw - jc ? nk - jj : gw - jc;
            const __m256 hv = _mm256_set1_ps(rh[jr]);
            int t = 0;
            for (; t + 8 <= run; t += 8) {
                __m256 b = _mm256_add_ps(hv, _mm256_loadu_ps(rw + jc + t));
                if (bf) {
                    const __m256i u = _mm256_castps_si256(b), one = _mm256_set1_epi32(1);
                    const __m256i rnd = _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                         _mm256_and_si256(_mm256_srli_epi32(u, 16), one));
                    __m256i r = _mm256_and_si256(_mm256_add_epi32(u, rnd), _mm256_set1_epi32((int)0xffff0000u));
                    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                                           _mm256_set1_epi32(0x7f800000));
                    const __m256i qn = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x400000)),
                                                        _mm256_set1_epi32((int)0xffff0000u));
                    b = _mm256_castsi256_ps(_mm256_blendv_epi8(r, qn, nan));
                }
                _mm256_storeu_ps(s + jj + t, _mm256_add_ps(_mm256_loadu_ps(s + jj + t), b));
            }
            for (; t < run; t++) s[jj + t] += bf ? bf16_round(rh[jr] + rw[jc + t]) : rh[jr] + rw[jc + t];
            jj += run;
        }
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int jj = 0;
    for (; jj + 8 <= nvis; jj += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + jj));
    float t8[8], mx = -INFINITY;
    _mm256_storeu_ps(t8, vm);
    for (int k = 0; k < 8; k++) mx = t8[k] > mx ? t8[k] : mx;
    for (; jj < nvis; jj++) mx = s[jj] > mx ? s[jj] : mx;
    return mx;
}
static float bias_max(float *s, int nk, int nvis, int j0, const float *rh, const float *rw, int gw, int bf) {
    return cpu_avx2() ? bias_max_avx2(s, nk, nvis, j0, rh, rw, gw, bf) : bias_max_scalar(s, nk, nvis, j0, rh, rw, gw, bf);
}

/* the relative-position products of one task (q·Rh, then q·Rw, for every table row), per thread */
static _Thread_local float t_relq[ATT_QB * (2 * ATT_GMAX - 1)];

/* One (batch, head, query block) task of the flash-style attention. */
static void attn_task(const OpsAttention *a, int b, int h, int i0) {
    int D = a->head_dim, nq = a->tq - i0 < ATT_QB ? a->tq - i0 : ATT_QB;
    const float *q = a->q + (size_t)(b * a->tq + i0) * a->ldq + h * D;
    const float *k = a->k + (size_t)b * a->tk * a->ldk + h * D;
    const float *v = a->v + (size_t)b * a->tk * a->ldv + h * D;
    float S[ATT_QB * ATT_KB], O[ATT_QB * ATT_DMAX], mrow[ATT_QB], lrow[ATT_QB];
    float rq[ATT_QB * 2 * ATT_GMAX]; /* per query row: [grid_h] rel-pos terms along h, then [grid_w] along w */
    int gh = a->grid_h, gw = a->grid_w, rel = a->relpos_h != NULL;
    if (rel) { /* q·R for every table row by sgemm (T: [nq, 2·len − 1]), then each query's len terms picked out */
        float *T = t_relq;
        for (int axis = 0; axis < 2; axis++) {
            const int len = axis ? gw : gh, rows = 2 * len - 1;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, rows, D, 1.0f, q, a->ldq,
                        axis ? a->relpos_w : a->relpos_h, D, 0.0f, T, rows);
            for (int r = 0; r < nq; r++) {
                const int i = i0 + r, c1 = axis ? i % gw : i / gw; /* this query's coordinate on the axis */
                const float *tr = T + (size_t)r * rows + c1 + len - 1;       /* tr[−c2]: table row c1 − c2 + len − 1 */
                float *o = rq + (size_t)r * (gh + gw) + (axis ? gh : 0);
                if (a->bf16_bias)
                    for (int c2 = 0; c2 < len; c2++) o[c2] = bf16_round(tr[-c2]);
                else
                    for (int c2 = 0; c2 < len; c2++) o[c2] = tr[-c2];
            }
        }
    }
    for (int r = 0; r < nq; r++) {
        mrow[r] = -INFINITY;
        lrow[r] = 0;
    }
    memset(O, 0, sizeof(float) * nq * D);
    int kend = a->tk;
    if (a->causal && a->q_offset + i0 + nq < kend) kend = a->q_offset + i0 + nq;
    for (int j0 = 0; j0 < kend; j0 += ATT_KB) {
        int nk = kend - j0 < ATT_KB ? kend - j0 : ATT_KB;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, a->scale, q, a->ldq, k + (size_t)j0 * a->ldk,
                    a->ldk, 0.0f, S, ATT_KB);
        for (int r = 0; r < nq; r++) {
            float *s = S + (size_t)r * ATT_KB;
            int nvis = nk;
            if (a->causal) {
                int last = a->q_offset + i0 + r; /* last visible key */
                nvis = last - j0 + 1;
                if (nvis > nk) nvis = nk;
                if (nvis < 0) nvis = 0;
            }
            const float *rh = rel ? rq + (size_t)r * (gh + gw) : NULL;
            const float bmax = bias_max(s, nk, nvis, j0, rh, rh ? rh + gh : NULL, gw, a->bf16_bias);
            float mnew = bmax > mrow[r] ? bmax : mrow[r];
            float corr = mnew == -INFINITY ? 1.0f : expf(mrow[r] - mnew);
            const float sum = exp_shift_sum(s, nvis, mnew);
            for (int jj = nvis; jj < nk; jj++) s[jj] = 0;
            lrow[r] = lrow[r] * corr + sum;
            mrow[r] = mnew;
            if (corr != 1.0f)
                for (int c = 0; c < D; c++) O[(size_t)r * D + c] *= corr;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, nk, 1.0f, S, ATT_KB, v + (size_t)j0 * a->ldv,
                    a->ldv, 1.0f, O, D);
    }
    for (int r = 0; r < nq; r++) {
        float inv = 1.0f / lrow[r];
        float *o = a->out + (size_t)(b * a->tq + i0 + r) * a->ldo + h * D;
        for (int c = 0; c < D; c++) o[c] = O[(size_t)r * D + c] * inv;
    }
}

void ops_attention_cpu(const OpsAttention *a) {
    DS_ASSERT(a->n_batch >= 0 && a->tq >= 0 && a->tk > 0 && a->n_heads > 0 && a->head_dim > 0 && !a->io_bf16);
    int width = a->n_heads * a->head_dim;
    DS_ASSERT(a->ldq >= width && a->ldk >= width && a->ldv >= width && a->ldo >= width);
    if (a->head_dim > ATT_DMAX || (a->relpos_h && (a->grid_h > ATT_GMAX || a->grid_w > ATT_GMAX))) {
        ops_attention_ref(a);
        return;
    }
    if (a->relpos_h) DS_ASSERT(a->relpos_w && a->tq == a->grid_h * a->grid_w && a->tk == a->tq);
    if (a->causal) DS_ASSERT(a->q_offset >= 0);
    blas_ready();
    int qblocks = (a->tq + ATT_QB - 1) / ATT_QB;
    int ntask = a->n_batch * a->n_heads * qblocks;
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < ntask; t++) {
        int qb = t % qblocks, h = (t / qblocks) % a->n_heads, b = t / (qblocks * a->n_heads);
        attn_task(a, b, h, qb * ATT_QB);
    }
}

/* ====================================== attention over the KV cache ===================================== */

/* The bf16 cache's SIMD loops widen keys and values by word halves (split_order, above): a head's query and value
 * sums are held in split order. */

/* q·k for a query qs in split order and a bf16 key row k: a chain per quarter of a group, then the columns after the
 * groups in order */
__attribute__((target("avx2,fma"))) static inline float kv_dot_avx2(const float *qs, const uint16_t *k, int D) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + SPLIT_GRP <= D; c += SPLIT_GRP) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(k + c));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(k + c + 16));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qs + c), _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qs + c + 8), _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qs + c + 16), _mm256_castsi256_ps(_mm256_and_si256(w0, hi)), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qs + c + 24), _mm256_castsi256_ps(_mm256_and_si256(w1, hi)), a3);
    }
    float r = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3)));
    for (; c < D; c++) r += qs[c] * bf16_to_f32(k[c]);
    return r;
}
/* The same in sixteen lanes: lanes 0-7 of e are kv_dot_avx2's a0 and lanes 8-15 its a1, o holds a2 and a3, with the
 * same FMAs in the same order and the same reduction (hsum16 adds the halves, then hsum8): the same bits. */
__attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma"))) static inline float
kv_dot_avx512(const float *qs, const uint16_t *k, int D) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 e = _mm512_setzero_ps(), o = e;
    int c = 0;
    for (; c + SPLIT_GRP <= D; c += SPLIT_GRP) {
        const __m512i w = _mm512_loadu_si512((const void *)(k + c));
        e = _mm512_fmadd_ps(_mm512_loadu_ps(qs + c), _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), e);
        o = _mm512_fmadd_ps(_mm512_loadu_ps(qs + c + 16), _mm512_castsi512_ps(_mm512_and_si512(w, hi)), o);
    }
    float r = hsum16(_mm512_add_ps(e, o));
    for (; c < D; c++) r += qs[c] * bf16_to_f32(k[c]);
    return r;
}
/* p[j] = scale·(q·k_j) for the n key rows k0 + j·stride; returns the largest */
#define KV_SCORES_DEFINE(NAME, TARGET, DOT)                                                                           \
    __attribute__((target(TARGET))) static float NAME(float *p, const float *qs, const uint16_t *k0, size_t stride, \
                                                      int n, int D, float scale) {                                  \
        float mx = -INFINITY;                                                                                        \
        for (int j = 0; j < n; j++) {                                                                                \
            p[j] = scale * DOT(qs, k0 + (size_t)j * stride, D);                                                     \
            mx = p[j] > mx ? p[j] : mx;                                                                              \
        }                                                                                                            \
        return mx;                                                                                                   \
    }
KV_SCORES_DEFINE(kv_scores_avx2, "avx2,fma", kv_dot_avx2)
KV_SCORES_DEFINE(kv_scores_avx512, "avx512f,avx512vl,avx512bw,avx2,fma", kv_dot_avx512)
#undef KV_SCORES_DEFINE
/* the portable scores: queries in order, the products summed in order */
static float kv_scores(float *p, const float *q, const void *k0, int f32, size_t stride, int n, int D, float scale) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        float r = 0;
        if (f32)
            for (int c = 0; c < D; c++) r += q[c] * ((const float *)k0)[(size_t)j * stride + c];
        else
            for (int c = 0; c < D; c++) r += q[c] * bf16_to_f32(((const uint16_t *)k0)[(size_t)j * stride + c]);
        p[j] = scale * r;
        mx = p[j] > mx ? p[j] : mx;
    }
    return mx;
}

/* acc[c] = acc[c]·corr + Σ_j p[j]·v_j[c] over n rows of bf16 v, columns [c0, D) in order: for each column a multiply,
 * then a multiply and an add per row (no FMA), the order every value sum below keeps. */
static void kv_accum_cols(float *acc, int c0, int D, float corr, const float *p, const uint16_t *v0, size_t vstride,
                          int n) {
    for (int c = c0; c < D; c++) {
        float s = acc[c] * corr;
        for (int j = 0; j < n; j++) s += p[j] * bf16_to_f32(v0[(size_t)j * vstride + c]);
        acc[c] = s;
    }
}
/* The same for an fp32 pool (in order). */
static void kv_accum_f32(float *acc, int D, float corr, const float *p, const float *v0, size_t vstride, int n) {
    for (int c = 0; c < D; c++) acc[c] *= corr;
    for (int j = 0; j < n; j++) {
        const float *vr = v0 + (size_t)j * vstride;
        float pj = p[j];
        for (int c = 0; c < D; c++) acc[c] += pj * vr[c];
    }
}
/* kv_accum_f32 in eight lanes, 32 columns of acc held in registers over the n rows: each element gets the portable
 * loop's multiply and add in its order (the "avx2" target has no FMA to contract them into), the same bits. */
__attribute__((target("avx2"))) static void kv_accum_f32_avx2(float *acc, int D, float corr, const float *p,
                                                              const float *v0, size_t vstride, int n) {
    const __m256 cr = _mm256_set1_ps(corr);
    int c = 0;
    for (; c + 32 <= D; c += 32) {
        __m256 a[4];
        for (int i = 0; i < 4; i++) a[i] = _mm256_mul_ps(_mm256_loadu_ps(acc + c + 8 * i), cr);
        for (int j = 0; j < n; j++) {
            const float *vr = v0 + (size_t)j * vstride + c;
            const __m256 pj = _mm256_set1_ps(p[j]);
            for (int i = 0; i < 4; i++) a[i] = _mm256_add_ps(a[i], _mm256_mul_ps(pj, _mm256_loadu_ps(vr + 8 * i)));
        }
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(acc + c + 8 * i, a[i]);
    }
    for (; c < D; c++) {
        float s = acc[c] * corr;
        for (int j = 0; j < n; j++) s += p[j] * v0[(size_t)j * vstride + c];
        acc[c] = s;
    }
}
/* kv_accum_cols over ng whole groups from column c, acc in split order, 4·ng registers of it held over the n rows:
 * each element gets the same multiply and adds in the same order, so the same bits */
__attribute__((target("avx2"), always_inline)) static inline void kv_accum_groups_avx2(float *acc, int c, int ng,
                                                                                      __m256 cr, const float *p,
                                                                                      const uint16_t *v0,
                                                                                      size_t vstride, int n) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a[8];
    for (int i = 0; i < 4 * ng; i++) a[i] = _mm256_mul_ps(_mm256_loadu_ps(acc + c + 8 * i), cr);
    for (int j = 0; j < n; j++) {
        const uint16_t *vr = v0 + (size_t)j * vstride + c;
        const __m256 pj = _mm256_set1_ps(p[j]);
        for (int g = 0; g < ng; g++) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(vr + SPLIT_GRP * g));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(vr + SPLIT_GRP * g + 16));
            __m256 *ag = a + 4 * g;
            ag[0] = _mm256_add_ps(ag[0], _mm256_mul_ps(pj, _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16))));
            ag[1] = _mm256_add_ps(ag[1], _mm256_mul_ps(pj, _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16))));
            ag[2] = _mm256_add_ps(ag[2], _mm256_mul_ps(pj, _mm256_castsi256_ps(_mm256_and_si256(w0, hi))));
            ag[3] = _mm256_add_ps(ag[3], _mm256_mul_ps(pj, _mm256_castsi256_ps(_mm256_and_si256(w1, hi))));
        }
    }
    for (int i = 0; i < 4 * ng; i++) _mm256_storeu_ps(acc + c + 8 * i, a[i]);
}
__attribute__((target("avx2"))) static void kv_accum_split_avx2(float *acc, int D, float corr, const float *p,
                                                                const uint16_t *v0, size_t vstride, int n) {
    const __m256 cr = _mm256_set1_ps(corr);
    int c = 0;
    for (; c + 2 * SPLIT_GRP <= D; c += 2 * SPLIT_GRP) kv_accum_groups_avx2(acc, c, 2, cr, p, v0, vstride, n);
    for (; c + SPLIT_GRP <= D; c += SPLIT_GRP) kv_accum_groups_avx2(acc, c, 1, cr, p, v0, vstride, n);
    kv_accum_cols(acc, c, D, corr, p, v0, vstride, n);
}
/* The same in sixteen lanes: a group is one load, its evens one register and its odds another */
__attribute__((target("avx512f,avx512vl,avx512bw,avx2"), always_inline)) static inline void kv_accum_groups_avx512(
    float *acc, int c, int ng, __m512 cr, const float *p, const uint16_t *v0, size_t vstride, int n) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 a[8];
    for (int i = 0; i < 2 * ng; i++) a[i] = _mm512_mul_ps(_mm512_loadu_ps(acc + c + 16 * i), cr);
    for (int j = 0; j < n; j++) {
        const uint16_t *vr = v0 + (size_t)j * vstride + c;
        const __m512 pj = _mm512_set1_ps(p[j]);
        for (int g = 0; g < ng; g++) {
            const __m512i w = _mm512_loadu_si512((const void *)(vr + SPLIT_GRP * g));
            a[2 * g] = _mm512_add_ps(a[2 * g], _mm512_mul_ps(pj, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16))));
            a[2 * g + 1] = _mm512_add_ps(a[2 * g + 1], _mm512_mul_ps(pj, _mm512_castsi512_ps(_mm512_and_si512(w, hi))));
        }
    }
    for (int i = 0; i < 2 * ng; i++) _mm512_storeu_ps(acc + c + 16 * i, a[i]);
}
__attribute__((target("avx512f,avx512vl,avx512bw,avx2"))) static void
kv_accum_split_avx512(float *acc, int D, float corr, const float *p, const uint16_t *v0, size_t vstride, int n) {
    const __m512 cr = _mm512_set1_ps(corr);
    int c = 0;
    for (; c + 4 * SPLIT_GRP <= D; c += 4 * SPLIT_GRP) kv_accum_groups_avx512(acc, c, 4, cr, p, v0, vstride, n);
    for (; c + SPLIT_GRP <= D; c += SPLIT_GRP) kv_accum_groups_avx512(acc, c, 1, cr, p, v0, vstride, n);
    kv_accum_cols(acc, c, D, corr, p, v0, vstride, n);
}

/* A call's settings, shared by its tasks. qsplit: the SIMD scores (queries in split order); vsplit: the SIMD value
 * sums (sums in split order); z: both in sixteen lanes (bf16 pool). ops_cpu_force_scalar turns off z and the SIMD
 * value sums: the portable sums and the 8-lane scores, which do the same operations. */
typedef struct {
    const OpsAttentionKv *a;
    int D, bs, f32, vsimd, qsplit, vsplit, z;
} KvJob;

/* Each head's (m, l, acc) from nothing over keys [j0, j1) of row r (j0 a block's first), nh heads from h0: the
 * streaming softmax block by block; acc [nh·D] in split order when vsplit; qs: the heads' queries D apart (split
 * order when qsplit). While a block is summed, the next one (before key pf_end) is prefetched. */
static void kv_chunk(const KvJob *x, int r, int h0, int nh, const float *qs, int j0, int j1, int pf_end, float *m,
                     float *l, float *acc) {
    const OpsAttentionKv *a = x->a;
    const KvCache *kv = a->kv;
    const int D = x->D, bs = x->bs;
    const int32_t *table = a->tables[a->seq ? a->seq[r] : 0];
    const size_t esz = x->f32 ? 4 : 2, gbytes = (size_t)nh * D * esz, row = (size_t)kv->width * esz;
    float p[1024];
    memset(acc, 0, sizeof(float) * (size_t)nh * D);
    for (int i = 0; i < nh; i++) m[i] = -INFINITY, l[i] = 0;
    for (; j0 < j1; j0 += bs) {
        const int blk = table[j0 / bs], n = j1 - j0 < bs ? j1 - j0 : bs;
        DS_ASSERT(blk >= 0 && blk < kv->n_blocks);
        if (j0 + bs < pf_end) { /* the next block's keys and values of these heads (whole rows when nh is all of
                                 * them), into L2: the cache is read cold (a step's weights passed through since) */
            const int nblk = table[(j0 + bs) / bs], nn = pf_end - j0 - bs < bs ? pf_end - j0 - bs : bs;
            const char *kp = (const char *)kv->data +
                             (((size_t)(nblk * kv->n_layers + a->layer) * 2) * bs * kv->width + (size_t)h0 * D) * esz;
            const size_t half = (size_t)bs * row;
            for (int j = 0; j < nn; j++)
                for (size_t c = 0; c < gbytes; c += 64) {
                    _mm_prefetch(kp + (size_t)j * row + c, _MM_HINT_T1);
                    _mm_prefetch(kp + half + (size_t)j * row + c, _MM_HINT_T1);
                }
        }
        for (int hi = 0; hi < nh; hi++) {
            const int h = h0 + hi;
            float *ah = acc + (size_t)hi * D;
            const size_t ko = ((size_t)(blk * kv->n_layers + a->layer) * 2 + 0) * bs * kv->width + (size_t)h * D;
            const size_t vo = ko + (size_t)bs * kv->width;
            const uint16_t *kb = (const uint16_t *)kv->data + ko, *vb = (const uint16_t *)kv->data + vo;
            const float *qh = qs + (size_t)hi * D;
            const float bmax = x->z        ? kv_scores_avx512(p, qh, kb, kv->width, n, D, a->scale)
                               : x->qsplit ? kv_scores_avx2(p, qh, kb, kv->width, n, D, a->scale)
                                           : kv_scores(p, qh, (const char *)kv->data + ko * esz, x->f32, kv->width, n,
                                                       D, a->scale);
            const float mnew = bmax > m[hi] ? bmax : m[hi], corr = expf(m[hi] - mnew);
            l[hi] = l[hi] * corr + exp_shift_sum(p, n, mnew);
            m[hi] = mnew;
            if (x->f32 && x->vsimd)
                kv_accum_f32_avx2(ah, D, corr, p, (const float *)kv->data + vo, kv->width, n);
            else if (x->f32)
                kv_accum_f32(ah, D, corr, p, (const float *)kv->data + vo, kv->width, n);
            else if (x->z)
                kv_accum_split_avx512(ah, D, corr, p, vb, kv->width, n);
            else if (x->vsplit)
                kv_accum_split_avx2(ah, D, corr, p, vb, kv->width, n);
            else
                kv_accum_cols(ah, 0, D, corr, p, vb, kv->width, n);
        }
    }
}

/* A[c] = A[c]·s + b[c]·t: a multiply, a multiply, an add per element (eight lanes: the same operations, the same
 * bits) */
__attribute__((target("avx2"))) static void kv_rescale_add_avx2(float *A, float s, const float *b, float t, int D) {
    const __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(t);
    int c = 0;
    for (; c + 8 <= D; c += 8)
        _mm256_storeu_ps(A + c, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(A + c), vs),
                                              _mm256_mul_ps(_mm256_loadu_ps(b + c), vt)));
    for (; c < D; c++) A[c] = A[c] * s + b[c] * t;
}
/* Running sums (M, L, A) of nh heads merged with a later chunk's (m, l, a): both rescaled to the larger maximum.
 * From nothing (M = −∞, L = 0, A = 0) the result is the chunk's. */
static void kv_merge(float *M, float *L, float *A, const float *m, const float *l, const float *a, int nh, int D) {
    const int avx2 = cpu_avx2();
    for (int hi = 0; hi < nh; hi++) {
        const float mn = m[hi] > M[hi] ? m[hi] : M[hi], cr = expf(M[hi] - mn), cp = expf(m[hi] - mn);
        L[hi] = L[hi] * cr + l[hi] * cp;
        M[hi] = mn;
        float *Ah = A + (size_t)hi * D;
        const float *ah = a + (size_t)hi * D;
        if (avx2)
            kv_rescale_add_avx2(Ah, cr, ah, cp, D);
        else
            for (int c = 0; c < D; c++) Ah[c] = Ah[c] * cr + ah[c] * cp;
    }
}

/* Row r's outputs of nh heads from h0: acc / l, in column order, rounded to bf16 when asked; tmp: D floats */
static void kv_out(const KvJob *x, int r, int h0, int nh, const float *l, const float *acc, float *tmp) {
    const OpsAttentionKv *a = x->a;
    const int D = x->D;
    for (int hi = 0; hi < nh; hi++) {
        float *o = a->out + (size_t)r * a->ldo + (size_t)(h0 + hi) * D;
        const float *ah = acc + (size_t)hi * D;
        if (x->vsplit) /* back in order */
            split_order(tmp, ah, D, 0), ah = tmp;
        for (int c = 0; c < D; c++) o[c] = ah[c] / l[hi];
        if (a->round_bf16)
            for (int c = 0; c < D; c++) o[c] = bf16_round(o[c]);
    }
}

/* The keys of a row are taken in chunks of KV_CHUNK blocks: each chunk's sums from nothing (kv_chunk), merged in
 * order (kv_merge). Which thread sums which chunk changes no bit, so a decode step (few rows) spreads one row's
 * chunks over the threads, each thread reading whole rows of the cache (all heads of a token: one run), where
 * splitting the heads between threads had each read every row in pieces (about 10 GB/s where whole blocks stream
 * at 15-18 on the 2-core VM). Many rows (prefill, batches of many sequences): a task is a row and a group of heads,
 * its chunks one after the other. */
enum { KV_CHUNK = 2, KV_ACC = 2048, KV_GMAX = 64 };
void ops_attention_kv_cpu(const OpsAttentionKv *a) {
    DS_ASSERT(a->n >= 0 && a->n_heads > 0 && a->head_dim > 0 && a->head_dim <= 512);
    DS_ASSERT(a->n_heads * a->head_dim == a->kv->width && a->ldq >= a->kv->width && a->ldo >= a->kv->width);
    DS_ASSERT(a->layer >= 0 && a->layer < a->kv->n_layers && a->pos && a->tables);
    const KvCache *kv = a->kv;
    KvJob x = {.a = a, .D = a->head_dim, .bs = kv->block_size, .f32 = kv->dtype == DS_F32};
    x.vsimd = cpu_avx2() && !g_force_scalar;
    x.qsplit = !x.f32 && cpu_avx2(), x.vsplit = !x.f32 && x.vsimd, x.z = x.vsplit && cpu_avx512();
    const int D = x.D, H = a->n_heads, W = kv->width, CH = KV_CHUNK * x.bs;
    DS_ASSERT(x.bs <= 1024);
    /* heads a task holds at once (its sums and queries on the stack) */
    int G = KV_ACC / D < KV_GMAX ? KV_ACC / D : KV_GMAX;
    G = G > H ? H : G;
    const int ng = (H + G - 1) / G, nth = omp_get_max_threads();
    /* decode: the rows' chunks as tasks, their sums kept (scratch: per row and chunk W sums, then H maxima and H
     * sums of exponentials), then merged row by row */
    int nchunk = 0;
    if (a->n < nth)
        for (int r = 0; r < a->n; r++) nchunk += (a->pos[r] + CH) / CH;
    const size_t slot = (size_t)W + 2 * (size_t)H;
    float *part = nchunk > a->n ? cpu_scratch(SCRATCH_KV, sizeof(float) * slot * (size_t)nchunk) : NULL;
    if (part) {
        const int ntask = nchunk * ng;
#pragma omp parallel
        {
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < ntask; t++) {
                int r = 0, c = t / ng, first = 0; /* chunk c of all: row r's chunk c - first */
                while (c - first >= (a->pos[r] + CH) / CH) first += (a->pos[r] + CH) / CH, r++;
                const int g = t % ng, h0 = g * G, nh = H - h0 < G ? H - h0 : G, nk = a->pos[r] + 1;
                const int j0 = (c - first) * CH, j1 = nk - j0 < CH ? nk : j0 + CH;
                float qs[KV_ACC];
                const float *q = a->q + (size_t)r * a->ldq + (size_t)h0 * D;
                if (x.qsplit)
                    for (int hi = 0; hi < nh; hi++) split_order(qs + (size_t)hi * D, q + (size_t)hi * D, D, 1);
                float *ps = part + (size_t)c * slot;
                kv_chunk(&x, r, h0, nh, x.qsplit ? qs : q, j0, j1, j1, ps + W + h0, ps + W + H + h0,
                         ps + (size_t)h0 * D);
            }
#pragma omp for schedule(static)
            for (int t = 0; t < a->n * ng; t++) {
                const int r = t / ng, g = t % ng, h0 = g * G, nh = H - h0 < G ? H - h0 : G;
                int first = 0;
                for (int i = 0; i < r; i++) first += (a->pos[i] + CH) / CH;
                float M[KV_GMAX], L[KV_GMAX], A[KV_ACC], tmp[512];
                for (int i = 0; i < nh; i++) M[i] = -INFINITY, L[i] = 0;
                memset(A, 0, sizeof(float) * (size_t)nh * D);
                for (int c = first; c < first + (a->pos[r] + CH) / CH; c++) {
                    const float *ps = part + (size_t)c * slot;
                    kv_merge(M, L, A, ps + W + h0, ps + W + H + h0, ps + (size_t)h0 * D, nh, D);
                }
                kv_out(&x, r, h0, nh, L, A, tmp);
            }
        }
        return;
    }
    const int ntask = a->n * ng;
#pragma omp parallel for schedule(dynamic, 1) if (ntask > 1)
    for (int t = 0; t < ntask; t++) {
        const int r = t / ng, g = t % ng, h0 = g * G, nh = H - h0 < G ? H - h0 : G, nk = a->pos[r] + 1;
        DS_ASSERT(nk > 0);
        float qs[KV_ACC], M[KV_GMAX], L[KV_GMAX], A[KV_ACC], m[KV_GMAX], l[KV_GMAX], acc[KV_ACC];
        const float *q = a->q + (size_t)r * a->ldq + (size_t)h0 * D;
        if (x.qsplit)
            for (int hi = 0; hi < nh; hi++) split_order(qs + (size_t)hi * D, q + (size_t)hi * D, D, 1);
        for (int i = 0; i < nh; i++) M[i] = -INFINITY, L[i] = 0;
        memset(A, 0, sizeof(float) * (size_t)nh * D);
        for (int j0 = 0; j0 < nk; j0 += CH) {
            kv_chunk(&x, r, h0, nh, x.qsplit ? qs : q, j0, nk - j0 < CH ? nk : j0 + CH, nk, m, l, acc);
            kv_merge(M, L, A, m, l, acc, nh, D);
        }
        kv_out(&x, r, h0, nh, L, A, qs);
    }
}

/* ================================================= RoPE ================================================= */

void ops_rope_neox_cpu(float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta, int flags) {
    DS_ASSERT(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 1024 && ld >= n_heads * head_dim);
    int half = head_dim / 2;
    float inv[512];
    for (int i = 0; i < half; i++) inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
#pragma omp parallel for schedule(static) if ((size_t)T * ld >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        float cs[512], sn[512];
        for (int i = 0; i < half; i++) {
            float ang = (float)pos[t] * inv[i];
            cs[i] = cosf(ang);
            sn[i] = sinf(ang);
            if (flags & OPS_BF16) {
                cs[i] = bf16_round(cs[i]);
                sn[i] = bf16_round(sn[i]);
            }
        }
        for (int h = 0; h < n_heads; h++) {
            float *r = x + (size_t)t * ld + h * head_dim;
            if (flags & OPS_BF16) {
                for (int i = 0; i < half; i++) {
                    float x1 = r[i], x2 = r[i + half];
                    r[i] = bf16_round(bf16_round(x1 * cs[i]) + bf16_round(-x2 * sn[i]));
                    r[i + half] = bf16_round(bf16_round(x2 * cs[i]) + bf16_round(x1 * sn[i]));
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float x1 = r[i], x2 = r[i + half];
                    r[i] = x1 * cs[i] - x2 * sn[i];
                    r[i + half] = x2 * cs[i] + x1 * sn[i];
                }
            }
        }
    }
}

/* ================================================ conv2d ================================================ */

void ops_conv2d_cpu(float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch, size_t scratch_n) {
    DS_ASSERT(c->in_h > 0 && c->in_w > 0 && c->in_c > 0 && c->out_c > 0 && c->kh > 0 && c->kw > 0 && c->stride > 0 && c->pad >= 0);
    int Ho = ops_conv2d_out_h(c), Wo = ops_conv2d_out_w(c);
    DS_ASSERT(Ho > 0 && Wo > 0);
    int P = Ho * Wo, Kc = c->in_c * c->kh * c->kw;
    if (c->kh == 1 && c->kw == 1 && c->stride == 1 && c->pad == 0) {
        ops_linear_cpu(y, c->out_c, x, c->in_c, P, c->in_c, w, c->out_c, bias, 0);
        return;
    }
    DS_ASSERT(scratch && scratch_n >= (size_t)Kc);
    size_t rows = scratch_n / (size_t)Kc;
    int chunk = rows < (size_t)P ? (int)rows : P;
    for (int p0 = 0; p0 < P; p0 += chunk) {
        int np = P - p0 < chunk ? P - p0 : chunk;
#pragma omp parallel for schedule(static) if ((size_t)np * Kc >= PAR_MIN)
        for (int pp = 0; pp < np; pp++) {
            int oy = (p0 + pp) / Wo, ox = (p0 + pp) % Wo;
            float *col = scratch + (size_t)pp * Kc;
            for (int i = 0; i < c->in_c; i++)
                for (int ky = 0; ky < c->kh; ky++) {
                    int iy = oy * c->stride - c->pad + ky;
                    for (int kx = 0; kx < c->kw; kx++) {
                        int ix = ox * c->stride - c->pad + kx;
                        *col++ = (iy < 0 || iy >= c->in_h || ix < 0 || ix >= c->in_w)
                                     ? 0.0f
                                     : x[((size_t)iy * c->in_w + ix) * c->in_c + i];
                    }
                }
        }
        ops_linear_cpu(y + (size_t)p0 * c->out_c, c->out_c, scratch, Kc, np, Kc, w, c->out_c, bias, 0);
    }
}

/* ================================================== MoE ================================================= */

void ops_expert_ffn_cpu(float *y, const float *x, int M, int d_model, int d_ff, DsW gate, DsW up, DsW down,
                        int flags, float *scratch) {
    float *g = scratch, *u = scratch + (size_t)M * d_ff;
    ops_linear_cpu(g, d_ff, x, d_model, M, d_model, gate, d_ff, ds_w_none(), 0);
    ops_linear_cpu(u, d_ff, x, d_model, M, d_model, up, d_ff, ds_w_none(), 0);
    if (flags & OPS_BF16) {
        ops_round_bf16_cpu(g, (size_t)M * d_ff);
        ops_round_bf16_cpu(u, (size_t)M * d_ff);
    }
    ops_silu_mul_cpu(g, g, u, (size_t)M * d_ff, flags);
    ops_linear_cpu(y, d_model, g, d_ff, M, d_ff, down, d_model, ds_w_none(), 0);
    if (flags & OPS_BF16) ops_round_bf16_cpu(y, (size_t)M * d_model);
}

void ops_expert_ffn_jobs_cpu(const OpsExpertJob *e, int n, int d_model, int flags) {
    if (n <= 0) return;
    size_t hs = 0; /* every expert's gate and up outputs: G then U, each Σ M·d_ff floats */
    for (int i = 0; i < n; i++) hs += (size_t)e[i].M * (size_t)e[i].d_ff;
    float *g = cpu_scratch(SCRATCH_FFN, sizeof(float) * 2 * (hs ? hs : 1)), *u = g + hs;
    LinJob *jobs = malloc(sizeof *jobs * 2 * (size_t)n);
    DS_ASSERT(g && jobs && "out of memory for a MoE layer's expert scratch");
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        jobs[2 * i] = (LinJob){g + o, e[i].x, e[i].gate, e[i].M, d_model, e[i].d_ff};
        jobs[2 * i + 1] = (LinJob){u + o, e[i].x, e[i].up, e[i].M, d_model, e[i].d_ff};
        o += (size_t)e[i].M * (size_t)e[i].d_ff;
    }
    lin_jobs(jobs, 2 * n);
    if (flags & OPS_BF16) {
        ops_round_bf16_cpu(g, hs);
        ops_round_bf16_cpu(u, hs);
    }
    ops_silu_mul_cpu(g, g, u, hs, flags);
    o = 0;
    for (int i = 0; i < n; i++) {
        jobs[i] = (LinJob){e[i].y, g + o, e[i].down, e[i].M, e[i].d_ff, d_model};
        o += (size_t)e[i].M * (size_t)e[i].d_ff;
    }
    lin_jobs(jobs, n);
    if (flags & OPS_BF16)
        for (int i = 0; i < n; i++) ops_round_bf16_cpu(e[i].y, (size_t)e[i].M * (size_t)d_model);
    free(jobs);
}

/* ---- ceilings (ops.h) */

double ops_cpu_sgemm_seconds(int M, int K, int N, int threads, int reps) {
    float *a = malloc(sizeof(float) * (size_t)M * K + 64), *b = malloc(sizeof(float) * (size_t)N * K + 64),
          *c = malloc(sizeof(float) * (size_t)M * N + 64);
    double best = 0;
    if (a && b && c) {
        for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((i * 7) % 13) * 0.1f - 0.6f;
        for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)((i * 5) % 11) * 0.1f - 0.5f;
        openblas_set_num_threads(threads > 0 ? threads : 1);
        for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
            const double t0 = ds_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
            const double dt = ds_now() - t0;
            if (best == 0 || dt < best) best = dt;
        }
        openblas_set_num_threads(1);
    }
    free(a), free(b), free(c);
    return best;
}

__attribute__((target("avx2"))) static float read_sum_avx2(const float *p, size_t n) {
    __m256 s[8];
    for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 8; j++) s[j] = _mm256_add_ps(s[j], _mm256_load_ps(p + i + 8 * j));
    for (int j = 1; j < 8; j++) s[0] = _mm256_add_ps(s[0], s[j]);
    float t[8], r = 0;
    _mm256_storeu_ps(t, s[0]);
    for (int j = 0; j < 8; j++) r += t[j];
    for (; i < n; i++) r += p[i];
    return r;
}
static float read_sum(const float *p, size_t n) {
    if (cpu_avx2()) return read_sum_avx2(p, n);
    float s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += p[i + j];
    for (; i < n; i++) s[0] += p[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

double ops_cpu_read_gbps(size_t bytes, int threads, int reps) {
    const int nt = threads > 0 ? threads : 1;
    const size_t n = bytes / sizeof(float) / 64 * 64, per = n / (size_t)nt / 64 * 64;
    enum { HUGE = 2 << 20 }; /* 2 MiB-aligned and asked for huge pages, as the weights the decode reads */
    const size_t room = (n * sizeof(float) + 64 + HUGE - 1) / HUGE * HUGE;
    float *a = aligned_alloc(HUGE, room);
    if (!a || per == 0) {
        free(a);
        return 0;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(a, room, MADV_HUGEPAGE);
#endif
    volatile float sink = 0;
    /* part t is first touched by the thread that reads it (its memory node) */
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++)
        for (size_t i = 0; i < per; i++) a[(size_t)t * per + i] = (float)(i & 1023);
    double best = 0;
    for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
        float total = 0;
        const double t0 = ds_now();
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(+ : total)
        for (int t = 0; t < nt; t++) total += read_sum(a + (size_t)t * per, per);
        const double dt = ds_now() - t0, g = (double)per * nt * sizeof(float) / dt / 1e9;
        sink += total;
        if (g > best) best = g;
    }
    (void)sink;
    free(a);
    return best;
}
