/* bench_kernels.c: per-kernel microbenchmarks of the CUDA engine (`make bench-kernels`).
 *
 *   build/bench_kernels [--commit ID] [--iters N] [--json FILE]
 *
 * 1. The device's copy bandwidth: a 1 GiB device-to-device cudaMemcpyAsync, counting bytes read plus
 *    bytes written; every "% of copy" below is against this number, not the datasheet.
 * 2. The decode matrix products at gpt2 (124M) shapes, M = 1..16 rows, fp32 / fp16 / bf16: the GEMV
 *    kernels (kernels/gemv.cu) against cuBLAS as the forward calls it (the MLP up projection with its
 *    bias + GELU: fused in the GEMV, cuBLAS + the GELU kernel otherwise). Weights rotate through a
 *    pool of >= 4x the L2 size so that no timing reads a cached matrix. Achieved GB/s = weight bytes
 *    / time. The crossover (largest M up to which the GEMV wins on every shape) is printed per dtype:
 *    that is the number GEMV_MAX_ROWS in src/cuda_internal.h should be set to.
 * 3. The decode step's breakdown at batch 1 and 8, position 512, fp16: each kernel of one layer and
 *    of the step's ends timed alone at the step's shapes (x 12 layers), their sum, and a real decode
 *    step (forward + greedy sample through the CUDA backend, graphs on) of a random gpt2, against the
 *    floor (weight bytes per step / copy bandwidth).
 * 4. Decode attention alone (kernels/attention_decode.cu: one launch, split-K with the in-kernel merge,
 *    appending the new K/V), 12 heads x 64, batch 1..256, context 128 / 512 / 1024, every dtype:
 *    achieved GB/s = K + V bytes read (+ q, out) / time, and % of the copy bandwidth. The caches of
 *    a launch rotate through >= 4x the L2 (slots are reassigned per run) so that no run reads a
 *    cached context.
 * 5. Prefill attention alone (kernels/attention_prefill.cu: tensor cores for fp16/bf16, the exact
 *    float kernel for fp32), 12 x 64, B sequences of T tokens from position 0: TFLOP/s counting the
 *    causal half only (2 * 2 * HS flops per visible (query, key) pair), against a large cuBLAS GEMM
 *    (8192^3, fp16/bf16 in, float accumulation) as the matrix units' measured ceiling.
 * Every time is the median of --iters runs after warm-up, with CUDA events. Without a GPU the program
 * says so and exits 0: nothing is measured. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "gpt2.h"
#include "sampler.h"
#include "tensors.h"

#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/encoder.cuh"
#include "../kernels/gelu.cuh"
#include "../kernels/gemv.cuh"
#include "../kernels/sample.cuh"

#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "bench_kernels: %s failed: %s at %s:%d\n", #call, cudaGetErrorString(e_), __FILE__, \
                    __LINE__);                                                                               \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)
#define CB(call)                                                                                             \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            fprintf(stderr, "bench_kernels: %s failed: %s at %s:%d\n", #call, cublasGetStatusString(s_),     \
                    __FILE__, __LINE__);                                                                     \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

static int g_iters = 50;
static cudaStream_t g_st;
static cublasHandle_t g_cublas;
static int g_nsm;
static FILE *g_json;
static int g_json_first = 1;

static void json_rec(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void json_rec(const char *fmt, ...) {
    if (!g_json) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(g_json, "%s\n  ", g_json_first ? "" : ",");
    vfprintf(g_json, fmt, ap);
    va_end(ap);
    g_json_first = 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* An operation to time: run(ctx, i) enqueues iteration i on g_st. */
typedef void (*op_fn)(void *ctx, int i);

/* Median microseconds of op over g_iters runs after 5 warm-up runs, one event pair per run. */
static double time_us(op_fn op, void *ctx) {
    cudaEvent_t ev[2 * 201];
    const int n = g_iters < 200 ? g_iters : 200;
    for (int i = 0; i < 2 * n; i++) CK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < 5; i++) op(ctx, i);
    CK(cudaStreamSynchronize(g_st));
    for (int i = 0; i < n; i++) {
        CK(cudaEventRecord(ev[2 * i], g_st));
        op(ctx, 5 + i);
        CK(cudaEventRecord(ev[2 * i + 1], g_st));
    }
    CK(cudaStreamSynchronize(g_st));
    double t[200];
    for (int i = 0; i < n; i++) {
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
        t[i] = 1e3 * ms;
    }
    for (int i = 0; i < 2 * n; i++) CK(cudaEventDestroy(ev[i]));
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

