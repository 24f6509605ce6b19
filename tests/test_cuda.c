/* test_cuda.c: the CUDA backend.
 *
 * Suite cuda_kernels: each kernel against its CPU twin from src/ops_cpu.h (or src/sampler.c) on fresh
 * seeded random inputs, at shapes that are not multiples of the block sizes, for fp32, fp16 and
 * bf16. 16-bit inputs are rounded on the device first and the CPU twin runs on the rounded values, so
 * the tolerance only has to cover the kernel's own arithmetic and its one rounding of the output.
 * Outputs are poisoned with NaN before each launch, so an element the kernel forgets to write fails.
 * Suite cuda_backend: the whole engine against Hugging Face transformers' logits and greedy
 * continuations (the golden files of tests/data/models), against the CPU backend, and against itself
 * (incremental decode, CUDA graphs on and off, ragged batches); plans that cannot fit are refused.
 *
 * Every test skips, saying so, when no GPU is visible: nothing here touches the GPU before that
 * check, so the binary runs anywhere. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"

#ifndef GPT2_HAVE_CUDA

Test(cuda_kernels, not_built) { cr_skip_test("built without CUDA (nvcc not found, or CUDA=0): no CUDA tests"); }

#else

#include <cuda_runtime_api.h>

#include "generate.h"
#include "ops_cpu.h"
#include "sampler.h"

#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/encoder.cuh"
#include "../kernels/gelu.cuh"
#include "../kernels/kv_append.cuh"
#include "../kernels/layernorm.cuh"
#include "../kernels/residual.cuh"
#include "../kernels/sample.cuh"

#define REQUIRE_GPU()                                                                                        \
    do {                                                                                                     \
        if (gpt2_cuda_device_count() == 0)                                                                   \
            cr_skip_test("no CUDA GPU visible: this test runs on a GPU machine (tools/gpu_check.sh)");       \
    } while (0)

/* Any CUDA failure, from the call itself or from the kernels it queued, fails the test. */
#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        cr_assert(e_ == cudaSuccess, "%s: %s (%s)", #call, cudaGetErrorName(e_), cudaGetErrorString(e_));    \
    } while (0)
#define SYNC() CK(cudaDeviceSynchronize())

static const gpt2_dtype all_dtypes[3] = {GPT2_DTYPE_F32, GPT2_DTYPE_F16, GPT2_DTYPE_BF16};
static const char *dtype_name(gpt2_dtype dt) {
    return dt == GPT2_DTYPE_F32 ? "f32" : dt == GPT2_DTYPE_F16 ? "f16" : "bf16";
}
static size_t esize(gpt2_dtype dt) { return dt == GPT2_DTYPE_F32 ? 4 : 2; }

/* Tolerance atol + rtol * |ref| for an O(1) result rounded once to the storage type. */
typedef struct {
    double atol, rtol;
} tol_t;
static tol_t tol_for(gpt2_dtype dt, double f32_atol, double f32_rtol) {
    if (dt == GPT2_DTYPE_F16) return (tol_t){2e-3, 2e-3};
    if (dt == GPT2_DTYPE_BF16) return (tol_t){1.6e-2, 1e-2};
    return (tol_t){f32_atol, f32_rtol};
}

static void assert_close(const float *got, const float *ref, size_t n, tol_t t, const char *what) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        cr_assert(d <= t.atol + t.rtol * fabs((double)ref[i]), "%s: element %zu: got %.8g, want %.8g (|diff| %.3g)",
                  what, i, got[i], ref[i], d);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Device buffers                                                                                   */

/* Device memory filled with 0xff bytes: NaN in float, half and bfloat16 alike. */
static void *dev_poison(size_t bytes) {
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    CK(cudaMemset(d, 0xff, bytes ? bytes : 1));
    return d;
}

/* n floats from the host, stored on the device as dt. */
static void *dev_from_host(const float *h, size_t n, gpt2_dtype dt) {
    float *f = dev_poison(n * sizeof(float));
    CK(cudaMemcpy(f, h, n * sizeof(float), cudaMemcpyHostToDevice));
    if (dt == GPT2_DTYPE_F32) return f;
    void *d = dev_poison(n * esize(dt));
    CK(convert_cuda(d, dt, f, GPT2_DTYPE_F32, n, 0));
    SYNC();
    CK(cudaFree(f));
    return d;
}

/* n values of type dt on the device, as host floats (malloc'ed). */
static float *host_from_dev(const void *d, size_t n, gpt2_dtype dt) {
    float *h = malloc(n * sizeof(float) + 1);
    cr_assert(h);
    if (dt == GPT2_DTYPE_F32) {
        CK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
        return h;
    }
    float *f = dev_poison(n * sizeof(float));
    CK(convert_cuda(f, GPT2_DTYPE_F32, d, dt, n, 0));
    SYNC();
    CK(cudaMemcpy(h, f, n * sizeof(float), cudaMemcpyDeviceToHost));
    CK(cudaFree(f));
    return h;
}

static int *dev_ints(const int *h, size_t n) {
    int *d = dev_poison(n * sizeof(int));
    CK(cudaMemcpy(d, h, n * sizeof(int), cudaMemcpyHostToDevice));
    return d;
}

/* n random floats in [offset - scale, offset + scale), never all equal. */
static float *rand_floats(size_t n, uint64_t *seed, float scale, float offset) {
    float *h = malloc(n * sizeof(float) + 1);
    cr_assert(h);
    for (size_t i = 0; i < n; i++) h[i] = offset + scale * trand_float(seed);
    return h;
}

/* Random host values, uploaded as dt; *h gets the values the device holds (rounded to dt). */
static void *dev_rand(size_t n, uint64_t *seed, float scale, float offset, gpt2_dtype dt, float **h) {
    float *v = rand_floats(n, seed, scale, offset);
    void *d = dev_from_host(v, n, dt);
    free(v);
    *h = host_from_dev(d, n, dt);
    return d;
}

/* ---------------------------------------------------------------------------------------------- */
/* Kernels                                                                                          */

Test(cuda_kernels, convert_rounds_to_nearest_even) {
    REQUIRE_GPU();
    uint64_t seed = 1;
    enum { n = 4099 };
    float *x = rand_floats(n, &seed, 100.0f, 0.0f);
    x[0] = 1.0f + 1.0f / 512 + 1.0f / 1024; /* not representable in bf16: rounds up */
    x[1] = 1.0f + 1.0f / 256;             /* exactly halfway between two bf16: to even (1.0) */
    x[2] = -0.0f;
    x[3] = 65504.0f; /* largest half */
    float *bf = host_from_dev(dev_from_host(x, n, GPT2_DTYPE_BF16), n, GPT2_DTYPE_BF16);
    float *hf = host_from_dev(dev_from_host(x, n, GPT2_DTYPE_F16), n, GPT2_DTYPE_F16);
    for (int i = 0; i < n; i++) {
        /* bfloat16 round to nearest even, on the bits */
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        float want;
        memcpy(&want, &u, 4);
        cr_assert(bf[i] == want && signbit(bf[i]) == signbit(want), "bf16(%.9g) = %.9g, want %.9g", x[i], bf[i], want);
        /* half: within half an ulp (2^-11 relative for normal values) */
        cr_assert(fabsf(hf[i] - x[i]) <= fabsf(x[i]) * (1.0f / 2048), "f16(%.9g) = %.9g", x[i], hf[i]);
    }
    cr_assert_eq(bf[1], 1.0f);
    cr_assert_eq(hf[3], 65504.0f);
    /* converting a rounded value again changes nothing */
    float *hf2 = host_from_dev(dev_from_host(hf, n, GPT2_DTYPE_F16), n, GPT2_DTYPE_F16);
    cr_assert(memcmp(hf, hf2, sizeof(float) * n) == 0);
    free(x);
    free(bf);
    free(hf);
    free(hf2);
}

