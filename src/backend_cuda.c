/* backend_cuda.c: the CUDA engine. C on the host side (CUDA runtime and cuBLAS C APIs), kernels in
 * kernels/ behind C launchers.
 *
 * Lifetime and memory: at creation the exact bytes of the whole plan (weights in the chosen dtype,
 * activations for max_tokens tokens, a KV cache of max_slots x max_seq positions, logits, attention
 * and sampling scratch, the cuBLAS workspace) are computed, compared with the free device memory,
 * and taken in ONE cudaMalloc (the arena); nothing is allocated per token afterwards. All device
 * work goes to one stream owned by the backend; no device state lives in globals.
 *
 * Storage type T: weights, activations and the KV cache are all in opts.dtype (fp32, fp16 or bf16);
 * kernels compute in float; logits are always float32 (the unembedding GEMM writes them as such).
 *
 * GEMMs. Weights are stored as Hugging Face's Conv1D, row-major [in, out]: out (N, OC) = inp (N, C)
 * @ W (C, OC). cuBLAS is column-major, and a row-major (R, K) matrix is the same bytes as a
 * column-major (K, R) matrix, its transpose. So, with X^T meaning "the same buffer read column-major":
 *   out^T (OC x N) = W^T (OC x C) @ inp^T (C x N)
 * which is cublasGemmEx(N, N, m = OC, n = N, k = C, A = W with lda = OC, B = inp with ldb = C,
 * C = out with ldc = OC): no transposition at all. The unembedding reads lm_head (V, C) row-major
 * (nn.Linear layout, == wte when tied), which column-major is a (C x V) matrix A, so
 *   logits^T (V x N) = A^T (V x C) @ inp^T (C x N)
 * which is cublasGemmEx(T, N, m = V, n = N, k = C, A = lm_head with lda = C, B = inp with ldb = C,
 * C = logits with ldc = V). Both are checked end to end by the tests (logits against transformers).
 * fp32: CUBLAS_COMPUTE_32F and CUBLAS_DEFAULT_MATH (no TF32) unless opts.allow_tf32
 * (CUBLAS_COMPUTE_32F_FAST_TF32); fp16/bf16: tensor cores with CUBLAS_COMPUTE_32F accumulation and
 * reductions kept in float (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION).
 *
 * Biases: the QKV bias is added by kv_append and the attention kernels as they read q, k, v; the
 * attention-output and MLP-down biases by the fused residual + layernorm; the MLP-up bias by GELU. So
 * every GEMM runs without bias and no pass exists only to add one.
 *
 * Decode (every chunk has n == 1) runs as a CUDA graph per batch-size bucket (1, 2, 4, ...,
 * max_slots), captured on first use. The kernels read tokens, positions and slots from device arrays
 * that are overwritten before each replay; rows past the real batch are padding (slot -1: they write
 * no cache and their logits are never read). GPT2_CUDA_GRAPHS=0 in the environment turns graphs off.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "util.h"

#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/encoder.cuh"
#include "../kernels/gelu.cuh"
#include "../kernels/kv_append.cuh"
#include "../kernels/layernorm.cuh"
#include "../kernels/sample.cuh"

enum {
    ARENA_ALIGN = 256,  /* every region starts on a 256-byte boundary (cuBLAS, vector loads) */
    SAMPLE_GROUP = 32,  /* most requests sampled per kernel launch (sizes the sampling scratch) */
    MAX_BUCKETS = 20,   /* decode graph buckets: 1, 2, 4, ..., 2^16, max_slots */
};
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20) /* recommended for Hopper */
#define STAGING_FLOATS ((size_t)16 << 20)         /* fp32 weights go through 64 MiB at a time when converted */
#define HEADROOM_BYTES ((size_t)256 << 20)        /* left free: lazily loaded kernels, graphs, cuBLAS internals */
#define MIB(b) ((double)(b) / (1024.0 * 1024.0))

/* ---------------------------------------------------------------------------------------------- */
/* Error checking: every CUDA and cuBLAS call goes through one of these.                           */

static gpt2_status cuda_fail(gpt2_error *err, cudaError_t e, const char *call, const char *file, int line) {
    (void)cudaGetLastError(); /* clear a non-sticky error so that the next call starts clean */
    return gpt2_fail(err, e == cudaErrorMemoryAllocation ? GPT2_ERR_DEVICE_MEM : GPT2_ERR_DEVICE,
                     "cuda: %s failed: %s (%s) at %s:%d", call, cudaGetErrorName(e), cudaGetErrorString(e), file,
                     line);
}

static gpt2_status cublas_fail(gpt2_error *err, cublasStatus_t s, const char *call, const char *file, int line) {
    return gpt2_fail(err, GPT2_ERR_DEVICE, "cublas: %s failed: %s (%s) at %s:%d", call, cublasGetStatusName(s),
                     cublasGetStatusString(s), file, line);
}

/* In functions that return a status. */
#define CUDA_CHECK(call)                                                                                     \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) return cuda_fail(err, e_, #call, __FILE__, __LINE__);                         \
    } while (0)
#define CUBLAS_CHECK(call)                                                                                   \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(err, s_, #call, __FILE__, __LINE__);             \
    } while (0)
/* In functions that clean up at `fail:` with a local `st`. */
#define CUDA_TRY(call)                                                                                       \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            st = cuda_fail(err, e_, #call, __FILE__, __LINE__);                                              \
            goto fail;                                                                                       \
        }                                                                                                    \
    } while (0)
#define CUBLAS_TRY(call)                                                                                     \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            st = cublas_fail(err, s_, #call, __FILE__, __LINE__);                                            \
            goto fail;                                                                                       \
        }                                                                                                    \
    } while (0)

int gpt2_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The plan: every region of the arena, its offset and size, from the config and the options.     */

