/* test_cli.c: end-to-end runs of build/gpt2 on the fixture models. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "npy.h"
#include "request.h"
#include "util.h"

#define TINY FIXTURES "/tiny"

static char tmpdir[64];

static void make_tmp(void) {
    strcpy(tmpdir, "/tmp/gpt2-cli-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void rm_tmp(void) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(cli, .init = make_tmp, .fini = rm_tmp);

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

static int run_cli(const char *args, char **out) {
    size_t n = strlen(cli_bin()) + strlen(args) + 2;
    char *cmd = malloc(n);
    cr_assert(cmd);
    snprintf(cmd, n, "%s %s", cli_bin(), args);
    int rc = run_capture(cmd, out);
    free(cmd);
    return rc;
}

/* Reads a JSONL file into an array of objects. */
static json_t *read_jsonl(const char *path) {
    char *data;
    size_t n;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_read_file(path, 1 << 26, &data, &n, &err), GPT2_OK, "%s", err.msg);
    json_t *arr = json_array();
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t e;
        json_t *o = json_loads(line, 0, &e);
        cr_assert(o, "%s: bad output line '%s': %s", path, line, e.text);
        json_array_append_new(arr, o);
    }
    free(data);
    return arr;
}

/* `make` with no target builds the CLI and the libraries (the README's build step): a rule placed
 * above `all` once became the default goal, and plain `make` only touched a stamp file. A dry run into
 * a fresh build folder lists every command the default goal would run. */
Test(cli, plain_make_builds_the_cli_and_libraries) {
    char cmd[256], want[3][96];
    snprintf(cmd, sizeof cmd, "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -n BUILD=%s/b 2>&1", tmpdir);
    char *out = NULL;
    int rc = run_capture(cmd, &out);
    cr_assert_eq(rc, 0, "%s: exit %d: %s", cmd, rc, out);
    snprintf(want[0], sizeof want[0], "-o %s/b/gpt2 ", tmpdir);
    snprintf(want[1], sizeof want[1], "%s/b/libgpt2.a", tmpdir);
    snprintf(want[2], sizeof want[2], "-o %s/b/libgpt2.so", tmpdir);
    for (int i = 0; i < 3; i++) cr_assert(strstr(out, want[i]), "plain make does not build '%s':\n%.2000s", want[i], out);
    free(out);
}