Test(cuda_kernels, encoder_matches_cpu) {
    REQUIRE_GPU();
    const int shapes[][4] = {{1, 7, 11, 5}, {37, 768, 100, 64}, {300, 33, 50, 300}}; /* N, C, V, maxT */
    uint64_t seed = 2;
    for (int si = 0; si < 3; si++)
        for (int di = 0; di < 3; di++) {
            const int N = shapes[si][0], C = shapes[si][1], V = shapes[si][2], maxT = shapes[si][3];
            const gpt2_dtype dt = all_dtypes[di];
            float *wte, *wpe;
            void *d_wte = dev_rand((size_t)V * C, &seed, 1.0f, 0.0f, dt, &wte);
            void *d_wpe = dev_rand((size_t)maxT * C, &seed, 1.0f, 0.0f, dt, &wpe);
            int *tok = malloc(sizeof(int) * N), *pos = malloc(sizeof(int) * N);
            for (int n = 0; n < N; n++) {
                tok[n] = (int)(trand(&seed) % (uint64_t)V);
                pos[n] = n == N - 1 ? maxT - 1 : (int)(trand(&seed) % (uint64_t)maxT);
            }
            int *d_tok = dev_ints(tok, N), *d_pos = dev_ints(pos, N);
            void *d_out = dev_poison((size_t)N * C * esize(dt));
            CK(encoder_forward_cuda(d_out, d_tok, d_pos, d_wte, d_wpe, N, C, V, maxT, dt, 0));
            SYNC();
            float *got = host_from_dev(d_out, (size_t)N * C, dt), *ref = malloc(sizeof(float) * N * C);
            encoder_forward_cpu(ref, tok, pos, wte, wpe, N, C);
            char what[96];
            snprintf(what, sizeof what, "encoder N=%d C=%d %s", N, C, dtype_name(dt));
            assert_close(got, ref, (size_t)N * C, tol_for(dt, 1e-6, 1e-6), what);
            free(got);
            /* a token outside the vocabulary reads nothing and gives zeros */
            tok[0] = V;
            CK(cudaMemcpy(d_tok, tok, sizeof(int), cudaMemcpyHostToDevice));
            CK(encoder_forward_cuda(d_out, d_tok, d_pos, d_wte, d_wpe, N, C, V, maxT, dt, 0));
            SYNC();
            got = host_from_dev(d_out, (size_t)C, dt);
            for (int c = 0; c < C; c++) cr_assert_eq(got[c], 0.0f);
            free(got);
            free(ref);
            free(tok);
            free(pos);
            free(wte);
            free(wpe);
            CK(cudaFree(d_wte));
            CK(cudaFree(d_wpe));
            CK(cudaFree(d_tok));
            CK(cudaFree(d_pos));
            CK(cudaFree(d_out));
        }
}

Test(cuda_kernels, layernorm_matches_cpu) {
    REQUIRE_GPU();
    const int shapes[][2] = {{1, 768}, {5, 7}, {130, 768}, {9, 1600}, {3, 1}, {33, 1023}};
    uint64_t seed = 3;
    for (int si = 0; si < 6; si++)
        for (int di = 0; di < 3; di++) {
            const int N = shapes[si][0], C = shapes[si][1];
            const gpt2_dtype dt = all_dtypes[di];
            float *inp, *w, *b;
            void *d_inp = dev_rand((size_t)N * C, &seed, 2.0f, 3.0f, dt, &inp); /* mean far from 0 */
            void *d_w = dev_rand(C, &seed, 1.0f, 1.0f, dt, &w);
            void *d_b = dev_rand(C, &seed, 1.0f, 0.0f, dt, &b);
            void *d_out = dev_poison((size_t)N * C * esize(dt));
            CK(layernorm_forward_cuda(d_out, d_inp, d_w, d_b, N, C, 1e-5f, dt, 0));
            SYNC();
            float *got = host_from_dev(d_out, (size_t)N * C, dt), *ref = malloc(sizeof(float) * N * C);
            layernorm_forward_cpu(ref, inp, w, b, N, C, 1e-5f);
            char what[96];
            snprintf(what, sizeof what, "layernorm N=%d C=%d %s", N, C, dtype_name(dt));
            assert_close(got, ref, (size_t)N * C, tol_for(dt, 2e-5, 2e-5), what);
            free(got);
            free(ref);
            free(inp);
            free(w);
            free(b);
            CK(cudaFree(d_inp));
            CK(cudaFree(d_w));
            CK(cudaFree(d_b));
            CK(cudaFree(d_out));
        }
}

/* resid += x + bias, then layernorm into gathered rows: the residual against the CPU sum, the output
 * against the CPU layernorm of the residual the GPU kept (so both parts are checked tightly). */
