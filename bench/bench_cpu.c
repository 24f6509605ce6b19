/* bench_cpu.c: the CPU engine's memory-bandwidth floor and its matmul kernels (`make bench-cpu`).
 *
 *   build/bench_cpu [--threads N] [--reps R] [--layers L] [--embd C] [--vocab V]
 *
 * 1. Memory bandwidth: a 1 GiB float32 buffer summed with 8 partial sums per thread (read), and
 *    memcpy of 512 MiB into another 512 MiB (copy, counted as bytes read + bytes written), on
 *    N threads; the median of R runs. The read number is the one a decode step's weight stream
 *    is bounded by.
 * 2. The matmuls of one decode step of a GPT-2 shape (L blocks of qkv, attproj, fc, fcproj and the
 *    lm_head, all distinct packed matrices, 498 MB in fp32 for gpt2 124M, so nothing stays in cache)
 *    for every instruction set this CPU runs, every weight type, and 1, 8 and 64 rows: median
 *    milliseconds, GB/s of weights read, and the fraction of the read bandwidth.
 * 3. One prefill-sized matmul, (512, C) @ (C, 4C) in fp32, per instruction set: median GFLOP/s.
 * Times are CLOCK_MONOTONIC medians; nothing here is a test (bench/RESULTS.md records the runs).
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops_cpu.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "bench_cpu: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static volatile float sink;

/* GB/s of reading n floats on nt threads, median of reps. */
static double read_bw(const float *a, size_t n, int nt, int reps) {
    double t[64];
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        float total = 0.0f;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(+ : total)
        for (size_t blk = 0; blk < n / 4096; blk++) {
            float s[8] = {0};
            const float *p = a + blk * 4096;
            for (int i = 0; i < 4096; i += 8)
                for (int k = 0; k < 8; k++) s[k] += p[i + k];
            for (int k = 0; k < 8; k++) total += s[k];
        }
        t[r] = now_s() - t0;
        sink = total;
    }
    return (double)n * sizeof(float) / median(t, reps) / 1e9;
}

/* GB/s (read + written) of copying n floats on nt threads, median of reps. */
static double copy_bw(float *dst, const float *src, size_t n, int nt, int reps) {
    double t[64];
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
#pragma omp parallel for schedule(static) num_threads(nt)
        for (size_t blk = 0; blk < n / 65536; blk++)
            memcpy(dst + blk * 65536, src + blk * 65536, 65536 * sizeof(float));
        t[r] = now_s() - t0;
    }
    return 2.0 * (double)n * sizeof(float) / median(t, reps) / 1e9;
}

