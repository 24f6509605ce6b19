/* gpt2.h: public API of the GPT-2 inference engine.
 *
 * Every function that can fail returns a gpt2_status and, when given a gpt2_error, fills it with a
 * message that names the file, tensor, field or parameter at fault. The library never exits and never
 * prints; only the CLI does.
 *
 * Dimension letters used in shape comments throughout:
 *   B batch (sequences), T time (tokens), C channels (n_embd), NH heads, HS head size (C / NH),
 *   L layers, V vocab size, maxT context length (n_positions).
 */
#ifndef GPT2_H
#define GPT2_H

#include <stddef.h>
#include <stdint.h>

/* Every public function carries GPT2_API; the library is built with -fvisibility=hidden, so nothing
 * else is exported from libgpt2.so (and libgpt2.a's internal symbols are made local at link time). */
#if defined(__GNUC__)
#define GPT2_API __attribute__((visibility("default")))
#else
#define GPT2_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Status codes and errors                                                                         */

typedef enum {
    GPT2_OK = 0,
    GPT2_ERR_ARG,         /* a bad parameter from the caller */
    GPT2_ERR_IO,          /* a file cannot be opened, read or written */
    GPT2_ERR_FORMAT,      /* a file's contents are malformed */
    GPT2_ERR_CONFIG,      /* a model configuration is out of range or unsupported */
    GPT2_ERR_NOMEM,       /* a host allocation failed */
    GPT2_ERR_DEVICE,      /* a CUDA or cuBLAS call failed */
    GPT2_ERR_DEVICE_MEM,  /* the plan does not fit in device memory */
    GPT2_ERR_UNSUPPORTED, /* not built in, or no such device */
    GPT2_ERR_LIMIT,       /* a request exceeds a limit (context length, ...) */
    GPT2_ERR_ABORTED,     /* the caller stopped the work (a callback asked to) */
} gpt2_status;

typedef struct {
    gpt2_status status;
    char msg[1024];
} gpt2_error;

/* A short description of a status code ("malformed file", ...). */
GPT2_API const char *gpt2_strerror(gpt2_status s);

/* ---------------------------------------------------------------------------------------------- */
/* Model: config.json + model.safetensors (or a sharded index) loaded into host float32            */

typedef struct {
    int n_layer;              /* L */
    int n_head;               /* NH */
    int n_embd;               /* C */
    int n_positions;          /* maxT (n_positions, or n_ctx in old configs) */
    int vocab_size;           /* V */
    float layer_norm_epsilon; /* 1e-5 for every released GPT-2 */
    int tie_word_embeddings;  /* 1 unless config.json sets it false (absent: true, as in transformers) */
} gpt2_config;

/* Parameters in float32, Conv1D layout as stored by Hugging Face: weights are [in, out]. All point
 * into one allocation (`memory`); lm_head aliases wte unless the checkpoint has a distinct one. */
typedef struct {
    float *wte;      /* (V, C) */
    float *wpe;      /* (maxT, C) */
    float *ln1w;     /* (L, C) */
    float *ln1b;     /* (L, C) */
    float *qkvw;     /* (L, C, 3C) */
    float *qkvb;     /* (L, 3C) */
    float *attprojw; /* (L, C, C) */
    float *attprojb; /* (L, C) */
    float *ln2w;     /* (L, C) */
    float *ln2b;     /* (L, C) */
    float *fcw;      /* (L, C, 4C) */
    float *fcb;      /* (L, 4C) */
    float *fcprojw;  /* (L, 4C, C) */
    float *fcprojb;  /* (L, C) */
    float *lnfw;     /* (C) */
    float *lnfb;     /* (C) */
    float *lm_head;  /* (V, C); == wte when tied */
    int tied;        /* 1 when lm_head == wte */
    float *memory;   /* the one allocation behind every pointer above */
    size_t n_floats; /* its length in floats */
} gpt2_weights;

typedef struct gpt2_model {
    gpt2_config cfg;
    gpt2_weights w;
} gpt2_model;

/* Loads DIR/config.json and DIR/model.safetensors (or DIR/model.safetensors.index.json and its
 * shards). Accepts F32, F16 and BF16 tensors, hub names ("h.0.attn.c_attn.weight") and
 * save_pretrained names ("transformer.h.0..."). */