Test(cuda_kernels, residual_layernorm_matches_cpu) {
    REQUIRE_GPU();
    const int shapes[][2] = {{1, 768}, {7, 33}, {70, 768}, {4, 1600}};
    uint64_t seed = 4;
    for (int si = 0; si < 4; si++)
        for (int di = 0; di < 3; di++)
            for (int variant = 0; variant < 2; variant++) { /* 0: bias, all rows; 1: no bias, gathered rows */
                const int N = shapes[si][0], C = shapes[si][1];
                const gpt2_dtype dt = all_dtypes[di];
                float *resid, *x, *bias, *w, *b;
                void *d_resid = dev_rand((size_t)N * C, &seed, 1.0f, 0.5f, dt, &resid);
                void *d_x = dev_rand((size_t)N * C, &seed, 1.0f, 0.0f, dt, &x);
                void *d_bias = dev_rand(C, &seed, 0.5f, 0.0f, dt, &bias);
                void *d_w = dev_rand(C, &seed, 1.0f, 1.0f, dt, &w);
                void *d_b = dev_rand(C, &seed, 1.0f, 0.0f, dt, &b);
                int *rows = malloc(sizeof(int) * N), R = 0;
                for (int n = 0; n < N; n++) rows[n] = variant == 0 ? n : (n % 3 == 2 || n == N - 1) ? R++ : -1;
                if (variant == 0) R = N;
                int *d_rows = dev_ints(rows, N);
                void *d_out = dev_poison((size_t)N * C * esize(dt));
                CK(residual_layernorm_forward_cuda(d_out, d_resid, d_x, variant == 0 ? d_bias : NULL,
                                                   variant == 0 ? NULL : d_rows, d_w, d_b, N, C, 1e-5f, dt, 0));
                SYNC();
                char what[128];
                snprintf(what, sizeof what, "residual_layernorm N=%d C=%d %s variant %d", N, C, dtype_name(dt),
                         variant);
                float *got_resid = host_from_dev(d_resid, (size_t)N * C, dt);
                float *ref = malloc(sizeof(float) * N * C);
                for (int n = 0; n < N; n++)
                    for (int c = 0; c < C; c++)
                        ref[(size_t)n * C + c] = resid[(size_t)n * C + c] +
                                                 (x[(size_t)n * C + c] + (variant == 0 ? bias[c] : 0.0f));
                /* one rounding of an O(1) sum */
                assert_close(got_resid, ref, (size_t)N * C, tol_for(dt, 1e-6, 1e-6), what);
                float *full = malloc(sizeof(float) * N * C);
                layernorm_forward_cpu(full, got_resid, w, b, N, C, 1e-5f);
                float *got = host_from_dev(d_out, (size_t)R * C, dt);
                for (int n = 0; n < N; n++)
                    if (rows[n] >= 0)
                        assert_close(got + (size_t)rows[n] * C, full + (size_t)n * C, C, tol_for(dt, 2e-5, 2e-5),
                                     what);
                free(got);
                free(full);
                free(ref);
                free(got_resid);
                free(rows);
                free(resid);
                free(x);
                free(bias);
                free(w);
                free(b);
                CK(cudaFree(d_resid));
                CK(cudaFree(d_x));
                CK(cudaFree(d_bias));
                CK(cudaFree(d_w));
                CK(cudaFree(d_b));
                CK(cudaFree(d_rows));
                CK(cudaFree(d_out));
            }
}

Test(cuda_kernels, gelu_bias_matches_cpu) {
    REQUIRE_GPU();
    const int shapes[][2] = {{1, 1}, {3, 3072}, {17, 1000}, {64, 100}};
    uint64_t seed = 5;
    for (int si = 0; si < 4; si++)
        for (int di = 0; di < 3; di++)
            for (int variant = 0; variant < 2; variant++) { /* 0: bias, separate output; 1: no bias, in place */
                const int N = shapes[si][0], OC = shapes[si][1];
                const gpt2_dtype dt = all_dtypes[di];
                const size_t n = (size_t)N * OC;
                float *inp, *bias;
                void *d_inp = dev_rand(n, &seed, 4.0f, 0.0f, dt, &inp);
                void *d_bias = dev_rand(OC, &seed, 1.0f, 0.0f, dt, &bias);
                void *d_out = variant == 0 ? dev_poison(n * esize(dt)) : d_inp;
                CK(gelu_bias_forward_cuda(d_out, d_inp, variant == 0 ? d_bias : NULL, N, OC, dt, 0));
                SYNC();
                float *pre = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
                for (size_t i = 0; i < n; i++) pre[i] = inp[i] + (variant == 0 ? bias[i % OC] : 0.0f);
                gelu_forward_cpu(ref, pre, n);
                float *got = host_from_dev(d_out, n, dt);
                char what[96];
                snprintf(what, sizeof what, "gelu N=%d OC=%d %s variant %d", N, OC, dtype_name(dt), variant);
                assert_close(got, ref, n, tol_for(dt, 1e-6, 1e-5), what);
                free(got);
                free(pre);
                free(ref);
                free(inp);
                free(bias);
                if (variant == 0) CK(cudaFree(d_out));
                CK(cudaFree(d_inp));
                CK(cudaFree(d_bias));
            }
}

Test(cuda_kernels, residual_matches_cpu) {
    REQUIRE_GPU();
    const size_t sizes[] = {1, 1000, ((size_t)1 << 20) + 3};
    uint64_t seed = 6;
    for (int si = 0; si < 3; si++)
        for (int di = 0; di < 3; di++) {
            const size_t n = sizes[si];
            const gpt2_dtype dt = all_dtypes[di];
            float *a, *b;
            void *d_a = dev_rand(n, &seed, 1.0f, 0.0f, dt, &a);
            void *d_b = dev_rand(n, &seed, 1.0f, 0.0f, dt, &b);
            void *d_out = dev_poison(n * esize(dt));
            float *ref = malloc(sizeof(float) * n);
            residual_forward_cpu(ref, a, b, n);
            CK(residual_forward_cuda(d_out, d_a, d_b, n, dt, 0));
            CK(residual_forward_cuda(d_a, d_a, d_b, n, dt, 0)); /* in place */
            SYNC();
            float *got = host_from_dev(d_out, n, dt), *got2 = host_from_dev(d_a, n, dt);
            char what[64];
            snprintf(what, sizeof what, "residual n=%zu %s", n, dtype_name(dt));
            assert_close(got, ref, n, tol_for(dt, 0, 1e-7), what);
            assert_close(got2, ref, n, tol_for(dt, 0, 1e-7), what);
            free(got);
            free(got2);
            free(ref);
            free(a);
            free(b);
            CK(cudaFree(d_a));
            CK(cudaFree(d_b));
            CK(cudaFree(d_out));
        }
}

/* A ragged batch: chunks of (slot, pos, n), plus one padding token (slot -1). */
typedef struct {
    int slot, pos, n;
} chunk_t;

