/* cuda_forward.c: the CUDA forward pass, its GEMMs, and the decode-step CUDA graphs.
 *
 * GEMMs. Weights are stored as Hugging Face's Conv1D, row-major [in, out]: out (N, OC) = inp (N, C)
 * @ W (C, OC). cuBLAS is column-major, and a row-major (R, K) matrix is the same bytes as a
 * column-major (K, R) matrix, its transpose. So, with X^T meaning "the same buffer read column-major":
 *   out^T (OC x N) = W^T (OC x C) @ inp^T (C x N)
 * which is cublasGemmEx(N, N, m = OC, n = N, k = C, A = W with lda = OC, B = inp with ldb = C,
 * C = out with ldc = OC): no transposition at all. The unembedding reads lm_head (Vp, C) row-major
 * (nn.Linear layout, == wte when tied), which column-major is a (C x Vp) matrix A, so
 *   logits^T (Vp x N) = A^T (Vp x C) @ inp^T (C x N)
 * which is cublasGemmEx(T, N, m = Vp, n = N, k = C, A = lm_head with lda = C, B = inp with ldb = C,
 * C = logits with ldc = Vp). Vp is V rounded up to a multiple of 64 (50257 -> 50304): the pad rows of
 * lm_head are zero and every logits row is Vp floats long, so that m and ldc suit cuBLAS's aligned
 * kernels; columns V..Vp-1 are never read (read_logits copies V per row, sampling reads V). Both
 * layouts are checked end to end by the tests (logits against transformers).
 * fp32: CUBLAS_COMPUTE_32F and CUBLAS_DEFAULT_MATH (no TF32) unless opts.allow_tf32
 * (CUBLAS_COMPUTE_32F_FAST_TF32); fp16/bf16: tensor cores with CUBLAS_COMPUTE_32F accumulation and
 * reductions kept in float (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION).
 *
 * Few rows (decode, short prompts: N <= plan.gemv_max_rows): the products run on kernels/gemv.cu
 * instead, split-K over the SMs with 16-byte weight loads, the lm_head on its nn.Linear-layout twin;
 * the MLP's up projection has its bias and GELU in the GEMV's epilogue (one pass, no separate GELU
 * launch). cuBLAS stays for more rows, where the weights are reused across rows and the tensor cores
 * pay. The crossover is a plan parameter (GEMV_MAX_ROWS in cuda_internal.h; bench/bench_kernels.cu
 * measures it).
 *
 * Decode appends the new token's K and V inside the attention kernel (one launch per layer fewer;
 * its splits over long contexts merge inside the same launch); prefill keeps kv_append, whose many
 * rows the tiled prefill attention then reads (on tensor cores for fp16/bf16). A decode step of
 * few rows goes further (enqueue_decode_fused): the layernorms move into the GEMVs that read them and
 * the residual adds into the projections' epilogues, five launches per layer.
 *
 * Biases: the QKV bias is added by kv_append and the attention kernels as they read q, k, v; the
 * attention-output and MLP-down biases by the fused residual + layernorm (which needs the whole row
 * for its statistics anyway, so the residual add stays there rather than in a GEMV epilogue); the
 * MLP-up bias by GELU (fused into the GEMV for few rows). So no pass exists only to add a bias.
 *
 * Decode (every chunk has n == 1) runs as a CUDA graph per batch-size bucket (1, 2, 4, ...,
 * max_slots), captured on first use. The kernels read tokens, positions and slots from device arrays
 * that are overwritten before each replay; rows past the real batch are padding (slot -1: they write
 * no cache and their logits are never read). opts.no_cuda_graphs turns graphs off. When a capture or
 * instantiation fails, the step runs on the plain stream instead and graphs stay off for the life of
 * the backend; be->warning says why (the library never prints).
 */
#include <stdio.h>
#include <string.h>

#include "cuda_internal.h"
#include "util.h"