Test(cli, usage_and_bad_options) {
    cr_assert_eq(run_cli("--help", NULL), 0);
    cr_assert_eq(run_cli("generate --help", NULL), 0);
    cr_assert_eq(run_cli("logits --help", NULL), 0);
    cr_assert_eq(run_cli("2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("frobnicate 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " --prompt hi --bogus 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " --prompt hi --top-p 1.5 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " --prompt hi --temperature -1 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " --prompt hi --top-k -3 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " --prompt hi -n x 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " --prompt hi --device tpu 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --model " TINY " 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("generate --prompt hi 2>/dev/null", NULL), 2);
    cr_assert_eq(run_cli("logits --model " TINY " --ids '1 2 x' --out /dev/null 2>/dev/null", NULL), 2);
    char *out;
    cr_assert_eq(run_cli("generate --model /nonexistent --prompt hi 2>&1", &out), 1);
    cr_assert(strstr(out, "/nonexistent"), "error does not name the directory: %s", out);
    free(out);
}

Test(cli, encode_decode_round_trip) {
    char in[128], cmd[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    const char *text = "Hello, world! naïve café 日本語 🎉\n\ttabs  and   spaces <|endoftext|> done";
    write_file(in, text);
    char *ids;
    snprintf(cmd, sizeof cmd, "encode --model " TINY " --file %s", in);
    cr_assert_eq(run_cli(cmd, &ids), 0);
    cr_assert(strstr(ids, " 50256 "), "<|endoftext|> did not become 50256: %s", ids);
    char idfile[128];
    snprintf(idfile, sizeof idfile, "%s/ids.txt", tmpdir);
    write_file(idfile, ids);
    char *back;
    snprintf(cmd, sizeof cmd, "decode --model " TINY " --file %s", idfile);
    cr_assert_eq(run_cli(cmd, &back), 0);
    cr_assert_str_eq(back, text);
    free(back);
    free(ids);
    snprintf(cmd, sizeof cmd, "encode --no-special --model " TINY " --file %s", in);
    cr_assert_eq(run_cli(cmd, &ids), 0);
    cr_assert_null(strstr(ids, "50256"));
    free(ids);
}

Test(cli, logits_match_transformers) {
    json_t *g = golden_load("tiny");
    json_t *cs = json_array_get(json_object_get(g, "cases"), 2);
    int T, n_cols;
    int *ids = json_ints(json_object_get(cs, "ids"), &T);
    int *cols = json_ints(json_object_get(cs, "cols"), &n_cols);
    char args[8192], npy[128];
    snprintf(npy, sizeof npy, "%s/l.npy", tmpdir);
    int k = snprintf(args, sizeof args, "logits --device cpu --model " TINY " --out %s --ids '", npy);
    for (int i = 0; i < T; i++) k += snprintf(args + k, sizeof args - (size_t)k, i ? " %d" : "%d", ids[i]);
    snprintf(args + k, sizeof args - (size_t)k, "'");
    cr_assert_eq(run_cli(args, NULL), 0);
    float *l;
    size_t rows, ncols;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_npy_read(npy, &l, &rows, &ncols, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(rows, (size_t)T);
    cr_assert_eq(ncols, 50257);
    json_t *ref = json_object_get(cs, "logits");
    for (int t = 0; t < T; t++)
        for (int c = 0; c < n_cols; c++) {
            double want = json_number_value(json_array_get(json_array_get(ref, (size_t)t), (size_t)c));
            cr_assert(fabs(l[(size_t)t * ncols + cols[c]] - want) < 2e-4, "position %d column %d", t, cols[c]);
        }
    free(l);
    free(ids);
    free(cols);
    json_decref(g);
}

/* The JSONL batch: greedy tokens equal transformers', output in input order, a bad line gets an error
 * record naming its line while the others still run, and the exit status says something failed. */
Test(cli, jsonl_batch_matches_transformers) {
    json_t *g = golden_load("tiny");
    json_t *batch = json_object_get(g, "batch_greedy");
    size_t n = json_array_size(batch);
    cr_assert_gt(n, 2);
    char in[128], out[128], args[512];
    snprintf(in, sizeof in, "%s/in.jsonl", tmpdir);
    snprintf(out, sizeof out, "%s/out.jsonl", tmpdir);
    FILE *f = fopen(in, "wb");
    int bad_line = 0, line = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *b = json_array_get(batch, i);
        json_t *req = json_pack("{s:s, s:O, s:I, s:i}", "id", "", "prompt", json_object_get(b, "text"), "max_tokens",
                                (json_int_t)json_array_size(json_object_get(b, "greedy")), "temperature", 0);
        char id[32];
        snprintf(id, sizeof id, "r%zu", i);
        json_object_set_new(req, "id", json_string(id));
        char *s = json_dumps(req, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        line++;
        free(s);
        json_decref(req);
        if (i == 1) {
            fprintf(f, "{\"id\": \"bad\", \"prompt\": \"x\", \"temprature\": 0.5}\n");
            bad_line = ++line;
            fprintf(f, "\n"); /* blank lines are skipped */
            line++;
        }
    }
    cr_assert_eq(fclose(f), 0);
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s --batch 3 2>/dev/null",
             in, out);
    cr_assert_eq(run_cli(args, NULL), 1, "a bad line must make the exit status 1");
    json_t *recs = read_jsonl(out);
    cr_assert_eq(json_array_size(recs), n + 1);
    gpt2_tokenizer *tok;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(TINY, &tok, &err), GPT2_OK);
    size_t r = 0;
    for (size_t i = 0; i < n; i++, r++) {
        if (i == 2) { /* the bad line's record sits in input order */
            json_t *e = json_array_get(recs, r++);
            cr_assert_str_eq(json_string_value(json_object_get(e, "id")), "bad");
            cr_assert_eq(json_integer_value(json_object_get(e, "line")), bad_line);
            cr_assert(strstr(json_string_value(json_object_get(e, "error")), "temprature"));
        }
        json_t *rec = json_array_get(recs, r), *b = json_array_get(batch, i);
        char id[32];
        snprintf(id, sizeof id, "r%zu", i);
        cr_assert_str_eq(json_string_value(json_object_get(rec, "id")), id);
        int nw, ng, np;
        int *want = json_ints(json_object_get(b, "greedy"), &nw);
        int *got = json_ints(json_object_get(rec, "tokens"), &ng);
        int *pids = json_ints(json_object_get(b, "ids"), &np);
        cr_assert_eq(json_integer_value(json_object_get(rec, "prompt_tokens")), np);
        int stop_at = nw;
        for (int k = 0; k < nw; k++)
            if (want[k] == 50256) {
                stop_at = k;
                break;
            }
        cr_assert_eq(ng, stop_at, "request %zu: %d tokens, want %d", i, ng, stop_at);
        for (int k = 0; k < ng; k++)
            cr_assert_eq(got[k], want[k], "request %zu token %d: %d, transformers %d", i, k, got[k], want[k]);
        cr_assert_str_eq(json_string_value(json_object_get(rec, "finish_reason")), stop_at < nw ? "stop" : "length");
        char *text;
        size_t nt;
        cr_assert_eq(gpt2_decode(tok, got, (size_t)ng, &text, &nt, &err), GPT2_OK);
        if (strlen(text) == nt && !strstr(text, "\xEF\xBF\xBD"))
            cr_assert_str_eq(json_string_value(json_object_get(rec, "text")), text);
        free(text);
        free(want);
        free(got);
        free(pids);
    }
    gpt2_tokenizer_free(tok);
    json_decref(recs);
    json_decref(g);
}

Test(cli, prompt_streams_the_same_text_as_the_batch) {
    char in[128], out[128], args[512];
    snprintf(in, sizeof in, "%s/in.jsonl", tmpdir);
    snprintf(out, sizeof out, "%s/out.jsonl", tmpdir);
    write_file(in, "{\"id\": 1, \"prompt\": \"The quick brown fox\", \"max_tokens\": 20, \"temperature\": 0.8, "
                   "\"seed\": 9, \"top_k\": 40}\n");
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s", in, out);
    cr_assert_eq(run_cli(args, NULL), 0);
    json_t *recs = read_jsonl(out);
    const char *text = json_string_value(json_object_get(json_array_get(recs, 0), "text"));
    char *streamed;
    cr_assert_eq(run_cli("generate --device cpu --model " TINY " --prompt 'The quick brown fox' -n 20 --temperature "
                         "0.8 --seed 9 --top-k 40",
                         &streamed),
                 0);
    size_t len = strlen(streamed);
    cr_assert(len > 0 && streamed[len - 1] == '\n');
    streamed[len - 1] = '\0';
    if (!strstr(streamed, "\xEF\xBF\xBD") && !strstr(text, "\xEF\xBF\xBD")) cr_assert_str_eq(streamed, text);
    free(streamed);
    json_decref(recs);
}

Test(cli, duplicate_ids_are_refused_before_any_work) {
    char in[128], out[128], args[512], *msg;
    snprintf(in, sizeof in, "%s/in.jsonl", tmpdir);
    snprintf(out, sizeof out, "%s/out.jsonl", tmpdir);
    write_file(in, "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"b\", \"prompt\": \"y\"}\n{\"id\": \"a\", \"prompt\": \"z\"}\n");
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s 2>&1", in, out);
    cr_assert_eq(run_cli(args, &msg), 1);
    cr_assert(strstr(msg, "duplicate id \"a\" on lines 1 and 3"), "%s", msg);
    cr_assert_neq(access(out, F_OK), 0, "output written although the input was refused");
    free(msg);
}

/* --resume after a torn write: every id exactly once, and the same records as an uninterrupted run. */
Test(cli, resume_completes_without_duplicates) {
    char in[128], full[128], part[128], args[512];
    snprintf(in, sizeof in, "%s/in.jsonl", tmpdir);
    snprintf(full, sizeof full, "%s/full.jsonl", tmpdir);
    snprintf(part, sizeof part, "%s/part.jsonl", tmpdir);
    FILE *f = fopen(in, "wb");
    for (int i = 0; i < 7; i++)
        fprintf(f, "{\"id\": %d, \"prompt\": \"Line %d of the input\", \"max_tokens\": %d, \"seed\": %d}\n", i, i,
                4 + i, i);
    fclose(f);
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s", in, full);
    cr_assert_eq(run_cli(args, NULL), 0);
    json_t *want = read_jsonl(full);
    cr_assert_eq(json_array_size(want), 7);
    /* the first three records survived, the fourth was cut mid-line */
    f = fopen(part, "wb");
    for (int i = 0; i < 3; i++) {
        char *s = json_dumps(json_array_get(want, (size_t)i), JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
    }
    fprintf(f, "{\"id\":3,\"prompt_tok");
    fclose(f);
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s --resume 2>/dev/null",
             in, part);
    cr_assert_eq(run_cli(args, NULL), 0);
    json_t *got = read_jsonl(part);
    cr_assert_eq(json_array_size(got), 7);
    for (size_t i = 0; i < 7; i++) {
        json_t *w = json_array_get(want, i);
        json_t *g = NULL;
        int seen = 0;
        for (size_t k = 0; k < 7; k++)
            if (json_equal(json_object_get(json_array_get(got, k), "id"), json_object_get(w, "id"))) {
                g = json_array_get(got, k);
                seen++;
            }
        cr_assert_eq(seen, 1, "id %zu appears %d times", i, seen);
        cr_assert(json_equal(g, w), "record %zu differs after resume", i);
    }
    json_decref(got);
    json_decref(want);
}

/* ---------------------------------------------------------------------------------------------- */
/* Option parsing, limits and messages (issue 14)                                                   */

/* The text one greedy JSONL request gives, for comparison with --prompt runs. */
static char *batch_text(const char *prompt_json, int max_tokens, const char *extra) {
    char in[128], out[128], args[512], line[512];
    snprintf(in, sizeof in, "%s/one.jsonl", tmpdir);
    snprintf(out, sizeof out, "%s/one.out.jsonl", tmpdir);
    snprintf(line, sizeof line, "{\"id\": 1, \"prompt\": %s, \"max_tokens\": %d, \"temperature\": 0%s}\n", prompt_json,
             max_tokens, extra);
    write_file(in, line);
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s", in, out);
    cr_assert_eq(run_cli(args, NULL), 0);
    json_t *recs = read_jsonl(out);
    char *t = strdup(json_string_value(json_object_get(json_array_get(recs, 0), "text")));
    json_decref(recs);
    return t;
}

/* A value that looks like an option is still the value of the option before it: `--prompt -n` is the
 * prompt "-n" (argv used to be rewritten, turning it into `--prompt --max-tokens`). */
Test(cli, option_values_are_never_taken_for_options) {
    char *want = batch_text("\"-n\"", 3, "");
    char *want_mt = batch_text("\"--max-tokens\"", 3, "");
    cr_assert_str_neq(want, want_mt, "the test needs prompts that continue differently");
    const char *forms[] = {"--prompt -n -n 3", "--prompt=-n -n 3", "-n 3 --prompt -n", "--prompt -n --max-tokens 3",
                           "--prompt -n -n3"};
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        char args[256], *got;
        snprintf(args, sizeof args, "generate --device cpu --model " TINY " --temperature 0 %s", forms[i]);
        cr_assert_eq(run_cli(args, &got), 0, "%s", forms[i]);
        size_t n = strlen(got);
        cr_assert(n > 0 && got[n - 1] == '\n');
        got[n - 1] = '\0';
        cr_assert_str_eq(got, want, "%s: prompt not taken as \"-n\"", forms[i]);
        free(got);
    }
    /* --stop and --output values that look like options, too */
    char *out;
    cr_assert_eq(run_cli("generate --device cpu --model " TINY " --prompt hi -n 2 --stop -n 2>&1", &out), 0, "%s", out);
    free(out);
    /* -n without its value, and unknown short options: usage errors naming the option */
    cr_assert_eq(run_cli("generate --device cpu --model " TINY " --prompt hi -n 2>&1", &out), 2);
    cr_assert(strstr(out, "'-n' needs a value"), "%s", out);
    free(out);
    cr_assert_eq(run_cli("generate --device cpu --model " TINY " --prompt hi -x 2>&1", &out), 2);
    cr_assert(strstr(out, "unknown option '-x'"), "%s", out);
    free(out);
    /* the other short forms the option tables give: -m DIR, -h */
    cr_assert_eq(run_cli("generate --device cpu -m " TINY " --prompt hi -n 1 >/dev/null", NULL), 0);
    cr_assert_eq(run_cli("encode -h", &out), 0);
    cr_assert(strstr(out, "usage: gpt2 encode"), "%s", out);
    free(out);
    free(want);
    free(want_mt);
}

