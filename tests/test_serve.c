/* test_serve.c: `gpt2 serve` end to end, through the official `openai` Python client.
 *
 * Each test starts the server ($GPT2_BIN serve) on the tiny fixture model (--device cpu, --port 0:
 * an ephemeral port on 127.0.0.1, read from its "listening on" line) as a child process that the
 * suite's .fini always kills, then runs one case of tests/serve/client.py against it (under
 * `timeout`, so nothing can hang the suite). The client checks what it can alone; here the results
 * are compared with `gpt2 generate` on the same requests, the exit status of a drained server is
 * checked, and the request parser is tested directly (serve_req.c). Tests that need the `openai`
 * package skip visibly without it (`make deps` installs it). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "npy.h"
#include "serve_req.h"
#include "util.h"

#define MODEL FIXTURES "/tiny"

static pid_t g_pid = -1;
static int g_port;
static char g_dir[64];

static void kill_server(void) {
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
        g_pid = -1;
    }
    if (g_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "test_serve: could not remove %s\n", g_dir);
        g_dir[0] = '\0';
    }
}

static void serve_fini(void) {
    kill_server();
    test_cleanup();
}

/* No Criterion .timeout: under LeakSanitizer its timer leaks 48 bytes in the runner when many timed
 * tests run in parallel (make asan fails on it). Each client case runs under `timeout 280` instead. */
TestSuite(serve, .fini = serve_fini);

static void need_openai(void) {
    if (system("python3 -c 'import openai' >/dev/null 2>&1") != 0)
        cr_skip_test("the Python package 'openai' is not installed (make deps installs it)");
}

/* Starts `gpt2 serve --model MODEL --device cpu --port 0 EXTRA`, waits for its "listening on" line. */
static void start_server(const char *extra) {
    strcpy(g_dir, "/tmp/gpt2-serve-XXXXXX");
    cr_assert(mkdtemp(g_dir));
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    char cmd[1024], log[128];
    snprintf(log, sizeof log, "%s/server.log", g_dir);
    snprintf(cmd, sizeof cmd, "exec %s serve --model " MODEL " --device cpu --threads 1 --host 127.0.0.1 --port 0 %s 2>%s",
             cli_bin(), extra, log);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    g_pid = pid;
    close(fds[1]);
    char line[256];
    size_t n = 0;
    time_t t0 = time(NULL);
    while (n < sizeof line - 1 && !memchr(line, '\n', n)) {
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        cr_assert(time(NULL) - t0 < 30, "the server did not start in 30 s");
        if (poll(&p, 1, 1000) <= 0) continue;
        ssize_t k = read(fds[0], line + n, sizeof line - 1 - n);
        cr_assert(k > 0, "the server exited before listening (see its log)");
        n += (size_t)k;
        line[n] = '\0';
    }
    close(fds[0]);
    const char *colon = strrchr(line, ':');
    cr_assert(strstr(line, "listening on http://127.0.0.1:") && colon, "unexpected first line: %s", line);
    g_port = atoi(colon + 1);
    cr_assert(g_port > 0 && g_port < 65536, "%s", line);
}

/* Runs one client case; returns its exit status, *out its stdout (NULL: discarded). */
static int run_case(const char *name, const char *args, char **out) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "timeout 280 python3 tests/serve/client.py %s http://127.0.0.1:%d %s", name, g_port,
             args ? args : "");
    return run_capture(cmd, out);
}

static json_t *run_case_json(const char *name, const char *args) {
    char *out = NULL;
    int rc = run_case(name, args, &out);
    test_keep(out, free);
    cr_assert_eq(rc, 0, "client case %s failed (status %d); output: %s", name, rc, out);
    json_error_t e;
    json_t *j = json_loads(out, 0, &e);
    cr_assert(j, "case %s: not JSON: %s", name, out);
    return j;
}