#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/encoder.cuh"
#include "../kernels/gelu.cuh"
#include "../kernels/gemv.cuh"
#include "../kernels/kv_append.cuh"
#include "../kernels/layernorm.cuh"

/* ---------------------------------------------------------------------------------------------- */
/* GEMMs (see the top of the file for the layout argument)                                         */

/* out (N, OC) = inp (N, K) @ w (K, OC), all in the storage type. */
static gpt2_status gemm_conv1d(gpt2_cuda_ctx *x, void *out, const void *inp, const void *w, int N, int K, int OC,
                               gpt2_error *err) {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(x->cublas, CUBLAS_OP_N, CUBLAS_OP_N, OC, N, K, &alpha, w, x->dt_cuda, OC, inp,
                              x->dt_cuda, K, &beta, out, x->dt_cuda, OC, x->compute, CUBLAS_GEMM_DEFAULT));
    return GPT2_OK;
}

/* out (N, OC) = inp (N, K) @ w (K, OC), then GELU(. + bias) when gelu (bias (OC)): the GEMV for few
 * rows (bias and GELU in its epilogue), else cuBLAS followed by the GELU kernel. */
static gpt2_status linear(gpt2_cuda_ctx *x, gpt2_dtype dt, void *out, const void *inp, const void *w,
                          const void *gelu_bias, int gelu, int N, int K, int OC, gpt2_error *err) {
    if (N <= x->plan.gemv_max_rows) {
        const int ks = gemv_pick_ksplit(K, OC, dt, x->n_sm);
        CUDA_CHECK(gemv_forward_cuda(out, inp, w, gelu ? gelu_bias : NULL, N, K, OC, gelu, NULL, ks,
                                     x->a.gemv_scratch, x->plan.gemv_scratch_floats, x->a.gemv_counters,
                                     x->plan.gemv_n_counters, dt, x->stream));
        return GPT2_OK;
    }
    gpt2_status r = gemm_conv1d(x, out, inp, w, N, K, OC, err);
    if (r != GPT2_OK || !gelu) return r;
    CUDA_CHECK(gelu_bias_forward_cuda(out, out, gelu_bias, N, OC, dt, x->stream));
    return GPT2_OK;
}