/* The CLI's sampling options and the JSONL fields go through one check (gpt2_sampling_check): every
 * value here is accepted by both or refused by both. */
Test(cli, sampling_limits_are_the_same_for_options_and_jsonl) {
    static const struct {
        const char *option, *field, *value;
    } cases[] = {
        {"--temperature", "temperature", "-1"},          {"--temperature", "temperature", "0"},
        {"--temperature", "temperature", "1e-45"},       {"--temperature", "temperature", "1000"},
        {"--temperature", "temperature", "1000.5"},      {"--temperature", "temperature", "1e39"},
        {"--top-k", "top_k", "-1"},                      {"--top-k", "top_k", "0"},
        {"--top-k", "top_k", "1073741824"},              {"--top-k", "top_k", "1073741825"},
        {"--top-k", "top_k", "2147483647"},              {"--top-p", "top_p", "0"},
        {"--top-p", "top_p", "1e-10"},                   {"--top-p", "top_p", "1"},
        {"--top-p", "top_p", "1.0000001"},               {"--top-p", "top_p", "-0.5"},
        {"--repetition-penalty", "repetition_penalty", "0"},
        {"--repetition-penalty", "repetition_penalty", "1e-7"},
        {"--repetition-penalty", "repetition_penalty", "100"},
        {"--repetition-penalty", "repetition_penalty", "100.5"},
        {"--frequency-penalty", "frequency_penalty", "-2"}, {"--frequency-penalty", "frequency_penalty", "-2.01"},
        {"--frequency-penalty", "frequency_penalty", "2"},  {"--frequency-penalty", "frequency_penalty", "3"},
        {"--presence-penalty", "presence_penalty", "-2"},   {"--presence-penalty", "presence_penalty", "2.5"},
        {"--presence-penalty", "presence_penalty", "1e7"},
    };
    int refused_somewhere = 0, accepted_somewhere = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char line[256];
        snprintf(line, sizeof line, "{\"prompt\": \"hi\", \"%s\": %s}", cases[i].field, cases[i].value);
        gpt2_request_spec def = {.max_tokens = 0, .sampling = gpt2_sampling_default()}, spec;
        gpt2_error err = {0};
        int json_ok = gpt2_request_parse(line, strlen(line), &def, &spec, &err) == GPT2_OK;
        gpt2_request_spec_free(&spec);
        char args[256], *out;
        snprintf(args, sizeof args, "generate --device cpu --model " TINY " --prompt hi -n 0 %s %s 2>&1",
                 cases[i].option, cases[i].value);
        int rc = run_cli(args, &out);
        cr_assert(rc == 0 || rc == 2, "%s %s: exit %d: %s", cases[i].option, cases[i].value, rc, out);
        cr_assert_eq(rc == 0, json_ok, "%s %s: the CLI %s it, JSONL %s it (%s / %s)", cases[i].option,
                     cases[i].value, rc == 0 ? "accepts" : "refuses", json_ok ? "accepts" : "refuses", out,
                     json_ok ? "" : err.msg);
        if (rc) cr_assert(strstr(out, cases[i].option) && strstr(out, cases[i].field), "message names neither: %s", out);
        refused_somewhere += !json_ok;
        accepted_somewhere += json_ok;
        free(out);
    }
    cr_assert(refused_somewhere > 5 && accepted_somewhere > 5);
}