Test(cuda_kernels, kv_append_matches_cpu) {
    REQUIRE_GPU();
    const int NH = 3, maxT = 40, S = 4;
    const int hss[] = {16, 64, 5};
    const chunk_t ch[] = {{2, 0, 5}, {0, 7, 1}, {3, 30, 10}};
    const int n_ch = 3, N = 5 + 1 + 10 + 1; /* + 1 padding token at the end */
    uint64_t seed = 7;
    for (int hi = 0; hi < 3; hi++)
        for (int di = 0; di < 3; di++)
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                const int HS = hss[hi], C = NH * HS;
                const gpt2_dtype dt = all_dtypes[di];
                const size_t cache_n = (size_t)S * NH * maxT * HS;
                float *kc, *vc, *qkv, *bias;
                void *d_kc = dev_rand(cache_n, &seed, 1.0f, 0.0f, dt, &kc);
                void *d_vc = dev_rand(cache_n, &seed, 1.0f, 0.0f, dt, &vc);
                void *d_qkv = dev_rand((size_t)N * 3 * C, &seed, 1.0f, 0.0f, dt, &qkv);
                void *d_bias = dev_rand((size_t)3 * C, &seed, 1.0f, 0.0f, dt, &bias);
                int slot[17], pos[17], t = 0;
                for (int i = 0; i < n_ch; i++)
                    for (int j = 0; j < ch[i].n; j++, t++) {
                        slot[t] = ch[i].slot;
                        pos[t] = ch[i].pos + j;
                    }
                slot[t] = -1;
                pos[t] = 3;
                int *d_slot = dev_ints(slot, N), *d_pos = dev_ints(pos, N);
                CK(kv_append_cuda(d_kc, d_vc, d_qkv, with_bias ? d_bias : NULL, d_slot, d_pos, N, NH, HS, maxT, S,
                                  dt, 0));
                SYNC();
                /* reference: the CPU twin per chunk, on qkv with the bias added */
                if (with_bias)
                    for (int n = 0; n < N; n++)
                        for (int e = 0; e < 3 * C; e++) qkv[(size_t)n * 3 * C + e] += bias[e];
                for (int i = 0, start = 0; i < n_ch; start += ch[i].n, i++) {
                    size_t off = (size_t)ch[i].slot * NH * maxT * HS;
                    kv_append_cpu(kc + off, vc + off, qkv + (size_t)start * 3 * C, ch[i].pos, ch[i].n, NH, HS, maxT);
                }
                float *gk = host_from_dev(d_kc, cache_n, dt), *gv = host_from_dev(d_vc, cache_n, dt);
                char what[96];
                snprintf(what, sizeof what, "kv_append HS=%d %s bias %d: K", HS, dtype_name(dt), with_bias);
                assert_close(gk, kc, cache_n, tol_for(dt, 0, 0), what); /* fp32: a copy and one add, exact */
                what[strlen(what) - 1] = 'V';
                assert_close(gv, vc, cache_n, tol_for(dt, 0, 0), what);
                free(gk);
                free(gv);
                free(kc);
                free(vc);
                free(qkv);
                free(bias);
                CK(cudaFree(d_kc));
                CK(cudaFree(d_vc));
                CK(cudaFree(d_qkv));
                CK(cudaFree(d_bias));
                CK(cudaFree(d_slot));
                CK(cudaFree(d_pos));
            }
}

/* CPU reference of attention for one chunk: q from qkv rows (stride 3C) with the bias added. */
static void attention_ref(float *out, const float *qkv, const float *bias, const float *kc, const float *vc,
                          chunk_t c, int start, int NH, int HS, int maxT) {
    const int C = NH * HS;
    float *q = malloc(sizeof(float) * (size_t)c.n * 3 * C);
    cr_assert(q);
    for (int t = 0; t < c.n; t++)
        for (int e = 0; e < 3 * C; e++)
            q[(size_t)t * 3 * C + e] = qkv[(size_t)(start + t) * 3 * C + e] + (bias ? bias[e] : 0.0f);
    size_t off = (size_t)c.slot * NH * maxT * HS;
    cr_assert_eq(attention_forward_cpu(out + (size_t)start * C, q, 3 * C, kc + off, vc + off, c.pos, c.n, NH, HS,
                                       maxT),
                 0);
    free(q);
}

Test(cuda_kernels, attention_prefill_matches_cpu) {
    REQUIRE_GPU();
    /* NH, HS, maxT, S: head sizes for every DPL, odd ones, and one over 48 KiB of shared memory */
    const int cfgs[][4] = {{2, 16, 70, 3}, {3, 64, 200, 3}, {1, 8, 33, 3}, {2, 100, 50, 3}, {1, 256, 40, 3}};
    uint64_t seed = 8;
    for (int ci = 0; ci < 5; ci++)
        for (int di = 0; di < 3; di++) {
            const int NH = cfgs[ci][0], HS = cfgs[ci][1], maxT = cfgs[ci][2], S = cfgs[ci][3], C = NH * HS;
            const gpt2_dtype dt = all_dtypes[di];
            /* the whole context from 0 (T = maxT), one token mid-way (T = 1), and a continued chunk whose
             * length is not a multiple of the 32-query tile, each in its own slot */
            const int n3 = maxT - maxT / 3 < 33 ? maxT - maxT / 3 : 33;
            const chunk_t ch[3] = {{1, 0, maxT}, {0, maxT / 2, 1}, {2, maxT / 3, n3}};
            int N = 0, cd[12], tiles[2 * 64], n_tiles = 0;
            for (int i = 0; i < 3; i++) {
                cd[4 * i] = ch[i].slot;
                cd[4 * i + 1] = ch[i].pos;
                cd[4 * i + 2] = ch[i].n;
                cd[4 * i + 3] = N;
                for (int q0 = 0; q0 < ch[i].n; q0 += GPT2_ATTN_PREFILL_BQ) {
                    tiles[2 * n_tiles] = i;
                    tiles[2 * n_tiles + 1] = q0;
                    n_tiles++;
                }
                N += ch[i].n;
            }
            const size_t cache_n = (size_t)S * NH * maxT * HS;
            float *kc, *vc, *qkv, *bias;
            void *d_kc = dev_rand(cache_n, &seed, 1.5f, 0.0f, dt, &kc);
            void *d_vc = dev_rand(cache_n, &seed, 1.0f, 0.0f, dt, &vc);
            void *d_qkv = dev_rand((size_t)N * 3 * C, &seed, 1.5f, 0.0f, dt, &qkv);
            void *d_bias = dev_rand((size_t)3 * C, &seed, 0.5f, 0.0f, dt, &bias);
            int *d_cd = dev_ints(cd, 12), *d_tiles = dev_ints(tiles, 2 * (size_t)n_tiles);
            void *d_out = dev_poison((size_t)N * C * esize(dt));
            CK(attention_prefill_cuda(d_out, d_qkv, d_bias, d_kc, d_vc, d_cd, d_tiles, n_tiles, NH, HS, maxT, S, dt,
                                      0));
            SYNC();
            float *ref = malloc(sizeof(float) * (size_t)N * C);
            for (int i = 0; i < 3; i++) attention_ref(ref, qkv, bias, kc, vc, ch[i], cd[4 * i + 3], NH, HS, maxT);
            float *got = host_from_dev(d_out, (size_t)N * C, dt);
            char what[96];
            snprintf(what, sizeof what, "attention_prefill NH=%d HS=%d maxT=%d %s", NH, HS, maxT, dtype_name(dt));
            assert_close(got, ref, (size_t)N * C, tol_for(dt, 2e-5, 1e-4), what);
            free(got);
            free(ref);
            free(kc);
            free(vc);
            free(qkv);
            free(bias);
            CK(cudaFree(d_kc));
            CK(cudaFree(d_vc));
            CK(cudaFree(d_qkv));
            CK(cudaFree(d_bias));
            CK(cudaFree(d_cd));
            CK(cudaFree(d_tiles));
            CK(cudaFree(d_out));
        }
}

