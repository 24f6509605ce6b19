/* request.h: one JSONL generation request, parsed and validated (no tokenization). */
#ifndef GPT2_REQUEST_H
#define GPT2_REQUEST_H

#include <jansson.h>

#include "gpt2.h"
#include "sampler.h"

enum { GPT2_MAX_STOPS = 16, GPT2_MAX_STOP_LEN = 256, GPT2_MAX_TOP_K = 1 << 30, GPT2_MAX_TOP_LOGPROBS = 20 };

typedef struct {
    json_t *id;      /* the request's "id" (string or integer), owned; NULL when absent */
    char *prompt;    /* prompt bytes, NUL-terminated, owned */
    size_t n_prompt;
    int max_tokens;  /* 0 .. 1<<20 */
    gpt2_sampling sampling;
    char *stop[GPT2_MAX_STOPS]; /* owned */
    int n_stop;
    int logprobs;    /* 1: each token's logprob ("logprobs": k, not null) */
    int top_logprobs;/* k: that many alternatives per token, 0..GPT2_MAX_TOP_LOGPROBS */
    int echo;        /* 1: the prompt's tokens and logprobs too */
    gpt2_beam beam;  /* "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size", "n" */
} gpt2_request_spec;

/* Parses one line {"id", "prompt", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop",
 * "repetition_penalty", "frequency_penalty", "presence_penalty", "logprobs" (null or 0..20), "echo"
 * (boolean), "num_beams", "length_penalty", "early_stopping" (boolean or "never"),
 * "no_repeat_ngram_size", "n"}; fields absent take the values of
 * `defaults` (whose prompt and id are ignored). Unknown fields, wrong types and out-of-range values
 * are errors naming the field. On error only out->id may be set (the id, when it could be read, for
 * the error record); free it with gpt2_request_spec_free. */
gpt2_status gpt2_request_parse(const char *line, size_t n, const gpt2_request_spec *defaults,
                               gpt2_request_spec *out, gpt2_error *err);

/* Checks sampling values: the one range check for the JSONL fields and the CLI's options (the
 * parsers only check syntax and type); the message names the field. */
gpt2_status gpt2_sampling_check(const gpt2_sampling *s, gpt2_error *err);

/* Field readers shared by the JSON request parsers (the JSONL lines here, `gpt2 serve`'s bodies in
 * serve_req.c). Each refusal is GPT2_ERR_ARG with a message that starts with the field's name quoted
 * with q (the JSONL parser's '"', the server's '\''), e.g. `"max_tokens": must be an integer in
 * 0..1048576, not -1`. gpt2_json_int: an integer in lo..hi. gpt2_json_number: an integer or real. */
gpt2_status gpt2_json_int(json_t *v, const char *key, char q, long long lo, long long hi, long long *out,
                          gpt2_error *err);
gpt2_status gpt2_json_number(json_t *v, const char *key, char q, double *out, gpt2_error *err);

/* One sampling field of a JSON request into s: "temperature", "top_p", "repetition_penalty",
 * "frequency_penalty", "presence_penalty" (numbers of magnitude <= 1e30; their ranges are
 * gpt2_sampling_check's, which the caller runs once every field is read) or "top_k" (an integer in
 * 0..GPT2_MAX_TOP_K). "seed" is not here (the server takes any int64, the JSONL lines 0..2^63-1).
 * Returns 1 when key is one of them and v was stored, 0 when key is none of them (nothing done), -1 on
 * a bad value (err set, as above). */
int gpt2_sampling_field(const char *key, json_t *v, char q, gpt2_sampling *s, gpt2_error *err);

/* Adds a stop string (copied); error when there are already GPT2_MAX_STOPS or it is empty or too long. */
gpt2_status gpt2_request_add_stop(gpt2_request_spec *r, const char *s, size_t n, gpt2_error *err);

void gpt2_request_spec_free(gpt2_request_spec *r);

#endif /* GPT2_REQUEST_H */