/* Tiny temperatures (the scaling used to overflow to inf and pick the lowest-ranked token with
 * finish "stop") act as greedy: the same tokens and finish reasons as temperature 0. */
Test(cli, tiny_temperatures_match_greedy_end_to_end) {
    char in[128], out[128], args[512];
    snprintf(in, sizeof in, "%s/in.jsonl", tmpdir);
    snprintf(out, sizeof out, "%s/out.jsonl", tmpdir);
    const char *prompts[] = {"The quick brown fox", "Once upon a time", "1, 2, 3,"};
    const char *temps[] = {"0", "1e-45", "1e-38"};
    FILE *f = fopen(in, "wb");
    cr_assert(f);
    for (int p = 0; p < 3; p++)
        for (int t = 0; t < 3; t++)
            fprintf(f, "{\"id\": \"%d-%d\", \"prompt\": \"%s\", \"max_tokens\": 12, \"temperature\": %s, \"seed\": %d}\n",
                    p, t, prompts[p], temps[t], 3 * p + t);
    cr_assert_eq(fclose(f), 0);
    snprintf(args, sizeof args, "generate --device cpu --model " TINY " --input %s --output %s", in, out);
    cr_assert_eq(run_cli(args, NULL), 0);
    json_t *recs = read_jsonl(out);
    cr_assert_eq(json_array_size(recs), 9);
    for (int p = 0; p < 3; p++) {
        json_t *g = json_array_get(recs, (size_t)(3 * p));
        cr_assert_eq(json_array_size(json_object_get(g, "tokens")), 12, "greedy run too short");
        for (int t = 1; t < 3; t++) {
            json_t *r = json_array_get(recs, (size_t)(3 * p + t));
            cr_assert(json_equal(json_object_get(r, "tokens"), json_object_get(g, "tokens")),
                      "prompt %d, temperature %s: tokens differ from greedy: %s vs %s", p, temps[t],
                      json_dumps(json_object_get(r, "tokens"), 0), json_dumps(json_object_get(g, "tokens"), 0));
            cr_assert_str_eq(json_string_value(json_object_get(r, "finish_reason")),
                             json_string_value(json_object_get(g, "finish_reason")));
        }
    }
    json_decref(recs);
}

