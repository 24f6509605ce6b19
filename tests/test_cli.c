/* test_cli.c: end-to-end runs of build/gpt2 on the fixture models. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "npy.h"
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
