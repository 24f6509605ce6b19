/* test_logprobs.c: `gpt2 generate` records with "logprobs" and "echo": the OpenAI-shaped logprobs
 * object against an independent log-softmax of full-forward logits, text offsets against the
 * tokens' bytes, echo's prompt first, and bad values named. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

TestSuite(logprobs, .fini = test_cleanup);

static double ref_logprob(const float *row, int V, int k) {
    long double mx = row[0], sum = 0;
    for (int i = 1; i < V; i++)
        if (row[i] > mx) mx = row[i];
    for (int i = 0; i < V; i++) sum += expl((long double)row[i] - mx);
    return (double)((long double)row[k] - mx - logl(sum));
}

/* Writes lines to a temporary JSONL file, runs generate on it, returns the records (one per line). */
static json_t *run_generate(const char *model, const char *lines, int *rc) {
    char *out = NULL;
    *rc = test_run_generate(model, lines, 0, &out);
    json_t *recs = test_keep(json_array(), json_decref);
    for (char *line = out; line && *line;) {
        char *nl = strchr(line, '\n');
        json_error_t e;
        json_t *r = json_loadb(line, nl ? (size_t)(nl - line) : strlen(line), 0, &e);
        cr_assert(r, "not JSON: %s", line);
        json_array_append_new(recs, r);
        line = nl ? nl + 1 : NULL;
    }
    return recs;
}

/* Greedy with logprobs 3 and echo: token ids are the prompt's then the generated ones; each
 * logprob is log_softmax of the full forward's previous row at that id (null for the first);
 * top_ids[i][0] is that row's argmax; text_offset adds up the tokens' bytes; text = prompt + output. */
Test(logprobs, generate_record_matches_a_full_forward) {
    int rc;
    json_t *recs = run_generate(FIXTURES "/tiny",
                                "{\"id\": \"a\", \"prompt\": \"The lighthouse keeper\", \"max_tokens\": 5, "
                                "\"temperature\": 0, \"logprobs\": 3, \"echo\": true}\n"
                                "{\"id\": \"b\", \"prompt\": \"The lighthouse keeper\", \"max_tokens\": 5, "
                                "\"temperature\": 0}\n",
                                &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(json_array_size(recs), 2);
    json_t *a = json_array_get(recs, 0), *b = json_array_get(recs, 1);
    cr_assert_null(json_object_get(b, "logprobs"), "logprobs without asking");
    cr_assert(json_equal(json_object_get(a, "tokens"), json_object_get(b, "tokens")), "logprobs changed the tokens");
    json_t *lp = json_object_get(a, "logprobs");
    cr_assert(json_is_object(lp));
    int n_ids, P = json_integer_value(json_object_get(a, "prompt_tokens"));
    int *ids = test_keep(json_ints(json_object_get(lp, "token_ids"), &n_ids), free);
    int n_gen;
    int *gen = test_keep(json_ints(json_object_get(a, "tokens"), &n_gen), free);
    cr_assert_eq(n_gen, 5);
    cr_assert_eq(n_ids, P + 5);
    cr_assert_eq(memcmp(ids + P, gen, sizeof(int) * 5), 0, "the generated ids follow the prompt's");

    gpt2_model *m = test_keep(load_fixture("tiny"), gpt2_model_free);
    const int V = m->cfg.vocab_size;
    float *logits = test_keep(full_logits(m, ids, n_ids), free);
    json_t *lps = json_object_get(lp, "token_logprobs"), *tops = json_object_get(lp, "top_logprobs");
    json_t *top_ids = json_object_get(lp, "top_ids"), *offs = json_object_get(lp, "text_offset");
    json_t *texts = json_object_get(lp, "tokens");
    cr_assert(json_is_null(json_array_get(lps, 0)) && json_is_null(json_array_get(tops, 0)));
    gpt2_tokenizer *tok = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(FIXTURES "/tiny", &tok, &err), GPT2_OK, "%s", err.msg);
    test_keep(tok, gpt2_tokenizer_free);
    size_t off = 0;
    for (int i = 0; i < n_ids; i++) {
        cr_assert_eq(json_integer_value(json_array_get(offs, (size_t)i)), (json_int_t)off, "text_offset[%d]", i);
        const char *bytes;
        size_t nb;
        cr_assert_eq(gpt2_token_bytes(tok, ids[i], &bytes, &nb, &err), GPT2_OK);
        cr_assert_eq(json_string_length(json_array_get(texts, (size_t)i)), nb);
        cr_assert_eq(memcmp(json_string_value(json_array_get(texts, (size_t)i)), bytes, nb), 0);
        off += nb;
        if (i == 0) continue;
        const float *row = logits + (size_t)(i - 1) * V;
        double want = ref_logprob(row, V, ids[i]);
        double got = json_real_value(json_array_get(lps, (size_t)i));
        cr_assert(fabs(got - want) < 1e-4, "token %d: logprob %.6f, full forward %.6f", i, got, want);
        json_t *ti = json_array_get(top_ids, (size_t)i);
        cr_assert_eq(json_array_size(ti), 3);
        int best = argmax_row(row, V);
        cr_assert_eq(json_integer_value(json_array_get(ti, 0)), best, "position %d: top id is not the argmax", i);
        if (i >= P) /* greedy: the chosen token is the most likely one */
            cr_assert_eq(ids[i], best);
        json_t *d = json_array_get(tops, (size_t)i);
        cr_assert(json_is_object(d) && json_object_size(d) == 3);
        const char *bb;
        size_t nbb;
        cr_assert_eq(gpt2_token_bytes(tok, best, &bb, &nbb, &err), GPT2_OK);
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)nbb, bb);
        cr_assert(fabs(json_real_value(json_object_get(d, key)) - ref_logprob(row, V, best)) < 1e-4);
    }
    /* echo: the text is the prompt's and then the output */
    const char *text = json_string_value(json_object_get(a, "text"));
    cr_assert(!strncmp(text, "The lighthouse keeper", 21), "%s", text);
    cr_assert_str_eq(text + 21, json_string_value(json_object_get(b, "text")));
}

Test(logprobs, bad_values_are_named) {
    int rc;
    json_t *recs = run_generate(FIXTURES "/tiny",
                                "{\"prompt\": \"Hi\", \"logprobs\": 21}\n"
                                "{\"prompt\": \"Hi\", \"logprobs\": -1}\n"
                                "{\"prompt\": \"Hi\", \"logprobs\": 1.5}\n"
                                "{\"prompt\": \"Hi\", \"echo\": 1}\n"
                                "{\"prompt\": \"Hi\", \"logprobs\": null, \"max_tokens\": 1}\n",
                                &rc);
    cr_assert_eq(rc, 1);
    cr_assert_eq(json_array_size(recs), 5);
    for (int i = 0; i < 3; i++)
        cr_assert(strstr(json_string_value(json_object_get(json_array_get(recs, (size_t)i), "error")), "\"logprobs\""));
    cr_assert(strstr(json_string_value(json_object_get(json_array_get(recs, 3), "error")), "\"echo\""));
    json_t *ok = json_array_get(recs, 4);
    cr_assert_null(json_object_get(ok, "error"));
    cr_assert_null(json_object_get(ok, "logprobs"), "logprobs: null is off");
}
