/* test_bench.c: `gpt2 bench`: option checking, the JSON it writes, and its generation loop against
 * transformers' greedy tokens (golden.json of the small fixture). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define SMALL FIXTURES "/small"

static char tmpdir[64];

static void make_tmp(void) {
    strcpy(tmpdir, "/tmp/gpt2-bench-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void rm_tmp(void) {
    test_cleanup();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

/* Buffers go to test_keep, freed by test_cleanup in .fini however the test ended. */
TestSuite(bench, .init = make_tmp, .fini = rm_tmp);

/* Runs `gpt2 bench ARGS`; *out gets stdout, or stderr alone when want_stderr. Returns the exit status. */
static int run_bench(const char *args, int want_stderr, char **out) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s bench %s %s", cli_bin(), args, want_stderr ? "2>&1 >/dev/null" : "2>/dev/null");
    int rc = run_capture(cmd, out);
    if (out) test_keep(*out, free);
    return rc;
}

/* Bad option values: exit 2 and a message on stderr that names the option. */
static void expect_usage_error(const char *args, const char *names) {
    char *err;
    int rc = run_bench(args, 1, &err);
    cr_expect_eq(rc, 2, "`bench %s`: exit %d, want 2 (stderr: %s)", args, rc, err);
    cr_expect(strstr(err, names), "`bench %s`: stderr does not name %s: %s", args, names, err);
}

Test(bench, bad_options_exit_2_naming_the_option) {
    expect_usage_error("--model " SMALL " --batch 1,,2", "--batch");
    expect_usage_error("--model " SMALL " --batch 0", "--batch");
    expect_usage_error("--model " SMALL " --batch 4,abc", "--batch");
    expect_usage_error("--model " SMALL " --batch 1,2,", "--batch");
    expect_usage_error("--model " SMALL " --batch ''", "--batch");
    expect_usage_error("--model " SMALL " --batch -8", "--batch");
    expect_usage_error("--model " SMALL " --prompt-len 0", "--prompt-len");
    expect_usage_error("--model " SMALL " --prompt-len 12x", "--prompt-len");
    expect_usage_error("--model " SMALL " --gen-len 0", "--gen-len");
    expect_usage_error("--model " SMALL " --gen-len 1", "--gen-len");
    expect_usage_error("--model " SMALL " --warmup -1", "--warmup");
    expect_usage_error("--model " SMALL " --seed -5", "--seed");
    expect_usage_error("--model " SMALL " --max-tokens 3 --batch 1,4", "--max-tokens");
    expect_usage_error("--model " SMALL " --device tpu", "--device");
    expect_usage_error("--model " SMALL " --dtype fp8", "--dtype");
    expect_usage_error("--model " SMALL " --bogus 1", "--bogus");
    expect_usage_error("--batch 1", "--model");
    /* small has n_positions = 128: 100 + 29 does not fit, 100 + 28 would. */
    expect_usage_error("--model " SMALL " --prompt-len 100 --gen-len 29", "n_positions");
    expect_usage_error("--model " SMALL " --prompt-len 100 --gen-len 29", "--prompt-len");
}

Test(bench, bad_prompt_ids_file) {
    char path[128], args[512];
    snprintf(path, sizeof path, "%s/ids.txt", tmpdir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("1 2 3 4 5 6 7\n", f); /* 7 ids: batch 2 x prompt-len 4 needs 8 */
    cr_assert_eq(fclose(f), 0);
    snprintf(args, sizeof args, "--model " SMALL " --device cpu --batch 1,2 --prompt-len 4 --gen-len 4 --prompt-ids %s",
             path);
    expect_usage_error(args, "--prompt-ids");
    f = fopen(path, "w");
    cr_assert(f);
    fputs("1 2 3 1000\n", f); /* small's vocabulary is 0..999 */
    cr_assert_eq(fclose(f), 0);
    snprintf(args, sizeof args, "--model " SMALL " --device cpu --batch 1 --prompt-len 4 --gen-len 4 --prompt-ids %s",
             path);
    expect_usage_error(args, "1000");
}

Test(bench, unwritable_json_and_missing_model_exit_1) {
    char *err;
    cr_expect_eq(run_bench("--model " SMALL " --device cpu --batch 1 --prompt-len 2 --gen-len 2 --json "
                           "/nonexistent-dir/out.json", 1, &err), 1);
    cr_expect(strstr(err, "/nonexistent-dir/out.json"), "%s", err);
    cr_expect_eq(run_bench("--model /nonexistent-model --device cpu", 1, &err), 1);
    cr_expect(strstr(err, "/nonexistent-model"), "%s", err);
}

static double num(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_number(v), "JSON field '%s' missing or not a number", key);
    return json_number_value(v);
}