Test(cuda_kernels, attention_decode_matches_cpu) {
    REQUIRE_GPU();
    const int cfgs[][4] = {{3, 64, 300, 8}, {2, 16, 129, 8}, {1, 200, 260, 8}, {4, 8, 1, 8}, {12, 64, 1024, 8}};
    uint64_t seed = 9;
    for (int ci = 0; ci < 5; ci++)
        for (int di = 0; di < 3; di++) {
            const int NH = cfgs[ci][0], HS = cfgs[ci][1], maxT = cfgs[ci][2], S = cfgs[ci][3], C = NH * HS;
            const gpt2_dtype dt = all_dtypes[di];
            /* positions at and around the 128-key split boundaries, the first and the last; row 3 is padding */
            int want_pos[8] = {0, maxT - 1, 127, 0, 128, 129, 255, 256};
            int slot[8] = {5, 2, 7, 0, 1, 3, 4, 6}, pos[8];
            const int B = 8;
            for (int b = 0; b < B; b++) pos[b] = want_pos[b] < maxT ? want_pos[b] : maxT / 2;
            slot[3] = -1;
            const size_t cache_n = (size_t)S * NH * maxT * HS;
            float *kc, *vc, *qkv, *bias;
            void *d_kc = dev_rand(cache_n, &seed, 1.5f, 0.0f, dt, &kc);
            void *d_vc = dev_rand(cache_n, &seed, 1.0f, 0.0f, dt, &vc);
            void *d_qkv = dev_rand((size_t)B * 3 * C, &seed, 1.5f, 0.0f, dt, &qkv);
            void *d_bias = dev_rand((size_t)3 * C, &seed, 0.5f, 0.0f, dt, &bias);
            int *d_slot = dev_ints(slot, B), *d_pos = dev_ints(pos, B);
            const size_t scratch_n = attention_decode_scratch_floats(B, NH, HS, maxT);
            float *d_scratch = dev_poison(scratch_n * sizeof(float));
            void *d_out = dev_poison((size_t)B * C * esize(dt));
            CK(attention_decode_cuda(d_out, d_qkv, d_bias, d_kc, d_vc, d_slot, d_pos, B, NH, HS, maxT, S, d_scratch,
                                     scratch_n, dt, 0));
            SYNC();
            float *ref = malloc(sizeof(float) * (size_t)B * C);
            for (int b = 0; b < B; b++) {
                if (slot[b] < 0) {
                    for (int e = 0; e < C; e++) ref[(size_t)b * C + e] = 0.0f;
                    continue;
                }
                chunk_t c = {slot[b], pos[b], 1};
                attention_ref(ref, qkv, bias, kc, vc, c, b, NH, HS, maxT);
            }
            float *got = host_from_dev(d_out, (size_t)B * C, dt);
            char what[96];
            snprintf(what, sizeof what, "attention_decode NH=%d HS=%d maxT=%d %s", NH, HS, maxT, dtype_name(dt));
            assert_close(got, ref, (size_t)B * C, tol_for(dt, 2e-5, 1e-4), what);
            /* too little scratch is refused, not overrun */
            cr_assert_neq(attention_decode_cuda(d_out, d_qkv, d_bias, d_kc, d_vc, d_slot, d_pos, B, NH, HS, maxT, S,
                                                d_scratch, scratch_n - 1, dt, 0),
                          cudaSuccess);
            free(got);
            free(ref);
            free(kc);
            free(vc);
            free(qkv);
            free(bias);
            CK(cudaFree(d_kc));
            CK(cudaFree(d_vc));
            CK(cudaFree(d_qkv));
            CK(cudaFree(d_bias));
            CK(cudaFree(d_slot));
            CK(cudaFree(d_pos));
            CK(cudaFree(d_scratch));
            CK(cudaFree(d_out));
        }
}