typedef struct {
    /* byte offsets into the arena */
    size_t wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb;
    size_t lm_head; /* == wte when tied */
    size_t resid, ln, qkv, att, tmp, fch, logits, kcache, vcache, attn_scratch, inputs;
    size_t s_params, s_hist, s_out, s_keys_in, s_keys_out, s_vals_in, s_vals_out, s_cum, s_count, s_seg, s_sort;
    size_t cublas_ws;
    size_t total;          /* arena bytes */
    size_t weight_bytes;   /* parts of total, for messages */
    size_t kv_bytes;
    size_t staging_bytes;  /* a second, temporary allocation while the weights are converted */
    /* counts */
    int rows_cap;          /* logits rows: max_tokens with all_logits, else max_slots */
    int tiles_cap;         /* prefill attention tiles: ceil(N / BQ) + S */
    int sample_rows;       /* G */
    int hist_cap;          /* history ints for one sampling group */
    size_t attn_scratch_floats;
    size_t sort_bytes;
    /* int offsets inside the inputs region (device) and its pinned host mirror */
    size_t i_tok, i_pos, i_slot, i_row, i_chunks, i_tiles, i_dtok, i_dpos, i_dslot, n_inputs;
} plan_t;

/* Appends a region of count * elem bytes at the next aligned offset; 0 ok, -1 on overflow. */
static int take(size_t *cur, size_t count, size_t elem, size_t *off) {
    size_t bytes, start;
    if (gpt2_mul_size(count, elem, &bytes) || *cur > SIZE_MAX - ARENA_ALIGN) return -1;
    start = (*cur + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (gpt2_add_size(start, bytes, cur)) return -1;
    *off = start;
    return 0;
}

/* a * b, setting *bad on overflow. */
static size_t mulc(size_t a, size_t b, int *bad) {
    size_t r;
    if (gpt2_mul_size(a, b, &r)) {
        *bad = 1;
        return 0;
    }
    return r;
}

static size_t dtype_size(gpt2_dtype dt) { return dt == GPT2_DTYPE_F32 ? 4 : 2; }

/* Fills p for model c and options o. GPT2_ERR_DEVICE_MEM when a size overflows size_t. */
static gpt2_status make_plan(const gpt2_model *m, const gpt2_backend_opts *o, plan_t *p, gpt2_error *err) {
    const gpt2_config *c = &m->cfg;
    memset(p, 0, sizeof *p);
    const size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer, V = (size_t)c->vocab_size;
    const size_t maxTm = (size_t)c->n_positions, S = (size_t)o->max_slots, N = (size_t)o->max_tokens;
    const size_t maxT = (size_t)o->max_seq, es = dtype_size(o->dtype);
    const int NH = c->n_head, HS = c->n_embd / c->n_head;
    size_t cur = 0;
    int bad = 0, ovf = 0; /* bad: a region overflowed; ovf: a product did (kept apart: `bad |= take(mulc(..))`
                           * would read bad before mulc sets it) */

    p->rows_cap = o->all_logits ? o->max_tokens : o->max_slots;
    p->tiles_cap = (o->max_tokens + GPT2_ATTN_PREFILL_BQ - 1) / GPT2_ATTN_PREFILL_BQ + o->max_slots;
    p->sample_rows = p->rows_cap < SAMPLE_GROUP ? p->rows_cap : SAMPLE_GROUP;
    if ((size_t)p->sample_rows * (maxT + 1) > INT_MAX || (size_t)p->sample_rows * V > INT_MAX)
        return gpt2_fail(err, GPT2_ERR_DEVICE_MEM, "cuda: sampling scratch for %d rows overflows", p->sample_rows);
    p->hist_cap = p->sample_rows * (o->max_seq + 1);
    p->attn_scratch_floats = attention_decode_scratch_floats(o->max_slots, NH, HS, o->max_seq);

    /* weights (shapes as in gpt2_weights) */
    const size_t VC = mulc(V, C, &ovf), lc = mulc(L, C, &ovf), lcc = mulc(lc, C, &ovf), NC = mulc(N, C, &ovf);
    bad |= take(&cur, VC, es, &p->wte);                   /* (V, C) */
    bad |= take(&cur, mulc(maxTm, C, &ovf), es, &p->wpe); /* (maxT_model, C) */
    bad |= take(&cur, lc, es, &p->ln1w);                  /* (L, C) */
    bad |= take(&cur, lc, es, &p->ln1b);                  /* (L, C) */
    bad |= take(&cur, mulc(lcc, 3, &ovf), es, &p->qkvw);  /* (L, C, 3C) */
    bad |= take(&cur, mulc(lc, 3, &ovf), es, &p->qkvb);   /* (L, 3C) */
    bad |= take(&cur, lcc, es, &p->attprojw);             /* (L, C, C) */
    bad |= take(&cur, lc, es, &p->attprojb);              /* (L, C) */
    bad |= take(&cur, lc, es, &p->ln2w);                  /* (L, C) */
    bad |= take(&cur, lc, es, &p->ln2b);                  /* (L, C) */
    bad |= take(&cur, mulc(lcc, 4, &ovf), es, &p->fcw);   /* (L, C, 4C) */
    bad |= take(&cur, mulc(lc, 4, &ovf), es, &p->fcb);    /* (L, 4C) */
    bad |= take(&cur, mulc(lcc, 4, &ovf), es, &p->fcprojw); /* (L, 4C, C) */
    bad |= take(&cur, lc, es, &p->fcprojb);               /* (L, C) */
    bad |= take(&cur, C, es, &p->lnfw);                   /* (C) */
    bad |= take(&cur, C, es, &p->lnfb);                   /* (C) */
    if (m->w.tied)
        p->lm_head = p->wte;
    else
        bad |= take(&cur, VC, es, &p->lm_head);           /* (V, C) */
    p->weight_bytes = cur;

    /* activations for N tokens */
    bad |= take(&cur, NC, es, &p->resid);                 /* (N, C) residual stream */
    bad |= take(&cur, NC, es, &p->ln);                    /* (N, C) layernorm output */
    bad |= take(&cur, mulc(NC, 3, &ovf), es, &p->qkv);    /* (N, 3C) */
    bad |= take(&cur, NC, es, &p->att);                   /* (N, C) attention output */
    bad |= take(&cur, NC, es, &p->tmp);                   /* (N, C) projection outputs */
    bad |= take(&cur, mulc(NC, 4, &ovf), es, &p->fch);    /* (N, 4C) MLP hidden */
    bad |= take(&cur, mulc((size_t)p->rows_cap, V, &ovf), sizeof(float), &p->logits); /* (R, V) float */

    /* KV cache, (L, S, NH, maxT, HS) each */
    const size_t before_kv = cur, kv = mulc(mulc(L, S, &ovf), mulc(maxT, C, &ovf), &ovf);
    bad |= take(&cur, kv, es, &p->kcache);
    bad |= take(&cur, kv, es, &p->vcache);
    p->kv_bytes = cur - before_kv;

    bad |= take(&cur, p->attn_scratch_floats, sizeof(float), &p->attn_scratch); /* (S, NH, nsplit, HS+2) */

    /* per-forward inputs: ints, mirrored in pinned host memory (all small: counts of tokens and slots) */
    p->i_tok = 0;                                      /* (N) */
    p->i_pos = p->i_tok + N;                           /* (N) */
    p->i_slot = p->i_pos + N;                          /* (N) */
    p->i_row = p->i_slot + N;                          /* (N) final layernorm's output row, or -1 */
    p->i_chunks = p->i_row + N;                        /* (S, 4) slot, pos, n, start */
    p->i_tiles = p->i_chunks + 4 * S;                  /* (tiles_cap, 2) chunk, q0 */
    p->i_dtok = p->i_tiles + 2 * (size_t)p->tiles_cap; /* (S) decode: token */
    p->i_dpos = p->i_dtok + S;                         /* (S) decode: position */
    p->i_dslot = p->i_dpos + S;                        /* (S) decode: slot */
    p->n_inputs = p->i_dslot + S;
    bad |= take(&cur, p->n_inputs, sizeof(int), &p->inputs);

    /* sampling (G * V < 2^31 was checked above) */
    const size_t G = (size_t)p->sample_rows, GV = G * V;
    bad |= take(&cur, G, sizeof(gpt2_cuda_sample_params), &p->s_params); /* (G) */
    bad |= take(&cur, (size_t)p->hist_cap, sizeof(int), &p->s_hist);      /* (G * (maxT + 1)) */
    bad |= take(&cur, G, sizeof(int), &p->s_out);                         /* (G) */
    bad |= take(&cur, GV, sizeof(float), &p->s_keys_in);                  /* (G, V) */
    bad |= take(&cur, GV, sizeof(float), &p->s_keys_out);                 /* (G, V) */
    bad |= take(&cur, GV, sizeof(int), &p->s_vals_in);                    /* (G, V) */
    bad |= take(&cur, GV, sizeof(int), &p->s_vals_out);                   /* (G, V) */
    bad |= take(&cur, GV, sizeof(double), &p->s_cum);                     /* (G, V) */
    bad |= take(&cur, GV, sizeof(int), &p->s_count);                      /* (G, V) */
    bad |= take(&cur, 2 * G, sizeof(int), &p->s_seg);                     /* (2G) */
    cudaError_t e = sample_cuda_sort_bytes(p->sample_rows, c->vocab_size, &p->sort_bytes);
    if (e != cudaSuccess) return cuda_fail(err, e, "sample_cuda_sort_bytes(G, V, &bytes)", __FILE__, __LINE__);
    bad |= take(&cur, p->sort_bytes ? p->sort_bytes : 1, 1, &p->s_sort);

    bad |= take(&cur, CUBLAS_WORKSPACE_BYTES, 1, &p->cublas_ws);
    bad |= ovf;
    p->total = cur;

    if (o->dtype != GPT2_DTYPE_F32) {
        size_t n = m->w.n_floats < STAGING_FLOATS ? m->w.n_floats : STAGING_FLOATS;
        p->staging_bytes = (n ? n : 1) * sizeof(float);
    }
    if (bad) return gpt2_fail(err, GPT2_ERR_DEVICE_MEM, "cuda: the plan's size overflows (max_slots %d, max_seq %d, "
                                                        "max_tokens %d)", o->max_slots, o->max_seq, o->max_tokens);
    return GPT2_OK;
}

/* Device bytes the plan needs at its peak: the arena, the conversion staging, and headroom. */
static size_t plan_need(const plan_t *p) {
    size_t need = p->total;
    if (need > SIZE_MAX - p->staging_bytes - HEADROOM_BYTES) return SIZE_MAX;
    return need + p->staging_bytes + HEADROOM_BYTES;
}

/* Largest max_slots (<= o->max_slots - 1) whose plan fits in `avail` bytes; 0 when none. Every plan
 * grows with max_slots, so a bisection finds it. */
static int largest_fitting_slots(const gpt2_model *m, const gpt2_backend_opts *o, size_t avail) {
    int lo = 0, hi = o->max_slots - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        gpt2_backend_opts t = *o;
        t.max_slots = mid;
        plan_t p;
        if (make_plan(m, &t, &p, NULL) == GPT2_OK && plan_need(&p) <= avail)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* ---------------------------------------------------------------------------------------------- */
/* The context                                                                                     */

typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudaDataType_t dt_cuda;           /* CUDA_R_32F, CUDA_R_16F or CUDA_R_16BF */
    cublasComputeType_t compute;
    plan_t plan;
    char *arena;                      /* plan.total bytes */

    /* weights (storage type T) */
    void *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
    void *lnfw, *lnfb, *lm_head;
    /* activations (T) and cache */
    void *resid, *ln, *qkv, *att, *tmp, *fch;
    float *logits;                    /* (rows_cap, V) */
    void *kcache, *vcache;            /* (L, S, NH, maxT, HS) */
    float *attn_scratch;
    int *in_d, *in_h;                 /* per-forward inputs: device, and pinned host mirror (n_inputs) */
    cudaEvent_t in_copied;            /* the last upload from in_h has completed */
    int in_pending;

    /* sampling */
    gpt2_cuda_sample_scratch sscr;
    gpt2_cuda_sample_params *s_params_d, *s_params_h; /* (G) */
    int *s_hist_d, *s_hist_h;                         /* (hist_cap) */
    int *s_out_d, *s_out_h;                           /* (G) */

    /* decode graphs */
    int use_graphs;
    int n_buckets;
    int bucket_size[MAX_BUCKETS];
    cudaGraphExec_t graph[MAX_BUCKETS];

    int n_rows;                       /* logits rows of the last forward (0: none yet, or it failed) */
} cuda_ctx;

static void ctx_free(cuda_ctx *x) {
    if (!x) return;
    /* best effort: errors here have nowhere to go, and a failed context still frees its memory */
    (void)cudaSetDevice(x->device);
    if (x->stream) (void)cudaStreamSynchronize(x->stream);
    for (int i = 0; i < x->n_buckets; i++)
        if (x->graph[i]) (void)cudaGraphExecDestroy(x->graph[i]);
    if (x->cublas) (void)cublasDestroy(x->cublas);
    if (x->in_copied) (void)cudaEventDestroy(x->in_copied);
    if (x->stream) (void)cudaStreamDestroy(x->stream);
    if (x->arena) (void)cudaFree(x->arena);
    if (x->in_h) (void)cudaFreeHost(x->in_h);
    if (x->s_params_h) (void)cudaFreeHost(x->s_params_h);
    if (x->s_hist_h) (void)cudaFreeHost(x->s_hist_h);
    if (x->s_out_h) (void)cudaFreeHost(x->s_out_h);
    (void)cudaGetLastError();
    free(x);
}

/* Copies n host floats to dst in the storage type, through `staging` (staging_floats) when converting. */
static gpt2_status upload(cuda_ctx *x, gpt2_dtype dt, void *dst, const float *src, size_t n, float *staging,
                          size_t staging_floats, gpt2_error *err) {
    if (n == 0) return GPT2_OK;
    if (dt == GPT2_DTYPE_F32) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, x->stream));
        CUDA_CHECK(cudaStreamSynchronize(x->stream));
        return GPT2_OK;
    }
    for (size_t done = 0; done < n;) {
        size_t k = n - done < staging_floats ? n - done : staging_floats;
        CUDA_CHECK(cudaMemcpyAsync(staging, src + done, k * sizeof(float), cudaMemcpyHostToDevice, x->stream));
        CUDA_CHECK(convert_cuda((char *)dst + done * dtype_size(dt), dt, staging, GPT2_DTYPE_F32, k, x->stream));
        CUDA_CHECK(cudaStreamSynchronize(x->stream)); /* staging is reused by the next piece */
        done += k;
    }
    return GPT2_OK;
}

