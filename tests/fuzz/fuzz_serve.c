/* fuzz_serve.c: `gpt2 serve`'s request parser (serve_request_parse) on one arbitrary request body,
 * and its text helpers on the same bytes.
 *
 * Accepted: every field is within its documented range (model 1..256 bytes; 1..64 prompts, each text
 * NUL-terminated or 1..2^20 ids in 0..INT_MAX; n * prompts <= 256; at most 16 stops of 1..256 bytes
 * without NUL; sampling as gpt2_sampling_check wants; include_usage only with stream). Refused: a 400
 * (or a 500 for out of memory) with a message, nothing left in the request, and an error body that
 * is valid JSON carrying the same param, whatever bytes the message quotes. The verdict does not
 * depend on the logprobs cap unless "logprobs" lies between the two caps. gpt2_utf8_clean always
 * gives valid UTF-8 that jansson takes as a string; serve_token_string gives valid UTF-8, the bytes
 * themselves when they were valid UTF-8 without NUL, else "bytes:\xNN...". */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "serve_req.h"
#include "util.h"

static void check_accepted(const serve_request *r, int max_logprobs) {
    FUZZ_CHECK(r->model && strlen(r->model) >= 1 && strlen(r->model) <= 256, "model");
    FUZZ_CHECK(r->n_prompts >= 1 && r->n_prompts <= SERVE_MAX_PROMPTS && r->prompts, "%d prompts", r->n_prompts);
    FUZZ_CHECK(r->n >= 1 && r->n <= SERVE_MAX_N && r->n * r->n_prompts <= SERVE_MAX_SEQS, "n %d", r->n);
    for (int i = 0; i < r->n_prompts; i++) {
        const serve_prompt *p = &r->prompts[i];
        FUZZ_CHECK(!p->text != !p->ids, "prompt %d is both or neither text and ids", i);
        if (p->text) {
            FUZZ_CHECK(p->text[p->n_text] == '\0' && p->is_empty == (p->n_text == 0), "prompt %d text", i);
        } else {
            FUZZ_CHECK(p->n_ids >= 1 && p->n_ids <= SERVE_MAX_PROMPT_IDS && !p->is_empty, "prompt %d ids", i);
            for (int k = 0; k < p->n_ids; k++) FUZZ_CHECK(p->ids[k] >= 0, "prompt %d id %d", i, p->ids[k]);
        }
    }
    FUZZ_CHECK(r->max_tokens >= 0 && r->max_tokens <= SERVE_MAX_TOKENS, "max_tokens %d", r->max_tokens);
    gpt2_error err = {0};
    FUZZ_CHECK(gpt2_sampling_check(&r->sampling, &err) == GPT2_OK, "accepted bad sampling: %s", err.msg);
    FUZZ_CHECK(r->n_stop >= 0 && r->n_stop <= GPT2_MAX_STOPS, "n_stop %d", r->n_stop);
    for (int i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        FUZZ_CHECK(n >= 1 && n <= GPT2_MAX_STOP_LEN, "stop %d has %zu bytes", i, n);
    }
    FUZZ_CHECK(r->logprobs >= -1 && r->logprobs <= max_logprobs, "logprobs %d", r->logprobs);
    FUZZ_CHECK(!r->include_usage || r->stream, "include_usage without stream");
}

static void check_refused(const serve_request *r, const serve_error *e) {
    FUZZ_CHECK(e->http_status == 400 || e->http_status == 500, "status %d", e->http_status);
    FUZZ_CHECK(e->msg[0] && memchr(e->msg, '\0', sizeof e->msg), "no message");
    FUZZ_CHECK(!r->model && !r->prompts && r->n_stop == 0, "partial request left behind");
    char *body = serve_error_json(e);
    FUZZ_CHECK(body, "no error body for: %s", e->msg);
    json_t *o = json_loads(body, 0, NULL);
    json_t *err = json_object_get(o, "error");
    FUZZ_CHECK(json_is_string(json_object_get(err, "message")), "error body without a message: %s", body);
    json_t *param = json_object_get(err, "param");
    FUZZ_CHECK(e->param[0] ? json_is_string(param) : json_is_null(param), "param: %s", body);
    if (e->param[0] && fuzz_utf8_valid(e->param, strlen(e->param)))
        FUZZ_CHECK(!strcmp(json_string_value(param), e->param), "param changed: %s", body);
    json_decref(o);
    free(body);
}

static void check_text(const uint8_t *data, size_t size) {
    size_t n;
    char *clean = gpt2_utf8_clean((const char *)data, size, &n);
    FUZZ_CHECK(clean && clean[n] == '\0' && fuzz_utf8_valid(clean, n), "utf8_clean");
    json_t *s = json_stringn(clean, n);
    FUZZ_CHECK(s, "jansson refuses the cleaned text");
    json_decref(s);
    if (fuzz_utf8_valid((const char *)data, size)) FUZZ_CHECK(n == size && !memcmp(clean, data, size), "changed valid text");
    free(clean);
    size_t k = size < 64 ? size : 64; /* a token is short */
    char *ts = serve_token_string((const char *)data, k);
    FUZZ_CHECK(ts && fuzz_utf8_valid(ts, strlen(ts)), "token string");
    if (fuzz_utf8_valid((const char *)data, k) && !memchr(data, '\0', k))
        FUZZ_CHECK(strlen(ts) == k && !memcmp(ts, data, k), "token string changed valid text");
    else
        FUZZ_CHECK(!strncmp(ts, "bytes:", 6) && strlen(ts) == 6 + 4 * k, "token string of bytes: %s", ts);
    free(ts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int caps[2] = {5, SERVE_MAX_LOGPROBS};
    int verdict[2];
    int logprobs_between = 0;
    for (int i = 0; i < 2; i++) {
        serve_request r;
        serve_error e;
        verdict[i] = serve_request_parse((const char *)data, size, caps[i], &r, &e);
        if (verdict[i] == 0) {
            check_accepted(&r, caps[i]);
            logprobs_between |= r.logprobs > caps[0];
        } else {
            check_refused(&r, &e);
            logprobs_between |= !strcmp(e.param, "logprobs");
        }
        serve_request_free(&r);
    }
    if (!logprobs_between) FUZZ_CHECK(verdict[0] == verdict[1], "the verdict depends on the logprobs cap");
    check_text(data, size);
    return 0;
}