/* The device sampler against gpt2_sample_row, request by request, on the same logits. */
static void check_sampler(int V, int quantize, uint64_t seed) {
    enum { G = 8, R = 24 };
    /* logits: random, some rows quantised to multiples of 1/4 so that ties are everywhere */
    float *logits = rand_floats((size_t)R * V, &seed, 4.0f, 0.0f);
    if (quantize)
        for (size_t i = 0; i < (size_t)R * V; i++) logits[i] = roundf(logits[i] * 4.0f) / 4.0f;
    float *d_logits = dev_from_host(logits, (size_t)R * V, GPT2_DTYPE_F32);

    gpt2_sampling ps[12];
    for (int i = 0; i < 12; i++) ps[i] = gpt2_sampling_default();
    ps[1].repetition_penalty = 1.3f; /* greedy with penalties */
    ps[1].frequency_penalty = 0.4f;
    ps[2].temperature = 0.8f;       /* full distribution */
    ps[3].temperature = 1.2f, ps[3].top_k = 40;
    ps[4].temperature = 0.7f, ps[4].top_p = 0.9f;
    ps[5].temperature = 1.0f, ps[5].top_k = 50, ps[5].top_p = 0.5f;
    ps[6].temperature = 0.9f, ps[6].top_k = 100, ps[6].repetition_penalty = 1.1f, ps[6].frequency_penalty = 0.5f,
    ps[6].presence_penalty = 0.3f;
    ps[7].temperature = 1.0f, ps[7].top_k = 1;          /* argmax */
    ps[8].temperature = 2.0f, ps[8].top_k = V + 5;      /* top-k past the vocabulary: off */
    ps[9].temperature = 1.0f, ps[9].top_p = 1e-4f;      /* only the best token survives */
    ps[10].temperature = 0.5f, ps[10].repetition_penalty = 0.8f, ps[10].presence_penalty = -0.7f; /* < 1, < 0 */
    ps[11].temperature = 3.0f, ps[11].top_p = 0.99f;
    for (int i = 0; i < 12; i++) ps[i].seed = trand(&seed);

    /* a history with repeats, ids out of range (skipped by both), 20 prompt tokens */
    enum { H = 60 };
    int hist[H];
    for (int i = 0; i < H; i++) hist[i] = (int)(trand(&seed) % (uint64_t)(V < 300 ? V : 300));
    hist[5] = -1;
    hist[40] = V;
    hist[41] = hist[42] = hist[43];

    gpt2_cuda_sample_scratch scr = {.rows = G, .V = V};
    const size_t GV = (size_t)G * V;
    scr.keys_in = dev_poison(GV * sizeof(float));
    scr.keys_out = dev_poison(GV * sizeof(float));
    scr.vals_in = dev_poison(GV * sizeof(int));
    scr.vals_out = dev_poison(GV * sizeof(int));
    scr.cum = dev_poison(GV * sizeof(double));
    scr.count = dev_poison(GV * sizeof(int));
    CK(cudaMemset(scr.count, 0, GV * sizeof(int)));
    scr.seg = dev_poison(2 * G * sizeof(int));
    CK(sample_cuda_sort_bytes(G, V, &scr.sort_bytes));
    scr.sort_temp = dev_poison(scr.sort_bytes);
    int *d_hist = dev_ints(hist, H);
    gpt2_cuda_sample_params *d_params = dev_poison(sizeof(gpt2_cuda_sample_params) * G);
    int *d_out = dev_poison(sizeof(int) * G);
    gpt2_sample_scratch cpu;
    cr_assert_eq(gpt2_sample_scratch_init(&cpu, V), 0);
    float *row = malloc(sizeof(float) * V);

    int checked = 0;
    for (int step = 0; step < 4; step++)
        for (int i0 = 0; i0 < 12; i0 += 6) {
            /* groups of 6 requests (rows i0.. of the 24), n < G so unused rows are exercised too */
            gpt2_cuda_sample_params prm[G];
            gpt2_sample_req req[6];
            int any_sort = 0;
            for (int g = 0; g < 6; g++) {
                const gpt2_sampling *p = &ps[i0 + g];
                req[g] = (gpt2_sample_req){.p = p, .step = (uint64_t)step, .history = hist, .n_history = H - step * 10,
                                           .n_prompt = 20};
                prm[g] = (gpt2_cuda_sample_params){
                    .temperature = p->temperature,
                    .top_p = p->top_p,
                    .repetition_penalty = p->repetition_penalty,
                    .frequency_penalty = p->frequency_penalty,
                    .presence_penalty = p->presence_penalty,
                    .uniform = gpt2_sample_uniform(p->seed, (uint64_t)step),
                    .top_k = p->top_k,
                    .greedy = p->temperature <= 0.0f || p->top_k == 1,
                    .row = (step * 6 + g + i0) % R,
                    .hist_off = 0,
                    .n_hist = req[g].n_history,
                    .n_prompt = 20,
                };
                any_sort |= !prm[g].greedy;
            }
            CK(cudaMemcpy(d_params, prm, sizeof(gpt2_cuda_sample_params) * 6, cudaMemcpyHostToDevice));
            CK(sample_cuda(d_out, d_logits, V, d_params, d_hist, 6, any_sort, &scr, 0));
            SYNC();
            int got[6];
            CK(cudaMemcpy(got, d_out, sizeof got, cudaMemcpyDeviceToHost));
            for (int g = 0; g < 6; g++) {
                memcpy(row, logits + (size_t)prm[g].row * V, sizeof(float) * V);
                int want = gpt2_sample_row(row, V, &req[g], &cpu);
                cr_assert_eq(got[g], want, "V=%d step %d request %d (temperature %g top_k %d top_p %g rep %g freq %g "
                                           "pres %g): device %d, sampler.c %d",
                             V, step, i0 + g, ps[i0 + g].temperature, ps[i0 + g].top_k, ps[i0 + g].top_p,
                             ps[i0 + g].repetition_penalty, ps[i0 + g].frequency_penalty,
                             ps[i0 + g].presence_penalty, got[g], want);
                checked++;
            }
        }
    cr_assert_eq(checked, 48);
    /* the logits are left alone, and the count scratch is back to zero */
    float *after = host_from_dev(d_logits, (size_t)R * V, GPT2_DTYPE_F32);
    cr_assert(memcmp(after, logits, sizeof(float) * (size_t)R * V) == 0);
    int *cnt = malloc(GV * sizeof(int));
    CK(cudaMemcpy(cnt, scr.count, GV * sizeof(int), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < GV; i++) cr_assert_eq(cnt[i], 0, "count[%zu] = %d after sampling", i, cnt[i]);
    free(cnt);
    free(after);
    free(row);
    free(logits);
    gpt2_sample_scratch_free(&cpu);
    CK(cudaFree(d_logits));
    CK(cudaFree(scr.keys_in));
    CK(cudaFree(scr.keys_out));
    CK(cudaFree(scr.vals_in));
    CK(cudaFree(scr.vals_out));
    CK(cudaFree(scr.cum));
    CK(cudaFree(scr.count));
    CK(cudaFree(scr.seg));
    CK(cudaFree(scr.sort_temp));
    CK(cudaFree(d_hist));
    CK(cudaFree(d_params));
    CK(cudaFree(d_out));
}

Test(cuda_kernels, sample_matches_cpu_sampler) {
    REQUIRE_GPU();
    check_sampler(50257, 0, 10);
    check_sampler(50257, 1, 11);
    check_sampler(1001, 1, 12);
    check_sampler(3, 0, 13);
}

/* ---------------------------------------------------------------------------------------------- */
/* The backend                                                                                      */

static gpt2_backend *gpu_backend(const gpt2_model *m, int S, int maxT, int N, gpt2_dtype dt) {
    gpt2_backend_opts o = {.max_slots = S, .max_seq = maxT, .max_tokens = N, .all_logits = 1, .dtype = dt};
    gpt2_backend *be = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_backend_create("cuda", m, &o, &be, &err), GPT2_OK, "%s", err.msg);
    cr_assert_str_eq(be->name, "cuda");
    return be;
}

static gpt2_backend *gpu_f32(const gpt2_model *m, int S, int maxT, int N) {
    return gpu_backend(m, S, maxT, N, GPT2_DTYPE_F32);
}

Test(cuda_backend, fp32_logits_match_transformers) {
    REQUIRE_GPU();
    /* the same bound the CPU backend meets */
    for (int i = 0; i < n_fixture_models; i++) check_golden_logits(fixture_models[i], gpu_f32, 2e-4, "cuda fp32");
}

/* fp32 against the CPU backend on random ids, the whole context: tight. */
Test(cuda_backend, fp32_logits_match_cpu_backend) {
    REQUIRE_GPU();
    for (int i = 0; i < n_fixture_models; i++) {
        gpt2_model *m = load_fixture(fixture_models[i]);
        const int V = m->cfg.vocab_size, T = m->cfg.n_positions;
        int *ids = malloc(sizeof(int) * (size_t)T);
        random_ids(ids, T, V, 20 + (uint64_t)i);
        float *ref = full_logits(m, ids, T);
        gpt2_backend *be = gpu_backend(m, 2, T, T, GPT2_DTYPE_F32);
        float *got = forward_all(be, ids, T);
        char what[96];
        snprintf(what, sizeof what, "%s: cuda fp32 vs cpu, all %d positions", fixture_models[i], T);
        assert_close(got, ref, (size_t)T * V, (tol_t){1e-4, 1e-4}, what);
        for (int t = 0; t < T; t++)
            cr_assert_eq(argmax_row(got + (size_t)t * V, V), argmax_row(ref + (size_t)t * V, V), "%s position %d",
                         what, t);
        free(got);
        free(ref);
        free(ids);
        gpt2_backend_free(be);
        gpt2_model_free(m);
    }
}

/* fp16 / bf16 against the CPU's fp32: close, and the same top-1 wherever the fp32 margin between the
 * best two tokens is larger than twice the allowed error (there no rounding may flip it). */