static gpt2_status upload_weights(cuda_ctx *x, const gpt2_model *m, gpt2_dtype dt, gpt2_error *err) {
    const gpt2_config *c = &m->cfg;
    const gpt2_weights *w = &m->w;
    const size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer, V = (size_t)c->vocab_size;
    struct {
        void *dst;
        const float *src;
        size_t n;
    } t[] = {
        {x->wte, w->wte, V * C},          {x->wpe, w->wpe, (size_t)c->n_positions * C},
        {x->ln1w, w->ln1w, L * C},        {x->ln1b, w->ln1b, L * C},
        {x->qkvw, w->qkvw, L * C * 3 * C}, {x->qkvb, w->qkvb, L * 3 * C},
        {x->attprojw, w->attprojw, L * C * C}, {x->attprojb, w->attprojb, L * C},
        {x->ln2w, w->ln2w, L * C},        {x->ln2b, w->ln2b, L * C},
        {x->fcw, w->fcw, L * C * 4 * C},  {x->fcb, w->fcb, L * 4 * C},
        {x->fcprojw, w->fcprojw, L * 4 * C * C}, {x->fcprojb, w->fcprojb, L * C},
        {x->lnfw, w->lnfw, C},            {x->lnfb, w->lnfb, C},
        {x->lm_head, w->lm_head, V * C},
    };
    const int n_t = (int)(sizeof t / sizeof t[0]) - (m->w.tied ? 1 : 0); /* tied: lm_head is wte */
    float *staging = NULL;
    gpt2_status st = GPT2_OK;
    if (dt != GPT2_DTYPE_F32) CUDA_CHECK(cudaMalloc((void **)&staging, x->plan.staging_bytes));
    for (int i = 0; i < n_t && st == GPT2_OK; i++)
        st = upload(x, dt, t[i].dst, t[i].src, t[i].n, staging, x->plan.staging_bytes / sizeof(float), err);
    if (staging) {
        cudaError_t e = cudaFree(staging);
        if (st == GPT2_OK && e != cudaSuccess) return cuda_fail(err, e, "cudaFree(staging)", __FILE__, __LINE__);
    }
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* GEMMs (see the top of the file for the layout argument)                                         */

/* out (N, OC) = inp (N, K) @ w (K, OC), all in the storage type. */
static gpt2_status gemm_conv1d(cuda_ctx *x, void *out, const void *inp, const void *w, int N, int K, int OC,
                               gpt2_error *err) {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(x->cublas, CUBLAS_OP_N, CUBLAS_OP_N, OC, N, K, &alpha, w, x->dt_cuda, OC, inp,
                              x->dt_cuda, K, &beta, out, x->dt_cuda, OC, x->compute, CUBLAS_GEMM_DEFAULT));
    return GPT2_OK;
}