Test(bench, cpu_run_writes_table_and_json) {
    char path[128], args[512], *out;
    snprintf(path, sizeof path, "%s/bench.json", tmpdir);
    snprintf(args, sizeof args,
             "--model " SMALL " --device cpu --threads 1 --batch 1,2 --prompt-len 4 --gen-len 4 --json %s", path);
    int rc = run_bench(args, 0, &out);
    cr_assert_eq(rc, 0, "bench exited %d", rc);
    cr_expect(strstr(out, "prefill tok/s") && strstr(out, "decode tok/s"), "no table on stdout: %s", out);

    json_error_t e;
    json_t *root = json_load_file(path, 0, &e);
    cr_assert(root, "%s: %s (line %d)", path, e.text, e.line);
    test_keep(root, json_decref);
    cr_expect_str_eq(json_string_value(json_object_get(root, "device")), "cpu");
    cr_expect_str_eq(json_string_value(json_object_get(root, "dtype")), "fp32");
    cr_expect(json_is_null(json_object_get(root, "error")));
    cr_expect_eq(num(root, "prompt_len"), 4);
    cr_expect_eq(num(root, "gen_len"), 4);
    double load_model = num(root, "load_model_s"), load = num(root, "load_s");
    cr_expect(load_model > 0 && load >= load_model, "load_model_s %g, load_s %g", load_model, load);
    cr_expect_eq(num(json_object_get(root, "config"), "vocab_size"), 1000);

    json_t *res = json_object_get(root, "results");
    cr_assert(json_is_array(res) && json_array_size(res) == 2, "results: want 2 entries");
    for (size_t i = 0; i < 2; i++) {
        json_t *r = json_array_get(res, i);
        double B = num(r, "batch");
        cr_expect_eq(B, (double)(i + 1));
        static const char *const positive[] = {"backend_create_s", "prefill_s", "prefill_tok_s", "decode_s",
                                               "decode_tok_s", "decode_step_ms_median", "decode_step_ms_p90",
                                               "e2e_s", "e2e_tok_s", "peak_rss_mib"};
        for (size_t k = 0; k < sizeof positive / sizeof *positive; k++)
            cr_expect(num(r, positive[k]) > 0, "batch %g: %s = %g, want > 0", B, positive[k], num(r, positive[k]));
        /* The rates are the counts over the times: B x 4 prompt tokens, B x 3 decode tokens, B x 4 new tokens. */
        cr_expect_float_eq(num(r, "prefill_tok_s") * num(r, "prefill_s"), B * 4, 1e-6);
        cr_expect_float_eq(num(r, "decode_tok_s") * num(r, "decode_s"), B * 3, 1e-6);
        cr_expect_float_eq(num(r, "e2e_tok_s") * num(r, "e2e_s"), B * 4, 1e-6);
        cr_expect(num(r, "decode_step_ms_p90") >= num(r, "decode_step_ms_median"));
        cr_expect(num(r, "e2e_s") >= num(r, "prefill_s") + num(r, "decode_s"));
        cr_expect(json_is_null(json_object_get(r, "device_mem_mib")), "no device memory on the CPU");
        cr_expect_eq(num(r, "decode_tokens"), B * 3, "one-step prefill: every decode step makes B tokens");
        json_t *seq0 = json_object_get(r, "seq0_tokens");
        cr_assert(json_is_array(seq0) && json_array_size(seq0) == 4);
        for (size_t t = 0; t < 4; t++) {
            json_int_t id = json_integer_value(json_array_get(seq0, t));
            cr_expect(id >= 0 && id < 1000, "seq0 token %zu = %lld", t, (long long)id);
        }
    }
}

/* The bench's own generation loop (prefill packed into forwards of --max-tokens, first token sampled
 * from the prefill, then decode steps) gives transformers' greedy tokens. Sequence 0 and sequence 1
 * have different prompts, so a mix-up of logits rows between them shows. */
Test(bench, generation_matches_transformers_greedy) {
    json_t *g = test_keep(golden_load("small"), json_decref);
    json_t *cases = json_object_get(g, "cases");
    json_t *c31 = NULL, *c116 = NULL;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        size_t n = json_array_size(json_object_get(json_array_get(cases, i), "ids"));
        if (n == 31) c31 = json_array_get(cases, i);
        if (n == 116) c116 = json_array_get(cases, i);
    }
    cr_assert(c31 && c116, "golden.json of small lacks its 31- and 116-token cases");
    int n_ids, n_other, n_want;
    int *ids = test_keep(json_ints(json_object_get(c31, "ids"), &n_ids), free);
    int *other = test_keep(json_ints(json_object_get(c116, "ids"), &n_other), free);
    int *want = test_keep(json_ints(json_object_get(c31, "greedy"), &n_want), free);
    cr_assert(n_want >= 2 && 31 + n_want <= 128);

    char path[128], json_path[128], args[768];
    snprintf(path, sizeof path, "%s/prompts.txt", tmpdir);
    snprintf(json_path, sizeof json_path, "%s/greedy.json", tmpdir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    for (int i = 0; i < 31; i++) fprintf(f, "%d ", ids[i]);   /* sequence 0: the golden prompt */
    for (int i = 0; i < 31; i++) fprintf(f, "%d ", other[i]); /* sequence 1: another prompt */
    cr_assert_eq(fclose(f), 0);

    /* 8 tokens per forward: prompts span forwards, and one forward ends one prompt and starts the next.
     * 62: both prompts in one forward. */
    static const int max_tokens[] = {8, 62};
    for (size_t k = 0; k < 2; k++) {
        snprintf(args, sizeof args,
                 "--model " SMALL " --device cpu --threads 1 --batch 1,2 --prompt-len 31 --gen-len %d --warmup 0 "
                 "--max-tokens %d --prompt-ids %s --json %s",
                 n_want, max_tokens[k], path, json_path);
        cr_assert_eq(run_bench(args, 0, NULL), 0, "bench %s failed", args);
        json_error_t e;
        json_t *root = json_load_file(json_path, 0, &e);
        cr_assert(root, "%s: %s", json_path, e.text);
        test_keep(root, json_decref);
        cr_expect_str_eq(json_string_value(json_object_get(root, "prompts")), path);
        json_t *res = json_object_get(root, "results");
        cr_assert_eq(json_array_size(res), 2);
        for (size_t i = 0; i < 2; i++) {
            int n_got;
            int *got = test_keep(json_ints(json_object_get(json_array_get(res, i), "seq0_tokens"), &n_got), free);
            cr_assert_eq(n_got, n_want);
            for (int t = 0; t < n_want; t++)
                cr_expect_eq(got[t], want[t], "max_tokens %d, batch %zu: token %d is %d, transformers %d",
                             max_tokens[k], i + 1, t, got[t], want[t]);
        }
    }
}
