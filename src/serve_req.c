/* serve_req.c: one POST /v1/completions body parsed and checked; OpenAI's error body; text helpers. */
#include "serve_req.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int serve_fail(serve_error *e, int http_status, const char *type, const char *param, const char *fmt, ...) {
    e->http_status = http_status;
    snprintf(e->type, sizeof e->type, "%s", type);
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code[0] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static int bad(serve_error *e, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(serve_error *e, const char *param, const char *fmt, ...) {
    char msg[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return serve_fail(e, 400, "invalid_request_error", param, "%s", msg);
}

void serve_request_free(serve_request *r) {
    free(r->model);
    for (int i = 0; r->prompts && i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------------------------- */
/* Fields                                                                                          */

/* A field reader's refusal (request.h) as a 400 naming the field. */
static int bad_field(serve_error *e, const char *key, const gpt2_error *gerr) {
    return bad(e, key, "%s", gerr->msg);
}

static int get_int(json_t *v, const char *key, long long lo, long long hi, long long *out, serve_error *e) {
    gpt2_error gerr = {0};
    return gpt2_json_int(v, key, '\'', lo, hi, out, &gerr) ? bad_field(e, key, &gerr) : 0;
}

static int get_bool(json_t *v, const char *key, int *out, serve_error *e) {
    if (!json_is_boolean(v)) return bad(e, key, "'%s': must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* A list of token ids (non-empty, each 0..INT_MAX; the engine checks them against the vocabulary). */
static int get_ids(json_t *arr, const char *param, serve_prompt *p, serve_error *e) {
    size_t n = json_array_size(arr);
    if (n == 0) return bad(e, param, "'%s': an empty list of token ids", param);
    if (n > SERVE_MAX_PROMPT_IDS) return bad(e, param, "'%s': %zu token ids, at most %d", param, n, SERVE_MAX_PROMPT_IDS);
    if (!(p->ids = malloc(sizeof(int) * n))) return serve_fail(e, 500, "server_error", param, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
            return bad(e, param, "'%s': item %zu must be a token id (an integer >= 0)", param, i);
        p->ids[i] = (int)json_integer_value(v);
    }
    p->n_ids = (int)n;
    return 0;
}

static int get_text(json_t *s, const char *param, serve_prompt *p, serve_error *e) {
    size_t n = json_string_length(s);
    if (!(p->text = malloc(n + 1))) return serve_fail(e, 500, "server_error", param, "out of memory");
    memcpy(p->text, json_string_value(s), n);
    p->text[n] = '\0';
    p->n_text = n;
    p->is_empty = n == 0;
    return 0;
}

/* "prompt": a string, a list of strings, a list of token ids, or a list of lists of token ids. */
static int get_prompts(json_t *v, serve_request *r, serve_error *e) {
    if (json_is_string(v)) {
        if (!(r->prompts = calloc(1, sizeof *r->prompts))) return serve_fail(e, 500, "server_error", "prompt", "out of memory");
        r->n_prompts = 1;
        return get_text(v, "prompt", &r->prompts[0], e);
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(e, "prompt", "'prompt': must be a string, a list of strings, a list of token ids or a list of "
                                "lists of token ids (non-empty)");
    json_t *first = json_array_get(v, 0);
    if (json_is_integer(first)) {
        if (!(r->prompts = calloc(1, sizeof *r->prompts))) return serve_fail(e, 500, "server_error", "prompt", "out of memory");
        r->n_prompts = 1;
        return get_ids(v, "prompt", &r->prompts[0], e);
    }
    size_t n = json_array_size(v);
    if (n > SERVE_MAX_PROMPTS) return bad(e, "prompt", "'prompt': %zu prompts, at most %d", n, SERVE_MAX_PROMPTS);
    if (!(r->prompts = calloc(n, sizeof *r->prompts))) return serve_fail(e, 500, "server_error", "prompt", "out of memory");
    r->n_prompts = (int)n;
    int strings = json_is_string(first);
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(v, i);
        char param[32];
        snprintf(param, sizeof param, "prompt[%zu]", i);
        if (strings && json_is_string(item)) {
            if (get_text(item, param, &r->prompts[i], e)) return -1;
        } else if (!strings && json_is_array(item)) {
            if (get_ids(item, param, &r->prompts[i], e)) return -1;
        } else {
            return bad(e, "prompt", "'%s': a list of prompts must hold only strings or only lists of token ids", param);
        }
    }
    return 0;
}

static int add_stop(serve_request *r, json_t *s, const char *param, serve_error *e) {
    size_t n = json_string_length(s);
    if (r->n_stop >= GPT2_MAX_STOPS) return bad(e, "stop", "'stop': at most %d stop strings", GPT2_MAX_STOPS);
    if (n == 0 || n > GPT2_MAX_STOP_LEN || memchr(json_string_value(s), '\0', n))
        return bad(e, "stop", "'%s': a stop string must be 1..%d bytes with no NUL", param, GPT2_MAX_STOP_LEN);
    char *c = malloc(n + 1);
    if (!c) return serve_fail(e, 500, "server_error", "stop", "out of memory");
    memcpy(c, json_string_value(s), n + 1);
    r->stop[r->n_stop++] = c;
    return 0;
}

static int get_stop(json_t *v, serve_request *r, serve_error *e) {
    if (json_is_string(v)) return add_stop(r, v, "stop", e);
    if (!json_is_array(v)) return bad(e, "stop", "'stop': must be a string or a list of strings");
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        char param[32];
        snprintf(param, sizeof param, "stop[%zu]", i);
        if (!json_is_string(s)) return bad(e, "stop", "'%s': must be a string", param);
        if (add_stop(r, s, param, e)) return -1;
    }
    return 0;
}

static int parse_fields(json_t *root, int max_logprobs, serve_request *r, serve_error *e) {
    const char *key;
    json_t *v;
    long long k;
    int sf;
    gpt2_error gerr = {0};
    json_t *best_of = NULL;
    json_object_foreach(root, key, v) {
        if (json_is_null(v) && strcmp(key, "model") && strcmp(key, "prompt")) continue; /* null: the default */
        if (!strcmp(key, "model")) {
            if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256)
                return bad(e, "model", "'model': must be a string of 1..256 bytes");
            if (!(r->model = strdup(json_string_value(v)))) return serve_fail(e, 500, "server_error", "model", "out of memory");
        } else if (!strcmp(key, "prompt")) {
            if (get_prompts(v, r, e)) return -1;
        } else if ((sf = gpt2_sampling_field(key, v, '\'', &r->sampling, &gerr)) != 0) {
            if (sf < 0) return bad_field(e, key, &gerr);
        } else if (!strcmp(key, "max_tokens")) {
            if (get_int(v, key, 0, SERVE_MAX_TOKENS, &k, e)) return -1;
            r->max_tokens = (int)k;
        } else if (!strcmp(key, "n")) {
            if (get_int(v, key, 1, SERVE_MAX_N, &k, e)) return -1;
            r->n = (int)k;
        } else if (!strcmp(key, "best_of")) {
            best_of = v; /* accepted only as n (checked below): no server-side ranking */
        } else if (!strcmp(key, "seed")) {
            if (get_int(v, key, LLONG_MIN, LLONG_MAX, &k, e)) return -1;
            r->sampling.seed = (uint64_t)k;
            r->has_seed = 1;
        } else if (!strcmp(key, "logprobs")) {
            if (json_is_false(v)) continue;
            if (get_int(v, key, 0, max_logprobs, &k, e)) return -1;
            r->logprobs = (int)k;
        } else if (!strcmp(key, "echo")) {
            if (get_bool(v, key, &r->echo, e)) return -1;
        } else if (!strcmp(key, "stream")) {
            if (get_bool(v, key, &r->stream, e)) return -1;
        } else if (!strcmp(key, "stream_options")) {
            json_t *iu = json_is_object(v) ? json_object_get(v, "include_usage") : NULL;
            if (!json_is_object(v) || json_object_size(v) != (iu ? 1u : 0u) || (iu && !json_is_boolean(iu)))
                return bad(e, "stream_options", "'stream_options': must be {\"include_usage\": true|false}");
            r->include_usage = iu && json_is_true(iu);
        } else if (!strcmp(key, "stop")) {
            if (get_stop(v, r, e)) return -1;
        } else if (!strcmp(key, "user")) {
            if (!json_is_string(v)) return bad(e, "user", "'user': must be a string");
        } else if (!strcmp(key, "logit_bias")) {
            if (!json_is_object(v) || json_object_size(v) != 0)
                return bad(e, "logit_bias", "'logit_bias': not supported (only {} or null)");
        } else if (!strcmp(key, "suffix")) {
            return bad(e, "suffix", "'suffix': not supported (GPT-2 does not insert text)");
        } else {
            char shown[48];
            size_t n = strlen(key);
            snprintf(shown, sizeof shown, "%.*s", (int)(n < 40 ? n : 40), key);
            return bad(e, shown, "'%s%s': unrecognized request argument", shown, n > 40 ? "..." : "");
        }
    }
    if (!r->model) return bad(e, "model", "'model': required");
    if (!r->prompts) return bad(e, "prompt", "'prompt': required");
    if (best_of && !json_is_null(best_of) && (!json_is_integer(best_of) || json_integer_value(best_of) != r->n))
        return bad(e, "best_of", "'best_of': only best_of = n is supported");
    if (r->n * r->n_prompts > SERVE_MAX_SEQS)
        return bad(e, "n", "'n' x prompts = %d sequences, at most %d in one request", r->n * r->n_prompts,
                   SERVE_MAX_SEQS);
    if (r->include_usage && !r->stream)
        return bad(e, "stream_options", "'stream_options': only with \"stream\": true");
    if (gpt2_sampling_check(&r->sampling, &gerr) != GPT2_OK) {
        /* the message starts with the field's name ("top_p 1.5: must be in (0, 1]") */
        char param[32];
        size_t w = strcspn(gerr.msg, " ");
        snprintf(param, sizeof param, "%.*s", (int)(w < 31 ? w : 31), gerr.msg);
        return bad(e, param, "'%s", gerr.msg[0] ? gerr.msg : "sampling");
    }
    return 0;
}

int serve_request_parse(const char *body, size_t n, int max_logprobs, serve_request *out, serve_error *e) {
    memset(out, 0, sizeof *out);
    memset(e, 0, sizeof *e);
    serve_request r = {0};
    r.max_tokens = 16;
    r.n = 1;
    r.logprobs = -1;
    r.sampling = gpt2_sampling_default();
    r.sampling.temperature = 1.0f;
    json_error_t jerr;
    json_t *root = json_loadb(body, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return bad(e, "", "invalid JSON body at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    int rc = json_is_object(root) ? parse_fields(root, max_logprobs, &r, e)
                                  : bad(e, "", "the body must be a JSON object");
    json_decref(root);
    if (rc) {
        serve_request_free(&r);
        return -1;
    }
    *out = r;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Error body and text                                                                             */

char *serve_error_json(const serve_error *e) {
    size_t nm, np;
    char *msg = gpt2_utf8_clean(e->msg, strlen(e->msg), &nm); /* messages quote input bytes */
    char *param = gpt2_utf8_clean(e->param, strlen(e->param), &np);
    json_t *o = msg && param ? json_pack("{s:{s:s%, s:s, s:o, s:o}}", "error", "message", msg, nm, "type",
                                         e->type[0] ? e->type : "server_error", "param",
                                         np ? json_stringn(param, np) : json_null(), "code",
                                         e->code[0] ? json_string(e->code) : json_null())
                             : NULL;
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    free(msg);
    free(param);
    return s;
}

size_t serve_utf8_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

char *serve_token_string(const char *bytes, size_t n) {
    size_t i = 0;
    while (i < n) {
        int len = gpt2_utf8_seq((const unsigned char *)bytes + i, n - i);
        if (!len) break;
        i += (size_t)len;
    }
    if (i == n && !memchr(bytes, '\0', n)) {
        char *s = malloc(n + 1);
        if (s) {
            memcpy(s, bytes, n);
            s[n] = '\0';
        }
        return s;
    }
    size_t cap;
    if (gpt2_mul_size(n, 4, &cap) || gpt2_add_size(cap, 7, &cap)) return NULL;
    char *s = malloc(cap);
    if (!s) return NULL;
    size_t k = (size_t)snprintf(s, cap, "bytes:");
    for (size_t j = 0; j < n; j++) k += (size_t)snprintf(s + k, cap - k, "\\x%02x", (unsigned char)bytes[j]);
    return s;
}
