/* test_score.c: `gpt2 score` against transformers (tests/data/decoding_golden.json "score": the
 * perplexity guide's windows on the "tiny" fixture, n_positions 64, nll summed in float64 from
 * transformers' float32 logits), for strides below n_positions and texts longer than it; the
 * --input JSONL form, and bad input named. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

TestSuite(score, .fini = test_cleanup);

static char *write_temp(const char *data, size_t n) {
    char *path = test_keep(strdup("/tmp/gpt2-score-XXXXXX"), free);
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, data, n), (ssize_t)n);
    close(fd);
    return path;
}

static json_t *run_json(const char *args, int *rc) {
    char cmd[1024], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s score --model %s/tiny --device cpu %s 2>/dev/null", cli_bin(), FIXTURES, args);
    *rc = run_capture(cmd, &out);
    test_keep(out, free);
    json_t *recs = test_keep(json_array(), json_decref);
    for (char *line = out; line && *line;) {
        char *nl = strchr(line, '\n');
        json_t *r = json_loadb(line, nl ? (size_t)(nl - line) : strlen(line), 0, NULL);
        cr_assert(r, "not JSON: %s", line);
        json_array_append_new(recs, r);
        line = nl ? nl + 1 : NULL;
    }
    return recs;
}

static void check(json_t *got, json_t *want, const char *what) {
    double nll = json_real_value(json_object_get(got, "nll")), wn = json_number_value(json_object_get(want, "nll"));
    json_int_t tokens = json_integer_value(json_object_get(got, "tokens"));
    cr_assert_eq(tokens, json_integer_value(json_object_get(want, "tokens")), "%s: %lld tokens scored, transformers %lld",
                 what, (long long)tokens, (long long)json_integer_value(json_object_get(want, "tokens")));
    cr_assert(fabs(nll - wn) <= 1e-4 * fabs(wn), "%s: nll %.9g, transformers %.9g", what, nll, wn);
    double ppl = json_real_value(json_object_get(got, "ppl"));
    cr_assert(fabs(ppl - exp(nll / (double)tokens)) <= 1e-9 * ppl, "%s: ppl is not exp(nll / tokens)", what);
}

/* Every golden text and stride through --file --json. */
Test(score, file_matches_transformers) {
    json_error_t jerr;
    json_t *g = test_keep(json_load_file("tests/data/decoding_golden.json", 0, &jerr), json_decref);
    json_t *cases = json_object_get(g, "score");
    cr_assert_gt(json_array_size(cases), 4);
    int longer = 0, overlapping = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        const char *text = json_string_value(json_object_get(cs, "text"));
        const char *path = write_temp(text, strlen(text));
        int stride = (int)json_integer_value(json_object_get(cs, "stride"));
        longer += json_integer_value(json_object_get(cs, "n_ids")) > 64;
        overlapping += json_integer_value(json_object_get(cs, "n_ids")) > 64 && stride < 64;
        char args[512], what[64];
        snprintf(args, sizeof args, "--file %s --stride %d --json --batch 3", path, stride);
        int rc;
        json_t *recs = run_json(args, &rc);
        cr_assert_eq(rc, 0, "case %zu: exit %d", c, rc);
        cr_assert_eq(json_array_size(recs), 1);
        snprintf(what, sizeof what, "case %zu (stride %d)", c, stride);
        check(json_array_get(recs, 0), cs, what);
        unlink(path);
    }
    cr_assert_gt(longer, 0);
    cr_assert_gt(overlapping, 0, "no stride below n_positions on a text longer than it");
}

/* --input: one record per line, in order, the same numbers as --file; bad lines named, exit 1. */
Test(score, input_jsonl_records) {
    json_error_t jerr;
    json_t *g = test_keep(json_load_file("tests/data/decoding_golden.json", 0, &jerr), json_decref);
    json_t *cases = json_object_get(g, "score"), *lines = test_keep(json_array(), json_decref);
    char *in = NULL;
    size_t n_in = 0;
    FILE *f = open_memstream(&in, &n_in);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        if (json_integer_value(json_object_get(cs, "stride")) != 64) continue;
        json_t *rec = json_pack("{s:I, s:O}", "id", (json_int_t)c, "text", json_object_get(cs, "text"));
        char *s = json_dumps(rec, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(rec);
        json_array_append(lines, cs);
    }
    fprintf(f, "{\"id\": \"short\", \"text\": \"a\"}\n{\"id\": \"x\", \"txt\": \"hello\"}\n");
    fclose(f);
    test_keep(in, free);
    const char *path = write_temp(in, n_in);
    char args[512];
    snprintf(args, sizeof args, "--input %s", path);
    int rc;
    json_t *recs = run_json(args, &rc);
    unlink(path);
    cr_assert_eq(rc, 1);
    size_t n = json_array_size(lines);
    cr_assert_eq(json_array_size(recs), n + 2);
    for (size_t i = 0; i < n; i++) check(json_array_get(recs, i), json_array_get(lines, i), "--input line");
    cr_assert(strstr(json_string_value(json_object_get(json_array_get(recs, n), "error")), "nothing to score"));
    cr_assert(strstr(json_string_value(json_object_get(json_array_get(recs, n + 1), "error")), "\"txt\""));
}

Test(score, bad_options_are_refused) {
    char cmd[512], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s score --model %s/tiny --file /dev/null --stride 65 2>&1", cli_bin(), FIXTURES);
    cr_assert_eq(run_capture(cmd, &out), 2);
    test_keep(out, free);
    cr_assert(strstr(out, "--stride 65"), "%s", out);
}
