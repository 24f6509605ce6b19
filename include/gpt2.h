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
} gpt2_status;

typedef struct {
    gpt2_status status;
    char msg[1024];
} gpt2_error;

/* A short description of a status code ("malformed file", ...). */
const char *gpt2_strerror(gpt2_status s);

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
gpt2_status gpt2_model_load(const char *dir, gpt2_model **out, gpt2_error *err);
void gpt2_model_free(gpt2_model *m);

/* Parses and validates a config.json file alone. */
gpt2_status gpt2_config_load(const char *path, gpt2_config *out, gpt2_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Tokenizer: byte-level BPE, token-for-token identical to tiktoken's "gpt2" encoding              */

typedef struct gpt2_tokenizer gpt2_tokenizer;

/* Reads DIR/vocab.json + DIR/merges.txt, or DIR/encoder.json + DIR/vocab.bpe. */
gpt2_status gpt2_tokenizer_load(const char *dir, gpt2_tokenizer **out, gpt2_error *err);
gpt2_status gpt2_tokenizer_load_files(const char *vocab_json, const char *merges_txt,
                                      gpt2_tokenizer **out, gpt2_error *err);
void gpt2_tokenizer_free(gpt2_tokenizer *t);

int gpt2_tokenizer_n_vocab(const gpt2_tokenizer *t); /* highest id + 1 */
int gpt2_tokenizer_eot(const gpt2_tokenizer *t);     /* id of <|endoftext|>, or -1 */

/* Encodes n bytes (any bytes, invalid UTF-8 included). With allow_special, the text
 * "<|endoftext|>" becomes the end-of-text id; otherwise it is encoded as ordinary text.
 * *ids is malloc'ed; the caller frees it. Not thread-safe on one tokenizer (it keeps scratch buffers and PCRE2
 * match data). */
gpt2_status gpt2_encode(gpt2_tokenizer *t, const char *text, size_t n, int allow_special,
                        int **ids, size_t *n_ids, gpt2_error *err);

/* Decodes ids to the exact bytes. *text is malloc'ed and NUL-terminated (n_text excludes the NUL). */
gpt2_status gpt2_decode(const gpt2_tokenizer *t, const int *ids, size_t n_ids, char **text,
                        size_t *n_text, gpt2_error *err);

/* The bytes of one token, pointing into the tokenizer. */
gpt2_status gpt2_token_bytes(const gpt2_tokenizer *t, int id, const char **bytes, size_t *n,
                             gpt2_error *err);

#ifdef __cplusplus
}
#endif

#endif /* GPT2_H */
