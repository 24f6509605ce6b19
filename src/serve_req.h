/* serve_req.h: the pieces of `gpt2 serve` that need no socket and no engine, so that they can be
 * tested and fuzzed alone: parsing and checking one POST /v1/completions body, OpenAI's error body,
 * and the text helpers the responses use (UTF-8 repair, token strings for logprobs). */
#ifndef GPT2_SERVE_REQ_H
#define GPT2_SERVE_REQ_H

#include <jansson.h>
#include <stddef.h>

#include "gpt2.h"
#include "request.h"

enum {
    SERVE_MAX_PROMPTS = 64,     /* prompts in one request (a list) */
    SERVE_MAX_N = 16,           /* choices per prompt */
    SERVE_MAX_SEQS = 256,       /* prompts x n */
    SERVE_MAX_LOGPROBS = 20,    /* "logprobs": most alternatives per token */
    SERVE_MAX_PROMPT_IDS = 1 << 20,
    SERVE_MAX_TOKENS = 1 << 20, /* "max_tokens" */
};

/* One prompt: text (any bytes) or token ids. An empty text prompt is given to the model as the
 * end-of-text token alone, as OpenAI does (is_empty). */
typedef struct {
    char *text;  /* NUL-terminated, owned; NULL for ids */
    size_t n_text;
    int *ids;    /* (n_ids), owned; NULL for text */
    int n_ids;
    int is_empty;
} serve_prompt;

typedef struct {
    char *model;            /* owned */
    serve_prompt *prompts;  /* (n_prompts), owned */
    int n_prompts;
    int max_tokens;         /* default 16, as OpenAI */
    gpt2_sampling sampling; /* default temperature 1, top_p 1 */
    int has_seed;           /* "seed" given: sampling.seed is it */
    int n;                  /* choices per prompt, 1..SERVE_MAX_N */
    char *stop[GPT2_MAX_STOPS]; /* owned */
    int n_stop;
    int logprobs;           /* -1: none; else alternatives per token, 0..SERVE_MAX_LOGPROBS */
    int echo, stream, include_usage;
} serve_request;

/* A refusal: the HTTP status, OpenAI's error "type" and the request field at fault ("" when none). */
typedef struct {
    int http_status;
    char type[40];
    char param[64];
    char code[40]; /* OpenAI's error "code" ("" = null) */
    char msg[512];
} serve_error;

/* Parses a request body (any bytes). Unknown fields, wrong types, out-of-range values and malformed
 * JSON are 400 errors naming the field (or, for malformed JSON, the line and column). max_logprobs
 * caps "logprobs" (what the engine can report). On error *out is empty. */
int serve_request_parse(const char *body, size_t n, int max_logprobs, serve_request *out, serve_error *e);
void serve_request_free(serve_request *r);

/* Fills e; returns -1 (so that `return serve_fail(e, ...)` reads as one statement). */
int serve_fail(serve_error *e, int http_status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* {"error": {"message", "type", "param", "code"}}, compact, malloc'ed (NULL: out of memory). */
char *serve_error_json(const serve_error *e);

/* Code points in s[0..n) (bytes that are not UTF-8 continuation bytes). */
size_t serve_utf8_chars(const char *s, size_t n);

/* A token's bytes as a JSON-safe string for "logprobs": the text when it is valid UTF-8, else
 * "bytes:\xNN..." (as OpenAI writes bytes that are not text). malloc'ed, NULL when out of memory. */
char *serve_token_string(const char *bytes, size_t n);

#endif /* GPT2_SERVE_REQ_H */
