/* request.c: parsing and validating one JSONL generation request. */
#include "request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void gpt2_request_spec_free(gpt2_request_spec *r) {
    json_decref(r->id);
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

gpt2_status gpt2_sampling_check(const gpt2_sampling *s, gpt2_error *err) {
    if (!(s->temperature >= 0.0f && s->temperature <= 1000.0f))
        return gpt2_fail(err, GPT2_ERR_ARG, "temperature %g: must be in 0..1000 (0 = greedy)", s->temperature);
    if (s->top_k < 0 || s->top_k > GPT2_MAX_TOP_K)
        return gpt2_fail(err, GPT2_ERR_ARG, "top_k %d: must be in 0..%d (0 = off)", s->top_k, GPT2_MAX_TOP_K);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return gpt2_fail(err, GPT2_ERR_ARG, "top_p %g: must be in (0, 1]", s->top_p);
    if (!(s->repetition_penalty > 0.0f && s->repetition_penalty <= 100.0f))
        return gpt2_fail(err, GPT2_ERR_ARG, "repetition_penalty %g: must be in (0, 100] (1 = off)",
                         s->repetition_penalty);
    if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f))
        return gpt2_fail(err, GPT2_ERR_ARG, "frequency_penalty %g: must be in -2..2", s->frequency_penalty);
    if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f))
        return gpt2_fail(err, GPT2_ERR_ARG, "presence_penalty %g: must be in -2..2", s->presence_penalty);
    return GPT2_OK;
}

gpt2_status gpt2_request_add_stop(gpt2_request_spec *r, const char *s, size_t n, gpt2_error *err) {
    if (r->n_stop >= GPT2_MAX_STOPS)
        return gpt2_fail(err, GPT2_ERR_ARG, "stop: at most %d stop strings", GPT2_MAX_STOPS);
    if (n == 0 || n > GPT2_MAX_STOP_LEN || memchr(s, '\0', n))
        return gpt2_fail(err, GPT2_ERR_ARG, "stop: each stop string must be 1..%d bytes with no NUL",
                         GPT2_MAX_STOP_LEN);
    char *copy = malloc(n + 1);
    if (!copy) return gpt2_fail(err, GPT2_ERR_NOMEM, "stop: out of memory");
    memcpy(copy, s, n);
    copy[n] = '\0';
    r->stop[r->n_stop++] = copy;
    return GPT2_OK;
}

gpt2_status gpt2_json_int(json_t *v, const char *key, char q, long long lo, long long hi, long long *out,
                          gpt2_error *err) {
    if (!json_is_integer(v))
        return gpt2_fail(err, GPT2_ERR_ARG, "%c%s%c: must be an integer in %lld..%lld", q, key, q, lo, hi);
    if (json_integer_value(v) < lo || json_integer_value(v) > hi)
        return gpt2_fail(err, GPT2_ERR_ARG, "%c%s%c: must be an integer in %lld..%lld, not %lld", q, key, q, lo, hi,
                         (long long)json_integer_value(v));
    *out = json_integer_value(v);
    return GPT2_OK;
}

gpt2_status gpt2_json_number(json_t *v, const char *key, char q, double *out, gpt2_error *err) {
    if (json_is_integer(v)) *out = (double)json_integer_value(v);
    else if (json_is_real(v)) *out = json_real_value(v);
    else return gpt2_fail(err, GPT2_ERR_ARG, "%c%s%c: must be a number", q, key, q);
    return GPT2_OK;
}

int gpt2_sampling_field(const char *key, json_t *v, char q, gpt2_sampling *s, gpt2_error *err) {
    float *f = !strcmp(key, "temperature")          ? &s->temperature
               : !strcmp(key, "top_p")              ? &s->top_p
               : !strcmp(key, "repetition_penalty") ? &s->repetition_penalty
               : !strcmp(key, "frequency_penalty")  ? &s->frequency_penalty
               : !strcmp(key, "presence_penalty")   ? &s->presence_penalty
                                                    : NULL;
    if (f) {
        double d;
        if (gpt2_json_number(v, key, q, &d, err)) return -1;
        /* the range is gpt2_sampling_check's; this only keeps the value a finite float */
        if (!isfinite(d) || fabs(d) > 1e30) {
            gpt2_fail(err, GPT2_ERR_ARG, "%c%s%c: %g is out of range", q, key, q, d);
            return -1;
        }
        *f = (float)d;
        return 1;
    }
    if (!strcmp(key, "top_k")) {
        long long k;
        if (gpt2_json_int(v, key, q, 0, GPT2_MAX_TOP_K, &k, err)) return -1;
        s->top_k = (int)k;
        return 1;
    }
    return 0;
}

