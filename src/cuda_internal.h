/* cuda_internal.h: what the files of the CUDA backend share, and nothing else includes.
 *
 *   backend_cuda.c   creation and destruction, the vtable, device queries
 *   cuda_plan.c      the memory plan (every region of the one arena) and the weight upload
 *   cuda_forward.c   the forward pass, its GEMMs and the decode graphs; read_logits
 *   cuda_sample.c    sampling on the device
 *
 * Lifetime and memory: at creation the exact bytes of the whole plan (weights in the chosen dtype,
 * activations for max_tokens tokens, a KV cache of max_slots x max_seq positions, logits, attention
 * and sampling scratch, the cuBLAS workspace) are computed, compared with the free device memory,
 * and taken in ONE cudaMalloc (the arena); nothing is allocated per token afterwards. All device
 * work goes to one stream owned by the backend; no device state lives in globals.
 *
 * Storage type T: weights, activations and the KV cache are all in opts.dtype (fp32, fp16 or bf16);
 * kernels compute in float; logits are always float32.
 *
 * Shape letters as in gpt2.h, plus: N most tokens in one forward (max_tokens), S slots (max_slots),
 * maxS positions per slot (max_seq), R logits rows (N with all_logits, else S), G requests sampled per
 * launch, Vp = V rounded up to VOCAB_PAD.
 */
#ifndef GPT2_CUDA_INTERNAL_H
#define GPT2_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stddef.h>

#include "backend.h"
#include "tensors.h"

#include "../kernels/sample.cuh"

enum {
    ARENA_ALIGN = 256,  /* every region starts on a 256-byte boundary (cuBLAS, vector loads) */
    VOCAB_PAD = 64,     /* lm_head rows and the logits row stride: V rounded up to this */
    SAMPLE_GROUP = 32,  /* most requests sampled per kernel launch (sizes the sampling scratch) */
    MAX_BUCKETS = 20,   /* decode graph buckets: 1, 2, 4, ..., 2^16, max_slots */
    /* Forwards of at most this many token rows run their matrix products on kernels/gemv.cu, more rows
     * on cuBLAS. UNMEASURED default, chosen low on purpose (at M <= 4 the product is bound by reading
     * the weights once, which the GEMV does with all SMs; cuBLAS's tiles are 64+ rows): `make
     * bench-kernels` measures the crossover on the GPU and prints it; set this from that. At most
     * GPT2_GEMV_MAX_M. */
    GEMV_MAX_ROWS = 4,
};
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20) /* recommended for Hopper */
#define STAGING_FLOATS ((size_t)16 << 20)         /* fp32 weights go through 64 MiB at a time when converted */
#define HEADROOM_BYTES ((size_t)256 << 20)        /* left free: lazily loaded kernels, graphs, cuBLAS internals */
#define MIB(b) ((double)(b) / (1024.0 * 1024.0))

/* ---------------------------------------------------------------------------------------------- */
/* Error checking: every CUDA and cuBLAS call goes through one of these.                           */

gpt2_status gpt2_cuda_fail(gpt2_error *err, cudaError_t e, const char *call, const char *file, int line);
gpt2_status gpt2_cublas_fail(gpt2_error *err, cublasStatus_t s, const char *call, const char *file, int line);

/* In functions that return a status. */
#define CUDA_CHECK(call)                                                                                     \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) return gpt2_cuda_fail(err, e_, #call, __FILE__, __LINE__);                    \
    } while (0)
#define CUBLAS_CHECK(call)                                                                                   \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) return gpt2_cublas_fail(err, s_, #call, __FILE__, __LINE__);        \
    } while (0)
/* In functions that clean up at `fail:` with a local `st`. */
#define CUDA_TRY(call)                                                                                       \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            st = gpt2_cuda_fail(err, e_, #call, __FILE__, __LINE__);                                         \
            goto fail;                                                                                       \
        }                                                                                                    \
    } while (0)
#define CUBLAS_TRY(call)                                                                                     \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            st = gpt2_cublas_fail(err, s_, #call, __FILE__, __LINE__);                                       \
            goto fail;                                                                                       \
        }                                                                                                    \
    } while (0)

static inline size_t gpt2_cuda_dtype_size(gpt2_dtype dt) { return dt == GPT2_DTYPE_F32 ? 4 : 2; }

/* ---------------------------------------------------------------------------------------------- */
/* The plan: every region of the arena, its byte offset, from the config and the options.         */

typedef struct {
    size_t w[GPT2_N_TENSORS]; /* weights, in the order and shapes of src/tensors.h (lm_head == wte when tied) */
    size_t resid, ln, qkv, att, tmp, fch, logits, kcache, vcache, attn_scratch, attn_counters, inputs;
    size_t s_params, s_hist, s_out, s_lp, s_keys, s_count;
    size_t gemv_scratch, gemv_counters;
    size_t cublas_ws;
    size_t total;          /* arena bytes */
    size_t weight_bytes;   /* parts of total, for messages */
    size_t kv_bytes;
    size_t staging_bytes;  /* a second, temporary allocation while the weights are converted */
    /* counts */
    int rows_cap;          /* R: logits rows, max_tokens with all_logits, else max_slots */
    int Vp;                /* V rounded up to VOCAB_PAD: lm_head rows, logits row stride */
    int tiles_cap;         /* prefill attention tiles: ceil(N / BQ) + S */
    int sample_rows;       /* G */
    int hist_cap;          /* staging ints for one sampling group: penalty histories and n-gram bans */
    size_t attn_scratch_floats;
    size_t attn_n_counters;     /* decode attention tickets: attention_decode_counters(S, NH) */
    int gemv_max_rows;          /* forwards of <= this many rows use the GEMV kernels (GEMV_MAX_ROWS) */
    size_t gemv_scratch_floats; /* split-K partials: GPT2_GEMV_MAX_KSPLIT x gemv_max_rows x 4C floats */
    size_t gemv_n_counters;     /* split-K tickets: gemv_counters(4C) */
    /* int offsets inside the inputs region (device) and its pinned host mirror */
    size_t i_tok, i_pos, i_slot, i_row, i_chunks, i_tiles, i_dtok, i_dpos, i_dslot, n_inputs;
} gpt2_cuda_plan;