static void check_16bit(gpt2_dtype dt, double atol, double rtol) {
    for (int i = 0; i < n_fixture_models; i++) {
        gpt2_model *m = load_fixture(fixture_models[i]);
        const int V = m->cfg.vocab_size, T = m->cfg.n_positions;
        int *ids = malloc(sizeof(int) * (size_t)T);
        random_ids(ids, T, V, 40 + (uint64_t)i);
        float *ref = full_logits(m, ids, T);
        gpt2_backend *be = gpu_backend(m, 1, T, T, dt);
        float *got = forward_all(be, ids, T);
        double worst = 0, worst_ratio = 0;
        int gated = 0, agree = 0;
        for (int t = 0; t < T; t++) {
            const float *r = ref + (size_t)t * V, *o = got + (size_t)t * V;
            double scale = 0;
            for (int v = 0; v < V; v++) scale = fmax(scale, fabs(r[v]));
            const double tol = atol + rtol * scale;
            for (int v = 0; v < V; v++) {
                double d = fabs((double)o[v] - r[v]);
                cr_assert(d <= tol, "%s %s position %d column %d: %.6f vs fp32 cpu %.6f", fixture_models[i],
                          dtype_name(dt), t, v, o[v], r[v]);
                worst = fmax(worst, d);
                worst_ratio = fmax(worst_ratio, d / tol);
            }
            int b = argmax_row(r, V);
            double second = -INFINITY;
            for (int v = 0; v < V; v++)
                if (v != b) second = fmax(second, r[v]);
            agree += argmax_row(o, V) == b;
            if (r[b] - second > 2 * tol) {
                gated++;
                cr_assert_eq(argmax_row(o, V), b, "%s %s position %d: top-1 %d, fp32 %d (margin %.4g)",
                             fixture_models[i], dtype_name(dt), t, argmax_row(o, V), b, r[b] - second);
            }
        }
        cr_log_info("%s %s: max |logit - fp32 cpu| = %.3g (%.0f%% of the tolerance); top-1 agrees on %d/%d positions "
                    "(%d with a clear margin)",
                    fixture_models[i], dtype_name(dt), worst, 100 * worst_ratio, agree, T, gated);
        free(got);
        free(ref);
        free(ids);
        gpt2_backend_free(be);
        gpt2_model_free(m);
    }
}

Test(cuda_backend, fp16_logits_close_to_fp32) {
    REQUIRE_GPU();
    check_16bit(GPT2_DTYPE_F16, 5e-3, 1e-2);
}

Test(cuda_backend, bf16_logits_close_to_fp32) {
    REQUIRE_GPU();
    check_16bit(GPT2_DTYPE_BF16, 5e-2, 8e-2);
}

Test(cuda_backend, greedy_matches_transformers) {
    REQUIRE_GPU();
    /* continuous batching over 3 slots: decode batches of 1..3 rows and their graph buckets */
    check_golden_greedy("tiny", gpu_f32, "cuda");
    check_golden_greedy("small", gpu_f32, "cuda");
    check_golden_greedy("small-untied-sharded", gpu_f32, "cuda");
}

Test(cuda_backend, greedy_matches_transformers_without_graphs) {
    REQUIRE_GPU();
    cr_assert_eq(setenv("GPT2_CUDA_GRAPHS", "0", 1), 0); /* this test's own process */
    check_golden_greedy("small", gpu_f32, "cuda, no graphs");
}

/* Prefill 7 tokens, then one token per step to the end of the context: every step's logits equal the
 * full forward's row on the same GPU. */