GPT2_API gpt2_status gpt2_model_load(const char *dir, gpt2_model **out, gpt2_error *err);
GPT2_API void gpt2_model_free(gpt2_model *m);

/* Parses and validates a config.json file alone. */
GPT2_API gpt2_status gpt2_config_load(const char *path, gpt2_config *out, gpt2_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Tokenizer: byte-level BPE, token-for-token identical to tiktoken's "gpt2" encoding              */

typedef struct gpt2_tokenizer gpt2_tokenizer;

/* Reads DIR/vocab.json + DIR/merges.txt, or DIR/encoder.json + DIR/vocab.bpe. */
GPT2_API gpt2_status gpt2_tokenizer_load(const char *dir, gpt2_tokenizer **out, gpt2_error *err);
GPT2_API gpt2_status gpt2_tokenizer_load_files(const char *vocab_json, const char *merges_txt,
                                      gpt2_tokenizer **out, gpt2_error *err);
GPT2_API void gpt2_tokenizer_free(gpt2_tokenizer *t);

GPT2_API int gpt2_tokenizer_n_vocab(const gpt2_tokenizer *t); /* highest id + 1 */
GPT2_API int gpt2_tokenizer_eot(const gpt2_tokenizer *t);     /* id of <|endoftext|>, or -1 */

/* Encodes n bytes (any bytes, invalid UTF-8 included). With allow_special, the text
 * "<|endoftext|>" becomes the end-of-text id; otherwise it is encoded as ordinary text.
 * *ids is malloc'ed; the caller frees it. Not thread-safe on one tokenizer (it keeps scratch buffers and PCRE2
 * match data). */
GPT2_API gpt2_status gpt2_encode(gpt2_tokenizer *t, const char *text, size_t n, int allow_special,
                        int **ids, size_t *n_ids, gpt2_error *err);

/* Decodes ids to the exact bytes. *text is malloc'ed and NUL-terminated (n_text excludes the NUL). */
GPT2_API gpt2_status gpt2_decode(const gpt2_tokenizer *t, const int *ids, size_t n_ids, char **text,
                        size_t *n_text, gpt2_error *err);

/* The bytes of one token, pointing into the tokenizer. */
GPT2_API gpt2_status gpt2_token_bytes(const gpt2_tokenizer *t, int id, const char **bytes, size_t *n,
                             gpt2_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Sampling and requests                                                                           */

/* How one request draws its tokens. Order (as Hugging Face's logits processors): repetition penalty
 * over prompt and generated tokens, frequency and presence penalties over generated tokens, then
 * temperature, top-k, top-p, and one draw. Each draw depends only on (seed, step), so a request's
 * output does not depend on what else is in the batch. */
typedef struct {
    float temperature;        /* 0 = greedy; > 0 */
    int top_k;                /* 0 = off */
    float top_p;              /* (0, 1]; 1 = off */
    float repetition_penalty; /* 1 = off; > 0 */
    float frequency_penalty;  /* 0 = off; -2..2 */
    float presence_penalty;   /* 0 = off; -2..2 */
    uint64_t seed;
} gpt2_sampling;

/* Defaults: greedy, no filters, no penalties, seed 0. */
GPT2_API gpt2_sampling gpt2_sampling_default(void);

/* Beam search (and the n-gram ban of every decoding mode), with exactly the semantics of
 * transformers' generate(num_beams, do_sample=False, length_penalty, early_stopping,
 * no_repeat_ngram_size, num_return_sequences = n): beam scores are
 * sums of log_softmax of the raw logits; a hypothesis that ends (end-of-text, or the length limit)
 * is ranked by score / generated_length^length_penalty (end-of-text counted in the length); the
 * search ends as transformers' does (early_stopping: 0 = its heuristic, 1 = as soon as num_beams
 * hypotheses are done, 2 = "never"). Deterministic: temperature, top-k, top-p and the seed are not
 * used; penalties and stop strings are refused. The beams of a request take num_beams KV-cache slots;
 * a beam that forks copies its parent's cache (no prompt is prefilled twice). A zeroed struct
 * (num_beams 0) is off; start from gpt2_beam_default(). */
typedef struct {
    int num_beams;            /* 0 or 1: off; 2..max_slots */
    float length_penalty;     /* transformers' default 1.0 */
    int early_stopping;       /* 0 false, 1 true, 2 "never" */
    int no_repeat_ngram_size; /* 0 = off: no n-gram of this size occurs twice in prompt + output;
                               * 0..max_seq, also with num_beams 0 or 1 (greedy and sampling, as
                               * transformers' NoRepeatNGramLogitsProcessor) */
    int n;                    /* hypotheses reported in FINISH (1..num_beams); 0 means 1 */
} gpt2_beam;

/* num_beams 1 (off), length_penalty 1, early_stopping 0, no_repeat_ngram_size 0, n 1. */
GPT2_API gpt2_beam gpt2_beam_default(void);


typedef enum { GPT2_DTYPE_F32 = 0, GPT2_DTYPE_F16, GPT2_DTYPE_BF16 } gpt2_dtype;
GPT2_API const char *gpt2_dtype_name(gpt2_dtype d); /* "fp32" | "fp16" | "bf16" */

typedef enum {
    GPT2_FINISH_LENGTH = 0, /* max_tokens reached, or the context (max_seq) is full */
    GPT2_FINISH_STOP,       /* end-of-text or a stop string (neither is part of the output) */
    GPT2_FINISH_CANCELLED,  /* gpt2_engine_cancel, or the request's callback returned nonzero */
    GPT2_FINISH_ERROR,      /* this request failed alone (its logits were NaN or Inf); see gpt2_event.error */
} gpt2_finish;
GPT2_API const char *gpt2_finish_name(gpt2_finish f); /* "length" | "stop" | "cancelled" | "error" */

/* One finished beam hypothesis (FINISH of a beam search request). */
typedef struct {
    const int *tokens;      /* (n_tokens) without the end-of-text token */
    const float *logprobs;  /* (n_tokens) NAN unless the request asked for logprobs */
    int n_tokens;
    const char *text;       /* the tokens' bytes */
    size_t n_text;
    float score;            /* sum of the logprobs (end-of-text included) / length^length_penalty */
    gpt2_finish finish;     /* STOP (ended with end-of-text) or LENGTH */
} gpt2_hypothesis;

/* A request's handle: unique within an engine, never 0. */
typedef uint64_t gpt2_request_id;

typedef enum {
    GPT2_EVENT_TOKEN,  /* one generated token became final (no stop string can take it back) */
    GPT2_EVENT_TEXT,   /* output bytes became final: never part of a stop string or a cut UTF-8 sequence */
    GPT2_EVENT_FINISH, /* the request is done; its last event */
    GPT2_EVENT_PROMPT, /* echo = 1 only: the prompt's logprobs, once, after its prefill, before any TOKEN */
} gpt2_event_kind;

/* What a request's callback receives. Pointers are valid during the call only. */
typedef struct {
    gpt2_event_kind kind;
    gpt2_request_id id;
    void *user;           /* the request's user pointer */
    /* TOKEN: */
    int token;            /* the token id */
    float logprob;        /* log_softmax(raw logits)[token], before penalties and temperature, as OpenAI
                           * reports it; NAN unless the request asked for logprobs */
    const char *bytes;    /* the token's bytes (may be part of a UTF-8 sequence) */
    size_t n_bytes;
    /* TEXT: the new bytes. FINISH: the whole output (up to any stop string). */
    const char *text;
    size_t n_text;
    /* FINISH: */
    gpt2_finish finish;
    const int *tokens;    /* (n_tokens) every generated token: without the end-of-text token and without
                           * the tokens that reach into a stop string */
    const float *logprobs;/* (n_tokens) their logprobs (NAN unless asked for) */
    int n_tokens;
    int prompt_tokens;    /* tokens of the prompt */
    const char *error;    /* GPT2_FINISH_ERROR: why (text held back for stop strings is not flushed);
                           * else NULL */
    /* TOKEN and PROMPT: the most likely tokens at each position, from log_softmax of the raw logits
     * (before penalties, temperature, top-k and top-p), most likely first, ties to the lower id.
     * PROMPT reuses tokens / n_tokens (the prompt's ids) and logprobs ((n_tokens) log p(prompt[i] |
     * prompt[0..i-1]), logprobs[0] = NAN: no context); bytes and text are unused. */
    int n_top;                 /* alternatives per position (= the request's top_logprobs) */
    const int *top_ids;        /* TOKEN: (n_top); PROMPT: (n_tokens, n_top), row 0 unspecified */
    const float *top_logprobs; /* same shape as top_ids */
    /* FINISH of a beam search request: the best n hypotheses, best first (the event's tokens, text
     * and finish are those of hyps[0]); else n_hyps = 0. TOKEN and TEXT events of a beam search come
     * just before its FINISH, for hyps[0]. */
    int n_hyps;
    const gpt2_hypothesis *hyps;
} gpt2_event;

/* Called from the thread that runs gpt2_engine_step, without any engine lock held (it may call
 * gpt2_engine_submit and gpt2_engine_cancel). Nonzero return cancels the request: it gets no further
 * events, not even FINISH, and its slot is freed at the next step. */
typedef int (*gpt2_event_fn)(const gpt2_event *ev);

typedef struct {
    /* The prompt: token ids, or (when prompt is NULL) text that the engine encodes at submit. */
    const int *prompt;        /* (n_prompt) token ids */
    int n_prompt;
    const char *prompt_text;  /* (n_prompt_text) bytes, any bytes */
    size_t n_prompt_text;
    int no_special;           /* text: encode "<|endoftext|>" as ordinary text, not as end-of-text */
    int max_tokens;           /* most tokens to generate, >= 0 */
    gpt2_sampling sampling;
    const char *const *stop;  /* (n_stop) NUL-terminated stop strings, non-empty; may be NULL */
    int n_stop;
    int ignore_eot;           /* 1: end-of-text is an ordinary token (benchmarks: fixed-length output) */
    int logprobs;             /* 1: report each token's logprob */
    int top_logprobs;         /* 0..20: with logprobs = 1, also report this many most likely tokens at each
                               * step (from log_softmax of the raw logits, before penalties / temperature /
                               * top-k / top-p) */
    int echo;                 /* 1: one GPT2_EVENT_PROMPT event after the prompt is prefilled, before any
                               * TOKEN (with max_tokens 0 too: the prompt is then prefilled, not skipped) */
    gpt2_beam beam;           /* beam search (num_beams >= 2), else off */
    gpt2_event_fn on_event;   /* may be NULL */
    void *user;
} gpt2_request;

/* ---------------------------------------------------------------------------------------------- */
/* Engine: a model on a device, a tokenizer, and a continuous-batching scheduler                   */
/*
 * Requests are queued by gpt2_engine_submit and run by gpt2_engine_step: each step finishes the
 * cancelled requests, admits queued requests into free KV-cache slots (in submission order), runs one
 * forward over the active slots (long prompts are prefilled in pieces of the per-step token budget;
 * every slot that has its prompt decodes one token) and fires the requests' callbacks.
 *
 * Threads: gpt2_engine_submit, gpt2_engine_cancel and gpt2_engine_pending may be called from any
 * thread at any time (a mutex inside the engine guards the queue). gpt2_engine_step, gpt2_engine_run,
 * gpt2_engine_logits and the tokenizer returned by gpt2_engine_tokenizer belong to one thread at a
 * time: the caller serialises them. The library starts no threads of its own besides OpenMP's.
 */

typedef struct gpt2_engine gpt2_engine;

typedef struct {
    const char *device;  /* "cpu", "cuda" or "auto" (CUDA when built in and a GPU is present) */
    gpt2_dtype dtype;    /* weights and activations on CUDA; the CPU computes in fp32 only */
    int max_slots;       /* sequences decoded together; 0: 64 on CUDA, 8 on the CPU */
    int max_seq;         /* positions per slot (prompt + output); 0: the model's n_positions */
    int max_tokens;      /* most tokens in one step (prefill budget), >= max_slots; 0: max_slots + 4096 on
                          * CUDA, + 256 on the CPU */
    int n_threads;       /* CPU threads; 0: OpenMP's default */
    int cuda_graphs;     /* 1 (default): CUDA decode steps replay a graph per batch-size bucket */
    int allow_tf32;      /* CUDA fp32 GEMMs on TF32 tensor cores (off by default: exact comparison) */
    int logits;          /* 1: gpt2_engine_logits may be called (keeps max_tokens x vocab logits) */
    const char *tokenizer_dir; /* vocab.json + merges.txt from here; NULL: the model directory */
} gpt2_engine_opts;

/* The defaults above. */
GPT2_API gpt2_engine_opts gpt2_engine_opts_default(void);

/* Loads the model and tokenizer from model_dir and plans the device. */
GPT2_API gpt2_status gpt2_engine_create(const char *model_dir, const gpt2_engine_opts *opts, gpt2_engine **out,
                                        gpt2_error *err);
/* The same over a loaded model and tokenizer, which the engine borrows: they must outlive it. Several
 * engines may share one model (a benchmark trying batch sizes); opts->tokenizer_dir is ignored. */
GPT2_API gpt2_status gpt2_engine_create_from(const gpt2_model *m, gpt2_tokenizer *tok, const gpt2_engine_opts *opts,
                                             gpt2_engine **out, gpt2_error *err);
/* Frees everything; requests still queued or running get no further events. NULL is ignored. */
GPT2_API void gpt2_engine_destroy(gpt2_engine *e);

/* Queues a request (prompt, stop strings copied). The prompt is checked here: empty, an id outside
 * the vocabulary, or prompt_tokens >= max_seq are errors naming the field; so are bad sampling values.
 * *id (may be NULL) gets the handle. */
GPT2_API gpt2_status gpt2_engine_submit(gpt2_engine *e, const gpt2_request *r, gpt2_request_id *id,
                                        gpt2_error *err);
/* Cancels a queued or running request: at the next step it finishes with GPT2_FINISH_CANCELLED and
 * its slot takes the next queued request. GPT2_ERR_ARG when no such request is queued or running. */
GPT2_API gpt2_status gpt2_engine_cancel(gpt2_engine *e, gpt2_request_id id, gpt2_error *err);
/* Requests queued or running. */
GPT2_API int gpt2_engine_pending(gpt2_engine *e);

/* One scheduler step (see above). *busy (may be NULL) gets the requests still queued or running after
 * it. A step with nothing to do returns at once. On an error the requests stay where they were. */
GPT2_API gpt2_status gpt2_engine_step(gpt2_engine *e, int *busy, gpt2_error *err);
/* Steps until no request is queued or running. */
GPT2_API gpt2_status gpt2_engine_run(gpt2_engine *e, gpt2_error *err);

/* Logits of every position of one token sequence, out (T, V) float32, as one forward in pieces of
 * max_tokens (needs opts.logits, T <= max_seq, a free slot). */
GPT2_API gpt2_status gpt2_engine_logits(gpt2_engine *e, const int *ids, int T, float *out, gpt2_error *err);

/* What the engine chose. */
typedef struct {
    char device[16];       /* "cpu" or "cuda" */
    char device_name[256]; /* the GPU's name, or "CPU" */
    gpt2_dtype dtype;
    int max_slots, max_seq, max_tokens;
    int n_threads;         /* CPU threads asked for (0: OpenMP's default) */
    int cuda_graphs;
    size_t device_bytes;   /* device memory the backend allocated (0 on the CPU) */
    size_t host_bytes;     /* host memory the backend allocated (activations, KV cache on the CPU; the
                            * loaded model's weights are not counted) */
    char warning[256];     /* a problem the engine worked around so far (e.g. CUDA graphs turned off
                            * after a failed capture), for the caller to report; "" when none */
} gpt2_plan;
GPT2_API gpt2_status gpt2_engine_plan(const gpt2_engine *e, gpt2_plan *out);

GPT2_API const gpt2_model *gpt2_engine_model(const gpt2_engine *e);
/* The engine's tokenizer, for gpt2_encode / gpt2_decode (see the thread note above). */
GPT2_API gpt2_tokenizer *gpt2_engine_tokenizer(gpt2_engine *e);

/* CUDA devices this build can use (0 when built without CUDA or none is visible). */
GPT2_API int gpt2_cuda_device_count(void);
/* Device memory in use on the CUDA device the engines use (total - free, every process counted) and
 * its size, from cudaMemGetInfo. GPT2_ERR_UNSUPPORTED without CUDA or without a GPU. */
GPT2_API gpt2_status gpt2_cuda_mem_info(size_t *used_bytes, size_t *total_bytes, gpt2_error *err);

#ifdef __cplusplus
}
#endif

#endif /* GPT2_H */