/* logits (N, V) float = inp (N, C) @ wte^T, wte (V, C). */
static gpt2_status gemm_unembed(cuda_ctx *x, float *logits, const void *inp, const void *wte, int N, int C, int V,
                                gpt2_error *err) {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(x->cublas, CUBLAS_OP_T, CUBLAS_OP_N, V, N, C, &alpha, wte, x->dt_cuda, C, inp,
                              x->dt_cuda, C, &beta, logits, CUDA_R_32F, V, x->compute, CUBLAS_GEMM_DEFAULT));
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

/* Element offset e of a tensor in the storage type. */
static void *at(void *base, size_t e, size_t es) { return (char *)base + e * es; }

/* Enqueues the whole forward on the stream (also used under graph capture: no host sync in here). */
static gpt2_status enqueue_forward(cuda_ctx *x, const gpt2_backend *be, const step_t *s, gpt2_error *err) {
    const gpt2_config *c = &be->model->cfg;
    const gpt2_dtype dt = be->opts.dtype;
    const size_t es = dtype_size(dt);
    const int C = c->n_embd, NH = c->n_head, HS = C / NH, L = c->n_layer, V = c->vocab_size;
    const int S = be->opts.max_slots, maxT = be->opts.max_seq, N = s->N;
    const float eps = c->layer_norm_epsilon;
    const size_t layer_cache = (size_t)S * (size_t)maxT * (size_t)C; /* (S, NH, maxT, HS) */
    cudaStream_t st = x->stream;
    gpt2_status r;

    CUDA_CHECK(encoder_forward_cuda(x->resid, s->tok, s->pos, x->wte, x->wpe, N, C, V, c->n_positions, dt, st));
    CUDA_CHECK(layernorm_forward_cuda(x->ln, x->resid, x->ln1w, x->ln1b, N, C, eps, dt, st));
    for (int l = 0; l < L; l++) {
        const size_t lc = (size_t)l * C;
        void *kc = at(x->kcache, (size_t)l * layer_cache, es), *vc = at(x->vcache, (size_t)l * layer_cache, es);
        void *qkvb = at(x->qkvb, 3 * lc, es);

        if ((r = gemm_conv1d(x, x->qkv, x->ln, at(x->qkvw, 3 * lc * C, es), N, C, 3 * C, err))) return r;
        CUDA_CHECK(kv_append_cuda(kc, vc, x->qkv, qkvb, s->slot, s->pos, N, NH, HS, maxT, S, dt, st));
        if (s->decode)
            CUDA_CHECK(attention_decode_cuda(x->att, x->qkv, qkvb, kc, vc, s->slot, s->pos, N, NH, HS, maxT, S,
                                             x->attn_scratch, x->plan.attn_scratch_floats, dt, st));
        else
            CUDA_CHECK(attention_prefill_cuda(x->att, x->qkv, qkvb, kc, vc, s->chunks, s->tiles, s->n_tiles, NH,
                                              HS, maxT, S, dt, st));
        if ((r = gemm_conv1d(x, x->tmp, x->att, at(x->attprojw, lc * C, es), N, C, C, err))) return r;
        CUDA_CHECK(residual_layernorm_forward_cuda(x->ln, x->resid, x->tmp, at(x->attprojb, lc, es), NULL,
                                                   at(x->ln2w, lc, es), at(x->ln2b, lc, es), N, C, eps, dt, st));
        if ((r = gemm_conv1d(x, x->fch, x->ln, at(x->fcw, 4 * lc * C, es), N, C, 4 * C, err))) return r;
        CUDA_CHECK(gelu_bias_forward_cuda(x->fch, x->fch, at(x->fcb, 4 * lc, es), N, 4 * C, dt, st));
        if ((r = gemm_conv1d(x, x->tmp, x->fch, at(x->fcprojw, 4 * lc * C, es), N, 4 * C, C, err))) return r;
        if (l + 1 < L) /* the next layer's first layernorm */
            CUDA_CHECK(residual_layernorm_forward_cuda(x->ln, x->resid, x->tmp, at(x->fcprojb, lc, es), NULL,
                                                       at(x->ln1w, lc + C, es), at(x->ln1b, lc + C, es), N, C, eps,
                                                       dt, st));
        else /* the final layernorm, gathering the rows whose logits are wanted */
            CUDA_CHECK(residual_layernorm_forward_cuda(x->ln, x->resid, x->tmp, at(x->fcprojb, lc, es), s->out_row,
                                                       x->lnfw, x->lnfb, N, C, eps, dt, st));
    }
    return gemm_unembed(x, x->logits, x->ln, x->lm_head, s->rows, C, V, err);
}

