/* fuzz_request.c: gpt2_request_parse on one arbitrary JSONL line.
 *
 * Each line is parsed against two sets of defaults (without and with default stop strings). An
 * accepted request must be within every documented range; a refused one must leave at most the id
 * and carry a message. The CLI embeds that message in a JSON error record: messages of our own
 * (GPT2_ERR_ARG: a field out of range, an unknown field) must be valid UTF-8 even when they quote the
 * input; jansson's messages for malformed JSON quote raw input bytes, cut anywhere, so for those
 * (GPT2_ERR_FORMAT) the CLI sanitizes and only the record is checked here (tests/test_jobs.c). A
 * refused object with a valid "id" keeps it (the id is read before the other fields). */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "request.h"

static gpt2_request_spec g_plain, g_stops;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_plain.max_tokens = 64;
    g_plain.sampling = gpt2_sampling_default();
    g_plain.sampling.temperature = 1.0f;
    g_stops = g_plain;
    gpt2_error err = {0};
    if (gpt2_request_add_stop(&g_stops, "\n\n", 2, &err) || gpt2_request_add_stop(&g_stops, "END", 3, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    return 0;
}

static void check_accepted(const gpt2_request_spec *r, const gpt2_request_spec *defaults) {
    FUZZ_CHECK(r->prompt && r->n_prompt > 0 && r->prompt[r->n_prompt] == '\0', "prompt");
    FUZZ_CHECK(r->max_tokens >= 0 && r->max_tokens <= (1 << 20), "max_tokens %d", r->max_tokens);
    gpt2_error err = {0};
    FUZZ_CHECK(gpt2_sampling_check(&r->sampling, &err) == GPT2_OK, "accepted bad sampling: %s", err.msg);
    FUZZ_CHECK(isfinite(r->sampling.temperature) && isfinite(r->sampling.top_p), "non-finite sampling");
    FUZZ_CHECK(r->n_stop >= 0 && r->n_stop <= GPT2_MAX_STOPS, "n_stop %d", r->n_stop);
    for (int i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        FUZZ_CHECK(n >= 1 && n <= GPT2_MAX_STOP_LEN, "stop %d has %zu bytes", i, n);
    }
    FUZZ_CHECK(!r->id || json_is_string(r->id) || json_is_integer(r->id), "id of type %d",
               r->id ? (int)json_typeof(r->id) : -1);
    (void)defaults;
}

/* The error record the CLI writes must be buildable from the message. */
static void check_refused(gpt2_status s, const gpt2_error *err, const gpt2_request_spec *r) {
    fuzz_check_error(s, err);
    FUZZ_CHECK(s == GPT2_ERR_FORMAT || s == GPT2_ERR_ARG || s == GPT2_ERR_NOMEM, "status %d: %s", (int)s, err->msg);
    FUZZ_CHECK(!r->prompt && r->n_stop == 0, "partial request left behind");
    if (s == GPT2_ERR_ARG) {
        FUZZ_CHECK(fuzz_utf8_valid(err->msg, strlen(err->msg)), "message is not valid UTF-8: %s", err->msg);
        json_t *rec = json_pack("{s:O?, s:i, s:s}", "id", r->id, "line", 1, "error", err->msg);
        FUZZ_CHECK(rec != NULL, "cannot build the error record for: %s", err->msg);
        json_decref(rec);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const gpt2_request_spec *defaults[2] = {&g_plain, &g_stops};
    gpt2_status first = GPT2_OK;
    for (int k = 0; k < 2; k++) {
        gpt2_request_spec r;
        gpt2_error err = {0};
        gpt2_status s = gpt2_request_parse((const char *)data, size, defaults[k], &r, &err);
        if (k == 0) first = s;
        else FUZZ_CHECK(s == first, "verdict depends on the default stops: %d vs %d", (int)first, (int)s);
        if (s == GPT2_OK) check_accepted(&r, defaults[k]);
        else check_refused(s, &err, &r);
        if (s == GPT2_ERR_ARG) { /* the id is read first: a valid one survives any bad field */
            json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
            json_t *id = json_is_object(root) ? json_object_get(root, "id") : NULL;
            if (id && (json_is_string(id) || json_is_integer(id)))
                FUZZ_CHECK(r.id && json_equal(r.id, id), "a valid id was lost from the error record: %s", err.msg);
            json_decref(root);
        }
        gpt2_request_spec_free(&r);
    }
    return 0;
}