/* Median host microseconds of op (which must finish its own device work) over g_iters runs. */
static double time_host_us(op_fn op, void *ctx) {
    const int n = g_iters < 200 ? g_iters : 200;
    double t[200];
    for (int i = 0; i < 5; i++) op(ctx, i);
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        op(ctx, 5 + i);
        clock_gettime(CLOCK_MONOTONIC, &b);
        t[i] = 1e6 * (double)(b.tv_sec - a.tv_sec) + 1e-3 * (double)(b.tv_nsec - a.tv_nsec);
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

/* Random values in [-scale, scale) of dtype dt, n of them, on the device. */
static void *dev_random(size_t n, gpt2_dtype dt, float scale, uint64_t seed) {
    float *h = malloc(n * sizeof(float)), *f = NULL;
    void *d = NULL;
    if (!h) {
        fprintf(stderr, "bench_kernels: out of host memory\n");
        exit(1);
    }
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        h[i] = scale * ((float)(s >> 40) / 8388608.0f - 1.0f);
    }
    CK(cudaMalloc((void **)&f, n * sizeof(float)));
    CK(cudaMemcpy(f, h, n * sizeof(float), cudaMemcpyHostToDevice));
    free(h);
    if (dt == GPT2_DTYPE_F32) return f;
    CK(cudaMalloc(&d, n * 2));
    CK(convert_cuda(d, dt, f, GPT2_DTYPE_F32, n, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaFree(f));
    return d;
}

static size_t esz(gpt2_dtype dt) { return dt == GPT2_DTYPE_F32 ? 4 : 2; }
static const char *dtname(gpt2_dtype dt) { return dt == GPT2_DTYPE_F32 ? "fp32" : dt == GPT2_DTYPE_F16 ? "fp16" : "bf16"; }
static cudaDataType_t cuda_dt(gpt2_dtype dt) {
    return dt == GPT2_DTYPE_F32 ? CUDA_R_32F : dt == GPT2_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* ---------------------------------------------------------------------------------------------- */
/* 1. copy bandwidth                                                                               */

typedef struct {
    void *a, *b;
    size_t bytes;
} copy_ctx;
static void op_copy(void *c_, int i) {
    copy_ctx *c = c_;
    CK(cudaMemcpyAsync(i % 2 ? c->a : c->b, i % 2 ? c->b : c->a, c->bytes, cudaMemcpyDeviceToDevice, g_st));
}

/* ---------------------------------------------------------------------------------------------- */
/* 2. the matrix products                                                                          */

typedef struct {
    const char *name;
    int K, OC, nt, gelu; /* nt: out (M, OC) float = x @ w^T, w (OC, K) */
} shape_t;

typedef struct {
    gpt2_dtype dt;
    const shape_t *sh;
    int M, use_gemv, ksplit, nslots;
    char *pool;        /* nslots weight matrices, each `stride` bytes apart */
    size_t stride;
    void *x, *out, *bias;
    float *scratch;
    size_t scratch_floats;
    unsigned *counters;
    size_t n_counters;
} mm_ctx;

static void op_mm(void *c_, int i) {
    mm_ctx *c = c_;
    const shape_t *s = c->sh;
    const void *w = c->pool + (size_t)(i % c->nslots) * c->stride;
    const float one = 1.0f, zero = 0.0f;
    if (c->use_gemv) {
        if (s->nt)
            CK(gemv_nt_forward_cuda(c->out, s->OC, c->x, w, c->M, s->K, s->OC, NULL, NULL, 0.0f, c->dt, g_st));
        else
            CK(gemv_forward_cuda(c->out, c->x, w, s->gelu ? c->bias : NULL, c->M, s->K, s->OC, s->gelu, NULL, c->ksplit,
                                 c->scratch, c->scratch_floats, c->counters, c->n_counters, c->dt, g_st));
        return;
    }
    const cudaDataType_t t = cuda_dt(c->dt);
    if (s->nt) {
        CB(cublasGemmEx(g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, s->OC, c->M, s->K, &one, w, t, s->K, c->x, t, s->K, &zero,
                        c->out, CUDA_R_32F, s->OC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        CB(cublasGemmEx(g_cublas, CUBLAS_OP_N, CUBLAS_OP_N, s->OC, c->M, s->K, &one, w, t, s->OC, c->x, t, s->K, &zero,
                        c->out, t, s->OC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        if (s->gelu) CK(gelu_bias_forward_cuda(c->out, c->out, c->bias, c->M, s->OC, c->dt, g_st));
    }
}

static void set_math(gpt2_dtype dt) {
    CB(cublasSetMathMode(g_cublas, dt == GPT2_DTYPE_F32 ? CUBLAS_DEFAULT_MATH
                                                        : CUBLAS_DEFAULT_MATH |
                                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
}

/* Returns the crossover for dt: the largest M such that the GEMV wins every shape at every M' <= M.
 * pool: pool_bytes of random weights in dt, carved into as many matrices of a shape as fit. */
static int bench_products(gpt2_dtype dt, double copy_gbs, char *pool, size_t pool_bytes) {
    const shape_t shapes[] = {{"qkv", 768, 2304, 0, 0},    {"attn_proj", 768, 768, 0, 0},
                              {"mlp_up+gelu", 768, 3072, 0, 1}, {"mlp_down", 3072, 768, 0, 0},
                              {"lm_head", 768, 50304, 1, 0}};
    enum { n_shapes = 5 };
    static double tg[GPT2_GEMV_MAX_M + 1][n_shapes], tc[GPT2_GEMV_MAX_M + 1][n_shapes];
    int ks[n_shapes];
    set_math(dt);
    for (int si = 0; si < n_shapes; si++) {
        const shape_t *sh = &shapes[si];
        const size_t wbytes = (size_t)sh->K * sh->OC * esz(dt), stride = (wbytes + 255) & ~(size_t)255;
        mm_ctx c = {.dt = dt, .sh = sh, .pool = pool, .stride = stride, .nslots = (int)(pool_bytes / stride)};
        c.x = dev_random((size_t)GPT2_GEMV_MAX_M * sh->K, dt, 1.0f, 3);
        c.bias = dev_random((size_t)sh->OC, dt, 0.1f, 4);
        CK(cudaMalloc(&c.out, (size_t)GPT2_GEMV_MAX_M * sh->OC * 4));
        c.ksplit = ks[si] = gemv_pick_ksplit(sh->K, sh->OC, dt, g_nsm);
        c.scratch_floats = gemv_scratch_floats(GPT2_GEMV_MAX_M, sh->OC, c.ksplit);
        c.n_counters = gemv_counters(sh->OC);
        CK(cudaMalloc((void **)&c.scratch, (c.scratch_floats ? c.scratch_floats : 1) * sizeof(float)));
        CK(cudaMalloc((void **)&c.counters, c.n_counters * sizeof(unsigned)));
        CK(cudaMemset(c.counters, 0, c.n_counters * sizeof(unsigned)));
        for (int M = 1; M <= GPT2_GEMV_MAX_M; M++) {
            c.M = M;
            c.use_gemv = 1;
            tg[M][si] = time_us(op_mm, &c);
            c.use_gemv = 0;
            tc[M][si] = time_us(op_mm, &c);
        }
        CK(cudaFree(c.x));
        CK(cudaFree(c.bias));
        CK(cudaFree(c.out));
        CK(cudaFree(c.scratch));
        CK(cudaFree(c.counters));
    }
    printf("\n%s matrix products (weights rotating through %.0f MiB; GB/s = weight bytes / time)\n", dtname(dt),
           (double)pool_bytes / 1048576.0);
    printf("%-12s %3s %6s %10s %10s %9s %7s %11s %7s  %s\n", "shape", "M", "ksplit", "gemv us", "cublas us",
           "gemv GB/s", "% copy", "cublas GB/s", "% copy", "faster");
    int crossover = GPT2_GEMV_MAX_M, lost = 0;
    for (int M = 1; M <= GPT2_GEMV_MAX_M; M++) {
        int all_won = 1;
        for (int si = 0; si < n_shapes; si++) {
            const shape_t *sh = &shapes[si];
            const double wbytes = (double)sh->K * sh->OC * (double)esz(dt);
            const double gg = wbytes / tg[M][si] / 1e3, gc = wbytes / tc[M][si] / 1e3;
            printf("%-12s %3d %6d %10.2f %10.2f %9.0f %6.0f%% %11.0f %6.0f%%  %s\n", sh->name, M, ks[si], tg[M][si],
                   tc[M][si], gg, 100 * gg / copy_gbs, gc, 100 * gc / copy_gbs, tg[M][si] <= tc[M][si] ? "gemv" : "cublas");
            json_rec("{\"kind\": \"product\", \"dtype\": \"%s\", \"shape\": \"%s\", \"K\": %d, \"OC\": %d, \"M\": %d, "
                     "\"ksplit\": %d, \"gemv_us\": %.3f, \"cublas_us\": %.3f, \"gemv_gbs\": %.1f, \"cublas_gbs\": %.1f}",
                     dtname(dt), sh->name, sh->K, sh->OC, M, ks[si], tg[M][si], tc[M][si], gg, gc);
            if (tg[M][si] > tc[M][si]) all_won = 0;
        }
        if (!all_won && !lost) {
            crossover = M - 1;
            lost = 1;
        }
    }
    printf("crossover %s: the GEMV is faster on every shape for M <= %d (measured; the plan's GEMV_MAX_ROWS is "
           "an unmeasured default until set from this)\n", dtname(dt), crossover);
    json_rec("{\"kind\": \"crossover\", \"dtype\": \"%s\", \"gemv_max_rows\": %d}", dtname(dt), crossover);
    return crossover;
}

/* ---------------------------------------------------------------------------------------------- */
/* 3. the decode step                                                                              */

enum { C_ = 768, NH_ = 12, HS_ = 64, L_ = 12, V_ = 50257, VP_ = 50304, MAXT_ = 1024, POS_ = 512 };

typedef struct {
    int which, B;
    gpt2_dtype dt;
    void *qkv, *att, *fch, *resid, *wqkv, *wproj, *wfc, *wfcp, *bfc, *lnw, *lnb, *wte, *wpe;
    void *kc, *vc;
    float *logits, *attn_scr, *gscr;
    size_t attn_scr_n, gscr_n, attn_cnt_n;
    unsigned *cnt, *attn_cnt;
    int *tok, *pos, *slot;
    gpt2_cuda_sample_scratch sscr;
    gpt2_cuda_sample_params *sparams;
    int *shist, *sout;
} step_ctx;

enum { K_ENC, K_QKV, K_ATT, K_PROJ, K_FC, K_FCP, K_LMHEAD, K_SAMPLE, K_N };
static const char *const k_names[K_N] = {"encoder",         "ln1 + gemv qkv",      "attention + kv append",
                                         "gemv attn_proj + resid", "ln2 + gemv mlp_up + gelu", "gemv mlp_down + resid",
                                         "lnf + gemv lm_head", "sample (greedy)"};
static const int k_per_layer[K_N] = {0, 1, 1, 1, 1, 1, 0, 0}; /* times per layer; 0: once per step */

/* The fused GEMV of the decode path (src/cuda_forward.c's enqueue_decode_fused). */
static void gemv_or_die(step_ctx *c, void *out, const void *in, const void *w, const void *b, int K, int OC, int gelu,
                        int ln, int into_resid) {
    const gemv_fusion f = {ln ? c->lnw : NULL, ln ? c->lnb : NULL, 1e-5f, into_resid ? c->resid : NULL};
    CK(gemv_forward_cuda(out, in, w, b, c->B, K, OC, gelu, &f, gemv_pick_ksplit(K, OC, c->dt, g_nsm), c->gscr,
                         c->gscr_n, c->cnt, gemv_counters(4 * C_), c->dt, g_st));
}

static void op_step_kernel(void *c_, int i) {
    step_ctx *c = c_;
    const int B = c->B, C = C_;
    (void)i;
    switch (c->which) {
    case K_ENC: CK(encoder_forward_cuda(c->resid, c->tok, c->pos, c->wte, c->wpe, B, C, V_, MAXT_, c->dt, g_st)); break;
    case K_QKV: gemv_or_die(c, c->qkv, c->resid, c->wqkv, NULL, C, 3 * C, 0, 1, 0); break;
    case K_ATT:
        CK(attention_decode_cuda(c->att, c->qkv, NULL, c->kc, c->vc, c->slot, c->pos, B, NH_, HS_, MAXT_, B, 1,
                                 c->attn_scr, c->attn_scr_n, c->attn_cnt, c->attn_cnt_n, c->dt, g_st));
        break;
    case K_PROJ: gemv_or_die(c, NULL, c->att, c->wproj, c->lnb, C, C, 0, 0, 1); break;
    case K_FC: gemv_or_die(c, c->fch, c->resid, c->wfc, c->bfc, C, 4 * C, 1, 1, 0); break;
    case K_FCP: gemv_or_die(c, NULL, c->fch, c->wfcp, c->lnb, 4 * C, C, 0, 0, 1); break;
    case K_LMHEAD:
        CK(gemv_nt_forward_cuda(c->logits, VP_, c->resid, c->wte, B, C, VP_, c->lnw, c->lnb, 1e-5f, c->dt, g_st));
        break;
    case K_SAMPLE:
        CK(sample_cuda(c->sout, NULL, c->logits, V_, VP_, c->sparams, c->shist, B, 0, &c->sscr, g_st));
        break;
    }
}

/* A random gpt2 (124M shapes) on the host, as tests/test_cuda.c's random_gpt2. */
static gpt2_model *random_gpt2(void) {
    gpt2_model *m = calloc(1, sizeof *m);
    if (!m) exit(1);
    m->cfg = (gpt2_config){.n_layer = L_, .n_head = NH_, .n_embd = C_, .n_positions = MAXT_, .vocab_size = V_,
                           .layer_norm_epsilon = 1e-5f, .tie_word_embeddings = 1};
    gpt2_weights *w = &m->w;
    size_t n[GPT2_N_TENSORS] = {0};
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (k == GPT2_T_LMHEAD) continue;
        if (gpt2_tensor_numel(&m->cfg, (gpt2_tensor_kind)k, NULL, &n[k])) exit(1);
        w->n_floats += n[k];
    }
    w->memory = malloc(sizeof(float) * w->n_floats);
    if (!w->memory) exit(1);
    float *at = w->memory;
    uint64_t s = 12345;
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (k == GPT2_T_LMHEAD) continue;
        *gpt2_tensor_field(w, (gpt2_tensor_kind)k) = at;
        const int lnw = k == GPT2_T_LN1W || k == GPT2_T_LN2W || k == GPT2_T_LNFW;
        for (size_t e = 0; e < n[k]; e++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            const float u = (float)(s >> 40) / 8388608.0f - 1.0f;
            at[e] = lnw ? 1.0f + 0.1f * u : 0.0346f * u;
        }
        at += n[k];
    }
    w->lm_head = w->wte;
    w->tied = 1;
    return m;
}

typedef struct {
    gpt2_backend *be;
    gpt2_chunk ch[8];
    int B, tokens[8];
    gpt2_sample_req req[8];
    gpt2_sampling sp;
    int out[8];
} real_ctx;

static void op_real_step(void *c_, int i) {
    real_ctx *c = c_;
    gpt2_error err = {0};
    for (int b = 0; b < c->B; b++) c->ch[b].pos = POS_ + (i % 64); /* stay below max_seq; the cache is already there */
    if (c->be->forward(c->be, c->ch, c->B, 0, &err) != GPT2_OK || c->be->sample(c->be, c->req, c->B, c->out, NULL, &err)) {
        fprintf(stderr, "bench_kernels: decode step: %s\n", err.msg);
        exit(1);
    }
}

static void bench_step(int B, double copy_gbs) {
    const gpt2_dtype dt = GPT2_DTYPE_F16;
    const size_t es = 2, C = C_;
    step_ctx c = {.B = B, .dt = dt};
    c.resid = dev_random((size_t)B * C, dt, 1.0f, 1);
    c.qkv = dev_random((size_t)B * 3 * C, dt, 1.0f, 3);
    c.att = dev_random((size_t)B * C, dt, 1.0f, 4);
    c.fch = dev_random((size_t)B * 4 * C, dt, 1.0f, 6);
    c.wqkv = dev_random(C * 3 * C, dt, 0.03f, 7);
    c.wproj = dev_random(C * C, dt, 0.03f, 8);
    c.wfc = dev_random(C * 4 * C, dt, 0.03f, 9);
    c.wfcp = dev_random(4 * C * C, dt, 0.03f, 10);
    c.bfc = dev_random(4 * C, dt, 0.03f, 11);
    c.lnw = dev_random(C, dt, 1.0f, 12);
    c.lnb = dev_random(C, dt, 0.1f, 13);
    c.wte = dev_random((size_t)VP_ * C, dt, 0.03f, 14);
    c.wpe = dev_random((size_t)MAXT_ * C, dt, 0.03f, 15);
    c.kc = dev_random((size_t)B * MAXT_ * C, dt, 1.0f, 16);
    c.vc = dev_random((size_t)B * MAXT_ * C, dt, 1.0f, 17);
    CK(cudaMalloc((void **)&c.logits, (size_t)B * VP_ * sizeof(float)));
    c.attn_scr_n = attention_decode_scratch_floats(B, NH_, HS_, MAXT_);
    CK(cudaMalloc((void **)&c.attn_scr, c.attn_scr_n * sizeof(float)));
    c.attn_cnt_n = attention_decode_counters(B, NH_);
    CK(cudaMalloc((void **)&c.attn_cnt, c.attn_cnt_n * sizeof(unsigned)));
    CK(cudaMemset(c.attn_cnt, 0, c.attn_cnt_n * sizeof(unsigned)));
    c.gscr_n = gemv_scratch_floats(B, 4 * C_, GPT2_GEMV_MAX_KSPLIT);
    CK(cudaMalloc((void **)&c.gscr, c.gscr_n * sizeof(float)));
    CK(cudaMalloc((void **)&c.cnt, gemv_counters(4 * C_) * sizeof(unsigned)));
    CK(cudaMemset(c.cnt, 0, gemv_counters(4 * C_) * sizeof(unsigned)));
    int h[8];
    CK(cudaMalloc((void **)&c.tok, sizeof h));
    CK(cudaMalloc((void **)&c.pos, sizeof h));
    CK(cudaMalloc((void **)&c.slot, sizeof h));
    for (int b = 0; b < 8; b++) h[b] = 100 + b;
    CK(cudaMemcpy(c.tok, h, sizeof h, cudaMemcpyHostToDevice));
    for (int b = 0; b < 8; b++) h[b] = POS_;
    CK(cudaMemcpy(c.pos, h, sizeof h, cudaMemcpyHostToDevice));
    for (int b = 0; b < 8; b++) h[b] = b;
    CK(cudaMemcpy(c.slot, h, sizeof h, cudaMemcpyHostToDevice));
    /* the sampler's scratch and greedy parameters */
    gpt2_cuda_sample_scratch *ss = &c.sscr;
    ss->rows = B, ss->V = V_;
    const size_t GV = (size_t)B * V_;
    CK(cudaMalloc((void **)&ss->keys, GV * 4));
    CK(cudaMalloc((void **)&ss->count, GV * 4));
    CK(cudaMemset(ss->count, 0, GV * 4));
    gpt2_cuda_sample_params prm[8];
    memset(prm, 0, sizeof prm);
    for (int b = 0; b < B; b++) prm[b].greedy = 1, prm[b].row = b, prm[b].top_p = 1.0f, prm[b].repetition_penalty = 1.0f;
    CK(cudaMalloc((void **)&c.sparams, sizeof prm));
    CK(cudaMemcpy(c.sparams, prm, sizeof prm, cudaMemcpyHostToDevice));
    CK(cudaMalloc((void **)&c.shist, 4));
    CK(cudaMemset(c.shist, 0, 4));
    CK(cudaMalloc((void **)&c.sout, sizeof h));

    /* bytes each kernel must move at least (weights, KV read, logits written), for GB/s */
    const double kv_bytes = 2.0 * B * (POS_ + 1) * C * es;
    const double need[K_N] = {0, 3.0 * C * C * es, kv_bytes, 1.0 * C * C * es, 4.0 * C * C * es, 4.0 * C * C * es,
                              (double)VP_ * C * es + 4.0 * B * VP_, 4.0 * B * V_};
    printf("\ndecode step breakdown, fp16, batch %d, position %d (each kernel alone at the step's shapes, weights "
           "hot in L2 for the per-layer ones: a lower bound)\n", B, POS_);
    printf("%-30s %10s %6s %12s %10s %7s\n", "kernel", "us", "x", "us per step", "GB/s", "% copy");
    double sum = 0;
    for (int k = 0; k < K_N; k++) {
        c.which = k;
        const double t = time_us(op_step_kernel, &c);
        const int times = k_per_layer[k] ? k_per_layer[k] * L_ : 1;
        const double gbs = need[k] > 0 ? need[k] / t / 1e3 : 0;
        sum += t * times;
        printf("%-30s %10.2f %6d %12.2f %10.0f %6.0f%%\n", k_names[k], t, times, t * times, gbs, 100 * gbs / copy_gbs);
        json_rec("{\"kind\": \"step_kernel\", \"batch\": %d, \"kernel\": \"%s\", \"us\": %.3f, \"per_step\": %d, "
                 "\"gbs\": %.1f}", B, k_names[k], t, times, gbs);
    }
    /* the floor: every weight read once (the lm_head is wte: counted once), the KV cache read once */
    const double weight_bytes = (double)L_ * 12.0 * C * C * es + (double)VP_ * C * es;
    const double floor_us = (weight_bytes + L_ * kv_bytes) / (copy_gbs * 1e3);
    printf("%-30s %10s %6s %12.2f\n", "sum of kernels", "", "", sum);

    gpt2_model *m = random_gpt2();
    gpt2_backend_opts o = {.max_slots = B, .max_seq = MAXT_, .max_tokens = B * POS_, .dtype = dt};
    real_ctx r = {.B = B};
    gpt2_error err = {0};
    if (gpt2_backend_create("cuda", m, &o, &r.be, &err) != GPT2_OK) {
        fprintf(stderr, "bench_kernels: backend: %s\n", err.msg);
        exit(1);
    }
    int *prompt = malloc(sizeof(int) * POS_);
    if (!prompt) exit(1);
    for (int t = 0; t < POS_; t++) prompt[t] = (t * 7919) % V_;
    for (int b = 0; b < B; b++) r.ch[b] = (gpt2_chunk){.slot = b, .pos = 0, .n = POS_, .tokens = prompt};
    if (r.be->forward(r.be, r.ch, B, 0, &err) != GPT2_OK) {
        fprintf(stderr, "bench_kernels: prefill: %s\n", err.msg);
        exit(1);
    }
    r.sp = gpt2_sampling_default();
    for (int b = 0; b < B; b++) {
        r.tokens[b] = 42 + b;
        r.ch[b] = (gpt2_chunk){.slot = b, .pos = POS_, .n = 1, .tokens = &r.tokens[b]};
        r.req[b] = (gpt2_sample_req){.p = &r.sp, .history = prompt, .n_history = POS_, .n_prompt = POS_};
    }
    /* the backend runs on its own stream and sample() ends with a synchronisation: a host clock
     * around forward + sample measures the step as a user sees it */
    const double t_step = time_host_us(op_real_step, &r);
    printf("%-30s %10s %6s %12.2f   (forward + greedy sample through the backend, graphs %s)\n", "real decode step", "",
           "", t_step, r.be->warning[0] ? "OFF" : "on");
    printf("%-30s %10s %6s %12.2f   (weights %.1f MB + KV %.1f MB at %.0f GB/s); real step = %.2fx the floor\n",
           "floor", "", "", floor_us, weight_bytes / 1e6, L_ * kv_bytes / 1e6, copy_gbs, t_step / floor_us);
    json_rec("{\"kind\": \"step\", \"batch\": %d, \"sum_kernels_us\": %.2f, \"real_step_us\": %.2f, \"floor_us\": %.2f}",
             B, sum, t_step, floor_us);
    gpt2_backend_free(r.be);
    gpt2_model_free(m);
    free(prompt);
    CK(cudaDeviceSynchronize());
    void *bufs[] = {c.resid, c.qkv, c.att, c.fch, c.wqkv, c.wproj, c.wfc, c.wfcp, c.bfc, c.lnw, c.lnb,
                    c.wte, c.wpe, c.kc, c.vc, c.logits, c.attn_scr, c.attn_cnt, c.gscr, c.cnt, c.tok, c.pos, c.slot, ss->keys,
                    ss->count, c.sparams,
                    c.shist, c.sout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) CK(cudaFree(bufs[i]));
}

/* ---------------------------------------------------------------------------------------------- */
/* 4. decode attention                                                                             */

typedef struct {
    gpt2_dtype dt;
    int B, S, nrot;
    void *qkv, *out, *kc, *vc;
    int *pos, *slots; /* slots: (nrot, B) slot lists, one per rotation */
    float *scr;
    size_t scr_n, cnt_n;
    unsigned *cnt;
} dattn_ctx;

static void op_dattn(void *c_, int i) {
    dattn_ctx *c = c_;
    CK(attention_decode_cuda(c->out, c->qkv, NULL, c->kc, c->vc, c->slots + (size_t)(i % c->nrot) * c->B, c->pos, c->B,
                             NH_, HS_, MAXT_, c->S, 1, c->scr, c->scr_n, c->cnt, c->cnt_n, c->dt, g_st));
}

/* A cache of n values of dt, random: a block of random values repeated (made on the host once, tiled on
 * the device: a 256-slot cache is 200M values; the repetition does not matter to the timing). */
static void *dev_random_tiled(size_t n, gpt2_dtype dt, uint64_t seed) {
    const size_t blk = (size_t)1 << 24, es = esz(dt);
    void *b = dev_random(blk, dt, 1.0f, seed), *d = NULL;
    CK(cudaMalloc(&d, n * es));
    for (size_t done = 0; done < n; done += blk)
        CK(cudaMemcpy((char *)d + done * es, b, (n - done < blk ? n - done : blk) * es, cudaMemcpyDeviceToDevice));
    CK(cudaFree(b));
    return d;
}

static void bench_decode_attention(double copy_gbs, size_t l2_bytes) {
    const int Bs[] = {1, 8, 64, 256}, lens[] = {128, 512, 1024};
    const gpt2_dtype dts[3] = {GPT2_DTYPE_F16, GPT2_DTYPE_BF16, GPT2_DTYPE_F32};
    printf("\ndecode attention (one launch: split-K + in-kernel merge + K/V append), 12 heads x 64, maxT %d; GB/s = "
           "(K + V read + q + out) / time; rot: launches of disjoint slots cycled\n", MAXT_);
    printf("%-5s %5s %6s %5s %10s %10s %7s\n", "dtype", "batch", "len", "rot", "us", "GB/s", "% copy");
    for (int di = 0; di < 3; di++) {
        const gpt2_dtype dt = dts[di];
        const size_t es = esz(dt), slot_bytes = 2 * (size_t)NH_ * MAXT_ * HS_ * es; /* K + V of one slot */
        int S = (int)((4 * l2_bytes + slot_bytes - 1) / slot_bytes); /* >= 4x L2 of slots, >= the largest B */
        if (S < Bs[3]) S = Bs[3];
        const size_t cache_n = (size_t)S * NH_ * MAXT_ * HS_;
        void *kc = dev_random_tiled(cache_n, dt, 21), *vc = dev_random_tiled(cache_n, dt, 22);
        for (int bi = 0; bi < 4; bi++) {
            const int B = Bs[bi];
            dattn_ctx c = {.dt = dt, .B = B, .S = S, .nrot = S / B, .kc = kc, .vc = vc};
            if (c.nrot > 64) c.nrot = 64;
            c.qkv = dev_random((size_t)B * 3 * C_, dt, 1.0f, 23);
            CK(cudaMalloc(&c.out, (size_t)B * C_ * es));
            c.scr_n = attention_decode_scratch_floats(B, NH_, HS_, MAXT_);
            c.cnt_n = attention_decode_counters(B, NH_);
            CK(cudaMalloc((void **)&c.scr, c.scr_n * sizeof(float)));
            CK(cudaMalloc((void **)&c.cnt, c.cnt_n * sizeof(unsigned)));
            CK(cudaMemset(c.cnt, 0, c.cnt_n * sizeof(unsigned)));
            int *h = malloc(sizeof(int) * (size_t)c.nrot * B);
            if (!h) exit(1);
            for (int r = 0; r < c.nrot; r++)
                for (int b = 0; b < B; b++) h[(size_t)r * B + b] = r * B + b; /* disjoint slots per rotation */
            CK(cudaMalloc((void **)&c.slots, sizeof(int) * (size_t)c.nrot * B));
            CK(cudaMemcpy(c.slots, h, sizeof(int) * (size_t)c.nrot * B, cudaMemcpyHostToDevice));
            CK(cudaMalloc((void **)&c.pos, sizeof(int) * B));
            for (int li = 0; li < 3; li++) {
                const int len = lens[li];
                for (int b = 0; b < B; b++) h[b] = len - 1;
                CK(cudaMemcpy(c.pos, h, sizeof(int) * B, cudaMemcpyHostToDevice));
                const double t = time_us(op_dattn, &c);
                const double bytes = (double)B * NH_ * ((double)len * 2 * HS_ * es + 4.0 * HS_ * es);
                const double gbs = bytes / t / 1e3;
                printf("%-5s %5d %6d %5d %10.2f %10.0f %6.0f%%\n", dtname(dt), B, len, c.nrot, t, gbs, 100 * gbs / copy_gbs);
                json_rec("{\"kind\": \"decode_attention\", \"dtype\": \"%s\", \"batch\": %d, \"len\": %d, \"us\": %.3f, "
                         "\"gbs\": %.1f, \"pct_copy\": %.1f}", dtname(dt), B, len, t, gbs, 100 * gbs / copy_gbs);
            }
            free(h);
            void *bufs[] = {c.qkv, c.out, c.scr, c.cnt, c.slots, c.pos};
            for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) CK(cudaFree(bufs[k]));
        }
        CK(cudaFree(kc));
        CK(cudaFree(vc));
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* 5. prefill attention                                                                            */

typedef struct {
    gpt2_dtype dt;
    int n_tiles, S;
    void *qkv, *out, *kc, *vc;
    int *chunks, *tiles;
} pattn_ctx;

static void op_pattn(void *c_, int i) {
    pattn_ctx *c = c_;
    (void)i;
    CK(attention_prefill_cuda(c->out, c->qkv, NULL, c->kc, c->vc, c->chunks, c->tiles, c->n_tiles, NH_, HS_, MAXT_,
                              c->S, c->dt, g_st));
}

typedef struct {
    gpt2_dtype dt;
    void *a, *b, *c;
    int n;
} gemm_ctx;
static void op_gemm(void *c_, int i) {
    gemm_ctx *c = c_;
    const float one = 1.0f, zero = 0.0f;
    (void)i;
    CB(cublasGemmEx(g_cublas, CUBLAS_OP_N, CUBLAS_OP_N, c->n, c->n, c->n, &one, c->a, cuda_dt(c->dt), c->n, c->b,
                    cuda_dt(c->dt), c->n, &zero, c->c, cuda_dt(c->dt), c->n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void bench_prefill_attention(void) {
    const gpt2_dtype dts[3] = {GPT2_DTYPE_F16, GPT2_DTYPE_BF16, GPT2_DTYPE_F32};
    double peak[2] = {0, 0};
    for (int di = 0; di < 2; di++) { /* the matrix units' ceiling, measured */
        gemm_ctx g = {.dt = dts[di], .n = 8192};
        const size_t nn = (size_t)g.n * g.n;
        g.a = dev_random(nn, g.dt, 1.0f, 31);
        g.b = dev_random(nn, g.dt, 1.0f, 32);
        CK(cudaMalloc(&g.c, nn * 2));
        set_math(g.dt);
        const double t = time_us(op_gemm, &g);
        peak[di] = 2.0 * g.n * (double)g.n * g.n / t / 1e6;
        CK(cudaFree(g.a));
        CK(cudaFree(g.b));
        CK(cudaFree(g.c));
    }
    printf("\nprefill attention, 12 heads x 64, B sequences of T tokens from position 0 (causal flops only); "
           "cuBLAS 8192^3 GEMM: fp16 %.0f TFLOP/s, bf16 %.0f TFLOP/s\n", peak[0], peak[1]);
    printf("%-5s %-12s %3s %5s %10s %9s %8s\n", "dtype", "kernel", "B", "T", "us", "TFLOP/s", "% gemm");
    const int Ts[] = {128, 512, 1024}, Bs[] = {1, 8};
    for (int di = 0; di < 3; di++)
        for (int bi = 0; bi < 2; bi++)
            for (int ti = 0; ti < 3; ti++) {
                const gpt2_dtype dt = dts[di];
                const int B = Bs[bi], T = Ts[ti], N = B * T, tq = attention_prefill_tile_queries(dt, HS_);
                pattn_ctx c = {.dt = dt, .S = B};
                const size_t cache_n = (size_t)B * NH_ * MAXT_ * HS_;
                c.kc = dev_random(cache_n, dt, 1.0f, 41);
                c.vc = dev_random(cache_n, dt, 1.0f, 42);
                c.qkv = dev_random((size_t)N * 3 * C_, dt, 1.0f, 43);
                CK(cudaMalloc(&c.out, (size_t)N * C_ * esz(dt)));
                int *cd = malloc(sizeof(int) * 4 * B), *tl = malloc(sizeof(int) * 2 * (size_t)(N / tq + B));
                if (!cd || !tl) exit(1);
                for (int b = 0; b < B; b++) {
                    cd[4 * b] = b, cd[4 * b + 1] = 0, cd[4 * b + 2] = T, cd[4 * b + 3] = b * T;
                    for (int q0 = 0; q0 < T; q0 += tq) tl[2 * c.n_tiles] = b, tl[2 * c.n_tiles + 1] = q0, c.n_tiles++;
                }
                CK(cudaMalloc((void **)&c.chunks, sizeof(int) * 4 * B));
                CK(cudaMalloc((void **)&c.tiles, sizeof(int) * 2 * (size_t)c.n_tiles));
                CK(cudaMemcpy(c.chunks, cd, sizeof(int) * 4 * B, cudaMemcpyHostToDevice));
                CK(cudaMemcpy(c.tiles, tl, sizeof(int) * 2 * (size_t)c.n_tiles, cudaMemcpyHostToDevice));
                const double t = time_us(op_pattn, &c);
                const double flops = 4.0 * HS_ * NH_ * B * ((double)T * (T + 1) / 2);
                const double tf = flops / t / 1e6;
                const char *kern = tq != GPT2_ATTN_PREFILL_BQ ? "tensor cores" : "exact float";
                printf("%-5s %-12s %3d %5d %10.2f %9.1f %7.1f%%\n", dtname(dt), kern, B, T, t, tf,
                       di < 2 ? 100 * tf / peak[di] : 0.0);
                json_rec("{\"kind\": \"prefill_attention\", \"dtype\": \"%s\", \"kernel\": \"%s\", \"batch\": %d, \"T\": "
                         "%d, \"us\": %.3f, \"tflops\": %.2f}", dtname(dt), kern, B, T, t, tf);
                free(cd);
                free(tl);
                void *bufs[] = {c.kc, c.vc, c.qkv, c.out, c.chunks, c.tiles};
                for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) CK(cudaFree(bufs[k]));
            }
}

int main(int argc, char **argv) {
    const char *commit = "unknown", *json_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--commit") && i + 1 < argc) commit = argv[++i];
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) g_iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else {
            fprintf(stderr, "usage: bench_kernels [--commit ID] [--iters N (1..200)] [--json FILE]\n");
            return 2;
        }
    }
    if (g_iters < 1 || g_iters > 200) {
        fprintf(stderr, "bench_kernels: --iters %d: expected 1..200\n", g_iters);
        return 2;
    }
    if (gpt2_cuda_device_count() == 0) {
        printf("bench_kernels: no CUDA GPU visible: nothing measured (run it on a GPU machine: tools/gpu_check.sh "
               "full)\n");
        return 0;
    }
    struct cudaDeviceProp prop;
    int drv = 0, rt = 0;
    CK(cudaSetDevice(0));
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaDriverGetVersion(&drv));
    CK(cudaRuntimeGetVersion(&rt));
    char kdrv[128] = "?";
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (f) {
        char line[256];
        if (fgets(line, sizeof line, f)) {
            const char *k = strstr(line, "Kernel Module");
            if (k) {
                snprintf(kdrv, sizeof kdrv, "%s", k + strlen("Kernel Module"));
                kdrv[strcspn(kdrv, "\n")] = 0;
            }
        }
        fclose(f);
    }
    g_nsm = prop.multiProcessorCount;
    CK(cudaStreamCreate(&g_st));
    CB(cublasCreate(&g_cublas));
    CB(cublasSetStream(g_cublas, g_st));
    if (json_path && !(g_json = fopen(json_path, "w"))) {
        fprintf(stderr, "bench_kernels: cannot write %s\n", json_path);
        return 1;
    }
    if (g_json) fprintf(g_json, "[");
    printf("bench_kernels: %s (sm_%d%d, %d SMs, L2 %d MiB), driver%s (CUDA driver API %d, runtime %d), commit %s, "
           "median of %d runs\n", prop.name, prop.major, prop.minor, g_nsm, prop.l2CacheSize >> 20, kdrv, drv, rt,
           commit, g_iters);
    json_rec("{\"kind\": \"device\", \"name\": \"%s\", \"sms\": %d, \"driver\": %d, \"runtime\": %d, \"commit\": "
             "\"%s\"}", prop.name, g_nsm, drv, rt, commit);

    copy_ctx cc = {.bytes = (size_t)1 << 30};
    CK(cudaMalloc(&cc.a, cc.bytes));
    CK(cudaMalloc(&cc.b, cc.bytes));
    CK(cudaMemset(cc.a, 0x5a, cc.bytes));
    CK(cudaMemset(cc.b, 0xa5, cc.bytes));
    const double tcopy = time_us(op_copy, &cc);
    const double copy_gbs = 2.0 * (double)cc.bytes / tcopy / 1e3;
    CK(cudaFree(cc.a));
    CK(cudaFree(cc.b));
    printf("device-to-device copy: 1 GiB in %.1f us = %.0f GB/s (read + write)\n", tcopy, copy_gbs);
    json_rec("{\"kind\": \"copy\", \"gbs\": %.1f}", copy_gbs);

    /* one pool of random weights (>= 4x L2, at least 256 MiB), made once in fp32 and converted per dtype */
    size_t pool_bytes = (size_t)256 << 20;
    if (pool_bytes < 4 * (size_t)prop.l2CacheSize) pool_bytes = 4 * (size_t)prop.l2CacheSize;
    float *master = dev_random(pool_bytes / 2, GPT2_DTYPE_F32, 0.036f, 7); /* enough floats for 16-bit */
    char *pool = NULL;
    CK(cudaMalloc((void **)&pool, pool_bytes));
    const gpt2_dtype dts[3] = {GPT2_DTYPE_F16, GPT2_DTYPE_BF16, GPT2_DTYPE_F32};
    int cross[3];
    for (int i = 0; i < 3; i++) {
        CK(convert_cuda(pool, dts[i], master, GPT2_DTYPE_F32, pool_bytes / esz(dts[i]), 0));
        CK(cudaDeviceSynchronize());
        cross[i] = bench_products(dts[i], copy_gbs, pool, pool_bytes);
    }
    CK(cudaFree(pool));
    CK(cudaFree(master));
    bench_step(1, copy_gbs);
    bench_step(8, copy_gbs);
    bench_decode_attention(copy_gbs, (size_t)prop.l2CacheSize);
    bench_prefill_attention();
    printf("\nsummary: copy %.0f GB/s; GEMV/cuBLAS crossover fp16 M <= %d, bf16 M <= %d, fp32 M <= %d (plan default "
           "GEMV_MAX_ROWS, unmeasured: see src/cuda_internal.h)\n", copy_gbs, cross[0], cross[1], cross[2]);
    if (g_json) {
        fprintf(g_json, "\n]\n");
        fclose(g_json);
    }
    CB(cublasDestroy(g_cublas));
    CK(cudaStreamDestroy(g_st));
    return 0;
}