/* Captures the decode forward for one bucket into an executable graph. */
static gpt2_status capture_graph(cuda_ctx *x, const gpt2_backend *be, const step_t *s, cudaGraphExec_t *exec,
                                 gpt2_error *err) {
    cudaGraph_t g = NULL;
    *exec = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(x->stream, cudaStreamCaptureModeThreadLocal));
    gpt2_status st = enqueue_forward(x, be, s, err);
    cudaError_t e = cudaStreamEndCapture(x->stream, &g); /* always: leaves the stream out of capture mode */
    if (st != GPT2_OK) {
        if (g) (void)cudaGraphDestroy(g);
        (void)cudaGetLastError();
        return st;
    }
    if (e != cudaSuccess) return cuda_fail(err, e, "cudaStreamEndCapture(x->stream, &g)", __FILE__, __LINE__);
    e = cudaGraphInstantiate(exec, g, 0);
    (void)cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        *exec = NULL;
        return cuda_fail(err, e, "cudaGraphInstantiate(exec, g, 0)", __FILE__, __LINE__);
    }
    return GPT2_OK;
}

/* Copies ints [off, off + n) of the input mirror to the device. */
static gpt2_status push_inputs(cuda_ctx *x, size_t off, size_t n, gpt2_error *err) {
    if (n == 0) return GPT2_OK;
    CUDA_CHECK(cudaMemcpyAsync(x->in_d + off, x->in_h + off, n * sizeof(int), cudaMemcpyHostToDevice, x->stream));
    return GPT2_OK;
}