gpt2_status gpt2_request_parse(const char *line, size_t n, const gpt2_request_spec *defaults,
                               gpt2_request_spec *out, gpt2_error *err) {
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(line, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return gpt2_fail(err, GPT2_ERR_FORMAT, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    gpt2_status st = GPT2_OK;
    gpt2_request_spec r = {0};
    r.max_tokens = defaults->max_tokens;
    r.sampling = defaults->sampling;
    r.logprobs = defaults->logprobs;
    r.top_logprobs = defaults->top_logprobs;
    r.echo = defaults->echo;
    r.beam = defaults->beam.num_beams ? defaults->beam : gpt2_beam_default(); /* a zeroed default: off */
    if (!json_is_object(root)) {
        st = gpt2_fail(err, GPT2_ERR_FORMAT, "a request must be a JSON object");
        goto fail;
    }
    const char *key;
    json_t *v;
    int have_stop = 0;
    /* The id first, whatever its place in the line, so that the error record of a bad field before
     * it still carries it. null is refused: it would be indistinguishable from "no id". */
    json_t *idv = json_object_get(root, "id");
    if (idv) {
        if (!json_is_string(idv) && !json_is_integer(idv)) {
            st = gpt2_fail(err, GPT2_ERR_ARG, "\"id\": must be a string or an integer");
            goto fail;
        }
        r.id = json_incref(idv);
    }
    json_object_foreach(root, key, v) {
        long long i;
        int sf;
        if (!strcmp(key, "id")) {
            continue;
        } else if (!strcmp(key, "prompt")) {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                st = gpt2_fail(err, GPT2_ERR_ARG, "\"prompt\": must be a non-empty string");
                goto fail;
            }
            r.n_prompt = json_string_length(v);
            if (!(r.prompt = malloc(r.n_prompt + 1))) goto nomem;
            memcpy(r.prompt, json_string_value(v), r.n_prompt + 1);
        } else if ((sf = gpt2_sampling_field(key, v, '"', &r.sampling, err)) != 0) {
            if (sf < 0) {
                st = GPT2_ERR_ARG;
                goto fail;
            }
        } else if (!strcmp(key, "max_tokens")) {
            if ((st = gpt2_json_int(v, key, '"', 0, 1 << 20, &i, err))) goto fail;
            r.max_tokens = (int)i;
        } else if (!strcmp(key, "seed")) {
            if ((st = gpt2_json_int(v, key, '"', 0, INT64_MAX, &i, err))) goto fail;
            r.sampling.seed = (uint64_t)i;
        } else if (!strcmp(key, "logprobs")) { /* OpenAI's completions: null = off, k = k alternatives */
            if (json_is_null(v)) {
                r.logprobs = r.top_logprobs = 0;
            } else {
                if ((st = gpt2_json_int(v, key, '"', 0, GPT2_MAX_TOP_LOGPROBS, &i, err))) goto fail;
                r.logprobs = 1;
                r.top_logprobs = (int)i;
            }
        } else if (!strcmp(key, "echo")) {
            if (!json_is_boolean(v)) {
                st = gpt2_fail(err, GPT2_ERR_ARG, "\"echo\": must be true or false");
                goto fail;
            }
            r.echo = json_is_true(v);
        } else if (!strcmp(key, "num_beams")) {
            if ((st = gpt2_json_int(v, key, '"', 1, 64, &i, err))) goto fail;
            r.beam.num_beams = (int)i;
        } else if (!strcmp(key, "n")) {
            if ((st = gpt2_json_int(v, key, '"', 1, 64, &i, err))) goto fail;
            r.beam.n = (int)i;
        } else if (!strcmp(key, "no_repeat_ngram_size")) {
            if ((st = gpt2_json_int(v, key, '"', 0, 1 << 20, &i, err))) goto fail;
            r.beam.no_repeat_ngram_size = (int)i;
        } else if (!strcmp(key, "length_penalty")) {
            double d;
            if ((st = gpt2_json_number(v, key, '"', &d, err))) goto fail;
            r.beam.length_penalty = (float)d; /* the range is the engine's (gpt2_beam) */
        } else if (!strcmp(key, "early_stopping")) {
            if (json_is_boolean(v)) r.beam.early_stopping = json_is_true(v);
            else if (json_is_string(v) && !strcmp(json_string_value(v), "never")) r.beam.early_stopping = 2;
            else {
                st = gpt2_fail(err, GPT2_ERR_ARG, "\"early_stopping\": must be true, false or \"never\"");
                goto fail;
            }
        } else if (!strcmp(key, "stop")) {
            have_stop = 1;
            if (json_is_string(v)) {
                if ((st = gpt2_request_add_stop(&r, json_string_value(v), json_string_length(v), err))) goto fail;
            } else if (json_is_array(v)) {
                size_t k;
                json_t *s;
                json_array_foreach(v, k, s) {
                    if (!json_is_string(s)) {
                        st = gpt2_fail(err, GPT2_ERR_ARG, "\"stop\": must be a string or an array of strings");
                        goto fail;
                    }
                    if ((st = gpt2_request_add_stop(&r, json_string_value(s), json_string_length(s), err))) goto fail;
                }
            } else if (!json_is_null(v)) {
                st = gpt2_fail(err, GPT2_ERR_ARG, "\"stop\": must be a string or an array of strings");
                goto fail;
            }
        } else {
            /* quote at most 64 bytes, cut on a UTF-8 boundary so the message stays valid text */
            int k = (int)strlen(key);
            if (k > 64) {
                k = 64;
                while (k > 0 && ((unsigned char)key[k] & 0xC0) == 0x80) k--;
            }
            st = gpt2_fail(err, GPT2_ERR_ARG, "unknown field \"%.*s\"", k, key);
            goto fail;
        }
    }
    if (!r.prompt) {
        st = gpt2_fail(err, GPT2_ERR_ARG, "\"prompt\": missing");
        goto fail;
    }
    if ((st = gpt2_sampling_check(&r.sampling, err))) goto fail;
    for (int k = 0; !have_stop && k < defaults->n_stop; k++)
        if ((st = gpt2_request_add_stop(&r, defaults->stop[k], strlen(defaults->stop[k]), err))) goto fail;
    json_decref(root);
    *out = r;
    return GPT2_OK;
nomem:
    st = gpt2_fail(err, GPT2_ERR_NOMEM, "out of memory");
fail:
    /* keep the id for the error record when it was read */
    json_decref(root);
    json_t *id = r.id;
    r.id = NULL;
    gpt2_request_spec_free(&r);
    out->id = id;
    return st;
}
