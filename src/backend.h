/* backend.h: the one interface behind which the CPU and CUDA engines sit.
 *
 * The loader, tokenizer, sampler, scheduler and CLI talk only to this struct; they never ask which
 * backend runs. A backend owns its copy of the weights, its activations and a KV cache of
 * `max_slots` sequence slots of `max_seq` positions each, all allocated once at creation.
 */
#ifndef GPT2_BACKEND_H
#define GPT2_BACKEND_H

#include "gpt2.h"
#include "sampler.h"

typedef struct {
    int max_slots;  /* S: sequences held in the KV cache at once (>= 1) */
    int max_seq;    /* positions per slot, 1..n_positions */
    int max_tokens; /* N: most new tokens in one forward (sum over chunks), >= max_slots */
    int all_logits; /* 1: forward may be asked for logits of every token (needs N x V floats) */
    gpt2_dtype dtype;
    int allow_tf32; /* CUDA fp32 GEMMs on TF32 tensor cores (off by default: exact comparison) */
    int n_threads;  /* CPU threads; 0 = OpenMP default */
    int no_cuda_graphs; /* 1: CUDA decode runs without graphs (debugging) */
} gpt2_backend_opts;

/* New tokens for one sequence: they take positions pos .. pos+n-1 of slot `slot`, whose KV cache
 * already holds positions 0 .. pos-1 (pos == 0 starts the slot afresh). */
typedef struct {
    int slot;          /* 0 .. max_slots-1 */
    int pos;           /* tokens already cached in this slot */
    int n;             /* new tokens, >= 1, pos + n <= max_seq */
    const int *tokens; /* (n) */
    int all_rows;      /* 1: a logits row for every token, not only the last (echo: prompt logprobs) */
} gpt2_chunk;

/* Logits rows a backend holds after one forward: max_tokens with all_logits, else max_slots. */
int gpt2_backend_logit_rows(const gpt2_backend_opts *o);

typedef struct gpt2_backend gpt2_backend;
struct gpt2_backend {
    const char *name; /* "cpu" or "cuda" */
    gpt2_backend_opts opts;
    const gpt2_model *model; /* not owned; must outlive the backend */
    void *ctx;
    char device_name[256];   /* the GPU's name, or "CPU" */
    size_t device_bytes;     /* device memory allocated at creation (0 on the CPU) */
    size_t host_bytes;       /* host memory allocated at creation (the model's weights not counted) */
    /* A non-fatal problem the backend worked around (e.g. CUDA graphs turned off after a failed
     * capture), for the caller to report; "" when none. The library itself never prints. */
    char warning[256];

    /* Runs the model over the chunks (sum of n <= max_tokens, distinct slots) and appends their K and V
     * to the cache. Keeps logits on the backend: one row per token in chunk order when all_logits is
     * set (needs opts.all_logits); else row i is chunk i's last token, and after those n_chunks rows
     * come the other tokens of the chunks with all_rows, in chunk and token order (so the sampler's
     * rows stay 0..n_chunks-1). The rows must fit in gpt2_backend_logit_rows. */
    gpt2_status (*forward)(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                           gpt2_error *err);
    /* Copies the first n_rows rows of the last forward's logits to dst (n_rows, V) on the host. */
    gpt2_status (*read_logits)(gpt2_backend *be, float *dst, int n_rows, gpt2_error *err);
    /* Samples one token from each of the first n logits rows of the last forward; request i reads
     * row i. Only B token ids cross to the host. out_logprobs may be NULL; when not,
     * out_logprobs[i] = log_softmax(row i of the raw logits, before penalties, temperature, top-k and
     * top-p)[out_tokens[i]]. */
    gpt2_status (*sample)(gpt2_backend *be, const gpt2_sample_req *reqs, int n, int *out_tokens, float *out_logprobs, gpt2_error *err);
    /* Copies positions 0 .. n_pos-1 of slot src's K and V (every layer) to slot dst, as if dst had been
     * forwarded over the same tokens (beam search forks a sequence this way). src != dst. */
    gpt2_status (*copy_slot)(gpt2_backend *be, int src, int dst, int n_pos, gpt2_error *err);
    void (*destroy)(gpt2_backend *be);
};

/* device: "cpu", "cuda" or "auto" (CUDA when built in and a GPU is present, else CPU). */
gpt2_status gpt2_backend_create(const char *device, const gpt2_model *m, const gpt2_backend_opts *opts,
                                gpt2_backend **out, gpt2_error *err);
void gpt2_backend_free(gpt2_backend *be);

/* Checks opts against the model; shared by both backends. */
gpt2_status gpt2_backend_check_opts(const gpt2_model *m, const gpt2_backend_opts *o, gpt2_error *err);
/* Checks one forward's chunks against opts; shared by both backends. */
gpt2_status gpt2_backend_check_chunks(const gpt2_backend_opts *o, const gpt2_chunk *chunks, int n_chunks,
                                      int all_logits, int n_vocab, gpt2_error *err);
/* Checks a copy_slot's arguments against opts; shared by both backends. */
gpt2_status gpt2_backend_check_copy(const gpt2_backend_opts *o, int src, int dst, int n_pos, gpt2_error *err);

gpt2_status gpt2_backend_cpu_create(const gpt2_model *m, const gpt2_backend_opts *opts, gpt2_backend **out,
                                    gpt2_error *err);

/* CUDA: present only when built with nvcc (GPT2_HAVE_CUDA); gpt2_cuda_device_count and
 * gpt2_cuda_mem_info are public (gpt2.h). */
gpt2_status gpt2_backend_cuda_create(const gpt2_model *m, const gpt2_backend_opts *opts, gpt2_backend **out,
                                     gpt2_error *err);
/* Testing only (CUDA builds): the next decode-graph capture of a CUDA backend fails, as a real capture
 * failure would, so that the fallback to the plain stream can be tested. Other backends: no effect. */
void gpt2_cuda_test_break_next_capture(gpt2_backend *be);

#endif /* GPT2_BACKEND_H */