/* logits (N, Vp) float = inp (N, C) @ lm_head^T, lm_head (Vp, C). */
static gpt2_status gemm_unembed(gpt2_cuda_ctx *x, float *logits, const void *inp, const void *lm_head, int N, int C,
                                int Vp, gpt2_dtype dt, gpt2_error *err) {
    const float alpha = 1.0f, beta = 0.0f;
    if (N <= x->plan.gemv_max_rows) { /* the pad rows of lm_head are zero: their logits too, as with cuBLAS */
        CUDA_CHECK(gemv_nt_forward_cuda(logits, Vp, inp, lm_head, N, C, Vp, NULL, NULL, 0.0f, dt, x->stream));
        return GPT2_OK;
    }
    CUBLAS_CHECK(cublasGemmEx(x->cublas, CUBLAS_OP_T, CUBLAS_OP_N, Vp, N, C, &alpha, lm_head, x->dt_cuda, C, inp,
                              x->dt_cuda, C, &beta, logits, CUDA_R_32F, Vp, x->compute, CUBLAS_GEMM_DEFAULT));
    return GPT2_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* The forward pass                                                                                */

/* What one forward runs over; every pointer is device memory. */
typedef struct {
    int N;               /* token rows of every activation */
    int rows;            /* logits rows computed: rows 0 .. rows-1 of the final layernorm's output */
    const int *tok;      /* (N) */
    const int *pos;      /* (N) */
    const int *slot;     /* (N) */
    const int *out_row;  /* (N) final layernorm: row n -> output row, -1 none; NULL: identity */
    int decode;          /* 1: one token per sequence (attention_decode); 0: attention_prefill */
    const int *chunks;   /* prefill: (n_chunks, 4) */
    const int *tiles;    /* prefill: (n_tiles, 2) */
    int n_tiles;
} step_t;

/* The dimensions a forward reads, from the model's config and the backend's options. */
typedef struct {
    gpt2_dtype dt;      /* storage type of weights, activations and cache */
    size_t es;          /* bytes per element of dt */
    int C, NH, HS;      /* channels, heads, head size (C / NH) */
    int L, V;           /* layers, vocabulary */
    int n_positions;    /* the position table's length */
    int S, maxT;        /* cache slots, positions per slot */
    float eps;          /* layernorm epsilon */
    size_t layer_cache; /* elements of one layer's K (or V) cache: (S, NH, maxT, HS) */
} fwd_shape;

static fwd_shape fwd_shape_of(const gpt2_backend *be) {
    const gpt2_config *c = &be->model->cfg;
    fwd_shape d = {.dt = be->opts.dtype, .C = c->n_embd, .NH = c->n_head, .L = c->n_layer, .V = c->vocab_size,
                   .n_positions = c->n_positions, .S = be->opts.max_slots, .maxT = be->opts.max_seq,
                   .eps = c->layer_norm_epsilon};
    d.es = gpt2_cuda_dtype_size(d.dt);
    d.HS = d.C / d.NH;
    d.layer_cache = (size_t)d.S * (size_t)d.maxT * (size_t)d.C;
    return d;
}

/* Element offset e of a tensor in the storage type. */
static void *at(void *base, size_t e, size_t es) { return (char *)base + e * es; }

/* The device copy of weight kind k (tensors.h) in the context x. */
#define W(k) (x->w.t[GPT2_T_##k])

/* One fused GEMV: out (N, OC) = [ln(]inp[)] @ w + bias [, GELU], or resid += inp @ w + bias. */
static gpt2_status gemv_fused(gpt2_cuda_ctx *x, gpt2_dtype dt, void *out, const void *inp, const void *w,
                              const void *bias, int gelu, const void *ln_w, const void *ln_b, float eps, void *resid,
                              int N, int K, int OC, gpt2_error *err) {
    const gemv_fusion f = {ln_w, ln_b, eps, resid};
    CUDA_CHECK(gemv_forward_cuda(out, inp, w, bias, N, K, OC, gelu, &f, gemv_pick_ksplit(K, OC, dt, x->n_sm),
                                 x->a.gemv_scratch, x->plan.gemv_scratch_floats, x->a.gemv_counters,
                                 x->plan.gemv_n_counters, dt, x->stream));
    return GPT2_OK;
}

/* The decode step of few rows (N <= plan.gemv_max_rows), five launches per layer: every layernorm
 * is computed inside the GEMV that reads its output (ln_1 in the QKV product, ln_2 in the MLP up
 * projection, ln_f in the lm_head), every residual add in the epilogue of the projection that feeds
 * it, the new K/V in the attention kernel:
 *   qkv = ln1(resid) @ Wqkv;  att = attention(qkv) (+ append);  resid += att @ Wproj + bproj;
 *   fch = gelu(ln2(resid) @ Wfc + bfc);  resid += fch @ Wfcproj + bfcproj;   logits = lnf(resid) @ lm_head^T
 * The values stored in T are those of enqueue_forward (layernorm outputs rounded to T before the
 * product), except that a projection joins the residual unrounded (one rounding instead of two). */
static gpt2_status enqueue_decode_fused(gpt2_cuda_ctx *x, const gpt2_backend *be, const step_t *s, gpt2_error *err) {
    const fwd_shape d = fwd_shape_of(be);
    const int N = s->N;
    cudaStream_t st = x->stream;
    gpt2_status r;

    CUDA_CHECK(encoder_forward_cuda(x->a.resid, s->tok, s->pos, W(WTE), W(WPE), N, d.C, d.V, d.n_positions, d.dt, st));
    for (int l = 0; l < d.L; l++) {
        const size_t lc = (size_t)l * d.C;
        void *kc = at(x->kv.k, (size_t)l * d.layer_cache, d.es), *vc = at(x->kv.v, (size_t)l * d.layer_cache, d.es);
        if ((r = gemv_fused(x, d.dt, x->a.qkv, x->a.resid, at(W(QKVW), 3 * lc * d.C, d.es), NULL, 0,
                            at(W(LN1W), lc, d.es), at(W(LN1B), lc, d.es), d.eps, NULL, N, d.C, 3 * d.C, err)))
            return r;
        CUDA_CHECK(attention_decode_cuda(x->a.att, x->a.qkv, at(W(QKVB), 3 * lc, d.es), kc, vc, s->slot, s->pos, N,
                                         d.NH, d.HS, d.maxT, d.S, 1, x->a.attn_scratch, x->plan.attn_scratch_floats,
                                         x->a.attn_counters, x->plan.attn_n_counters, d.dt, st));
        if ((r = gemv_fused(x, d.dt, NULL, x->a.att, at(W(ATTPROJW), lc * d.C, d.es), at(W(ATTPROJB), lc, d.es), 0,
                            NULL, NULL, 0.0f, x->a.resid, N, d.C, d.C, err)))
            return r;
        if ((r = gemv_fused(x, d.dt, x->a.fch, x->a.resid, at(W(FCW), 4 * lc * d.C, d.es), at(W(FCB), 4 * lc, d.es),
                            1, at(W(LN2W), lc, d.es), at(W(LN2B), lc, d.es), d.eps, NULL, N, d.C, 4 * d.C, err)))
            return r;
        if ((r = gemv_fused(x, d.dt, NULL, x->a.fch, at(W(FCPROJW), 4 * lc * d.C, d.es), at(W(FCPROJB), lc, d.es), 0,
                            NULL, NULL, 0.0f, x->a.resid, N, 4 * d.C, d.C, err)))
            return r;
    }
    CUDA_CHECK(gemv_nt_forward_cuda(x->a.logits, x->plan.Vp, x->a.resid, W(LMHEAD), N, d.C, x->plan.Vp, W(LNFW),
                                    W(LNFB), d.eps, d.dt, st));
    return GPT2_OK;
}

/* Enqueues the whole forward on the stream (also used under graph capture: no host sync in here). */
static gpt2_status enqueue_forward(gpt2_cuda_ctx *x, const gpt2_backend *be, const step_t *s, gpt2_error *err) {
    if (s->decode && s->N <= x->plan.gemv_max_rows && s->rows == s->N && !s->out_row)
        return enqueue_decode_fused(x, be, s, err);
    const fwd_shape d = fwd_shape_of(be);
    const int N = s->N;
    cudaStream_t st = x->stream;
    gpt2_status r;

    CUDA_CHECK(encoder_forward_cuda(x->a.resid, s->tok, s->pos, W(WTE), W(WPE), N, d.C, d.V, d.n_positions, d.dt, st));
    CUDA_CHECK(layernorm_forward_cuda(x->a.ln, x->a.resid, W(LN1W), W(LN1B), N, d.C, d.eps, d.dt, st));
    for (int l = 0; l < d.L; l++) {
        const size_t lc = (size_t)l * d.C;
        void *kc = at(x->kv.k, (size_t)l * d.layer_cache, d.es), *vc = at(x->kv.v, (size_t)l * d.layer_cache, d.es);
        void *qkvb = at(W(QKVB), 3 * lc, d.es);

        if ((r = linear(x, d.dt, x->a.qkv, x->a.ln, at(W(QKVW), 3 * lc * d.C, d.es), NULL, 0, N, d.C, 3 * d.C, err)))
            return r;
        if (s->decode) { /* the new K and V are appended by the attention kernel itself */
            CUDA_CHECK(attention_decode_cuda(x->a.att, x->a.qkv, qkvb, kc, vc, s->slot, s->pos, N, d.NH, d.HS, d.maxT,
                                             d.S, 1, x->a.attn_scratch, x->plan.attn_scratch_floats,
                                             x->a.attn_counters, x->plan.attn_n_counters, d.dt, st));
        } else {
            CUDA_CHECK(kv_append_cuda(kc, vc, x->a.qkv, qkvb, s->slot, s->pos, N, d.NH, d.HS, d.maxT, d.S, d.dt, st));
            CUDA_CHECK(attention_prefill_cuda(x->a.att, x->a.qkv, qkvb, kc, vc, s->chunks, s->tiles, s->n_tiles, d.NH,
                                              d.HS, d.maxT, d.S, d.dt, st));
        }
        if ((r = linear(x, d.dt, x->a.tmp, x->a.att, at(W(ATTPROJW), lc * d.C, d.es), NULL, 0, N, d.C, d.C, err)))
            return r;
        CUDA_CHECK(residual_layernorm_forward_cuda(x->a.ln, x->a.resid, x->a.tmp, at(W(ATTPROJB), lc, d.es), NULL,
                                                   at(W(LN2W), lc, d.es), at(W(LN2B), lc, d.es), N, d.C, d.eps, d.dt,
                                                   st));
        if ((r = linear(x, d.dt, x->a.fch, x->a.ln, at(W(FCW), 4 * lc * d.C, d.es), at(W(FCB), 4 * lc, d.es), 1, N,
                        d.C, 4 * d.C, err)))
            return r;
        if ((r = linear(x, d.dt, x->a.tmp, x->a.fch, at(W(FCPROJW), 4 * lc * d.C, d.es), NULL, 0, N, 4 * d.C, d.C,
                        err)))
            return r;
        if (l + 1 < d.L) /* the next layer's first layernorm */
            CUDA_CHECK(residual_layernorm_forward_cuda(x->a.ln, x->a.resid, x->a.tmp, at(W(FCPROJB), lc, d.es), NULL,
                                                       at(W(LN1W), lc + d.C, d.es), at(W(LN1B), lc + d.C, d.es), N,
                                                       d.C, d.eps, d.dt, st));
        else /* the final layernorm, gathering the rows whose logits are wanted */
            CUDA_CHECK(residual_layernorm_forward_cuda(x->a.ln, x->a.resid, x->a.tmp, at(W(FCPROJB), lc, d.es),
                                                       s->out_row, W(LNFW), W(LNFB), N, d.C, d.eps, d.dt, st));
    }
    return gemm_unembed(x, x->a.logits, x->a.ln, W(LMHEAD), s->rows, d.C, x->plan.Vp, d.dt, err);
}

/* Captures the decode forward for one bucket into an executable graph. */
static gpt2_status capture_graph(gpt2_cuda_ctx *x, const gpt2_backend *be, const step_t *s, cudaGraphExec_t *exec,
                                 gpt2_error *err) {
    cudaGraph_t g = NULL;
    *exec = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(x->stream, cudaStreamCaptureModeThreadLocal));
    gpt2_status st = enqueue_forward(x, be, s, err);
    if (x->graphs.break_next_capture) { /* testing: a call that is illegal under capture invalidates it */
        x->graphs.break_next_capture = 0;
        (void)cudaStreamSynchronize(x->stream);
        (void)cudaGetLastError();
    }
    cudaError_t e = cudaStreamEndCapture(x->stream, &g); /* always: leaves the stream out of capture mode */
    if (st != GPT2_OK) {
        if (g) (void)cudaGraphDestroy(g);
        (void)cudaGetLastError();
        return st;
    }
    if (e != cudaSuccess) return gpt2_cuda_fail(err, e, "cudaStreamEndCapture(x->stream, &g)", __FILE__, __LINE__);
    e = cudaGraphInstantiate(exec, g, 0);
    (void)cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        *exec = NULL;
        return gpt2_cuda_fail(err, e, "cudaGraphInstantiate(exec, g, 0)", __FILE__, __LINE__);
    }
    return GPT2_OK;
}