/* Waits for the server to exit (after a signal); its exit status, or -1 after `seconds`. */
static int wait_exit(double seconds) {
    for (int i = 0; i < (int)(seconds * 100); i++) {
        int st;
        pid_t r = waitpid(g_pid, &st, WNOHANG);
        if (r == g_pid) {
            g_pid = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(10000);
    }
    return -1;
}

#define CASE(name, extra)                                                                                        \
    Test(serve, name) {                                                                                          \
        need_openai();                                                                                           \
        start_server(extra);                                                                                     \
        json_decref(run_case_json(#name, NULL));                                                                 \
    }

CASE(plain, "")
CASE(list, "")
CASE(n, "")
CASE(stream, "")
CASE(logprobs, "")
CASE(stop, "")
CASE(seed, "")
CASE(bad_input, "")
CASE(slow, "")
CASE(disconnect, "--step-delay-ms 20")
CASE(queue, "--max-slots 1 --max-queue 1 --step-delay-ms 20")
CASE(timeouts, "--timeout 1 --max-slots 1 --step-delay-ms 100")

/* The same requests through `gpt2 generate` and the server: the same text, token count and reason. */
Test(serve, same_as_generate) {
    need_openai();
    start_server("");
    char in[128], cmd[1024];
    snprintf(in, sizeof in, "%s/in.jsonl", g_dir);
    static const char reqs[] =
        "{\"id\": 1, \"prompt\": \"The meaning of life is\", \"max_tokens\": 20, \"temperature\": 0}\n"
        "{\"id\": 2, \"prompt\": \"Sampling with a seed\", \"max_tokens\": 25, \"temperature\": 0.8, \"top_k\": 40, "
        "\"seed\": 7}\n"
        "{\"id\": 3, \"prompt\": \"Nucleus\", \"max_tokens\": 30, \"temperature\": 1.2, \"top_p\": 0.9, \"seed\": 3}\n"
        "{\"id\": 4, \"prompt\": \"Penalties\", \"max_tokens\": 30, \"temperature\": 0.7, \"frequency_penalty\": 1.0, "
        "\"presence_penalty\": 0.5, \"seed\": 11}\n"
        "{\"id\": 5, \"prompt\": \"Unicode: caf\\u00e9 \\u65e5\\u672c\", \"max_tokens\": 40, \"seed\": 99}\n";
    test_write_file(in, reqs, strlen(reqs));
    snprintf(cmd, sizeof cmd, "%s generate --device cpu --model " MODEL " --input %s 2>/dev/null", cli_bin(), in);
    char *gen;
    cr_assert_eq(run_capture(cmd, &gen), 0, "gpt2 generate failed: %s", gen);
    char args[160];
    snprintf(args, sizeof args, "%s", in);
    json_t *served = run_case_json("replay", args);
    cr_assert_eq(json_array_size(served), 5);
    int line = 0;
    for (char *l = strtok(gen, "\n"); l; l = strtok(NULL, "\n"), line++) {
        json_t *g = json_loads(l, 0, NULL);
        cr_assert(g, "generate: bad line %s", l);
        json_t *s = json_array_get(served, (size_t)line);
        cr_assert(s);
        cr_assert(json_equal(json_object_get(g, "id"), json_object_get(s, "id")));
        const char *gt = json_string_value(json_object_get(g, "text"));
        cr_assert_str_eq(json_string_value(json_object_get(s, "text")), gt, "request %d", line + 1);
        cr_assert_str_eq(json_string_value(json_object_get(s, "stream_text")), gt, "request %d streamed", line + 1);
        cr_assert_eq(json_integer_value(json_object_get(s, "completion_tokens")),
                     (json_int_t)json_array_size(json_object_get(g, "tokens")), "request %d", line + 1);
        cr_assert_eq(json_integer_value(json_object_get(s, "prompt_tokens")),
                     json_integer_value(json_object_get(g, "prompt_tokens")));
        const char *fr = json_string_value(json_object_get(g, "finish_reason"));
        cr_assert_str_eq(json_string_value(json_object_get(s, "finish_reason")), fr);
        cr_assert_str_eq(json_string_value(json_object_get(s, "stream_finish")), fr);
        json_decref(g);
    }
    cr_assert_eq(line, 5);
    json_decref(served);
    free(gen);
}

/* logprobs = 3 with echo: the prompt's logprobs and top alternatives equal log_softmax of the logits
 * that `gpt2 logits` computes (one full forward, no scheduler, no sampler). */
Test(serve, top_logprobs_match_logits) {
    need_openai();
    start_server("");
    static const int ids[] = {464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 198, 40, 1101};
    const int T = (int)(sizeof ids / sizeof ids[0]);
    char list[256] = "", cmd[1024], npy[128];
    for (int i = 0, k = 0; i < T; i++) k += snprintf(list + k, sizeof list - (size_t)k, i ? ",%d" : "%d", ids[i]);
    json_t *r = run_case_json("top_logprobs", list);
    snprintf(npy, sizeof npy, "%s/l.npy", g_dir);
    int k = snprintf(cmd, sizeof cmd, "%s logits --device cpu --model " MODEL " --out %s --ids '", cli_bin(), npy);
    for (int i = 0; i < T; i++) k += snprintf(cmd + k, sizeof cmd - (size_t)k, i ? " %d" : "%d", ids[i]);
    snprintf(cmd + k, sizeof cmd - (size_t)k, "' >/dev/null");
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    float *l;
    size_t rows, V;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_npy_read(npy, &l, &rows, &V, &err), GPT2_OK, "%s", err.msg);
    test_keep(l, free);
    cr_assert_eq(rows, (size_t)T);
    gpt2_tokenizer *tok;
    cr_assert_eq(gpt2_tokenizer_load(MODEL, &tok, &err), GPT2_OK, "%s", err.msg);
    test_keep(tok, gpt2_tokenizer_free);
    json_t *lps = json_object_get(r, "token_logprobs"), *tops = json_object_get(r, "top_logprobs");
    cr_assert(json_is_null(json_array_get(lps, 0)));
    for (int t = 1; t < T; t++) {
        const float *row = l + (size_t)(t - 1) * V; /* logits predicting position t */
        double mx = row[0], sum = 0;
        for (size_t v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        for (size_t v = 0; v < V; v++) sum += exp((double)row[v] - mx);
        double lse = mx + log(sum);
        double want = row[ids[t]] - lse, got = json_number_value(json_array_get(lps, (size_t)t));
        cr_assert(fabs(got - want) < 1e-4, "position %d: logprob %g, logits give %g", t, got, want);
        /* the top 3 ids by logit (ties to the lower id), as token strings, with their logprobs */
        int best[3] = {-1, -1, -1};
        for (int j = 0; j < 3; j++)
            for (size_t v = 0; v < V; v++) {
                int taken = 0;
                for (int q = 0; q < j; q++) taken |= best[q] == (int)v;
                if (!taken && (best[j] < 0 || row[v] > row[best[j]])) best[j] = (int)v;
            }
        json_t *top = json_array_get(tops, (size_t)t);
        cr_assert_eq(json_object_size(top), 3, "position %d", t);
        for (int j = 0; j < 3; j++) {
            const char *b;
            size_t n;
            cr_assert_eq(gpt2_token_bytes(tok, best[j], &b, &n, &err), GPT2_OK);
            char *ts = serve_token_string(b, n);
            json_t *v = json_object_get(top, ts);
            cr_assert(v, "position %d: token %d (%s) is not among the alternatives", t, best[j], ts);
            cr_assert(fabs(json_number_value(v) - (row[best[j]] - lse)) < 1e-4, "position %d token %s", t, ts);
            free(ts);
        }
    }
    json_decref(r);
}

/* 64 streaming clients at once: each its own full answer, and more than one slot active at once. */
Test(serve, concurrent_64_streams) {
    need_openai();
    start_server("");
    json_t *r = run_case_json("concurrent", "64");
    double peak = json_number_value(json_object_get(r, "active_slots_peak"));
    cr_assert_gt(peak, 1, "the batch was never shared: active slots peaked at %g", peak);
    cr_assert_leq(peak, 8, "more active slots (%g) than the CPU engine's 8", peak);
    json_decref(r);
}

Test(serve, api_key) {
    need_openai();
    start_server("--api-key s3cret-Key");
    json_decref(run_case_json("auth", "s3cret-Key"));
}

Test(serve, chunked_body_over_limit) {
    need_openai();
    start_server("--max-body 100000");
    json_decref(run_case_json("chunked_body", "100000"));
}

/* A signal while a stream runs (client case `drain`, args "PID HOW": HOW says what the stream should
 * see and which signal), then the server's exit status 0. */
static void check_drain(const char *server_args, const char *how, const char *after) {
    need_openai();
    start_server(server_args);
    char pid[32];
    snprintf(pid, sizeof pid, "%d %s", (int)g_pid, how);
    json_decref(run_case_json("drain", pid));
    cr_assert_eq(wait_exit(20), 0, "the server did not exit 0 %s", after);
}

/* SIGTERM: the running stream finishes, no new connection is taken, exit 0. */
Test(serve, sigterm_drains) { check_drain("--step-delay-ms 20", "full", "after draining"); }

/* SIGINT (Ctrl-C) drains the same way. */
Test(serve, sigint_drains) { check_drain("--step-delay-ms 20", "full INT", "after draining on SIGINT"); }

/* SIGTERM with a short deadline: the stream is cut with an error event, still exit 0. */
Test(serve, sigterm_deadline_cancels) {
    check_drain("--step-delay-ms 50 --drain-timeout 0.3", "cut", "after the drain deadline");
}

Test(serve, bad_options) {
    char *out;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s serve --model " MODEL " --port 70000 2>&1", cli_bin());
    cr_assert_eq(run_capture(cmd, &out), 2, "%s", out);
    cr_assert(strstr(out, "--port"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve --model " MODEL " --host not-an-address.invalid 2>&1", cli_bin());
    cr_assert_eq(run_capture(cmd, &out), 2, "%s", out);
    cr_assert(strstr(out, "--host"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve --model /nonexistent --port 0 2>&1", cli_bin());
    cr_assert_eq(run_capture(cmd, &out), 1, "%s", out);
    cr_assert(strstr(out, "/nonexistent"), "%s", out);
    free(out);
}

/* ---------------------------------------------------------------------------------------------- */
/* The request parser alone                                                                        */

static serve_error parse_err(const char *body) {
    serve_request r;
    serve_error e;
    cr_assert_neq(serve_request_parse(body, strlen(body), 5, &r, &e), 0, "accepted: %s", body);
    cr_assert_null(r.prompts);
    return e;
}

Test(serve, parser_fields_and_defaults) {
    serve_request r;
    serve_error e;
    const char *b = "{\"model\": \"m\", \"prompt\": [\"a\", \"\"], \"n\": 2, \"stop\": \"\\n\", \"logprobs\": 3, "
                    "\"seed\": -1, \"top_k\": 5, \"user\": \"u\", \"stream\": true, "
                    "\"stream_options\": {\"include_usage\": true}, \"best_of\": 2, \"logit_bias\": {}}";
    cr_assert_eq(serve_request_parse(b, strlen(b), 5, &r, &e), 0, "%s", e.msg);
    cr_assert_str_eq(r.model, "m");
    cr_assert_eq(r.n_prompts, 2);
    cr_assert_str_eq(r.prompts[0].text, "a");
    cr_assert(r.prompts[1].is_empty);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.n_stop, 1);
    cr_assert_str_eq(r.stop[0], "\n");
    cr_assert_eq(r.logprobs, 3);
    cr_assert(r.has_seed && r.sampling.seed == UINT64_MAX);
    cr_assert_eq(r.sampling.top_k, 5);
    cr_assert(r.stream && r.include_usage);
    cr_assert_eq(r.max_tokens, 16); /* OpenAI's default */
    cr_assert_float_eq(r.sampling.temperature, 1.0f, 0);
    serve_request_free(&r);
    b = "{\"model\": \"m\", \"prompt\": [[1, 2], [3]], \"temperature\": null}";
    cr_assert_eq(serve_request_parse(b, strlen(b), 5, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n_prompts, 2);
    cr_assert_eq(r.prompts[0].n_ids, 2);
    cr_assert_eq(r.prompts[1].ids[0], 3);
    cr_assert_eq(r.logprobs, -1);
    serve_request_free(&r);
}

Test(serve, parser_refusals_name_the_field) {
    struct {
        const char *body, *param;
    } cases[] = {
        {"{\"prompt\": \"x\"}", "model"},
        {"{\"model\": \"m\"}", "prompt"},
        {"{\"model\": \"m\", \"prompt\": []}", "prompt"},
        {"{\"model\": \"m\", \"prompt\": [1, \"a\"]}", "prompt"},
        {"{\"model\": \"m\", \"prompt\": [\"a\", [1]]}", "prompt"},
        {"{\"model\": \"m\", \"prompt\": [[]]}", "prompt[0]"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"max_tokens\": 1.5}", "max_tokens"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"n\": 17}", "n"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"logprobs\": 6}", "logprobs"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"top_p\": 0}", "top_p"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"temperature\": -1}", "temperature"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"frequency_penalty\": 2.5}", "frequency_penalty"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"stop\": \"\"}", "stop"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"stop\": [\"a\", 2]}", "stop"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"echo\": 1}", "echo"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"best_of\": 3}", "best_of"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"suffix\": \"y\"}", "suffix"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", "stream_options"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"frobnicate\": 1}", "frobnicate"},
        {"{\"model\": \"m\", \"prompt\": \"x\", \"n\": 16, \"prompt\": [\"a\"]}", ""}, /* duplicate key */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        serve_error e = parse_err(cases[i].body);
        cr_assert_eq(e.http_status, 400, "%s", cases[i].body);
        cr_assert_str_eq(e.param, cases[i].param, "%s: %s", cases[i].body, e.msg);
        if (cases[i].param[0]) cr_assert(strstr(e.msg, cases[i].param), "%s: %s", cases[i].body, e.msg);
        char *j = serve_error_json(&e);
        cr_assert(j && strstr(j, "\"error\""));
        free(j);
    }
    serve_error e = parse_err("{\"model\": \"m\",\n \"prompt\": ");
    cr_assert(strstr(e.msg, "line 2"), "%s", e.msg);
    cr_assert_str_eq(e.param, "");
}

/* The sampling fields go through one reader (gpt2_sampling_field) in both parsers: a server body and a
 * JSONL line with the same value are accepted by both or refused by both, and a refusal names the field
 * and the value given. */
Test(serve, parser_sampling_fields_same_as_jsonl) {
    static const struct {
        const char *field, *value;
        int ok;
        const char *shown; /* what a refusal must quote besides the field (NULL: the field alone) */
    } cases[] = {
        {"temperature", "0.7", 1, NULL},          {"temperature", "-1", 0, "-1"},
        {"temperature", "1e31", 0, "1e+31"},      {"temperature", "\"hot\"", 0, NULL},
        {"top_p", "1", 1, NULL},                  {"top_p", "1.5", 0, "1.5"},
        {"top_k", "40", 1, NULL},                 {"top_k", "-1", 0, "-1"},
        {"top_k", "1073741825", 0, "1073741825"}, {"top_k", "4294967296", 0, "4294967296"},
        {"top_k", "1.5", 0, NULL},                {"repetition_penalty", "0", 0, "0"},
        {"frequency_penalty", "2.5", 0, "2.5"},   {"presence_penalty", "-2", 1, NULL},
        {"presence_penalty", "true", 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[256], line[256];
        snprintf(body, sizeof body, "{\"model\": \"m\", \"prompt\": \"x\", \"%s\": %s}", cases[i].field,
                 cases[i].value);
        snprintf(line, sizeof line, "{\"prompt\": \"x\", \"%s\": %s}", cases[i].field, cases[i].value);
        serve_request r;
        serve_error e;
        int served = serve_request_parse(body, strlen(body), 5, &r, &e) == 0;
        if (served) serve_request_free(&r);
        gpt2_request_spec def = {.sampling = gpt2_sampling_default()}, spec;
        gpt2_error err = {0};
        int jsonl = gpt2_request_parse(line, strlen(line), &def, &spec, &err) == GPT2_OK;
        gpt2_request_spec_free(&spec);
        cr_assert_eq(served, cases[i].ok, "%s: the server %s it: %s", body, served ? "takes" : "refuses", e.msg);
        cr_assert_eq(jsonl, cases[i].ok, "%s: JSONL %s it: %s", line, jsonl ? "takes" : "refuses", err.msg);
        if (cases[i].ok) continue;
        cr_assert_str_eq(e.param, cases[i].field, "%s: %s", body, e.msg);
        cr_assert(strstr(e.msg, cases[i].field) && strstr(err.msg, cases[i].field), "%s: %s / %s", line, e.msg,
                  err.msg);
        if (cases[i].shown)
            cr_assert(strstr(e.msg, cases[i].shown) && strstr(err.msg, cases[i].shown), "%s: no %s in %s / %s", line,
                      cases[i].shown, e.msg, err.msg);
    }
}

Test(serve, text_helpers) {
    size_t n;
    char *s = gpt2_utf8_clean("a\xff" "b\xe6\x97", 5, &n);
    cr_assert_str_eq(s, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD");
    free(s);
    s = serve_token_string("\xe6\x97", 2);
    cr_assert_str_eq(s, "bytes:\\xe6\\x97");
    free(s);
    s = serve_token_string(" caf\xc3\xa9", 6);
    cr_assert_str_eq(s, " caf\xc3\xa9");
    free(s);
    cr_assert_eq(serve_utf8_chars("caf\xc3\xa9", 5), 4);
}