/* ---------------------------------------------------------------------------------------------- */
/* The state, split by lifetime and use; every pointer is into the arena unless it says otherwise. */

/* Weights in T: t[k] has the shape of kind k in src/tensors.h, except that the lm_head (and wte when
 * it is the lm_head) has Vp rows, rows V..Vp-1 zero. */
typedef struct {
    void *t[GPT2_N_TENSORS];
} gpt2_cuda_weights;

/* Activations in T for up to N tokens, the logits, and the per-forward inputs. */
typedef struct {
    void *resid;          /* (N, C) residual stream */
    void *ln;             /* (N, C) layernorm output */
    void *qkv;            /* (N, 3C) */
    void *att;            /* (N, C) attention output */
    void *tmp;            /* (N, C) projection outputs */
    void *fch;            /* (N, 4C) MLP hidden */
    float *logits;        /* (R, Vp) float: columns V.. are cuBLAS padding, never read */
    float *attn_scratch;  /* (S, NH, nsplit, HS + 2) split-attention partials of a decode step */
    unsigned *attn_counters; /* (S, NH) their tickets: zero between launches */
    float *gemv_scratch;  /* (ksplit, M, OC) split-K partials of the GEMV kernels, M <= gemv_max_rows */
    unsigned *gemv_counters; /* (gemv_n_counters) their tickets: zero between launches */
    int *in_d;            /* (n_inputs) per-forward ints: tokens, positions, slots, rows, chunks, tiles */
    int *in_h;            /* (n_inputs) its pinned host mirror (cudaMallocHost, not the arena) */
    cudaEvent_t in_copied; /* the last upload from in_h has completed */
    int in_pending;
} gpt2_cuda_acts;

/* The KV cache in T. */
typedef struct {
    void *k; /* (L, S, NH, maxS, HS) */
    void *v; /* (L, S, NH, maxS, HS) */
} gpt2_cuda_kv;

/* Sampling: device scratch, and pinned host staging (cudaMallocHost) for one group of G requests. */
typedef struct {
    gpt2_cuda_sample_scratch scr;                 /* (G, V) keys and penalty counts */
    gpt2_cuda_sample_params *params_d, *params_h; /* (G) */
    int *hist_d, *hist_h;                         /* (hist_cap) penalty histories and ban lists of the group */
    int *out_d, *out_h;                           /* (G) sampled tokens */
    float *lp_d, *lp_h;                           /* (G) their log-probabilities */
} gpt2_cuda_sampler;

/* Decode graphs, one per batch-size bucket, captured on first use. */
typedef struct {
    int use;                          /* 0: opts.no_cuda_graphs, or a capture failed */
    int break_next_capture;           /* testing: gpt2_cuda_test_break_next_capture */
    int n_buckets;
    int bucket_size[MAX_BUCKETS];     /* (n_buckets) 1, 2, 4, ..., max_slots */
    cudaGraphExec_t exec[MAX_BUCKETS];
} gpt2_cuda_graphs;

typedef struct {
    int device;
    int n_sm;                         /* multiprocessors: the GEMV kernels' K split */
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudaDataType_t dt_cuda;           /* CUDA_R_32F, CUDA_R_16F or CUDA_R_16BF */
    cublasComputeType_t compute;
    gpt2_cuda_plan plan;
    char *arena;                      /* plan.total bytes */
    gpt2_cuda_weights w;
    gpt2_cuda_acts a;
    gpt2_cuda_kv kv;
    gpt2_cuda_sampler smp;
    gpt2_cuda_graphs graphs;
    int n_rows;                       /* logits rows of the last forward (0: none yet, or it failed) */
} gpt2_cuda_ctx;

/* cuda_plan.c */
gpt2_status gpt2_cuda_make_plan(const gpt2_model *m, const gpt2_backend_opts *o, gpt2_cuda_plan *p, gpt2_error *err);
size_t gpt2_cuda_plan_need(const gpt2_cuda_plan *p); /* peak device bytes: arena, staging, headroom */
int gpt2_cuda_largest_fitting_slots(const gpt2_model *m, const gpt2_backend_opts *o, size_t avail);
/* Points every buffer of x at its region of x->arena (x->plan made, the arena allocated). */
void gpt2_cuda_point(gpt2_cuda_ctx *x, const gpt2_model *m);
gpt2_status gpt2_cuda_upload_weights(gpt2_cuda_ctx *x, const gpt2_model *m, gpt2_dtype dt, gpt2_error *err);

/* cuda_forward.c: the vtable's forward and read_logits */
gpt2_status gpt2_cuda_forward(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                              gpt2_error *err);
gpt2_status gpt2_cuda_read_logits(gpt2_backend *be, float *dst, int n_rows, gpt2_error *err);

/* cuda_sample.c: the vtable's sample */
gpt2_status gpt2_cuda_sample(gpt2_backend *be, const gpt2_sample_req *reqs, int n, int *out_tokens,
                             float *out_logprobs, gpt2_error *err);

#endif /* GPT2_CUDA_INTERNAL_H */