static gpt2_status cuda_forward(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                                gpt2_error *err) {
    cuda_ctx *x = be->ctx;
    const plan_t *p = &x->plan;
    gpt2_status st = gpt2_backend_check_chunks(&be->opts, chunks, n_chunks, all_logits, be->model->cfg.vocab_size, err);
    if (st != GPT2_OK) return st;
    x->n_rows = 0; /* no logits until this forward is enqueued whole */
    CUDA_CHECK(cudaSetDevice(x->device));
    if (x->in_pending) { /* the pinned mirror may still be read by the last forward's copies */
        CUDA_CHECK(cudaEventSynchronize(x->in_copied));
        x->in_pending = 0;
    }
    int N = 0, decode = 1;
    for (int i = 0; i < n_chunks; i++) {
        N += chunks[i].n;
        if (chunks[i].n != 1) decode = 0;
    }
    int *h = x->in_h, *d = x->in_d;
    step_t s = {0};

    if (decode) {
        const int B = n_chunks;
        int Bl = B, bucket = -1;
        if (x->use_graphs) {
            for (bucket = 0; bucket < x->n_buckets && x->bucket_size[bucket] < B; bucket++) {
            }
            if (bucket == x->n_buckets) return gpt2_fail(err, GPT2_ERR_ARG, "cuda forward: %d sequences, more "
                                                                             "than max_slots", B);
            Bl = x->bucket_size[bucket];
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
        CUDA_CHECK(cudaEventRecord(x->in_copied, x->stream));
        x->in_pending = 1;
        s.N = Bl;
        s.rows = Bl;
        s.tok = d + p->i_dtok;
        s.pos = d + p->i_dpos;
        s.slot = d + p->i_dslot;
        s.out_row = NULL;
        s.decode = 1;
        if (bucket >= 0) {
            if (!x->graph[bucket] && (st = capture_graph(x, be, &s, &x->graph[bucket], err))) return st;
            CUDA_CHECK(cudaGraphLaunch(x->graph[bucket], x->stream));
        } else if ((st = enqueue_forward(x, be, &s, err))) {
            return st;
        }
        x->n_rows = B;
        return GPT2_OK;
    }

    /* prefill, or a mix of prefill and decode: per-token inputs and the attention tiles */
    int *tok = h + p->i_tok, *pos = h + p->i_pos, *slot = h + p->i_slot, *row = h + p->i_row;
    int *cd = h + p->i_chunks, *tiles = h + p->i_tiles;
    int n = 0, n_tiles = 0;
    for (int i = 0; i < n_chunks; i++) {
        const gpt2_chunk *ch = &chunks[i];
        cd[4 * i] = ch->slot;
        cd[4 * i + 1] = ch->pos;
        cd[4 * i + 2] = ch->n;
        cd[4 * i + 3] = n;
        for (int q0 = 0; q0 < ch->n; q0 += GPT2_ATTN_PREFILL_BQ) {
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
            row[n] = t == ch->n - 1 ? i : -1; /* without all_logits: chunk i's last token -> logits row i */
        }
    }
    if ((st = push_inputs(x, p->i_tok, (size_t)N, err)) || (st = push_inputs(x, p->i_pos, (size_t)N, err)) ||
        (st = push_inputs(x, p->i_slot, (size_t)N, err)) ||
        (!all_logits && (st = push_inputs(x, p->i_row, (size_t)N, err))) ||
        (st = push_inputs(x, p->i_chunks, 4 * (size_t)n_chunks, err)) ||
        (st = push_inputs(x, p->i_tiles, 2 * (size_t)n_tiles, err)))
        return st;
    CUDA_CHECK(cudaEventRecord(x->in_copied, x->stream));
    x->in_pending = 1;
    s.N = N;
    s.rows = all_logits ? N : n_chunks;
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

static gpt2_status cuda_read_logits(gpt2_backend *be, float *dst, int n_rows, gpt2_error *err) {
    cuda_ctx *x = be->ctx;
    if (n_rows < 0 || n_rows > x->n_rows)
        return gpt2_fail(err, GPT2_ERR_ARG, "read_logits: %d rows asked, the last forward made %d", n_rows, x->n_rows);
    if (n_rows == 0) return GPT2_OK;
    if (!dst) return gpt2_fail(err, GPT2_ERR_ARG, "read_logits: no destination");
    const size_t bytes = (size_t)n_rows * (size_t)be->model->cfg.vocab_size * sizeof(float);
    CUDA_CHECK(cudaSetDevice(x->device));
    CUDA_CHECK(cudaMemcpyAsync(dst, x->logits, bytes, cudaMemcpyDeviceToHost, x->stream));
    CUDA_CHECK(cudaStreamSynchronize(x->stream));
    return GPT2_OK;
}

static gpt2_status cuda_sample(gpt2_backend *be, const gpt2_sample_req *reqs, int n, int *out_tokens,
                               float *out_logprobs, gpt2_error *err) {
    cuda_ctx *x = be->ctx;
    /* Placeholder until the CUDA logprobs work (another branch, same signature) is merged over it. */
    if (out_logprobs)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "sample: logprobs are not implemented on CUDA in this build");
    const plan_t *p = &x->plan;
    const int V = be->model->cfg.vocab_size, G = p->sample_rows;
    if (n < 0 || n > x->n_rows)
        return gpt2_fail(err, GPT2_ERR_ARG, "sample: %d rows asked, the last forward made %d", n, x->n_rows);
    if (n == 0) return GPT2_OK;
    if (!reqs || !out_tokens) return gpt2_fail(err, GPT2_ERR_ARG, "sample: no requests or no output");
    for (int i = 0; i < n; i++) {
        const gpt2_sample_req *r = &reqs[i];
        if (!r->p || r->n_history < 0 || (r->n_history > 0 && !r->history) || r->n_prompt < 0 ||
            r->n_prompt > r->n_history)
            return gpt2_fail(err, GPT2_ERR_ARG, "sample: request %d: bad parameters or history (%d tokens, %d of "
                                                "them prompt)", i, r->n_history, r->n_prompt);
    }
    CUDA_CHECK(cudaSetDevice(x->device));
    for (int done = 0; done < n;) {
        int g = 0, used = 0, any_sort = 0;
        while (done + g < n && g < G) {
            const gpt2_sample_req *r = &reqs[done + g];
            const gpt2_sampling *sp = r->p;
            const int pen = sp->repetition_penalty != 1.0f || sp->frequency_penalty != 0.0f ||
                            sp->presence_penalty != 0.0f;
            const int nh = pen ? r->n_history : 0;
            if (nh > p->hist_cap)
                return gpt2_fail(err, GPT2_ERR_LIMIT, "sample: request %d has %d history tokens for its penalties; "
                                                      "this backend holds at most %d", done + g, nh, p->hist_cap);
            if (used + nh > p->hist_cap) break; /* the next group takes it */
            gpt2_cuda_sample_params *q = &x->s_params_h[g];
            q->temperature = sp->temperature;
            q->top_p = sp->top_p;
            q->repetition_penalty = sp->repetition_penalty;
            q->frequency_penalty = sp->frequency_penalty;
            q->presence_penalty = sp->presence_penalty;
            q->uniform = gpt2_sample_uniform(sp->seed, r->step);
            q->top_k = sp->top_k;
            q->greedy = sp->temperature <= 0.0f || sp->top_k == 1;
            q->row = done + g;
            q->hist_off = used;
            q->n_hist = nh;
            q->n_prompt = pen ? r->n_prompt : 0;
            if (nh > 0) memcpy(x->s_hist_h + used, r->history, sizeof(int) * (size_t)nh);
            used += nh;
            any_sort |= !q->greedy;
            g++;
        }
        CUDA_CHECK(cudaMemcpyAsync(x->s_params_d, x->s_params_h, sizeof(gpt2_cuda_sample_params) * (size_t)g,
                                   cudaMemcpyHostToDevice, x->stream));
        if (used > 0)
            CUDA_CHECK(cudaMemcpyAsync(x->s_hist_d, x->s_hist_h, sizeof(int) * (size_t)used, cudaMemcpyHostToDevice,
                                       x->stream));
        CUDA_CHECK(sample_cuda(x->s_out_d, x->logits, V, x->s_params_d, x->s_hist_d, g, any_sort, &x->sscr,
                               x->stream));
        CUDA_CHECK(cudaMemcpyAsync(x->s_out_h, x->s_out_d, sizeof(int) * (size_t)g, cudaMemcpyDeviceToHost,
                                   x->stream));
        CUDA_CHECK(cudaStreamSynchronize(x->stream)); /* also: the pinned staging is free for the next group */
        memcpy(out_tokens + done, x->s_out_h, sizeof(int) * (size_t)g);
        done += g;
    }
    return GPT2_OK;
}

static void cuda_destroy(gpt2_backend *be) {
    if (!be) return;
    ctx_free(be->ctx);
    free(be);
}

/* ---------------------------------------------------------------------------------------------- */
/* Creation                                                                                        */

gpt2_status gpt2_backend_cuda_create(const gpt2_model *m, const gpt2_backend_opts *opts, gpt2_backend **out,
                                     gpt2_error *err) {
    *out = NULL;
    gpt2_status st = gpt2_backend_check_opts(m, opts, err);
    if (st != GPT2_OK) return st;
    const gpt2_config *c = &m->cfg;
    if (c->n_head < 1 || c->n_embd % c->n_head != 0 || c->n_embd / c->n_head > GPT2_ATTN_MAX_HS)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "cuda: head size %d/%d: the attention kernels take head sizes "
                                                    "up to %d", c->n_embd, c->n_head, GPT2_ATTN_MAX_HS);
    if (gpt2_cuda_device_count() == 0)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "cuda: no CUDA device is visible (cudaGetDeviceCount found none)");

    gpt2_backend *be = calloc(1, sizeof *be);
    cuda_ctx *x = calloc(1, sizeof *x);
    if (!be || !x) {
        free(be);
        free(x);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "cuda: out of host memory");
    }
    struct cudaDeviceProp prop;
    x->device = 0;
    CUDA_TRY(cudaSetDevice(x->device));
    CUDA_TRY(cudaGetDeviceProperties(&prop, x->device));
    CUDA_TRY(cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&x->cublas));
    CUBLAS_TRY(cublasSetStream(x->cublas, x->stream)); /* before cublasSetWorkspace, which it would reset */
    switch (opts->dtype) {
    case GPT2_DTYPE_F32:
        x->dt_cuda = CUDA_R_32F;
        x->compute = opts->allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        CUBLAS_TRY(cublasSetMathMode(x->cublas, opts->allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
        break;
    case GPT2_DTYPE_F16:
    case GPT2_DTYPE_BF16:
        x->dt_cuda = opts->dtype == GPT2_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
        x->compute = CUBLAS_COMPUTE_32F;
        CUBLAS_TRY(cublasSetMathMode(x->cublas, CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
        break;
    }

    /* the plan, checked against free memory before anything large is allocated */
    if ((st = make_plan(m, opts, &x->plan, err))) goto fail;
    const plan_t *p = &x->plan;
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    const size_t need = plan_need(p);
    if (need > free_b) {
        int s_fit = largest_fitting_slots(m, opts, free_b);
        char fit[160];
        if (s_fit > 0)
            snprintf(fit, sizeof fit, "the largest max_slots that fits is %d", s_fit);
        else
            snprintf(fit, sizeof fit, "no max_slots fits: lower max_tokens%s or max_seq, or use a 16-bit dtype",
                     opts->all_logits ? " (all_logits keeps max_tokens x vocab logits)" : "");
        st = gpt2_fail(err, GPT2_ERR_DEVICE_MEM,
                       "cuda: the plan needs %.1f MiB of device memory (weights %.1f, KV cache %.1f for %d slots x %d "
                       "positions, activations and scratch %.1f, headroom %.1f) but %s has %.1f MiB free of %.1f; %s",
                       MIB(need), MIB(p->weight_bytes), MIB(p->kv_bytes), opts->max_slots, opts->max_seq,
                       MIB(p->total - p->weight_bytes - p->kv_bytes + p->staging_bytes), MIB(HEADROOM_BYTES), prop.name,
                       MIB(free_b), MIB(total_b), fit);
        goto fail;
    }

    CUDA_TRY(cudaMalloc((void **)&x->arena, p->total));
    CUDA_TRY(cudaMemsetAsync(x->arena, 0, p->total, x->stream)); /* no read of uninitialised memory, ever */
    char *a = x->arena;
    x->wte = a + p->wte;
    x->wpe = a + p->wpe;
    x->ln1w = a + p->ln1w;
    x->ln1b = a + p->ln1b;
    x->qkvw = a + p->qkvw;
    x->qkvb = a + p->qkvb;
    x->attprojw = a + p->attprojw;
    x->attprojb = a + p->attprojb;
    x->ln2w = a + p->ln2w;
    x->ln2b = a + p->ln2b;
    x->fcw = a + p->fcw;
    x->fcb = a + p->fcb;
    x->fcprojw = a + p->fcprojw;
    x->fcprojb = a + p->fcprojb;
    x->lnfw = a + p->lnfw;
    x->lnfb = a + p->lnfb;
    x->lm_head = a + p->lm_head;
    x->resid = a + p->resid;
    x->ln = a + p->ln;
    x->qkv = a + p->qkv;
    x->att = a + p->att;
    x->tmp = a + p->tmp;
    x->fch = a + p->fch;
    x->logits = (float *)(a + p->logits);
    x->kcache = a + p->kcache;
    x->vcache = a + p->vcache;
    x->attn_scratch = (float *)(a + p->attn_scratch);
    x->in_d = (int *)(a + p->inputs);
    x->s_params_d = (gpt2_cuda_sample_params *)(a + p->s_params);
    x->s_hist_d = (int *)(a + p->s_hist);
    x->s_out_d = (int *)(a + p->s_out);
    x->sscr = (gpt2_cuda_sample_scratch){
        .rows = p->sample_rows,
        .V = c->vocab_size,
        .keys_in = (float *)(a + p->s_keys_in),
        .keys_out = (float *)(a + p->s_keys_out),
        .vals_in = (int *)(a + p->s_vals_in),
        .vals_out = (int *)(a + p->s_vals_out),
        .cum = (double *)(a + p->s_cum),
        .count = (int *)(a + p->s_count), /* zeroed by the memset above */
        .seg = (int *)(a + p->s_seg),
        .sort_temp = a + p->s_sort,
        .sort_bytes = p->sort_bytes,
    };
    CUBLAS_TRY(cublasSetWorkspace(x->cublas, a + p->cublas_ws, CUBLAS_WORKSPACE_BYTES));

    CUDA_TRY(cudaMallocHost((void **)&x->in_h, p->n_inputs * sizeof(int)));
    CUDA_TRY(cudaMallocHost((void **)&x->s_params_h, (size_t)p->sample_rows * sizeof(gpt2_cuda_sample_params)));
    CUDA_TRY(cudaMallocHost((void **)&x->s_hist_h, (size_t)p->hist_cap * sizeof(int)));
    CUDA_TRY(cudaMallocHost((void **)&x->s_out_h, (size_t)p->sample_rows * sizeof(int)));
    CUDA_TRY(cudaEventCreateWithFlags(&x->in_copied, cudaEventDisableTiming));

    if ((st = upload_weights(x, m, opts->dtype, err))) goto fail;

    x->use_graphs = !opts->no_cuda_graphs;
    for (int b = 1; b < opts->max_slots && x->n_buckets < MAX_BUCKETS - 1; b *= 2) x->bucket_size[x->n_buckets++] = b;
    x->bucket_size[x->n_buckets++] = opts->max_slots;

    CUDA_TRY(cudaStreamSynchronize(x->stream));
    be->name = "cuda";
    snprintf(be->device_name, sizeof be->device_name, "%s", prop.name);
    be->device_bytes = p->total;
    be->opts = *opts;
    be->model = m;
    be->ctx = x;
    be->forward = cuda_forward;
    be->read_logits = cuda_read_logits;
    be->sample = cuda_sample;
    be->destroy = cuda_destroy;
    *out = be;
    return GPT2_OK;
fail:
    ctx_free(x);
    free(be);
    return st;
}