Test(cli, model_option_messages_say_what_is_wrong) {
    char *out, args[512], file[128];
    cr_assert_eq(run_cli("generate --device cpu --model /nonexistent/model --prompt hi 2>&1", &out), 1);
    cr_assert(strstr(out, "--model /nonexistent/model: no such directory"), "%s", out);
    free(out);
    snprintf(file, sizeof file, "%s/a-file", tmpdir);
    write_file(file, "not a model\n");
    snprintf(args, sizeof args, "generate --device cpu --model %s --prompt hi 2>&1", file);
    cr_assert_eq(run_cli(args, &out), 1);
    cr_assert(strstr(out, "is a file, not a directory"), "%s", out);
    free(out);
    snprintf(args, sizeof args, "encode --model " TINY " --tokenizer %s 2>&1 </dev/null", file);
    cr_assert_eq(run_cli(args, &out), 1);
    cr_assert(strstr(out, "--tokenizer") && strstr(out, "is a file, not a directory"), "%s", out);
    free(out);
}

/* README promises: unknown fields and a null id are refused (error records), and -n past the context
 * stops when the context is full, with finish "length". */
Test(cli, unknown_fields_null_ids_and_n_past_the_context) {
    char in[128], out[128], args[512], *msg;
    snprintf(in, sizeof in, "%s/in.jsonl", tmpdir);
    snprintf(out, sizeof out, "%s/out.jsonl", tmpdir);
    write_file(in, "{\"id\": \"u\", \"prompt\": \"x\", \"max_token\": 3}\n"
                   "{\"id\": null, \"prompt\": \"x\"}\n"
                   "{\"id\": \"long\", \"prompt\": \"Once upon a time\"}\n");
    snprintf(args, sizeof args,
             "generate --device cpu --model " TINY " --input %s --output %s -n 1000 --temperature 0 2>&1", in, out);
    cr_assert_eq(run_cli(args, &msg), 1, "%s", msg);
    free(msg);
    json_t *recs = read_jsonl(out);
    cr_assert_eq(json_array_size(recs), 3);
    json_t *r0 = json_array_get(recs, 0), *r1 = json_array_get(recs, 1), *r2 = json_array_get(recs, 2);
    cr_assert(strstr(json_string_value(json_object_get(r0, "error")), "unknown field \"max_token\""));
    cr_assert_str_eq(json_string_value(json_object_get(r0, "id")), "u");
    cr_assert(strstr(json_string_value(json_object_get(r1, "error")), "\"id\": must be a string or an integer"));
    cr_assert(json_is_null(json_object_get(r1, "id")));
    cr_assert_eq(json_integer_value(json_object_get(r1, "line")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(r2, "finish_reason")), "length");
    cr_assert_eq(json_integer_value(json_object_get(r2, "prompt_tokens")) +
                     (json_int_t)json_array_size(json_object_get(r2, "tokens")),
                 64, "-n 1000 must fill the context of 64");
    json_decref(recs);
}
