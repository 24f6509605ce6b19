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

/* Without CUDA the device-memory query still links, and says why it cannot answer. */
Test(cuda_memory, mem_info_unsupported_without_cuda) {
    size_t used = 1, total = 1;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_cuda_mem_info(&used, &total, &err), GPT2_ERR_UNSUPPORTED);
    cr_assert(used == 0 && total == 0);
    cr_assert(strstr(err.msg, "no CUDA support"), "%s", err.msg);
}

#else

#include <cuda_runtime_api.h>

#include "generate.h"
#include "ops_cpu.h"
#include "sampler.h"
#include "tensors.h"

#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/encoder.cuh"
#include "../kernels/gelu.cuh"
#include "../kernels/gemv.cuh"
#include "../kernels/kv_append.cuh"
#include "../kernels/layernorm.cuh"
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

/* h (n) rounded in place to dt's values, through the device conversion. */
static void round_to_dtype(float *h, size_t n, gpt2_dtype dt) {
    if (dt == GPT2_DTYPE_F32) return;
    void *d = dev_from_host(h, n, dt);
    float *r = host_from_dev(d, n, dt);
    memcpy(h, r, sizeof(float) * n);
    free(r);
    CK(cudaFree(d));
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
            encoder_forward_cpu(ref, tok, pos, wte, wpe, N, C, 0);
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
            layernorm_forward_cpu(ref, inp, w, b, N, C, 1e-5f, 0);
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
                layernorm_forward_cpu(full, got_resid, w, b, N, C, 1e-5f, 0);
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
                gelu_forward_cpu(ref, pre, n, 0);
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

/* out = act(x @ w + bias) for few rows, against matmul_forward_cpu (+ gelu_forward_cpu): the vector
 * path (OC a multiple of 8) and the scalar one (odd OC), K not a multiple of the 4-row step nor of the
 * split, every row count of the templates (1, 2, 4, 8, 16) and the ones between, the split the plan
 * would pick for an H100 (132 SMs), no split, and a forced one; and the decode fusions: the input
 * layer-normalised first (against layernorm_forward_cpu, rounded to T), and the result added into a
 * residual (out not written). Outputs and scratch poisoned; the counters must be back to zero after
 * each launch. */
Test(cuda_kernels, gemv_matches_cpu) {
    REQUIRE_GPU();
    const int shapes[][3] = {{1, 768, 768}, {1, 768, 2304}, {3, 3072, 768}, {5, 33, 100}, {16, 1000, 3072},
                             {7, 768, 50},  {2, 1, 9},       {9, 517, 129}, {4, 1024, 1032}, {13, 2052, 64}};
    uint64_t seed = 16;
    const size_t max_counters = 4096;
    unsigned *d_cnt = dev_poison(max_counters * sizeof(unsigned));
    CK(cudaMemset(d_cnt, 0, max_counters * sizeof(unsigned)));
    for (int si = 0; si < 10; si++)
        for (int di = 0; di < 3; di++)
            for (int variant = 0; variant < 5; variant++) {
                /* 0: bias, picked split; 1: gelu + bias, no split where K allows; 2: gelu, no bias, 3 splits;
                 * 3: layernorm input + bias, picked split; 4: bias into the residual, 3 splits */
                const int M = shapes[si][0], K = shapes[si][1], OC = shapes[si][2];
                const gpt2_dtype dt = all_dtypes[di];
                int ks = variant == 0 || variant == 3 ? gemv_pick_ksplit(K, OC, dt, 132) : variant == 1 ? 1 : 3;
                while ((K + ks - 1) / ks > GPT2_GEMV_KC) ks++; /* shared memory holds GPT2_GEMV_KC rows */
                if (ks > K) ks = K;
                const int gelu = variant == 1 || variant == 2, with_bias = variant != 2;
                float *x, *w, *bias, *lnw, *lnb, *resid;
                void *d_x = dev_rand((size_t)M * K, &seed, 1.0f, 0.3f, dt, &x);
                void *d_w = dev_rand((size_t)K * OC, &seed, 1.0f / sqrtf((float)K), 0.0f, dt, &w);
                void *d_bias = dev_rand(OC, &seed, 0.5f, 0.0f, dt, &bias);
                void *d_lnw = dev_rand(K, &seed, 0.5f, 1.0f, dt, &lnw);
                void *d_lnb = dev_rand(K, &seed, 0.5f, 0.0f, dt, &lnb);
                void *d_resid = dev_rand((size_t)M * OC, &seed, 1.0f, 0.0f, dt, &resid);
                const size_t sn = gemv_scratch_floats(M, OC, ks);
                float *d_scr = dev_poison((sn ? sn : 1) * sizeof(float));
                void *d_out = dev_poison((size_t)M * OC * esize(dt));
                const gemv_fusion fz = {variant == 3 ? d_lnw : NULL, variant == 3 ? d_lnb : NULL, 1e-5f,
                                        variant == 4 ? d_resid : NULL};
                CK(gemv_forward_cuda(variant == 4 ? NULL : d_out, d_x, d_w, with_bias ? d_bias : NULL, M, K, OC, gelu,
                                     &fz, ks, d_scr, sn, d_cnt, max_counters, dt, 0));
                SYNC();
                float *in = malloc(sizeof(float) * (size_t)M * K), *ref = malloc(sizeof(float) * (size_t)M * OC);
                cr_assert(in && ref);
                memcpy(in, x, sizeof(float) * (size_t)M * K);
                if (variant == 3) {
                    layernorm_forward_cpu(in, x, lnw, lnb, M, K, 1e-5f, 0);
                    round_to_dtype(in, (size_t)M * K, dt); /* the layernorm output is stored in T */
                }
                matmul_forward_cpu(ref, in, w, with_bias ? bias : NULL, M, K, OC, 0);
                if (gelu) gelu_forward_cpu(ref, ref, (size_t)M * OC, 0);
                if (variant == 4)
                    for (size_t e = 0; e < (size_t)M * OC; e++) ref[e] += resid[e];
                float *got = host_from_dev(variant == 4 ? d_resid : d_out, (size_t)M * OC, dt);
                char what[128];
                snprintf(what, sizeof what, "gemv M=%d K=%d OC=%d %s variant %d (ksplit %d)", M, K, OC,
                         dtype_name(dt), variant, ks);
                assert_close(got, ref, (size_t)M * OC, tol_for(dt, 1e-5, 1e-4), what);
                if (variant == 4) { /* out was not asked for: the poisoned buffer is untouched */
                    float *o = host_from_dev(d_out, (size_t)M * OC, dt);
                    for (size_t e = 0; e < (size_t)M * OC; e++) cr_assert(isnan(o[e]), "%s: out written", what);
                    free(o);
                }
                unsigned cnt[4096];
                CK(cudaMemcpy(cnt, d_cnt, sizeof cnt, cudaMemcpyDeviceToHost));
                for (size_t i = 0; i < max_counters; i++) cr_assert_eq(cnt[i], 0u, "%s: counter %zu = %u", what, i, cnt[i]);
                if (ks > 1) /* too little scratch is refused, not overrun */
                    cr_assert_neq(gemv_forward_cuda(d_out, d_x, d_w, NULL, M, K, OC, 0, NULL, ks, d_scr, sn - 1, d_cnt,
                                                    max_counters, dt, 0),
                                  cudaSuccess, "%s", what);
                free(got);
                free(ref);
                free(in);
                free(x);
                free(w);
                free(bias);
                free(lnw);
                free(lnb);
                free(resid);
                CK(cudaFree(d_x));
                CK(cudaFree(d_w));
                CK(cudaFree(d_bias));
                CK(cudaFree(d_lnw));
                CK(cudaFree(d_lnb));
                CK(cudaFree(d_resid));
                CK(cudaFree(d_scr));
                CK(cudaFree(d_out));
            }
    /* more rows than the kernels take, no rows, GELU into a residual, and half a layernorm are refused */
    const gemv_fusion into = {NULL, NULL, 0.0f, d_cnt}, half = {d_cnt, NULL, 1e-5f, NULL};
    cr_assert_neq(gemv_forward_cuda(d_cnt, d_cnt, d_cnt, NULL, GPT2_GEMV_MAX_M + 1, 4, 4, 0, NULL, 1, NULL, 0, d_cnt,
                                    max_counters, GPT2_DTYPE_F32, 0),
                  cudaSuccess);
    cr_assert_neq(gemv_forward_cuda(d_cnt, d_cnt, d_cnt, NULL, 0, 4, 4, 0, NULL, 1, NULL, 0, d_cnt, max_counters,
                                    GPT2_DTYPE_F32, 0),
                  cudaSuccess);
    cr_assert_neq(gemv_forward_cuda(NULL, d_cnt, d_cnt, NULL, 1, 4, 4, 1, &into, 1, NULL, 0, d_cnt, max_counters,
                                    GPT2_DTYPE_F32, 0),
                  cudaSuccess);
    cr_assert_neq(gemv_forward_cuda(d_cnt, d_cnt, d_cnt, NULL, 1, 4, 4, 0, &half, 1, NULL, 0, d_cnt, max_counters,
                                    GPT2_DTYPE_F32, 0),
                  cudaSuccess);
    CK(cudaFree(d_cnt));
}

/* logits-style x @ w^T (w in nn.Linear layout) into a padded float output, against
 * matmul_nt_forward_cpu, with and without the final layernorm fused on the input; the padding
 * columns must stay untouched (NaN). */
Test(cuda_kernels, gemv_nt_matches_cpu) {
    REQUIRE_GPU();
    const int shapes[][3] = {{1, 768, 50304}, {4, 768, 1001}, {16, 1024, 333}, {3, 33, 70}, {9, 1600, 64}, {2, 1, 5}};
    uint64_t seed = 17;
    for (int si = 0; si < 6; si++)
        for (int di = 0; di < 3; di++)
            for (int ln = 0; ln < 2; ln++) {
                const int M = shapes[si][0], K = shapes[si][1], N = shapes[si][2], ldo = N + 5;
                const gpt2_dtype dt = all_dtypes[di];
                float *x, *w, *lnw, *lnb;
                void *d_x = dev_rand((size_t)M * K, &seed, 1.0f, 0.3f, dt, &x);
                void *d_w = dev_rand((size_t)N * K, &seed, 1.0f / sqrtf((float)K), 0.0f, dt, &w);
                void *d_lnw = dev_rand(K, &seed, 0.5f, 1.0f, dt, &lnw);
                void *d_lnb = dev_rand(K, &seed, 0.5f, 0.0f, dt, &lnb);
                float *d_out = dev_poison((size_t)M * ldo * sizeof(float));
                CK(gemv_nt_forward_cuda(d_out, ldo, d_x, d_w, M, K, N, ln ? d_lnw : NULL, ln ? d_lnb : NULL, 1e-5f, dt,
                                        0));
                SYNC();
                float *in = malloc(sizeof(float) * (size_t)M * K), *ref = malloc(sizeof(float) * (size_t)M * N);
                cr_assert(in && ref);
                memcpy(in, x, sizeof(float) * (size_t)M * K);
                if (ln) {
                    layernorm_forward_cpu(in, x, lnw, lnb, M, K, 1e-5f, 0);
                    round_to_dtype(in, (size_t)M * K, dt);
                }
                matmul_nt_forward_cpu(ref, in, w, M, K, N, 0);
                float *got = host_from_dev(d_out, (size_t)M * ldo, GPT2_DTYPE_F32);
                char what[128];
                snprintf(what, sizeof what, "gemv_nt M=%d K=%d N=%d %s ln %d", M, K, N, dtype_name(dt), ln);
                /* 16-bit: a layernorm output can round the other way (float vs double statistics) */
                const tol_t t = ln && dt != GPT2_DTYPE_F32 ? tol_for(dt, 0, 0) : (tol_t){1e-5, 1e-4};
                for (int m = 0; m < M; m++) {
                    assert_close(got + (size_t)m * ldo, ref + (size_t)m * N, N, t, what);
                    for (int j = N; j < ldo; j++)
                        cr_assert(isnan(got[(size_t)m * ldo + j]), "%s: pad column %d written", what, j);
                }
                free(got);
                free(ref);
                free(in);
                free(x);
                free(w);
                free(lnw);
                free(lnb);
                CK(cudaFree(d_x));
                CK(cudaFree(d_w));
                CK(cudaFree(d_lnw));
                CK(cudaFree(d_lnb));
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
                                       maxT, 0),
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

/* append 0: the cache holds every key; append 1: the kernel first writes each row's own k, v (+ bias)
 * at its position, as kv_append does (the decode path), and the cache must equal kv_append_cpu's. */
Test(cuda_kernels, attention_decode_matches_cpu) {
    REQUIRE_GPU();
    const int cfgs[][4] = {{3, 64, 300, 8}, {2, 16, 129, 8}, {1, 200, 260, 8}, {4, 8, 1, 8}, {12, 64, 1024, 8}};
    uint64_t seed = 9;
    for (int ci = 0; ci < 5; ci++)
        for (int di = 0; di < 3; di++)
            for (int append = 0; append < 2; append++) {
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
                CK(attention_decode_cuda(d_out, d_qkv, d_bias, d_kc, d_vc, d_slot, d_pos, B, NH, HS, maxT, S, append,
                                         d_scratch, scratch_n, dt, 0));
                SYNC();
                char what[128];
                snprintf(what, sizeof what, "attention_decode NH=%d HS=%d maxT=%d %s append %d", NH, HS, maxT,
                         dtype_name(dt), append);
                if (append) { /* the CPU twin: kv_append_cpu of each real row's k, v + bias, in T */
                    float *row = malloc(sizeof(float) * 3 * (size_t)C);
                    cr_assert(row);
                    for (int b = 0; b < B; b++) {
                        if (slot[b] < 0) continue;
                        for (int e = 0; e < 3 * C; e++) row[e] = qkv[(size_t)b * 3 * C + e] + bias[e];
                        const size_t off = (size_t)slot[b] * NH * maxT * HS;
                        kv_append_cpu(kc + off, vc + off, row, pos[b], 1, NH, HS, maxT);
                    }
                    free(row);
                    round_to_dtype(kc, cache_n, dt); /* as the device stores them */
                    round_to_dtype(vc, cache_n, dt);
                    float *gk = host_from_dev(d_kc, cache_n, dt), *gv = host_from_dev(d_vc, cache_n, dt);
                    assert_close(gk, kc, cache_n, tol_for(dt, 0, 0), what);
                    assert_close(gv, vc, cache_n, tol_for(dt, 0, 0), what);
                    free(gk);
                    free(gv);
                }
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
                assert_close(got, ref, (size_t)B * C, tol_for(dt, 2e-5, 1e-4), what);
                /* too little scratch is refused, not overrun */
                cr_assert_neq(attention_decode_cuda(d_out, d_qkv, d_bias, d_kc, d_vc, d_slot, d_pos, B, NH, HS, maxT,
                                                    S, append, d_scratch, scratch_n - 1, dt, 0),
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

/* Device scratch for the sampler: G rows of V, the count part zeroed. */
static gpt2_cuda_sample_scratch sampler_scratch(int G, int V) {
    gpt2_cuda_sample_scratch scr = {.rows = G, .V = V};
    const size_t GV = (size_t)G * V;
    scr.keys = dev_poison(GV * sizeof(float));
    scr.count = dev_poison(GV * sizeof(int));
    CK(cudaMemset(scr.count, 0, GV * sizeof(int)));
    return scr;
}

static void sampler_scratch_free(gpt2_cuda_sample_scratch *scr) {
    CK(cudaFree(scr->keys));
    CK(cudaFree(scr->count));
}

/* log_softmax(row)[t] in double: the reference for the device's float logsumexp. */
static double log_softmax_at(const float *row, int V, int t) {
    double mx = row[0], sum = 0.0;
    for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
    for (int v = 0; v < V; v++) sum += exp((double)row[v] - mx);
    return (double)row[t] - mx - log(sum);
}

/* The device sampler against gpt2_sample_row, request by request, on the same logits. */
static void check_sampler(int V, int quantize, uint64_t seed) {
    enum { G = 8, R = 24 };
    /* logits: random, some rows quantised to multiples of 1/4 so that ties are everywhere; rows LD
     * floats apart, the columns past V NaN and huge (the kernels must never read them) */
    const int LD = V + 13;
    float *logits = rand_floats((size_t)R * LD, &seed, 4.0f, 0.0f);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < LD; v++) {
            float *l = &logits[(size_t)r * LD + v];
            if (v >= V) *l = v % 2 ? NAN : 1e30f;
            else if (quantize) *l = roundf(*l * 4.0f) / 4.0f;
        }
    float *d_logits = dev_from_host(logits, (size_t)R * LD, GPT2_DTYPE_F32);

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

    const size_t GV = (size_t)G * V;
    gpt2_cuda_sample_scratch scr = sampler_scratch(G, V);
    int *d_hist = dev_ints(hist, H);
    gpt2_cuda_sample_params *d_params = dev_poison(sizeof(gpt2_cuda_sample_params) * G);
    int *d_out = dev_poison(sizeof(int) * G);
    float *d_lp = dev_poison(sizeof(float) * G);
    gpt2_sample_scratch cpu;
    cr_assert_eq(gpt2_sample_scratch_init(&cpu, V), 0);
    float *row = malloc(sizeof(float) * V);

    int checked = 0;
    for (int step = 0; step < 4; step++)
        for (int i0 = 0; i0 < 12; i0 += 6) {
            /* groups of 6 requests (rows i0.. of the 24), n < G so unused rows are exercised too */
            gpt2_cuda_sample_params prm[G];
            gpt2_sample_req req[6];
            int any_sampled = 0;
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
                any_sampled |= !prm[g].greedy;
            }
            CK(cudaMemcpy(d_params, prm, sizeof(gpt2_cuda_sample_params) * 6, cudaMemcpyHostToDevice));
            CK(sample_cuda(d_out, step % 2 ? d_lp : NULL, d_logits, V, LD, d_params, d_hist, 6, any_sampled, &scr, 0));
            SYNC();
            int got[6];
            float lp[6];
            CK(cudaMemcpy(got, d_out, sizeof got, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(lp, d_lp, sizeof lp, cudaMemcpyDeviceToHost));
            for (int g = 0; g < 6; g++) {
                memcpy(row, logits + (size_t)prm[g].row * LD, sizeof(float) * V);
                if (step % 2) {
                    double want_lp = log_softmax_at(row, V, got[g]);
                    cr_assert(fabs(lp[g] - want_lp) <= 1e-5 + 1e-5 * fabs(want_lp),
                              "V=%d step %d request %d: logprob %.8g, want %.8g", V, step, i0 + g, lp[g], want_lp);
                }
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
    float *after = host_from_dev(d_logits, (size_t)R * LD, GPT2_DTYPE_F32);
    cr_assert(memcmp(after, logits, sizeof(float) * (size_t)R * LD) == 0);
    int *cnt = malloc(GV * sizeof(int));
    CK(cudaMemcpy(cnt, scr.count, GV * sizeof(int), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < GV; i++) cr_assert_eq(cnt[i], 0, "count[%zu] = %d after sampling", i, cnt[i]);
    free(cnt);
    free(after);
    free(row);
    free(logits);
    gpt2_sample_scratch_free(&cpu);
    CK(cudaFree(d_logits));
    sampler_scratch_free(&scr);
    CK(cudaFree(d_hist));
    CK(cudaFree(d_params));
    CK(cudaFree(d_out));
    CK(cudaFree(d_lp));
}

Test(cuda_kernels, sample_matches_cpu_sampler) {
    REQUIRE_GPU();
    check_sampler(50257, 0, 10);
    check_sampler(50257, 1, 11);
    check_sampler(1001, 1, 12);
    check_sampler(3, 0, 13);
    check_sampler(7, 1, 18); /* odd sizes, smaller than the block and than top_k */
    check_sampler(50, 1, 19);
    check_sampler(2049, 0, 20);
}

/* ---------------------------------------------------------------------------------------------- */
/* The backend                                                                                      */

static gpt2_backend *gpu_backend_opts(const gpt2_model *m, int S, int maxT, int N, gpt2_dtype dt, int graphs) {
    gpt2_backend_opts o = {.max_slots = S, .max_seq = maxT, .max_tokens = N, .all_logits = 1, .dtype = dt,
                           .no_cuda_graphs = !graphs};
    gpt2_backend *be = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_backend_create("cuda", m, &o, &be, &err), GPT2_OK, "%s", err.msg);
    cr_assert_str_eq(be->name, "cuda");
    cr_assert_str_eq(be->warning, "");
    return be;
}

static gpt2_backend *gpu_backend(const gpt2_model *m, int S, int maxT, int N, gpt2_dtype dt) {
    return gpu_backend_opts(m, S, maxT, N, dt, 1);
}

static gpt2_backend *gpu_f32_no_graphs(const gpt2_model *m, int S, int maxT, int N) {
    return gpu_backend_opts(m, S, maxT, N, GPT2_DTYPE_F32, 0);
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

/* 16-bit tolerances, per logits row against the fp32 CPU engine:
 *   ||got - ref||_2 <= rel_l2 * ||ref||_2   and   max |got - ref| <= rel_max * max |ref|.
 * Calibrated by tools/sim_16bit_rounding.py, a float64 simulation of this engine's rounding points
 * (the weights, and every activation stored in T: embeddings, layernorm outputs, qkv, the K/V cache,
 * attention output, projections, residual stream, MLP hidden; GEMMs and reductions in float) on models
 * shaped like the fixtures and like gpt2 (12 heads of 64): a correct fp16 engine reaches rel-L2
 * <= 3.0e-3 and rel-max <= 3.3e-3; a correct bf16 engine rel-L2 <= 2.7e-2 and rel-max <= 2.8e-2 (8
 * mantissa bits: 2^-9 per rounding, about ten roundings deep). The bounds are about twice those.
 * A wrong kernel moves a row much further: the logits of the neighbouring position, which an
 * off-by-one position, a wrong cache slot or a broken causal mask would produce, are >= 0.29 away in
 * rel-L2 on the fixtures, 0.49 on the real shape (checked below on the test's own data: at least 4x
 * the bound), and a dropped bias or head moves rows by O(1).
 * The old bf16 rule (0.05 + 0.08 x max |logit| per element) allowed 0.6 on the small fixture, about
 * what a wrong kernel gives. */
typedef struct {
    double rel_l2, rel_max;
} tol16_t;
static tol16_t tol16_for(gpt2_dtype dt) {
    return dt == GPT2_DTYPE_BF16 ? (tol16_t){5.5e-2, 6e-2} : (tol16_t){6e-3, 7e-3};
}

/* Rows (T, V) of a 16-bit run against the fp32 reference; top-1 must agree wherever the reference's
 * margin between its best two tokens exceeds twice the allowed error. Logs what was seen. */
static void check_rows_16bit(const float *got, const float *ref, int T, int V, gpt2_dtype dt, const char *what) {
    const tol16_t t = tol16_for(dt);
    double worst_l2 = 0, worst_max = 0, nearest = INFINITY;
    int gated = 0, agree = 0;
    for (int r = 0; r < T; r++) {
        const float *o = got + (size_t)r * V, *f = ref + (size_t)r * V;
        double d2 = 0, r2 = 0, dmax = 0, rmax = 0, n2 = 0;
        for (int v = 0; v < V; v++) {
            const double d = (double)o[v] - f[v];
            cr_assert(isfinite(o[v]), "%s %s row %d column %d: %g", what, dtype_name(dt), r, v, o[v]);
            d2 += d * d;
            r2 += (double)f[v] * f[v];
            dmax = fmax(dmax, fabs(d));
            rmax = fmax(rmax, fabs(f[v]));
            if (r > 0) n2 += ((double)f[v] - f[v - V]) * ((double)f[v] - f[v - V]);
        }
        const double l2 = sqrt(d2 / r2), mx = dmax / rmax;
        cr_assert(l2 <= t.rel_l2 && mx <= t.rel_max,
                  "%s %s row %d: rel-L2 error %.3g (bound %.3g), max |diff| / max |ref| %.3g (bound %.3g)", what,
                  dtype_name(dt), r, l2, t.rel_l2, mx, t.rel_max);
        worst_l2 = fmax(worst_l2, l2);
        worst_max = fmax(worst_max, mx);
        if (r > 0) nearest = fmin(nearest, sqrt(n2 / r2));
        int b = argmax_row(f, V);
        double second = -INFINITY;
        for (int v = 0; v < V; v++)
            if (v != b) second = fmax(second, f[v]);
        agree += argmax_row(o, V) == b;
        if (f[b] - second > 2 * t.rel_max * rmax) {
            gated++;
            cr_assert_eq(argmax_row(o, V), b, "%s %s row %d: top-1 %d, fp32 %d (margin %.4g)", what, dtype_name(dt), r,
                         argmax_row(o, V), b, f[b] - second);
        }
    }
    if (T > 1)
        cr_assert(nearest >= 4 * t.rel_l2, "%s: neighbouring rows are only %.3g apart: this data cannot tell a wrong "
                                           "kernel from rounding at bound %.3g", what, nearest, t.rel_l2);
    cr_log_info("%s %s: rel-L2 error <= %.3g, max |diff| / max |ref| <= %.3g (bounds %.3g, %.3g; neighbouring rows "
                "%.3g apart); top-1 agrees on %d/%d rows (%d with a clear margin)",
                what, dtype_name(dt), worst_l2, worst_max, t.rel_l2, t.rel_max, nearest, agree, T, gated);
}

/* fp16 / bf16 against the CPU's fp32 over each fixture's whole context. */
static void check_16bit(gpt2_dtype dt) {
    for (int i = 0; i < n_fixture_models; i++) {
        gpt2_model *m = load_fixture(fixture_models[i]);
        const int V = m->cfg.vocab_size, T = m->cfg.n_positions;
        int *ids = malloc(sizeof(int) * (size_t)T);
        random_ids(ids, T, V, 40 + (uint64_t)i);
        float *ref = full_logits(m, ids, T);
        gpt2_backend *be = gpu_backend(m, 1, T, T, dt);
        float *got = forward_all(be, ids, T);
        check_rows_16bit(got, ref, T, V, dt, fixture_models[i]);
        free(got);
        free(ref);
        free(ids);
        gpt2_backend_free(be);
        gpt2_model_free(m);
    }
}

Test(cuda_backend, fp16_logits_close_to_fp32) {
    REQUIRE_GPU();
    check_16bit(GPT2_DTYPE_F16);
}

Test(cuda_backend, bf16_logits_close_to_fp32) {
    REQUIRE_GPU();
    check_16bit(GPT2_DTYPE_BF16);
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
    check_golden_greedy("small", gpu_f32_no_graphs, "cuda, no graphs");
}

/* Prefill 7 tokens, then one token per step to the end of the context: every step's logits equal the
 * full forward's row on the same GPU. break_capture: the first decode graph's capture fails, and the
 * backend must fall back to the plain stream (once, with a warning) and stay right. */
static void check_incremental(int graphs, int break_capture) {
    gpt2_model *m = load_fixture("small");
    const int V = m->cfg.vocab_size, T = m->cfg.n_positions;
    int *ids = malloc(sizeof(int) * (size_t)T);
    random_ids(ids, T, V, 5);
    gpt2_backend *be = gpu_backend_opts(m, 2, T, T, GPT2_DTYPE_F32, graphs);
    if (break_capture) gpt2_cuda_test_break_next_capture(be);
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
        if (break_capture && t == prefill) { /* the warning comes with the first decode step, and stays */
            cr_assert(strstr(be->warning, "capture failed"), "warning: '%s'", be->warning);
            gpt2_cuda_test_break_next_capture(be); /* would break a second capture: there is none */
        }
        if (!break_capture) cr_assert_str_eq(be->warning, "");
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
    check_incremental(1, 0);
}

Test(cuda_backend, incremental_decode_equals_full_forward_without_graphs) {
    REQUIRE_GPU();
    check_incremental(0, 0);
}

Test(cuda_backend, failed_graph_capture_falls_back_to_the_stream) {
    REQUIRE_GPU();
    check_incremental(1, 1);
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

/* ---------------------------------------------------------------------------------------------- */
/* Device memory, NaN and temperature edge cases of the sampler                                    */

/* Runs on every machine: without a GPU the query is refused, with one it is real. */
Test(cuda_memory, mem_info_reports_the_device) {
    size_t used = 1, total = 1;
    gpt2_error err = {0};
    if (gpt2_cuda_device_count() == 0) {
        cr_assert_eq(gpt2_cuda_mem_info(&used, &total, &err), GPT2_ERR_UNSUPPORTED);
        cr_assert(used == 0 && total == 0);
        cr_assert(strstr(err.msg, "no CUDA device"), "%s", err.msg);
        return;
    }
    cr_assert_eq(gpt2_cuda_mem_info(&used, &total, &err), GPT2_OK, "%s", err.msg);
    cr_assert(total > 0 && used <= total, "used %zu of %zu", used, total);
    /* 256 MiB taken shows up in the next answer */
    void *d = NULL;
    CK(cudaMalloc(&d, (size_t)256 << 20));
    size_t used2 = 0, total2 = 0;
    cr_assert_eq(gpt2_cuda_mem_info(&used2, &total2, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(total2, total);
    cr_assert(used2 >= used + ((size_t)250 << 20), "used %zu -> %zu after a 256 MiB allocation", used, used2);
    CK(cudaFree(d));
}

/* Runs greedy (or any single-parameter) sampling of R rows of V on the device; returns tokens. */
static void device_sample_rows(const float *rows, int R, int V, const gpt2_sampling *p, uint64_t step, int *out) {
    float *d_logits = dev_from_host(rows, (size_t)R * V, GPT2_DTYPE_F32);
    gpt2_cuda_sample_scratch scr = sampler_scratch(R, V);
    gpt2_cuda_sample_params *prm = calloc((size_t)R, sizeof *prm);
    cr_assert(prm);
    int any_sampled = 0;
    for (int r = 0; r < R; r++) {
        prm[r] = (gpt2_cuda_sample_params){.temperature = p->temperature, .top_p = p->top_p,
                                           .repetition_penalty = p->repetition_penalty,
                                           .frequency_penalty = p->frequency_penalty,
                                           .presence_penalty = p->presence_penalty,
                                           .uniform = gpt2_sample_uniform(p->seed + (uint64_t)r, step),
                                           .top_k = p->top_k, .greedy = p->temperature <= 0.0f || p->top_k == 1,
                                           .row = r};
        any_sampled |= !prm[r].greedy;
    }
    gpt2_cuda_sample_params *d_params = dev_poison(sizeof *prm * (size_t)R);
    CK(cudaMemcpy(d_params, prm, sizeof *prm * (size_t)R, cudaMemcpyHostToDevice));
    int zero = 0, *d_hist = dev_ints(&zero, 1), *d_out = dev_poison(sizeof(int) * (size_t)R);
    CK(sample_cuda(d_out, NULL, d_logits, V, V, d_params, d_hist, R, any_sampled, &scr, 0));
    SYNC();
    CK(cudaMemcpy(out, d_out, sizeof(int) * (size_t)R, cudaMemcpyDeviceToHost));
    sampler_scratch_free(&scr);
    CK(cudaFree(d_logits));
    CK(cudaFree(d_params));
    CK(cudaFree(d_hist));
    CK(cudaFree(d_out));
    free(prm);
}

/* The GPU's greedy argmax orders NaN exactly as src/sampler.c's scan does: a NaN never wins except at
 * index 0, where the scan starts and nothing compares greater than it. */
/* A row holding NaN or +-Inf is refused (GPT2_SAMPLE_NONFINITE), greedy or sampled, as by sampler.c;
 * finite rows beside them still get their token. */
Test(cuda_kernels, non_finite_rows_are_refused_as_by_the_cpu_sampler) {
    REQUIRE_GPU();
    enum { R = 9, V = 1000 };
    uint64_t seed = 14;
    float *rows = rand_floats((size_t)R * V, &seed, 3.0f, 0.0f);
    float *x;
    x = rows + 0 * V, x[0] = NAN;                                      /* NaN first */
    x = rows + 1 * V, x[500] = x[17] = x[999] = NAN, x[321] = 10.0f;   /* NaNs elsewhere */
    x = rows + 2 * V;
    for (int v = 0; v < V; v++) x[v] = NAN;                            /* all NaN */
    x = rows + 3 * V;
    for (int v = 1; v < V; v++) x[v] = NAN;                            /* only x[0] a number */
    x[0] = -1.0f;
    x = rows + 4 * V, x[999] = -INFINITY;                              /* one -inf, last column */
    x = rows + 5 * V;
    for (int v = 0; v < V; v++) x[v] = -INFINITY;                      /* all -inf */
    x = rows + 6 * V, x[7] = x[9] = INFINITY;                          /* +inf */
    x = rows + 7 * V, x[100] = x[900] = 20.0f;                         /* finite, a tie: the lower, 100 */
    x = rows + 8 * V, x[5] = 50.0f;                                    /* finite */
    const int want_greedy[R] = {-1, -1, -1, -1, -1, -1, -1, 100, 5};
    gpt2_sampling modes[2] = {gpt2_sampling_default(), gpt2_sampling_default()}; /* greedy, then sampled */
    modes[1].temperature = 0.8f;
    modes[1].top_k = 40;
    modes[1].seed = 3;
    gpt2_sample_scratch cpu;
    cr_assert_eq(gpt2_sample_scratch_init(&cpu, V), 0);
    float *row = malloc(sizeof(float) * V);
    for (int m = 0; m < 2; m++) {
        int got[R];
        device_sample_rows(rows, R, V, &modes[m], 0, got);
        for (int r = 0; r < R; r++) {
            memcpy(row, rows + (size_t)r * V, sizeof(float) * V);
            gpt2_sampling pr = modes[m];
            pr.seed += (uint64_t)r; /* device_sample_rows draws row r with seed + r */
            gpt2_sample_req req = {.p = &pr};
            int want = gpt2_sample_row(row, V, &req, &cpu);
            if (m == 0 || r < 7)
                cr_assert_eq(want, m == 0 ? want_greedy[r] : -1, "mode %d row %d: sampler.c gives %d", m, r, want);
            cr_assert_eq(got[r], want, "mode %d row %d: device %d, sampler.c %d", m, r, got[r], want);
        }
    }
    gpt2_sample_scratch_free(&cpu);
    free(row);
    free(rows);
}

/* (l - max) / T: the smallest positive temperatures are greedy in effect, never inf/NaN. */
Test(cuda_kernels, tiny_temperature_picks_the_argmax) {
    REQUIRE_GPU();
    enum { R = 16, V = 50257 };
    const float temps[] = {1e-45f, 1e-38f, 1e-30f};
    uint64_t seed = 15;
    float *rows = rand_floats((size_t)R * V, &seed, 8.0f, 0.0f);
    for (int ti = 0; ti < 3; ti++)
        for (int k = 0; k < 3; k++) { /* no filter, top-k 40, top-p 0.9 */
            gpt2_sampling p = gpt2_sampling_default();
            p.temperature = temps[ti];
            p.top_k = k == 1 ? 40 : 0;
            p.top_p = k == 2 ? 0.9f : 1.0f;
            p.seed = 99u + (uint64_t)ti;
            int got[R];
            device_sample_rows(rows, R, V, &p, (uint64_t)k, got);
            for (int r = 0; r < R; r++)
                cr_assert_eq(got[r], argmax_row(rows + (size_t)r * V, V), "temperature %g, filter %d, row %d: %d",
                             temps[ti], k, r, got[r]);
        }
    free(rows);
}

/* ---------------------------------------------------------------------------------------------- */
/* End to end at gpt2's real shapes                                                                 */

/* A random model shaped like gpt2 (12 heads of 64, n_positions 1024, the full vocabulary) with L
 * layers, made here and never saved: every weight uniform with the standard deviation of transformers'
 * initialisation (0.02), layer-norm weights near 1, biases non-zero so that every bias path counts. */
static gpt2_model *random_gpt2(int L, uint64_t seed) {
    const size_t C = 768, V = 50257, maxT = 1024;
    gpt2_model *m = calloc(1, sizeof *m);
    cr_assert(m);
    m->cfg = (gpt2_config){.n_layer = L, .n_head = 12, .n_embd = (int)C, .n_positions = (int)maxT,
                           .vocab_size = (int)V, .layer_norm_epsilon = 1e-5f, .tie_word_embeddings = 1};
    gpt2_weights *w = &m->w;
    size_t n[GPT2_N_TENSORS] = {0};
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (k == GPT2_T_LMHEAD) continue; /* tied: it is wte */
        cr_assert_eq(gpt2_tensor_numel(&m->cfg, (gpt2_tensor_kind)k, NULL, &n[k]), 0);
        w->n_floats += n[k];
    }
    w->memory = malloc(sizeof(float) * w->n_floats);
    cr_assert(w->memory);
    float *at_ = w->memory;
    const float amp = 0.02f * 1.7320508f; /* uniform on [-a, a) has standard deviation a / sqrt(3) */
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (k == GPT2_T_LMHEAD) continue;
        *gpt2_tensor_field(w, (gpt2_tensor_kind)k) = at_;
        const int is_ln_weight = k == GPT2_T_LN1W || k == GPT2_T_LN2W || k == GPT2_T_LNFW;
        for (size_t e = 0; e < n[k]; e++)
            at_[e] = is_ln_weight ? 1.0f + 0.1f * trand_float(&seed) : amp * trand_float(&seed);
        at_ += n[k];
    }
    w->lm_head = w->wte;
    w->tied = 1;
    return m;
}

/* Three sequences (prefills of 100, 37 and 250 tokens) decoded together, graphs on, to position 600:
 * past the 128-key split boundaries of the decode attention at 128, 256, 384 and 512, in a 4-slot
 * backend (the batch of 3 runs padded to the bucket of 4). Every row against the CPU engine's full
 * forward of that sequence. */
static void check_real_shape_decode(gpt2_dtype dt) {
    gpt2_model *m = random_gpt2(2, 80);
    const int V = m->cfg.vocab_size;
    enum { B = 3, END = 600 };
    const int prefill[B] = {100, 37, 250}, slot_of[B] = {2, 0, 3};
    int *ids[B];
    float *ref[B];
    for (int b = 0; b < B; b++) {
        ids[b] = malloc(sizeof(int) * END);
        random_ids(ids[b], END, V, 200 + (uint64_t)b);
        ref[b] = full_logits(m, ids[b], END);
    }
    gpt2_backend *be = gpu_backend(m, 4, m->cfg.n_positions, 512, dt);
    gpt2_error err = {0};
    gpt2_chunk ch[B];
    for (int b = 0; b < B; b++) ch[b] = (gpt2_chunk){.slot = slot_of[b], .pos = 0, .n = prefill[b], .tokens = ids[b]};
    cr_assert_eq(be->forward(be, ch, B, 0, &err), GPT2_OK, "%s", err.msg);
    float *rows = malloc(sizeof(float) * (size_t)V * B);
    float *got[B], *want[B]; /* every row produced, gathered for the 16-bit check */
    int n_got[B] = {0};
    for (int b = 0; b < B; b++) {
        got[b] = malloc(sizeof(float) * (size_t)V * (END - prefill[b] + 1));
        want[b] = malloc(sizeof(float) * (size_t)V * (END - prefill[b] + 1));
    }
    int pos[B];
    for (int b = 0; b < B; b++) pos[b] = prefill[b];
    cr_assert_eq(be->read_logits(be, rows, B, &err), GPT2_OK, "%s", err.msg);
    for (int step = 0;; step++) {
        int n = step == 0 ? B : 0, who[B];
        for (int b = 0; b < B; b++) who[b] = b;
        if (step > 0) {
            for (int b = 0; b < B; b++)
                if (pos[b] < END) {
                    ch[n] = (gpt2_chunk){.slot = slot_of[b], .pos = pos[b], .n = 1, .tokens = ids[b] + pos[b]};
                    who[n++] = b;
                }
            if (n == 0) break;
            cr_assert_eq(be->forward(be, ch, n, 0, &err), GPT2_OK, "%s", err.msg);
            cr_assert_eq(be->read_logits(be, rows, n, &err), GPT2_OK, "%s", err.msg);
        }
        for (int k = 0; k < n; k++) {
            const int b = who[k], t = step == 0 ? prefill[b] - 1 : pos[b];
            const float *r = ref[b] + (size_t)t * V;
            if (dt == GPT2_DTYPE_F32) {
                char what[96];
                snprintf(what, sizeof what, "real shape fp32, sequence %d at position %d", b, t);
                assert_close(rows + (size_t)k * V, r, V, (tol_t){1e-4, 1e-4}, what);
            }
            memcpy(got[b] + (size_t)n_got[b] * V, rows + (size_t)k * V, sizeof(float) * V);
            memcpy(want[b] + (size_t)n_got[b] * V, r, sizeof(float) * V);
            n_got[b]++;
            if (step > 0) pos[b]++;
        }
    }
    cr_assert_str_eq(be->warning, "");
    for (int b = 0; b < B; b++) {
        cr_assert_eq(n_got[b], END - prefill[b] + 1);
        if (dt != GPT2_DTYPE_F32) {
            char what[64];
            snprintf(what, sizeof what, "real shape, sequence %d", b);
            check_rows_16bit(got[b], want[b], n_got[b], V, dt, what);
        }
        free(got[b]);
        free(want[b]);
        free(ids[b]);
        free(ref[b]);
    }
    free(rows);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

Test(cuda_real_shape, decode_past_split_boundaries_fp32, .timeout = 300) {
    REQUIRE_GPU();
    check_real_shape_decode(GPT2_DTYPE_F32);
}

Test(cuda_real_shape, decode_past_split_boundaries_fp16, .timeout = 300) {
    REQUIRE_GPU();
    check_real_shape_decode(GPT2_DTYPE_F16);
}

Test(cuda_real_shape, decode_past_split_boundaries_bf16, .timeout = 300) {
    REQUIRE_GPU();
    check_real_shape_decode(GPT2_DTYPE_BF16);
}

/* 40 sequences (more than the sampler's group of 32) sampled with mixed parameters for 8 steps; each
 * token equals sampler.c's on the logits the GPU made, and each log-probability the float64
 * log_softmax of the raw row. Tiny temperatures must give the argmax. */
Test(cuda_real_shape, batch_over_32_samples_like_the_cpu, .timeout = 300) {
    REQUIRE_GPU();
    gpt2_model *m = random_gpt2(1, 81);
    const int V = m->cfg.vocab_size;
    enum { B = 40, STEPS = 8, MAXP = 16, W = MAXP + STEPS };
    gpt2_backend *be = gpu_backend(m, B, W, B * MAXP, GPT2_DTYPE_F32);
    uint64_t seed = 82;
    int hist[B][W], len[B];
    gpt2_sampling ps[B];
    for (int b = 0; b < B; b++) {
        len[b] = 1 + (int)(trand(&seed) % MAXP);
        random_ids(hist[b], len[b], V, 300 + (uint64_t)b);
        ps[b] = gpt2_sampling_default();
        switch (b % 8) {
        case 0: break; /* greedy */
        case 1: ps[b].temperature = 0.8f; break;
        case 2: ps[b].temperature = 1.2f, ps[b].top_k = 40; break;
        case 3: ps[b].temperature = 0.7f, ps[b].top_p = 0.9f; break;
        case 4: ps[b].temperature = 1.0f, ps[b].top_k = 50, ps[b].top_p = 0.5f, ps[b].repetition_penalty = 1.3f; break;
        case 5: ps[b].temperature = 0.9f, ps[b].frequency_penalty = 0.5f, ps[b].presence_penalty = 0.3f; break;
        case 6: ps[b].temperature = 1e-45f; break; /* greedy in effect */
        case 7: ps[b].temperature = 2.0f, ps[b].top_p = 0.99f; break;
        }
        ps[b].seed = 1000u + (uint64_t)b;
    }
    gpt2_error err = {0};
    gpt2_chunk ch[B];
    gpt2_sample_req req[B];
    gpt2_sample_scratch cpu;
    cr_assert_eq(gpt2_sample_scratch_init(&cpu, V), 0);
    float *logits = malloc(sizeof(float) * (size_t)V * B), *row = malloc(sizeof(float) * (size_t)V);
    for (int step = 0; step < STEPS; step++) {
        for (int b = 0; b < B; b++) {
            ch[b] = step == 0 ? (gpt2_chunk){.slot = b, .pos = 0, .n = len[b], .tokens = hist[b]}
                              : (gpt2_chunk){.slot = b, .pos = len[b] - 1, .n = 1, .tokens = hist[b] + len[b] - 1};
            req[b] = (gpt2_sample_req){.p = &ps[b], .step = (uint64_t)step, .history = hist[b], .n_history = len[b],
                                       .n_prompt = len[b] - step};
        }
        cr_assert_eq(be->forward(be, ch, B, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(be->read_logits(be, logits, B, &err), GPT2_OK, "%s", err.msg);
        int got[B];
        float lp[B];
        cr_assert_eq(be->sample(be, req, B, got, lp, &err), GPT2_OK, "%s", err.msg);
        for (int b = 0; b < B; b++) {
            const float *raw = logits + (size_t)b * V;
            memcpy(row, raw, sizeof(float) * (size_t)V);
            /* sampler.c divides before subtracting the max until issue 14's fix: the tiny-temperature
             * rows are checked against the argmax, which is what both backends must give */
            const int tiny = ps[b].temperature < 1e-30f && ps[b].temperature > 0.0f;
            const int want = tiny ? argmax_row(raw, V) : gpt2_sample_row(row, V, &req[b], &cpu);
            cr_assert_eq(got[b], want, "step %d sequence %d (temperature %g): cuda %d, cpu %d", step, b,
                         ps[b].temperature, got[b], want);
            const double want_lp = log_softmax_at(raw, V, got[b]);
            cr_assert(fabs(lp[b] - want_lp) <= 1e-5 + 1e-5 * fabs(want_lp),
                      "step %d sequence %d: logprob %.8g, want %.8g", step, b, lp[b], want_lp);
            hist[b][len[b]++] = got[b];
        }
    }
    gpt2_sample_scratch_free(&cpu);
    free(logits);
    free(row);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

/* What README promises about batches on CUDA (fp32, greedy): a sequence's logits in a batch of 40
 * equal its logits alone within 1e-4 (abs + rel), and its greedy tokens are the same except at a
 * near-tie (the best two logits within 2e-4 of each other), after which the two runs may differ.
 * Not bitwise: cuBLAS picks its GEMM kernel by the number of rows. */
Test(cuda_real_shape, greedy_fp32_batch_invariance_as_documented, .timeout = 300) {
    REQUIRE_GPU();
    gpt2_model *m = random_gpt2(2, 83);
    const int V = m->cfg.vocab_size;
    enum { B = 40, STEPS = 12, MAXP = 24, W = MAXP + STEPS };
    uint64_t seed = 84;
    int prompt[B][MAXP], len[B];
    for (int b = 0; b < B; b++) {
        len[b] = 2 + (int)(trand(&seed) % (MAXP - 1));
        random_ids(prompt[b], len[b], V, 400 + (uint64_t)b);
    }
    gpt2_sampling greedy = gpt2_sampling_default();
    gpt2_error err = {0};
    /* alone: logits (B, STEPS, V), tokens and top-2 margins per step */
    float *alone_rows = malloc(sizeof(float) * (size_t)B * STEPS * V);
    int alone_tok[B][STEPS];
    double margin[B][STEPS];
    gpt2_backend *one = gpu_backend(m, 1, W, MAXP, GPT2_DTYPE_F32);
    for (int b = 0; b < B; b++) {
        int h[W];
        memcpy(h, prompt[b], sizeof(int) * (size_t)len[b]);
        for (int t = 0; t < STEPS; t++) {
            const int p0 = len[b] + t - 1; /* decode: the position of the last token */
            gpt2_chunk c = t == 0 ? (gpt2_chunk){.slot = 0, .pos = 0, .n = len[b], .tokens = h}
                                  : (gpt2_chunk){.slot = 0, .pos = p0, .n = 1, .tokens = h + p0};
            cr_assert_eq(one->forward(one, &c, 1, 0, &err), GPT2_OK, "%s", err.msg);
            float *r = alone_rows + ((size_t)b * STEPS + t) * V;
            cr_assert_eq(one->read_logits(one, r, 1, &err), GPT2_OK, "%s", err.msg);
            gpt2_sample_req q = {.p = &greedy, .history = h, .n_history = len[b] + t, .n_prompt = len[b]};
            cr_assert_eq(one->sample(one, &q, 1, &alone_tok[b][t], NULL, &err), GPT2_OK, "%s", err.msg);
            const int best = argmax_row(r, V);
            double second = -INFINITY;
            for (int v = 0; v < V; v++)
                if (v != best) second = fmax(second, r[v]);
            margin[b][t] = r[best] - second;
            h[len[b] + t] = alone_tok[b][t];
        }
    }
    gpt2_backend_free(one);
    /* together */
    gpt2_backend *all = gpu_backend(m, B, W, B * MAXP, GPT2_DTYPE_F32);
    int h[B][W], diverged[B] = {0}, near_ties = 0;
    gpt2_chunk ch[B];
    gpt2_sample_req req[B];
    float *rows = malloc(sizeof(float) * (size_t)B * V);
    for (int b = 0; b < B; b++) memcpy(h[b], prompt[b], sizeof(int) * (size_t)len[b]);
    for (int t = 0; t < STEPS; t++) {
        for (int b = 0; b < B; b++) {
            ch[b] = t == 0 ? (gpt2_chunk){.slot = b, .pos = 0, .n = len[b], .tokens = h[b]}
                           : (gpt2_chunk){.slot = b, .pos = len[b] + t - 1, .n = 1, .tokens = h[b] + len[b] + t - 1};
            req[b] = (gpt2_sample_req){.p = &greedy, .history = h[b], .n_history = len[b] + t, .n_prompt = len[b]};
        }
        cr_assert_eq(all->forward(all, ch, B, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(all->read_logits(all, rows, B, &err), GPT2_OK, "%s", err.msg);
        int tok[B];
        cr_assert_eq(all->sample(all, req, B, tok, NULL, &err), GPT2_OK, "%s", err.msg);
        for (int b = 0; b < B; b++) {
            if (!diverged[b]) {
                char what[96];
                snprintf(what, sizeof what, "sequence %d step %d: batch of %d against alone", b, t, B);
                assert_close(rows + (size_t)b * V, alone_rows + ((size_t)b * STEPS + t) * V, V, (tol_t){1e-4, 1e-4},
                             what);
                if (tok[b] != alone_tok[b][t]) {
                    cr_assert(margin[b][t] < 2e-4, "sequence %d step %d: token %d in the batch, %d alone, with a "
                                                   "margin of %.3g", b, t, tok[b], alone_tok[b][t], margin[b][t]);
                    diverged[b] = 1;
                    near_ties++;
                }
            }
            h[b][len[b] + t] = tok[b];
        }
    }
    cr_log_info("greedy fp32, %d sequences x %d steps: %d diverged at a near-tie", B, STEPS, near_ties);
    free(rows);
    free(alone_rows);
    gpt2_backend_free(all);
    gpt2_model_free(m);
}

/* ---------------------------------------------------------------------------------------------- */
/* Issue 11: all_rows chunks (echo) and copy_slot (beam search forks), on the CUDA backend          */

/* The rows of a forward with all_rows chunks (backend.h's layout: each chunk's last token, then the
 * other tokens of the all_rows chunks) equal the CPU backend's, fp32 and fp16. */
Test(cuda_backend, all_rows_layout_matches_cpu) {
    REQUIRE_GPU();
    gpt2_model *m = load_fixture("small");
    const int V = m->cfg.vocab_size;
    int a[5], b[7], c[3];
    random_ids(a, 5, V, 41);
    random_ids(b, 7, V, 42);
    random_ids(c, 3, V, 43);
    gpt2_chunk ch[3] = {{.slot = 0, .n = 5, .tokens = a, .all_rows = 1},
                        {.slot = 1, .n = 7, .tokens = b},
                        {.slot = 2, .n = 3, .tokens = c, .all_rows = 1}};
    gpt2_backend_opts bo = {.max_slots = 8, .max_seq = 32, .max_tokens = 40};
    gpt2_backend *cpu = NULL, *gpu = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_backend_create("cpu", m, &bo, &cpu, &err), GPT2_OK, "%s", err.msg);
    const int R = 3 + 4 + 2;
    float *want = malloc(sizeof(float) * (size_t)R * V), *got = malloc(sizeof(float) * (size_t)R * V);
    cr_assert_eq(cpu->forward(cpu, ch, 3, 0, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(cpu->read_logits(cpu, want, R, &err), GPT2_OK, "%s", err.msg);
    for (int d = 0; d < 2; d++) {
        bo.dtype = d ? GPT2_DTYPE_F16 : GPT2_DTYPE_F32;
        cr_assert_eq(gpt2_backend_create("cuda", m, &bo, &gpu, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(gpu->forward(gpu, ch, 3, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(gpu->read_logits(gpu, got, R, &err), GPT2_OK, "%s", err.msg);
        assert_close(got, want, (size_t)R * V, d ? (tol_t){3e-2, 3e-2} : (tol_t){1e-4, 1e-4},
                     d ? "all_rows fp16 vs cpu" : "all_rows fp32 vs cpu");
        gpt2_backend_free(gpu);
    }
    free(want);
    free(got);
    gpt2_backend_free(cpu);
    gpt2_model_free(m);
}

/* copy_slot: a prompt prefilled in slot 0, copied to slot 3, then both decode the same next tokens:
 * equal rows, and equal to the CPU backend doing the same. A copy of fewer positions is a shorter
 * prefix: slot 2 from 4 of slot 0's positions, continued at position 4, equals a fresh prefill. */
Test(cuda_backend, copy_slot_forks_a_sequence) {
    REQUIRE_GPU();
    gpt2_model *m = load_fixture("small");
    const int V = m->cfg.vocab_size;
    int p[12], next[2];
    random_ids(p, 12, V, 51);
    random_ids(next, 2, V, 52);
    for (int g = 0; g < 2; g++) {
        gpt2_backend *be = gpu_backend_opts(m, 4, 32, 32, GPT2_DTYPE_F32, g);
        gpt2_error err = {0};
        gpt2_chunk pre = {.slot = 0, .n = 10, .tokens = p};
        cr_assert_eq(be->forward(be, &pre, 1, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(be->copy_slot(be, 0, 3, 10, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(be->copy_slot(be, 0, 2, 4, &err), GPT2_OK, "%s", err.msg);
        gpt2_chunk dec[3] = {{.slot = 0, .pos = 10, .n = 1, .tokens = next},
                             {.slot = 3, .pos = 10, .n = 1, .tokens = next + 1},
                             {.slot = 2, .pos = 4, .n = 1, .tokens = next}};
        cr_assert_eq(be->forward(be, dec, 3, 0, &err), GPT2_OK, "%s", err.msg);
        float *rows = malloc(sizeof(float) * 3 * (size_t)V);
        cr_assert_eq(be->read_logits(be, rows, 3, &err), GPT2_OK, "%s", err.msg);
        int s0[11], s3[11], s2[5];
        memcpy(s0, p, sizeof(int) * 10);
        memcpy(s3, p, sizeof(int) * 10);
        memcpy(s2, p, sizeof(int) * 4);
        s0[10] = next[0];
        s3[10] = next[1];
        s2[4] = next[0];
        float *r0 = full_logits(m, s0, 11), *r3 = full_logits(m, s3, 11), *r2 = full_logits(m, s2, 5);
        assert_close(rows, r0 + 10 * (size_t)V, V, (tol_t){1e-4, 1e-4}, "slot 0 after the copies");
        assert_close(rows + V, r3 + 10 * (size_t)V, V, (tol_t){1e-4, 1e-4}, "slot 3, copied from 0");
        assert_close(rows + 2 * (size_t)V, r2 + 4 * (size_t)V, V, (tol_t){1e-4, 1e-4}, "slot 2, 4 positions of 0");
        cr_assert_eq(be->copy_slot(be, 1, 1, 3, &err), GPT2_ERR_ARG);
        cr_assert_eq(be->copy_slot(be, 0, 1, 33, &err), GPT2_ERR_ARG);
        free(r0);
        free(r3);
        free(r2);
        free(rows);
        gpt2_backend_free(be);
    }
    gpt2_model_free(m);
}

#endif /* GPT2_HAVE_CUDA */