/* Copies ints [off, off + n) of the input mirror to the device. */
static gpt2_status push_inputs(gpt2_cuda_ctx *x, size_t off, size_t n, gpt2_error *err) {
    if (n == 0) return GPT2_OK;
    CUDA_CHECK(cudaMemcpyAsync(x->a.in_d + off, x->a.in_h + off, n * sizeof(int), cudaMemcpyHostToDevice, x->stream));
    return GPT2_OK;
}

gpt2_status gpt2_cuda_forward(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                              gpt2_error *err) {
    gpt2_cuda_ctx *x = be->ctx;
    const gpt2_cuda_plan *p = &x->plan;
    gpt2_status st = gpt2_backend_check_chunks(&be->opts, chunks, n_chunks, all_logits, be->model->cfg.vocab_size, err);
    if (st != GPT2_OK) return st;
    x->n_rows = 0; /* no logits until this forward is enqueued whole */
    CUDA_CHECK(cudaSetDevice(x->device));
    if (x->a.in_pending) { /* the pinned mirror may still be read by the last forward's copies */
        CUDA_CHECK(cudaEventSynchronize(x->a.in_copied));
        x->a.in_pending = 0;
    }
    int N = 0, decode = 1;
    for (int i = 0; i < n_chunks; i++) {
        N += chunks[i].n;
        if (chunks[i].n != 1) decode = 0;
    }
    int *h = x->a.in_h, *d = x->a.in_d;
    step_t s = {0};

    if (decode) {
        const int B = n_chunks;
        int Bl = B, bucket = -1;
        if (x->graphs.use) {
            for (bucket = 0; bucket < x->graphs.n_buckets && x->graphs.bucket_size[bucket] < B; bucket++) {
            }
            if (bucket == x->graphs.n_buckets) return gpt2_fail(err, GPT2_ERR_ARG, "cuda forward: %d sequences, more "
                                                                             "than max_slots", B);
            Bl = x->graphs.bucket_size[bucket];
        }
        int *tok = h + p->i_dtok, *pos = h + p->i_dpos, *slot = h + p->i_dslot;
        for (int b = 0; b < Bl; b++) {
            tok[b] = b < B ? chunks[b].tokens[0] : 0;
            pos[b] = b < B ? chunks[b].pos : 0;
            slot[b] = b < B ? chunks[b].slot : -1; /* padding: no cache write, zero attention */
        }
        if ((st = push_inputs(x, p->i_dtok, (size_t)Bl, err)) || (st = push_inputs(x, p->i_dpos, (size_t)Bl, err)) ||
            (st = push_inputs(x, p->i_dslot, (size_t)Bl, err)))
            return st;
        CUDA_CHECK(cudaEventRecord(x->a.in_copied, x->stream));
        x->a.in_pending = 1;
        s.N = Bl;
        s.rows = Bl;
        s.tok = d + p->i_dtok;
        s.pos = d + p->i_dpos;
        s.slot = d + p->i_dslot;
        s.out_row = NULL;
        s.decode = 1;
        gpt2_error cap_err = {0};
        if (bucket >= 0 && !x->graphs.exec[bucket] &&
            capture_graph(x, be, &s, &x->graphs.exec[bucket], &cap_err) != GPT2_OK) {
            /* Once: graphs off from now on, this step and the next on the plain stream. */
            snprintf(be->warning, sizeof be->warning, "cuda: decode graph capture failed, decode runs without "
                                                      "CUDA graphs from now on: %.160s", cap_err.msg);
            x->graphs.use = 0;
            bucket = -1;
        }
        if (bucket >= 0) {
            CUDA_CHECK(cudaGraphLaunch(x->graphs.exec[bucket], x->stream));
        } else if ((st = enqueue_forward(x, be, &s, err))) {
            return st;
        }
        x->n_rows = B;
        return GPT2_OK;
    }

    /* prefill, or a mix of prefill and decode: per-token inputs and the attention tiles */
    int *tok = h + p->i_tok, *pos = h + p->i_pos, *slot = h + p->i_slot, *row = h + p->i_row;
    int *cd = h + p->i_chunks, *tiles = h + p->i_tiles;
    int n = 0, n_tiles = 0, extra = n_chunks; /* rows after the chunks' last tokens: all_rows tokens */
    const int HS = be->model->cfg.n_embd / be->model->cfg.n_head;
    const int tq = attention_prefill_tile_queries(be->opts.dtype, HS); /* a multiple of GPT2_ATTN_PREFILL_BQ */
    for (int i = 0; i < n_chunks; i++) {
        const gpt2_chunk *ch = &chunks[i];
        cd[4 * i] = ch->slot;
        cd[4 * i + 1] = ch->pos;
        cd[4 * i + 2] = ch->n;
        cd[4 * i + 3] = n;
        for (int q0 = 0; q0 < ch->n; q0 += tq) {
            if (n_tiles >= p->tiles_cap) /* cannot happen: tiles_cap bounds sum(ceil(n_i / BQ)) */
                return gpt2_fail(err, GPT2_ERR_LIMIT, "cuda forward: more than %d attention tiles", p->tiles_cap);
            tiles[2 * n_tiles] = i;
            tiles[2 * n_tiles + 1] = q0;
            n_tiles++;
        }
        for (int t = 0; t < ch->n; t++, n++) {
            tok[n] = ch->tokens[t];
            pos[n] = ch->pos + t;
            slot[n] = ch->slot;
            /* without all_logits: chunk i's last token -> logits row i, its others (all_rows) after them */
            row[n] = t == ch->n - 1 ? i : ch->all_rows ? extra++ : -1;
        }
    }
    if ((st = push_inputs(x, p->i_tok, (size_t)N, err)) || (st = push_inputs(x, p->i_pos, (size_t)N, err)) ||
        (st = push_inputs(x, p->i_slot, (size_t)N, err)) ||
        (!all_logits && (st = push_inputs(x, p->i_row, (size_t)N, err))) ||
        (st = push_inputs(x, p->i_chunks, 4 * (size_t)n_chunks, err)) ||
        (st = push_inputs(x, p->i_tiles, 2 * (size_t)n_tiles, err)))
        return st;
    CUDA_CHECK(cudaEventRecord(x->a.in_copied, x->stream));
    x->a.in_pending = 1;
    s.N = N;
    s.rows = all_logits ? N : extra;
    s.tok = d + p->i_tok;
    s.pos = d + p->i_pos;
    s.slot = d + p->i_slot;
    s.out_row = all_logits ? NULL : d + p->i_row;
    s.decode = 0;
    s.chunks = d + p->i_chunks;
    s.tiles = d + p->i_tiles;
    s.n_tiles = n_tiles;
    if ((st = enqueue_forward(x, be, &s, err))) return st;
    x->n_rows = s.rows;
    return GPT2_OK;
}

gpt2_status gpt2_cuda_read_logits(gpt2_backend *be, float *dst, int n_rows, gpt2_error *err) {
    gpt2_cuda_ctx *x = be->ctx;
    if (n_rows < 0 || n_rows > x->n_rows)
        return gpt2_fail(err, GPT2_ERR_ARG, "read_logits: %d rows asked, the last forward made %d", n_rows, x->n_rows);
    if (n_rows == 0) return GPT2_OK;
    if (!dst) return gpt2_fail(err, GPT2_ERR_ARG, "read_logits: no destination");
    const size_t row = (size_t)be->model->cfg.vocab_size * sizeof(float), pitch = (size_t)x->plan.Vp * sizeof(float);
    CUDA_CHECK(cudaSetDevice(x->device));
    CUDA_CHECK(cudaMemcpy2DAsync(dst, row, x->a.logits, pitch, row, (size_t)n_rows, cudaMemcpyDeviceToHost, x->stream));
    CUDA_CHECK(cudaStreamSynchronize(x->stream));
    return GPT2_OK;
}