int main(int argc, char **argv) {
    int nt = omp_get_max_threads(), reps = 5, L = 12, C = 768, V = 50257, only_gemm = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (v <= 0) {
            fprintf(stderr, "bench_cpu: %s '%s': expected a positive integer\n", argv[i], argv[i + 1]);
            return 2;
        }
        if (!strcmp(argv[i], "--threads")) nt = v;
        else if (!strcmp(argv[i], "--reps")) reps = v > 64 ? 64 : v;
        else if (!strcmp(argv[i], "--layers")) L = v;
        else if (!strcmp(argv[i], "--embd")) C = v;
        else if (!strcmp(argv[i], "--vocab")) V = v;
        else if (!strcmp(argv[i], "--only-gemm")) only_gemm = v;
        else {
            fprintf(stderr, "bench_cpu: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: bench_cpu [--threads N] [--reps R] [--layers L] [--embd C] [--vocab V]\n");
        return 2;
    }

    if (only_gemm) goto gemm;
    /* 1. bandwidth */
    size_t n = (size_t)1 << 28; /* 1 GiB of floats */
    float *a = xmalloc(n * sizeof(float));
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023) * 1e-3f; /* touched by the threads that read it */
    double rbw = read_bw(a, n, nt, reps);
    double cbw = copy_bw(a + n / 2, a, n / 2, nt, reps);
    printf("threads %d: read %.2f GB/s, copy (read + write) %.2f GB/s (1 GiB buffer, median of %d)\n", nt, rbw, cbw,
           reps);
    free(a);

    /* 2. the matmuls of one decode step */
    const int n_mats = 4 * L + 1;
    int shape[5][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}, {C, V}}; /* (K, OC) */
    const cpu_wtype wts[3] = {CPU_W_F32, CPU_W_BF16, CPU_W_F16};
    const char *wt_names[3] = {"fp32", "bf16", "fp16"};
    size_t max_k = 4 * (size_t)C, max_oc = V > 4 * C ? (size_t)V : 4 * (size_t)C, max_elems = 0;
    for (int m = 0; m < 5; m++)
        if ((size_t)shape[m][0] * shape[m][1] > max_elems) max_elems = (size_t)shape[m][0] * shape[m][1];
    float *src = xmalloc(max_elems * sizeof(float)); /* values of every matrix (they differ in layout only) */
    for (size_t i = 0; i < max_elems; i++) src[i] = (float)((i * 2654435761u) % 2001) * 1e-3f - 1.0f;
    const int rows[3] = {1, 8, 64};
    float *inp = xmalloc((size_t)64 * max_k * sizeof(float)), *out = xmalloc((size_t)64 * max_oc * sizeof(float));
    for (size_t i = 0; i < (size_t)64 * max_k; i++) inp[i] = (float)(i % 97) * 1e-2f - 0.5f;
    cpu_packed *mats = xmalloc(sizeof(cpu_packed) * (size_t)n_mats);
    printf("matmuls of one decode step: L=%d C=%d V=%d, %d distinct matrices\n", L, C, V, n_mats);
    printf("%-7s %-5s %5s %10s %12s %10s %9s\n", "isa", "wt", "rows", "ms", "weight MB", "GB/s", "of read");
    for (int w = 0; w < 3; w++) {
        size_t esize = wts[w] == CPU_W_F32 ? 4 : 2, bytes = 0;
        for (int m = 0; m < n_mats; m++) {
            int *s = shape[m == n_mats - 1 ? 4 : m % 4];
            mats[m] = (cpu_packed){.K = s[0], .OC = s[1], .wt = wts[w]};
            size_t b = cpu_packed_elems(s[0], s[1]) * esize;
            mats[m].data = xmalloc(b);
            cpu_pack(&mats[m], src, 0, nt);
            bytes += b;
        }
        for (int isa = 0; isa < CPU_ISA_COUNT; isa++) {
            if (!cpu_isa_supported((cpu_isa)isa)) continue;
            for (int ri = 0; ri < 3; ri++) {
                double t[64];
                for (int r = 0; r < reps + 1; r++) { /* the first pass warms up, untimed */
                    double t0 = now_s();
                    for (int m = 0; m < n_mats; m++)
                        matmul_packed_isa((cpu_isa)isa, out, inp, &mats[m], NULL, rows[ri], nt);
                    if (r) t[r - 1] = now_s() - t0;
                }
                double ms = median(t, reps) * 1e3, gbs = (double)bytes / (ms * 1e-3) / 1e9;
                printf("%-7s %-5s %5d %10.2f %12.1f %10.2f %8.0f%%\n", cpu_isa_name((cpu_isa)isa), wt_names[w],
                       rows[ri], ms, (double)bytes / 1e6, gbs, 100.0 * gbs / rbw);
                fflush(stdout);
            }
        }
        for (int m = 0; m < n_mats; m++) free(mats[m].data);
    }
    free(mats);
    free(src);
    free(inp);
    free(out);

gemm:; /* 3. a prefill matmul */
    const int M = 512, K = C, OC = 4 * C;
    float *gw = xmalloc(sizeof(float) * (size_t)K * OC), *gx = xmalloc(sizeof(float) * (size_t)M * K);
    float *gy = xmalloc(sizeof(float) * (size_t)M * OC);
    for (size_t i = 0; i < (size_t)K * OC; i++) gw[i] = (float)(i % 1013) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)M * K; i++) gx[i] = (float)(i % 101) * 1e-2f - 0.5f;
    cpu_packed gp = {.K = K, .OC = OC, .wt = CPU_W_F32, .data = xmalloc(sizeof(float) * cpu_packed_elems(K, OC))};
    cpu_pack(&gp, gw, 0, nt);
    for (int isa = 0; isa < CPU_ISA_COUNT; isa++) {
        if (!cpu_isa_supported((cpu_isa)isa)) continue;
        double t[64];
        for (int r = 0; r < reps + 1; r++) {
            double t0 = now_s();
            matmul_packed_isa((cpu_isa)isa, gy, gx, &gp, NULL, M, nt);
            if (r) t[r - 1] = now_s() - t0;
        }
        printf("prefill matmul (%d, %d) @ (%d, %d) fp32, %s: %.1f GFLOP/s\n", M, K, K, OC, cpu_isa_name((cpu_isa)isa),
               2.0 * M * K * OC / median(t, reps) / 1e9);
    }
    free(gp.data);
    free(gw);
    free(gx);
    free(gy);
    return 0;
}