static void check_incremental(void) {
    gpt2_model *m = load_fixture("small");
    const int V = m->cfg.vocab_size, T = m->cfg.n_positions;
    int *ids = malloc(sizeof(int) * (size_t)T);
    random_ids(ids, T, V, 5);
    gpt2_backend *be = gpu_backend(m, 2, T, T, GPT2_DTYPE_F32);
    float *full = forward_all(be, ids, T); /* slot 0 */
    gpt2_error err = {0};
    float *row = malloc(sizeof(float) * (size_t)V);
    const int prefill = 7;
    gpt2_chunk ch = {.slot = 1, .pos = 0, .n = prefill, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->read_logits(be, row, 1, &err), GPT2_OK, "%s", err.msg);
    assert_close(row, full + (size_t)(prefill - 1) * V, V, (tol_t){1e-4, 1e-4}, "prefill's last row");
    for (int t = prefill; t < T; t++) {
        ch = (gpt2_chunk){.slot = 1, .pos = t, .n = 1, .tokens = ids + t};
        cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(be->read_logits(be, row, 1, &err), GPT2_OK, "%s", err.msg);
        char what[64];
        snprintf(what, sizeof what, "decode step at position %d", t);
        assert_close(row, full + (size_t)t * V, V, (tol_t){1e-4, 1e-4}, what);
    }
    ch = (gpt2_chunk){.slot = 1, .pos = T, .n = 1, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_LIMIT);
    free(row);
    free(full);
    free(ids);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

Test(cuda_backend, incremental_decode_equals_full_forward) {
    REQUIRE_GPU();
    check_incremental();
}

Test(cuda_backend, incremental_decode_equals_full_forward_without_graphs) {
    REQUIRE_GPU();
    cr_assert_eq(setenv("GPT2_CUDA_GRAPHS", "0", 1), 0);
    check_incremental();
}

/* Five sequences of different lengths in scrambled slots of a 6-slot backend: a ragged prefill, then
 * decode steps of 5, 4, 3 (padded to the buckets 6 and 4: padding rows must leave every cache alone),
 * each row equal to that sequence's own full forward on the CPU. */
Test(cuda_backend, ragged_batches_equal_separate_sequences) {
    REQUIRE_GPU();
    gpt2_model *m = load_fixture("small-untied-sharded");
    const int V = m->cfg.vocab_size;
    enum { B = 5 };
    const int lens[B] = {40, 17, 33, 9, 60}, split[B] = {1, 16, 32, 2, 50}, slot_of[B] = {4, 0, 5, 2, 1};
    int *ids[B];
    float *full[B];
    for (int b = 0; b < B; b++) {
        ids[b] = malloc(sizeof(int) * (size_t)lens[b]);
        random_ids(ids[b], lens[b], V, 100 + (uint64_t)b);
        full[b] = full_logits(m, ids[b], lens[b]);
    }
    gpt2_backend *be = gpu_backend(m, 6, m->cfg.n_positions, 128, GPT2_DTYPE_F32);
    gpt2_error err = {0};
    gpt2_chunk ch[B];
    for (int b = 0; b < B; b++) ch[b] = (gpt2_chunk){.slot = slot_of[b], .pos = 0, .n = split[b], .tokens = ids[b]};
    cr_assert_eq(be->forward(be, ch, B, 0, &err), GPT2_OK, "%s", err.msg); /* last rows only */
    float *rows = malloc(sizeof(float) * (size_t)V * B);
    cr_assert_eq(be->read_logits(be, rows, B, &err), GPT2_OK, "%s", err.msg);
    for (int b = 0; b < B; b++) {
        char what[64];
        snprintf(what, sizeof what, "ragged prefill, sequence %d", b);
        assert_close(rows + (size_t)b * V, full[b] + (size_t)(split[b] - 1) * V, V, (tol_t){1e-4, 1e-4}, what);
    }
    int pos[B];
    memcpy(pos, split, sizeof pos);
    for (int step = 0;; step++) {
        int n = 0, who[B];
        for (int b = 0; b < B; b++)
            if (pos[b] < lens[b]) {
                ch[n] = (gpt2_chunk){.slot = slot_of[b], .pos = pos[b], .n = 1, .tokens = ids[b] + pos[b]};
                who[n++] = b;
            }
        if (n == 0) break;
        cr_assert_eq(be->forward(be, ch, n, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(be->read_logits(be, rows, n, &err), GPT2_OK, "%s", err.msg);
        for (int k = 0; k < n; k++) {
            const int b = who[k];
            char what[96];
            snprintf(what, sizeof what, "decode step %d (%d rows), sequence %d at %d", step, n, b, pos[b]);
            assert_close(rows + (size_t)k * V, full[b] + (size_t)pos[b] * V, V, (tol_t){1e-4, 1e-4}, what);
            pos[b]++;
        }
        cr_assert_eq(be->read_logits(be, rows, n + 1, &err), GPT2_ERR_ARG); /* padding rows are not readable */
    }
    for (int b = 0; b < B; b++) {
        free(ids[b]);
        free(full[b]);
    }
    free(rows);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

/* backend->sample against gpt2_sample_row on the logits the GPU computed. */
Test(cuda_backend, sample_matches_cpu_sampler) {
    REQUIRE_GPU();
    gpt2_model *m = load_fixture("tiny");
    const int V = m->cfg.vocab_size;
    enum { B = 3, P = 9 };
    int ids[B][P];
    for (int b = 0; b < B; b++) random_ids(ids[b], P, V, 60 + (uint64_t)b);
    gpt2_backend *be = gpu_backend(m, B, m->cfg.n_positions, 64, GPT2_DTYPE_F32);
    gpt2_error err = {0};
    gpt2_chunk ch[B];
    for (int b = 0; b < B; b++) ch[b] = (gpt2_chunk){.slot = b, .pos = 0, .n = P, .tokens = ids[b]};
    cr_assert_eq(be->forward(be, ch, B, 0, &err), GPT2_OK, "%s", err.msg);
    float *logits = malloc(sizeof(float) * (size_t)V * B);
    cr_assert_eq(be->read_logits(be, logits, B, &err), GPT2_OK, "%s", err.msg);
    gpt2_sample_scratch cpu;
    cr_assert_eq(gpt2_sample_scratch_init(&cpu, V), 0);
    float *row = malloc(sizeof(float) * (size_t)V);
    for (int trial = 0; trial < 8; trial++) {
        gpt2_sampling ps[B];
        gpt2_sample_req req[B];
        for (int b = 0; b < B; b++) {
            ps[b] = gpt2_sampling_default();
            ps[b].temperature = trial == 0 ? 0.0f : 0.3f * (float)(trial + b);
            ps[b].top_k = (trial % 3) * 20;
            ps[b].top_p = trial % 2 ? 0.8f : 1.0f;
            ps[b].repetition_penalty = trial % 4 == 3 ? 1.2f : 1.0f;
            ps[b].frequency_penalty = trial % 4 == 2 ? 0.3f : 0.0f;
            ps[b].seed = 1000u * (uint64_t)trial + (uint64_t)b;
            req[b] = (gpt2_sample_req){.p = &ps[b], .step = (uint64_t)trial, .history = ids[b], .n_history = P,
                                       .n_prompt = 4};
        }
        int got[B];
        cr_assert_eq(be->sample(be, req, B, got, NULL, &err), GPT2_OK, "%s", err.msg);
        for (int b = 0; b < B; b++) {
            memcpy(row, logits + (size_t)b * V, sizeof(float) * (size_t)V);
            int want = gpt2_sample_row(row, V, &req[b], &cpu);
            cr_assert_eq(got[b], want, "trial %d row %d: cuda %d, sampler.c %d", trial, b, got[b], want);
        }
    }
    int one;
    gpt2_sampling p = gpt2_sampling_default();
    gpt2_sample_req r = {.p = &p};
    cr_assert_eq(be->sample(be, &r, B + 1, &one, NULL, &err), GPT2_ERR_ARG); /* more rows than the forward made */
    free(row);
    free(logits);
    gpt2_sample_scratch_free(&cpu);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

/* A plan that cannot fit is refused with GPT2_ERR_DEVICE_MEM before any allocation, saying what it
 * needs, what is free, and the largest max_slots that would fit. */
Test(cuda_backend, plan_too_large_is_refused) {
    REQUIRE_GPU();
    gpt2_error err = {0};
    gpt2_backend *be = NULL;
    /* an XL-shaped model whose weights are never read: the refusal comes first */
    gpt2_model fake;
    memset(&fake, 0, sizeof fake);
    fake.cfg = (gpt2_config){.n_layer = 48, .n_head = 25, .n_embd = 1600, .n_positions = 1024, .vocab_size = 50257,
                             .layer_norm_epsilon = 1e-5f};
    fake.w.tied = 1;
    fake.w.n_floats = (size_t)1 << 30;
    gpt2_backend_opts o = {.max_slots = 65536, .max_seq = 1024, .max_tokens = 65536, .dtype = GPT2_DTYPE_F32};
    cr_assert_eq(gpt2_backend_create("cuda", &fake, &o, &be, &err), GPT2_ERR_DEVICE_MEM, "%s", err.msg);
    cr_assert_null(be);
    cr_log_info("%s", err.msg);
    const char *s = strstr(err.msg, "the largest max_slots that fits is ");
    cr_assert(s && strstr(err.msg, "MiB free"), "%s", err.msg);
    int fit = atoi(s + strlen("the largest max_slots that fits is "));
    cr_assert(fit >= 1 && fit < 65536, "%s", err.msg);

    /* all_logits over 2^24 tokens of a 50257 vocabulary: terabytes, whatever max_slots is */
    gpt2_model *m = load_fixture("tiny");
    o = (gpt2_backend_opts){.max_slots = 1, .max_seq = 64, .max_tokens = 1 << 24, .all_logits = 1};
    cr_assert_eq(gpt2_backend_create("cuda", m, &o, &be, &err), GPT2_ERR_DEVICE_MEM, "%s", err.msg);
    cr_assert_null(be);
    cr_assert(strstr(err.msg, "no max_slots fits"), "%s", err.msg);
    /* and the device is left usable */
    be = gpu_backend(m, 1, 64, 64, GPT2_DTYPE_F32);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

Test(cuda_backend, bad_calls_are_refused) {
    REQUIRE_GPU();
    gpt2_model *m = load_fixture("small");
    gpt2_backend *be = gpu_backend(m, 2, 16, 8, GPT2_DTYPE_BF16);
    gpt2_error err = {0};
    float row[1];
    cr_assert_eq(be->read_logits(be, row, 1, &err), GPT2_ERR_ARG); /* no forward yet */
    int ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    gpt2_chunk ch = {.slot = 2, .pos = 0, .n = 1, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_ARG);
    ch = (gpt2_chunk){.slot = 0, .pos = 0, .n = 9, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_ARG); /* over max_tokens */
    ch = (gpt2_chunk){.slot = 0, .pos = 10, .n = 7, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_LIMIT); /* past max_seq */
    gpt2_backend_free(be);
    /* dtype unknown to the backend */
    gpt2_backend_opts o = {.max_slots = 1, .max_seq = 16, .max_tokens = 16, .dtype = (gpt2_dtype)7};
    cr_assert_eq(gpt2_backend_create("cuda", m, &o, &be, &err), GPT2_ERR_ARG);
    gpt2_model_free(m);
}

#endif /* GPT2_HAVE_CUDA */
