/* test_hwinfo.c: machine probing without a GPU (the driver library absent, or a library that is not a driver),
 * size parsing, and the settings advice of `dsocr check` on made-up machines: none, an 80 GB H100, a 4 GB
 * laptop GPU, a --gpu-mem budget, a GPU too old for bf16, too little RAM. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hwinfo.h"

static void test_probe_without_driver(void) {
    HwInfo h;
    setenv("DSOCR_LIBCUDA", "none", 1);
    hwinfo_probe(&h, 1);
    CHECK(h.cpus >= 1 && h.cpus_online >= h.cpus);
    CHECK(h.ram_total > (64ull << 20) && h.ram_available > 0 && h.ram_available <= h.ram_total);
    CHECK(h.n_gpus == 0 && !h.driver_loaded);
    CHECK_STR_CONTAINS(h.gpu_note, "no NVIDIA driver");
    setenv("DSOCR_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
    hwinfo_probe(&h, 1);
    CHECK(h.n_gpus == 0);
    CHECK_STR_CONTAINS(h.gpu_note, "/nonexistent/libcuda.so.1 not found");
    setenv("DSOCR_LIBCUDA", "libm.so.6", 1); /* loads, but is no driver */
    hwinfo_probe(&h, 1);
    CHECK(h.n_gpus == 0 && h.driver_loaded);
    CHECK_STR_CONTAINS(h.gpu_note, "lacks the CUDA driver API");
    hwinfo_probe(&h, 0);
    CHECK(h.n_gpus == 0 && !h.driver_loaded);
    unsetenv("DSOCR_LIBCUDA");
#ifdef DSOCR_CUDA
    CHECK(h.cuda_build == 1);
#else
    CHECK(h.cuda_build == 0);
#endif
}

static void test_parse_size(void) {
    uint64_t v;
    CHECK(hwinfo_parse_size("2G", &v) == 0 && v == 2ull << 30);
    CHECK(hwinfo_parse_size("1.5GiB", &v) == 0 && v == 3ull << 29);
    CHECK(hwinfo_parse_size("512M", &v) == 0 && v == 512ull << 20);
    CHECK(hwinfo_parse_size("512mb", &v) == 0 && v == 512ull << 20);
    CHECK(hwinfo_parse_size("6000000000", &v) == 0 && v == 6000000000ull);
    CHECK(hwinfo_parse_size("100B", &v) == 0 && v == 100);
    CHECK(hwinfo_parse_size("", &v) != 0 && hwinfo_parse_size("G", &v) != 0 && hwinfo_parse_size("2X", &v) != 0);
    CHECK(hwinfo_parse_size("-1G", &v) != 0 && hwinfo_parse_size("2Gx", &v) != 0 && hwinfo_parse_size(NULL, &v) != 0);
}

static HwInfo machine(uint64_t ram, int gpu_gib, int cc_major, int cuda_build) {
    HwInfo h;
    memset(&h, 0, sizeof h);
    h.cpus = h.cpus_online = 8;
    h.ram_total = h.ram_available = ram;
    h.cuda_build = cuda_build;
    if (gpu_gib) {
        h.n_gpus = 1;
        HwGpu *g = &h.gpus[0];
        snprintf(g->name, sizeof g->name, "GPU");
        g->cc_major = cc_major;
        g->total_bytes = (uint64_t)gpu_gib << 30;
        g->free_bytes = g->total_bytes - (300ull << 20);
        g->free_known = 1;
        g->bf16 = cc_major >= 8;
    }
    return h;
}

static void test_recommend(void) {
    HwModelNeeds n;
    hwinfo_needs_default(&n);
    CHECK(n.kv_bytes_per_token == 61440); /* 60 KiB per token in bf16 */
    CHECK(n.routed_bytes * 100 / n.weight_bytes == 72);
    HwSetting s[HW_N_SETTINGS];
    int would;
    /* no GPU, 24 GB: the CPU */
    HwInfo h = machine(24ull << 30, 0, 0, 0);
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == HW_CPU_FP32 && would == HW_CPU_FP32);
    CHECK(!s[HW_GPU_BF16].fits && !strcmp(s[HW_GPU_BF16].why, "no GPU"));
    CHECK(s[HW_CPU_FP32].ram_bytes > n.weight_bytes + 2 * 61440ull * 8192);
    /* an 80 GB H100 with the CUDA backend built: all on the GPU in bf16, about 7 GiB */
    h = machine(200ull << 30, 80, 9, 1);
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == HW_GPU_BF16 && would == HW_GPU_BF16);
    CHECK(s[HW_GPU_BF16].gpu_bytes > (6ull << 30) && s[HW_GPU_BF16].gpu_bytes <= (7ull << 30));
    /* the same machine, CPU-only build: the CPU now, the GPU when built */
    h = machine(200ull << 30, 80, 9, 0);
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == HW_CPU_FP32 && would == HW_GPU_BF16);
    CHECK_STR_CONTAINS(s[HW_GPU_BF16].why, "not built yet");
    /* ... with --gpu-mem 2G only the hybrid setting fits on the GPU */
    CHECK(hwinfo_recommend(&h, &n, 2ull << 30, s, &would) == HW_CPU_FP32 && would == HW_GPU_HYBRID);
    CHECK(!s[HW_GPU_BF16].fits && !s[HW_GPU_Q8].fits && !s[HW_GPU_Q4_EXPERTS].fits && s[HW_GPU_HYBRID].fits);
    CHECK_STR_CONTAINS(s[HW_GPU_Q8].why, "allowed by --gpu-mem");
    CHECK_STR_CONTAINS(s[HW_GPU_HYBRID].flags, "--gpu-mem 2.0G");
    CHECK(s[HW_GPU_HYBRID].gpu_bytes <= (3ull << 29)); /* the low-VRAM target: 1.5 GiB */
    /* a 4 GB laptop GPU: 4-bit experts fit (built with CUDA), bf16 and Q8_0 do not */
    h = machine(16ull << 30, 4, 8, 1);
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == HW_GPU_Q4_EXPERTS && would == HW_GPU_Q4_EXPERTS);
    CHECK(!s[HW_GPU_BF16].fits && !s[HW_GPU_Q8].fits);
    CHECK_STR_CONTAINS(s[HW_GPU_BF16].why, "free");
    /* a GPU before compute capability 8.0 */
    h = machine(64ull << 30, 16, 7, 1);
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == HW_CPU_FP32);
    CHECK_STR_CONTAINS(s[HW_GPU_BF16].why, "compute capability 7.0");
    /* too little RAM for anything */
    h = machine(2ull << 30, 0, 0, 0);
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == -1 && would == -1);
    CHECK_STR_CONTAINS(s[HW_CPU_FP32].why, "of RAM");
    /* a small model fits a small machine */
    n.weight_bytes = 70ull << 20, n.routed_bytes = 10ull << 20, n.kv_bytes_per_token = 1536;
    CHECK(hwinfo_recommend(&h, &n, 0, s, &would) == HW_CPU_FP32);
}

int main(void) {
    RUN(test_probe_without_driver);
    RUN(test_parse_size);
    RUN(test_recommend);
    return check_summary();
}
