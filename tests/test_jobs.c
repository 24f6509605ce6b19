/* test_jobs.c: long batch jobs never lose work.
 *
 * Runs the CLI (`gpt2 generate --input`, $GPT2_BIN) on the tiny fixture model with --device cpu, and
 *   - kills it with SIGKILL part way through: every line written so far is a complete record, and
 *     --resume then completes the job with exactly one record per input id, each equal to the record
 *     of an uninterrupted run (same seeds, same tokens);
 *   - interrupts it with SIGINT (and SIGTERM): it exits by itself soon after with status 1, the
 *     records it wrote are finished ones (equal to the uninterrupted run's), and --resume completes;
 *   - resumes from an output whose last line was torn, and resumes a job that is already complete;
 *   - feeds it bad lines (prompt over the context, bad sampling values, empty prompt, non-object,
 *     invalid UTF-8, huge integer, duplicate key, messages that quote non-ASCII input): each gets an
 *     error record naming its line and field, the others still run, and the exit status is 1;
 *     --truncate makes the long prompt run; max_tokens past the context fills it, "length";
 *   - writes to a full disk (/dev/full): one error naming the file, status 1.
 * Every tenth request has no id, so resumption by line number ("id": null, "line": N) is covered too.
 * The reference for "equal" is the CLI's own uninterrupted run: these tests check that interruption
 * and resumption change nothing, not the tokens themselves (test_generate.c checks those against
 * transformers). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "loader_util.h"

#define MODEL FIXTURES "/tiny"
#define N_REQ 40
#define CONTEXT 64 /* n_positions of the tiny fixture */

/* ---------------------------------------------------------------------------------------------- */
/* Files and processes                                                                              */

typedef struct {
    char dir[64];
    char in[128], out[128], ref[128], err[128];
} workdir;

static void workdir_make(workdir *w) {
    snprintf(w->dir, sizeof w->dir, "/tmp/gpt2_test_jobs_XXXXXX");
    cr_assert(mkdtemp(w->dir), "mkdtemp: %s", strerror(errno));
    snprintf(w->in, sizeof w->in, "%s/in.jsonl", w->dir);
    snprintf(w->out, sizeof w->out, "%s/out.jsonl", w->dir);
    snprintf(w->ref, sizeof w->ref, "%s/ref.jsonl", w->dir);
    snprintf(w->err, sizeof w->err, "%s/stderr.txt", w->dir);
}

static void workdir_remove(workdir *w) {
    const char *files[] = {w->in, w->out, w->ref, w->err};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) unlink(files[i]);
    rmdir(w->dir);
}

static size_t count_lines(const char *path) {
    size_t n, lines = 0;
    char *s = test_read_file(path, &n);
    for (size_t i = 0; i < n; i++) lines += s[i] == '\n';
    free(s);
    return lines;
}

/* The CLI's arguments: generate on the tiny model, one thread (the machines running the tests are
 * small and shared; OpenMP spinning on a busy core makes runs slow and timings erratic). */
#define MAX_ARGS 24
typedef struct {
    const char *v[MAX_ARGS + 1];
    int n;
} args;

static void args_init(args *a, const workdir *w, const char *output) {
    const char *base[] = {cli_bin(), "generate", "--model", MODEL, "--device", "cpu", "--threads", "1",
                          "--batch", "2", "--input", w->in, "--output", output};
    a->n = 0;
    for (size_t i = 0; i < sizeof base / sizeof *base; i++) a->v[a->n++] = base[i];
    a->v[a->n] = NULL;
}

static void args_add(args *a, const char *s) {
    cr_assert_lt(a->n, MAX_ARGS);
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

/* Starts the CLI with stdout to /dev/null and stderr to w->err. */
static pid_t spawn(const args *a, const workdir *w) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        int out = open("/dev/null", O_WRONLY), err = open(w->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(127);
        execv(a->v[0], (char *const *)a->v);
        _exit(127);
    }
    return pid;
}

/* Runs the CLI to the end; returns its exit status (asserts it was not killed by a signal). A run
 * that hangs is killed after RUN_LIMIT_S (our own limit: Criterion's .timeout leaks under LSan when
 * tests run in parallel). */
#define RUN_LIMIT_S 240
static int run(const args *a, const workdir *w) {
    pid_t pid = spawn(a, w);
    int st;
    double t0 = test_now_s();
    pid_t done;
    while ((done = waitpid(pid, &st, WNOHANG)) == 0 && test_now_s() - t0 < RUN_LIMIT_S) test_sleep_ms(2);
    if (done != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        cr_assert_fail("%s did not finish within %d s", a->v[0], RUN_LIMIT_S);
    }
    cr_assert(WIFEXITED(st), "%s was killed by signal %d", a->v[0], WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    int rc = WEXITSTATUS(st);
    cr_assert_neq(rc, 127, "cannot run %s (set GPT2_BIN)", a->v[0]);
    return rc;
}

/* Waits until `path` holds at least `lines` newlines; fails if the process ends first. */
static void wait_for_lines(pid_t pid, const char *path, size_t lines, const workdir *w) {
    double t0 = test_now_s();
    for (;;) {
        if (count_lines(path) >= lines) return;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char *err = test_read_file(w->err, NULL);
            cr_assert_fail("the CLI ended (status %d) before writing %zu records: %s", st, lines, err);
        }
        if (test_now_s() - t0 > 120) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("no %zu records in %s after 120 s", lines, path);
        }
        test_sleep_ms(1);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Requests and records                                                                             */

static const char *const PROMPTS[] = {
    "The quick brown fox", "Once upon a time", "In the beginning", "Hello, my name is",
    "The meaning of life is", "Caf\\u00e9 au lait, s'il vous pla\\u00eet", "1, 2, 3, 4,", "def main():\\n   ",
};

/* N_REQ requests with distinct ids, seeds and sampling settings; enough tokens that a batch of two
 * takes a while, few enough that prompt + max_tokens stays within the context. Every tenth request
 * has no id: its records carry "id": null and its line number, which --resume goes by. */
static void write_requests(const workdir *w) {
    char *buf = malloc(N_REQ * 256);
    cr_assert(buf);
    size_t k = 0;
    for (int i = 0; i < N_REQ; i++) {
        const char *sampling = i % 4 == 0   ? "\"temperature\": 0"
                               : i % 4 == 1 ? "\"temperature\": 0.9, \"top_k\": 40"
                               : i % 4 == 2 ? "\"temperature\": 1.1, \"top_p\": 0.9"
                                            : "\"temperature\": 0.8, \"repetition_penalty\": 1.3";
        char id[32] = "";
        if (i % 10 != 9) snprintf(id, sizeof id, "\"id\": \"r%02d\", ", i);
        k += (size_t)snprintf(buf + k, 256, "{%s\"prompt\": \"%s\", \"max_tokens\": %d, \"seed\": %d, %s}\n", id,
                              PROMPTS[i % 8], 8 + (i * 5) % 9, 1000 + 17 * i, sampling);
    }
    test_write_file(w->in, buf, k);
    free(buf);
}

/* Parses a JSONL output: every line must be one complete JSON object with an "id", and the file must
 * end with a newline (a record is written whole or not at all). Returns an array of the records. */
static json_t *load_records(const char *path) {
    size_t n;
    char *s = test_read_file(path, &n);
    json_t *arr = json_array();
    size_t pos = 0, line = 0;
    while (pos < n) {
        char *nl = memchr(s + pos, '\n', n - pos);
        line++;
        cr_assert(nl, "%s: line %zu has no newline: '%s'", path, line, s + pos);
        json_error_t e;
        json_t *rec = json_loadb(s + pos, (size_t)(nl - (s + pos)), 0, &e);
        cr_assert(rec, "%s: line %zu is not complete JSON (%s): '%.*s'", path, line, e.text, (int)(nl - (s + pos)),
                  s + pos);
        cr_assert(json_is_object(rec) && json_object_get(rec, "id"), "%s: line %zu is not a record", path, line);
        json_t *id = json_object_get(rec, "id");
        cr_assert(json_is_string(id) || json_is_integer(id) || json_is_integer(json_object_get(rec, "line")),
                  "%s: line %zu: a record with \"id\": null must carry its input \"line\"", path, line);
        json_array_append_new(arr, rec);
        pos = (size_t)(nl - s) + 1;
    }
    free(s);
    return arr;
}

/* What identifies a record: its string id, or "line:N" for a request without one (id null). */
static const char *rec_id(json_t *rec) {
    static char buf[32];
    json_t *id = json_object_get(rec, "id");
    if (json_is_string(id)) return json_string_value(id);
    cr_assert(json_is_null(id), "ids here are strings or absent");
    snprintf(buf, sizeof buf, "line:%lld", (long long)json_integer_value(json_object_get(rec, "line")));
    return buf;
}

/* The reference record with this id, or NULL. */
static json_t *find_id(json_t *recs, const char *id) {
    size_t i;
    json_t *r;
    json_array_foreach(recs, i, r) if (!strcmp(rec_id(r), id)) return r;
    return NULL;
}

/* Every record in `got` is one of the reference's, byte for byte as JSON values, and no id repeats. */
static void check_subset(json_t *got, json_t *ref, const char *what) {
    size_t i;
    json_t *r;
    json_array_foreach(got, i, r) {
        char id[32];
        snprintf(id, sizeof id, "%s", rec_id(r));
        json_t *want = find_id(ref, id);
        cr_assert(want, "%s: unknown id %s", what, id);
        cr_assert(json_equal(r, want), "%s: record %s differs from the uninterrupted run's:\n%s\n%s", what, id,
                  json_dumps(r, JSON_COMPACT), json_dumps(want, JSON_COMPACT));
        for (size_t j = 0; j < i; j++)
            cr_assert(strcmp(rec_id(json_array_get(got, j)), id), "%s: id %s written twice", what, id);
    }
}

/* Exactly one record per input id, each equal to the reference's. */
static void check_complete(json_t *got, json_t *ref, const char *what) {
    cr_assert_eq(json_array_size(got), N_REQ, "%s: %zu records for %d requests", what, json_array_size(got), N_REQ);
    check_subset(got, ref, what);
}

/* The uninterrupted run: N_REQ records in input order, all finished normally. */
static json_t *reference_run(const workdir *w) {
    args a;
    args_init(&a, w, w->ref);
    int rc = run(&a, w);
    char *err = test_read_file(w->err, NULL);
    cr_assert_eq(rc, 0, "uninterrupted run failed (%d): %s", rc, err);
    free(err);
    json_t *ref = load_records(w->ref);
    cr_assert_eq(json_array_size(ref), N_REQ);
    for (int i = 0; i < N_REQ; i++) {
        json_t *r = json_array_get(ref, (size_t)i);
        char id[32];
        if (i % 10 != 9) snprintf(id, sizeof id, "r%02d", i);
        else snprintf(id, sizeof id, "line:%d", i + 1);
        cr_assert_str_eq(rec_id(r), id, "records out of input order");
        cr_assert(!json_object_get(r, "error"), "request %s failed: %s", id,
                  json_string_value(json_object_get(r, "error")));
        json_t *toks = json_object_get(r, "tokens");
        cr_assert(json_is_array(toks) && json_array_size(toks) > 0, "%s: no tokens", id);
        const char *fin = json_string_value(json_object_get(r, "finish_reason"));
        cr_assert(fin && (!strcmp(fin, "length") || !strcmp(fin, "stop")), "%s: finish_reason", id);
    }
    return ref;
}

static void resume_and_check(const workdir *w, json_t *ref, const char *what) {
    args a;
    args_init(&a, w, w->out);
    args_add(&a, "--resume");
    int rc = run(&a, w);
    char *err = test_read_file(w->err, NULL);
    cr_assert_eq(rc, 0, "%s: --resume failed (%d): %s", what, rc, err);
    free(err);
    json_t *got = load_records(w->out);
    check_complete(got, ref, what);
    json_decref(got);
}

/* ---------------------------------------------------------------------------------------------- */
/* Tests                                                                                            */

Test(jobs, sigkill_then_resume) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    json_t *ref = reference_run(&w);

    args a;
    args_init(&a, &w, w.out);
    pid_t pid = spawn(&a, &w);
    wait_for_lines(pid, w.out, 3, &w);
    cr_assert_eq(kill(pid, SIGKILL), 0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the run ended by itself before it was killed");

    /* Records are written one whole line at a time (one write per record), so even a kill leaves
     * only complete lines. */
    json_t *part = load_records(w.out);
    size_t n_part = json_array_size(part);
    cr_assert(n_part >= 3 && n_part < N_REQ, "%zu records after the kill", n_part);
    check_subset(part, ref, "after SIGKILL");
    /* Without interruption records go out in input order: the written ones are a prefix. */
    for (size_t i = 0; i < n_part; i++) {
        char id[32];
        snprintf(id, sizeof id, "%s", rec_id(json_array_get(part, i)));
        cr_assert_str_eq(id, rec_id(json_array_get(ref, i)), "not in input order");
    }
    json_decref(part);

    resume_and_check(&w, ref, "SIGKILL + --resume");

    /* A second --resume has nothing left to do and must not touch the file. */
    size_t n1, n2;
    char *before = test_read_file(w.out, &n1);
    resume_and_check(&w, ref, "second --resume");
    char *after = test_read_file(w.out, &n2);
    cr_assert(n1 == n2 && !memcmp(before, after, n1), "a --resume of a finished job changed the output");
    char *err = test_read_file(w.err, NULL);
    cr_assert(strstr(err, "40 of 40"), "expected '40 of 40 requests already in': %s", err);
    free(err);
    free(before);
    free(after);
    json_decref(ref);
    workdir_remove(&w);
}

static void interrupt_then_resume(int sig) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    json_t *ref = reference_run(&w);

    args a;
    args_init(&a, &w, w.out);
    pid_t pid = spawn(&a, &w);
    wait_for_lines(pid, w.out, 3, &w);
    size_t seen = count_lines(w.out);
    cr_assert_eq(kill(pid, sig), 0);
    double t0 = test_now_s();
    int st = 0;
    pid_t done = 0;
    while ((done = waitpid(pid, &st, WNOHANG)) == 0 && test_now_s() - t0 < 20) test_sleep_ms(5);
    if (done != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        cr_assert_fail("signal %d: the CLI had not exited 20 s later", sig);
    }
    char *err = test_read_file(w.err, NULL);
    cr_assert(WIFEXITED(st), "signal %d killed the CLI instead of stopping it", sig);
    cr_assert_eq(WEXITSTATUS(st), 1, "exit status %d after signal %d (want 1): %s", WEXITSTATUS(st), sig, err);
    cr_assert(strstr(err, "interrupted") && strstr(err, "--resume"), "no interruption notice: %s", err);
    free(err);

    /* Finished records are all written (possibly out of order), and they are finished ones: equal to
     * the uninterrupted run's, not cut short. */
    json_t *part = load_records(w.out);
    size_t n_part = json_array_size(part);
    cr_assert(n_part >= seen && n_part < N_REQ, "%zu records after the signal (%zu before)", n_part, seen);
    check_subset(part, ref, "after the signal");
    json_decref(part);

    resume_and_check(&w, ref, "signal + --resume");
    json_decref(ref);
    workdir_remove(&w);
}

Test(jobs, sigint_then_resume) { interrupt_then_resume(SIGINT); }

Test(jobs, sigterm_then_resume) { interrupt_then_resume(SIGTERM); }

Test(jobs, resume_drops_torn_last_line) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    json_t *ref = reference_run(&w);

    /* The first 5 records, then half of the 6th without its newline, as a crash mid-write leaves it. */
    size_t n;
    char *s = test_read_file(w.ref, &n);
    char *p = s;
    for (int i = 0; i < 5; i++) p = strchr(p, '\n') + 1;
    char *end6 = strchr(p, '\n');
    size_t keep = (size_t)(p - s) + (size_t)(end6 - p) / 2;
    test_write_file(w.out, s, keep);
    free(s);

    resume_and_check(&w, ref, "torn line + --resume");
    char *err = test_read_file(w.err, NULL);
    cr_assert(strstr(err, "incomplete last line"), "the torn line was not reported: %s", err);
    cr_assert(strstr(err, "5 of 40"), "expected 5 requests already done: %s", err);
    free(err);
    json_decref(ref);
    workdir_remove(&w);
}

/* ---------------------------------------------------------------------------------------------- */
/* Error records                                                                                    */

/* About 100 tokens: longer than the tiny model's context of 64. */
static const char LONG_PROMPT[] =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
    "everything before us, we had nothing before us, we were all going direct to Heaven";

typedef struct {
    int line;
    const char *id;    /* string id of the record; NULL: "id" null, or "9" for the integer 9 */
    const char *error; /* substring of the error, or NULL for a request that runs */
} expect;

/* The mixed input; MIXED below says what each line should give. */
static void write_mixed(const workdir *w) {
    char *buf = malloc(8192);
    cr_assert(buf);
    int k = snprintf(buf, 8192,
                     "{\"id\": \"ok1\", \"prompt\": \"The quick brown fox\", \"max_tokens\": 4, \"seed\": 1}\n" /* 1 */
                     "{\"id\": \"long\", \"prompt\": \"%s\", \"max_tokens\": 4, \"temperature\": 0}\n"          /* 2 */
                     "{\"id\": \"ctx\", \"prompt\": \"Once upon a time\", \"max_tokens\": 1000, \"temperature\": 0}\n"
                     "{\"id\": \"temp\", \"prompt\": \"a\", \"temperature\": -0.5}\n"          /* 4 */
                     "{\"id\": \"topp0\", \"prompt\": \"a\", \"top_p\": 0}\n"                  /* 5 */
                     "{\"id\": \"topp15\", \"prompt\": \"a\", \"top_p\": 1.5}\n"               /* 6 */
                     "{\"id\": \"topk\", \"prompt\": \"a\", \"top_k\": -1}\n"                  /* 7 */
                     "{\"id\": \"empty\", \"prompt\": \"\"}\n"                                 /* 8 */
                     "[\"not\", \"an\", \"object\"]\n"                                         /* 9 */
                     "{\"id\": \"utf8\", \"prompt\": \"bad \xff\xfe bytes\"}\n"                /* 10 */
                     "\n"                                                                      /* 11: blank */
                     "{\"id\": \"huge\", \"prompt\": \"a\", \"max_tokens\": 123456789012345678901234567890}\n"
                     "{\"id\": \"dupkey\", \"prompt\": \"a\", \"prompt\": \"b\"}\n"            /* 13 */
                     "{\"id\": \"big\", \"prompt\": \"a\", \"max_tokens\": 9223372036854775807}\n" /* 14 */
                     "{\"id\": \"ok2\", \"prompt\": \"Last one\", \"max_tokens\": 3, \"seed\": 2}\n" /* 15 */
                     "{\"id\": 9, \"prompt\": \"Nine\", \"max_tokens\": 2}\n", /* 16: id 9 is not line 9's */
                     LONG_PROMPT);
    cr_assert(k > 0 && k < 8192);
    test_write_file(w->in, buf, (size_t)k);
    free(buf);
}

static const expect MIXED[] = {
    {1, "ok1", NULL},
    {2, "long", "context"},
    {3, "ctx", NULL},
    {4, "temp", "temperature"},
    {5, "topp0", "top_p"},
    {6, "topp15", "top_p"},
    {7, "topk", "top_k"},
    {8, "empty", "prompt"},
    {9, NULL, "object"},
    {10, NULL, "JSON"},  /* invalid UTF-8: the line is not JSON, so its id cannot be read */
    {12, NULL, "JSON"},  /* an integer too big for jansson is a JSON error as well */
    {13, NULL, "JSON"},  /* duplicate key */
    {14, "big", "max_tokens"},
    {15, "ok2", NULL},
    {16, "9", NULL},
};
#define N_MIXED (sizeof MIXED / sizeof *MIXED)

static void check_mixed(const workdir *w, int truncate) {
    args a;
    args_init(&a, w, w->out);
    if (truncate) args_add(&a, "--truncate");
    int rc = run(&a, w);
    char *err = test_read_file(w->err, NULL);
    cr_assert_eq(rc, 1, "exit status %d with bad lines (want 1): %s", rc, err);
    cr_assert(strstr(err, "requests failed"), "no failure summary on stderr: %s", err);
    free(err);

    json_t *recs = load_records(w->out);
    cr_assert_eq(json_array_size(recs), N_MIXED, "%zu records for %zu non-blank lines", json_array_size(recs),
                 N_MIXED);
    for (size_t i = 0; i < N_MIXED; i++) {
        const expect *e = &MIXED[i];
        json_t *r = json_array_get(recs, i); /* in input order */
        json_t *id = json_object_get(r, "id");
        if (e->id && !strcmp(e->id, "9")) cr_assert(json_is_integer(id) && json_integer_value(id) == 9, "line 16: id");
        else if (e->id) cr_assert(json_is_string(id) && !strcmp(json_string_value(id), e->id), "line %d: id", e->line);
        else cr_assert(json_is_null(id), "line %d: a line without a readable id gets \"id\": null", e->line);
        if (!e->id || json_object_get(r, "error"))
            cr_assert_eq(json_integer_value(json_object_get(r, "line")), e->line, "line %d: \"line\"", e->line);
        const char *error = json_string_value(json_object_get(r, "error"));
        int runs = !e->error || (truncate && e->line == 2);
        if (!runs) {
            cr_assert(error, "line %d: no error record: %s", e->line, json_dumps(r, JSON_COMPACT));
            cr_assert_eq(json_integer_value(json_object_get(r, "line")), e->line, "line %d: wrong line", e->line);
            cr_assert(strstr(error, e->error), "line %d: error '%s' does not mention '%s'", e->line, error, e->error);
            cr_assert(!json_object_get(r, "tokens"), "line %d: error record with tokens", e->line);
            continue;
        }
        cr_assert(!error, "line %d: unexpected error: %s", e->line, error);
        json_t *toks = json_object_get(r, "tokens");
        int prompt_tokens = (int)json_integer_value(json_object_get(r, "prompt_tokens"));
        const char *fin = json_string_value(json_object_get(r, "finish_reason"));
        cr_assert(json_is_array(toks) && json_array_size(toks) > 0 && prompt_tokens > 0 && fin, "line %d: %s",
                  e->line, json_dumps(r, JSON_COMPACT));
        int n_tok = (int)json_array_size(toks);
        if (e->line == 2) {
            /* Truncated from the left to make room for max_tokens; prompt_tokens counts them all. */
            cr_assert_gt(prompt_tokens, CONTEXT, "the long prompt has only %d tokens", prompt_tokens);
            cr_assert_eq(n_tok, 4);
        }
        if (e->line == 3) {
            /* max_tokens past the context: generation runs until the context is full. */
            cr_assert_str_eq(fin, "length");
            cr_assert_eq(prompt_tokens + n_tok, CONTEXT, "%d prompt + %d generated tokens", prompt_tokens, n_tok);
        }
    }
    json_decref(recs);
}

Test(jobs, error_records) {
    workdir w;
    workdir_make(&w);
    write_mixed(&w);
    check_mixed(&w, 0);
    workdir_remove(&w);
}

Test(jobs, error_records_with_truncate) {
    workdir w;
    workdir_make(&w);
    write_mixed(&w);
    check_mixed(&w, 1);
    workdir_remove(&w);
}

/* Error messages that quote the input can cut a UTF-8 sequence (an unknown field's name cut at 64
 * bytes; jansson quoting a bad escape up to the first byte of the character after it). The message
 * goes into a JSON record, so it must still be written as one, not end the whole job. */
Test(jobs, error_records_for_messages_quoting_non_ascii) {
    workdir w;
    workdir_make(&w);
    char line[512];
    int k = snprintf(line, sizeof line,
                     "{\"id\": \"ok\", \"prompt\": \"Hello\", \"max_tokens\": 2}\n"
                     "{\"id\": \"u\", \"prompt\": \"p\", \"%s\\u00e9\": 1}\n"
                     "{\"id\": \"x\", \"prompt\": \"\\\xc3\xa9\"}\n",
                     "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk" /* 63 bytes */);
    test_write_file(w.in, line, (size_t)k);
    args a;
    args_init(&a, &w, w.out);
    int rc = run(&a, &w);
    char *err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 1, "exit status %d: %s", rc, err);
    json_t *recs = load_records(w.out);
    cr_assert_eq(json_array_size(recs), 3, "%zu records (want 3); stderr: %s", json_array_size(recs), err);
    cr_assert(json_object_get(json_array_get(recs, 0), "tokens"), "the good line did not run");
    for (size_t i = 1; i < 3; i++) {
        json_t *r = json_array_get(recs, i);
        cr_assert(json_string_value(json_object_get(r, "error")), "line %zu: %s", i + 1, json_dumps(r, 0));
        cr_assert_eq(json_integer_value(json_object_get(r, "line")), (json_int_t)i + 1);
    }
    free(err);
    json_decref(recs);
    workdir_remove(&w);
}

/* A full disk: the first failed write is reported once, naming the file, and the job stops with
 * status 1 rather than generating records it cannot keep. */
Test(jobs, write_failure_is_reported) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    args a;
    args_init(&a, &w, "/dev/full");
    int rc = run(&a, &w);
    char *err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 1, "exit status %d writing to /dev/full: %s", rc, err);
    static const char msg[] = "/dev/full: write failed";
    const char *hit = strstr(err, msg);
    cr_assert(hit, "no write error naming the file: %s", err);
    cr_assert(!strstr(hit + sizeof msg - 1, "write failed"), "the write error was reported more than once: %s", err);
    free(err);
    workdir_remove(&w);
}

/* ---------------------------------------------------------------------------------------------- */
/* Hostile use (issue 14)                                                                           */

/* Runs the CLI with the base arguments plus `extra` (NULL-terminated); returns its exit status. */
static int run_with(const workdir *w, const char *output, const char *const *extra) {
    args a;
    args_init(&a, w, output);
    for (size_t i = 0; extra && extra[i]; i++) args_add(&a, extra[i]);
    return run(&a, w);
}

/* The output records each carry their request's fingerprint "fp"; --resume refuses an output whose
 * record for an id was made from another request (another seed here, or another model), naming the
 * line, and changes nothing. A reordered but equal request line still matches. */
Test(jobs, resume_refuses_records_of_another_request_or_model) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    json_t *ref = reference_run(&w);
    size_t i;
    json_t *r;
    json_array_foreach(ref, i, r) {
        const char *fp = json_string_value(json_object_get(r, "fp"));
        cr_assert(fp && strlen(fp) == 16, "record %zu has no 16-digit \"fp\": %s", i, json_dumps(r, 0));
    }
    /* The first 6 records done; the input's 4th line (id r03) now asks for another seed. */
    size_t n;
    char *s = test_read_file(w.ref, &n);
    char *p = s;
    for (int k = 0; k < 6; k++) p = strchr(p, '\n') + 1;
    test_write_file(w.out, s, (size_t)(p - s));
    char *in = test_read_file(w.in, &n);
    char *seed = strstr(in, "\"seed\": 1051"); /* 1000 + 17 * 3 */
    cr_assert(seed);
    memcpy(seed, "\"seed\": 1052", 12);
    test_write_file(w.in, in, n);
    size_t n0;
    char *before = test_read_file(w.out, &n0);
    const char *resume[] = {"--resume", NULL};
    int rc = run_with(&w, w.out, resume);
    char *err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 2, "exit %d for a changed request: %s", rc, err);
    cr_assert(strstr(err, "line 4") && strstr(err, "\"r03\"") && strstr(err, "refusing"), "message: %s", err);
    free(err);
    size_t n1;
    char *after = test_read_file(w.out, &n1);
    cr_assert(n0 == n1 && !memcmp(before, after, n0), "the refused resume changed the output");
    free(after);

    /* The original request again, with its fields in another order and other spacing: same fingerprint. */
    memcpy(seed, "\"seed\": 1051", 12);
    char *line4 = in;
    for (int k = 0; k < 3; k++) line4 = strchr(line4, '\n') + 1;
    char *end4 = strchr(line4, '\n');
    json_t *req = json_loadb(line4, (size_t)(end4 - line4), 0, NULL);
    cr_assert(req);
    json_t *rev = json_object();
    const char *keys[] = {"temperature", "top_p", "top_k", "repetition_penalty", "seed", "max_tokens", "prompt", "id"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        if (json_object_get(req, keys[k])) json_object_set(rev, keys[k], json_object_get(req, keys[k]));
    char *revs = json_dumps(rev, JSON_INDENT(0));
    for (char *c = revs; *c; c++)
        if (*c == '\n') *c = ' ';
    FILE *f = fopen(w.in, "wb");
    cr_assert(f);
    fwrite(in, 1, (size_t)(line4 - in), f);
    fprintf(f, "%s", revs);
    fwrite(end4, 1, n - (size_t)(end4 - in), f);
    fclose(f);
    free(revs);
    json_decref(rev);
    json_decref(req);
    resume_and_check(&w, ref, "reordered fields + --resume");

    /* Another model (same tokenizer, bf16 weights): every record is refused. */
    test_write_file(w.out, s, (size_t)(p - s));
    args a;
    args_init(&a, &w, w.out);
    a.v[3] = FIXTURES "/tiny-bf16";
    args_add(&a, "--resume");
    rc = run(&a, &w);
    err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 2, "exit %d for another model: %s", rc, err);
    cr_assert(strstr(err, "line 1") && strstr(err, "another request or model"), "message: %s", err);
    free(err);
    /* Another --temperature default for lines without one would change nothing here (all set it),
     * but another -n does: lines take it as their max_tokens. */
    test_write_file(w.out, s, (size_t)(p - s));
    const char *resume_stop[] = {"--resume", "--stop", "zzz", NULL};
    rc = run_with(&w, w.out, resume_stop);
    err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 2, "exit %d for another default stop string: %s", rc, err);
    free(err);
    free(before);
    free(in);
    free(s);
    json_decref(ref);
    workdir_remove(&w);
}

/* Error records are not results: --resume drops them from the output and runs their requests again;
 * lines that are not this job's records are reported with their line numbers and left alone. */
Test(jobs, resume_retries_error_records_and_reports_foreign_lines) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    json_t *ref = reference_run(&w);
    size_t n;
    char *s = test_read_file(w.ref, &n);
    /* records 1-3, an error record for r03 (as a failed run leaves it), garbage, a record of an id this
     * input does not have, an error record for the id-less line 10, then record 5 */
    char *p = s;
    for (int k = 0; k < 3; k++) p = strchr(p, '\n') + 1;
    char *r5 = p;
    r5 = strchr(r5, '\n') + 1; /* skip r03 */
    char *r5_end = strchr(r5, '\n') + 1;
    FILE *f = fopen(w.out, "wb");
    cr_assert(f);
    fwrite(s, 1, (size_t)(p - s), f);
    fprintf(f, "{\"id\":\"r03\",\"line\":4,\"error\":\"the logits for generated token 2 are not finite\"}\n");
    fprintf(f, "this is not JSON\n");
    fprintf(f, "{\"id\":\"zz\",\"prompt_tokens\":1,\"tokens\":[1],\"text\":\"\\\"\",\"finish_reason\":\"length\"}\n");
    fprintf(f, "{\"id\":null,\"line\":10,\"error\":\"out of memory\"}\n");
    fwrite(r5, 1, (size_t)(r5_end - r5), f);
    fclose(f);
    args a;
    args_init(&a, &w, w.out);
    args_add(&a, "--resume");
    int rc = run(&a, &w);
    char *err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 0, "--resume failed (%d): %s", rc, err);
    cr_assert(strstr(err, "line 5: not a record"), "garbage line not reported: %s", err);
    cr_assert(strstr(err, "line 6: its id is not in the input"), "foreign id not reported: %s", err);
    cr_assert(strstr(err, "2 error records dropped"), "error records not retried: %s", err);
    cr_assert(strstr(err, "4 of 40"), "expected 4 requests kept: %s", err);
    free(err);
    /* Every id once, equal to the reference, plus the two foreign lines kept as they were. */
    char *got = test_read_file(w.out, &n);
    cr_assert(strstr(got, "this is not JSON\n") && strstr(got, "{\"id\":\"zz\""), "foreign lines were lost");
    cr_assert(!strstr(got, "\"error\""), "an error record survived the resume");
    FILE *g = fopen(w.out, "wb");
    cr_assert(g);
    for (char *line = got; *line;) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, "this is not JSON", 16) && strncmp(line, "{\"id\":\"zz\"", 10))
            fwrite(line, 1, (size_t)(nl - line) + 1, g);
        line = nl + 1;
    }
    fclose(g);
    json_t *recs = load_records(w.out);
    check_complete(recs, ref, "resume after error records");
    json_decref(recs);
    free(got);
    free(s);
    json_decref(ref);
    workdir_remove(&w);
}

/* --output naming the input (the same path, another spelling, a symbolic link, a hard link) is
 * refused with status 2 before any work, and the input is untouched. */
Test(jobs, output_equal_to_input_is_refused) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    size_t n0;
    char *in0 = test_read_file(w.in, &n0);
    char dotted[192], sym[192], hard[192];
    snprintf(dotted, sizeof dotted, "%s/./in.jsonl", w.dir);
    snprintf(sym, sizeof sym, "%s/sym.jsonl", w.dir);
    snprintf(hard, sizeof hard, "%s/hard.jsonl", w.dir);
    cr_assert_eq(symlink("in.jsonl", sym), 0);
    cr_assert_eq(link(w.in, hard), 0);
    const char *outs[] = {w.in, dotted, sym, hard};
    const char *resume[] = {"--resume", NULL};
    for (size_t i = 0; i < 4; i++)
        for (int r = 0; r < 2; r++) {
            int rc = run_with(&w, outs[i], r ? resume : NULL);
            char *err = test_read_file(w.err, NULL);
            cr_assert_eq(rc, 2, "--output %s%s: exit %d: %s", outs[i], r ? " --resume" : "", rc, err);
            cr_assert(strstr(err, "is the same file as --input"), "%s", err);
            free(err);
            size_t n;
            char *now_in = test_read_file(w.in, &n);
            cr_assert(n == n0 && !memcmp(now_in, in0, n), "--output %s damaged the input", outs[i]);
            free(now_in);
        }
    unlink(sym);
    unlink(hard);
    free(in0);
    workdir_remove(&w);
}

/* Two jobs writing one output file: the second is refused while the first holds the lock (never
 * interleaved), the first completes exactly as an uninterrupted run, and a lock does not outlive the
 * process that held it (SIGKILL), so --resume works after a crash. */
Test(jobs, second_writer_is_refused) {
    workdir w;
    workdir_make(&w);
    write_requests(&w);
    json_t *ref = reference_run(&w);
    args a;
    args_init(&a, &w, w.out);
    pid_t first = spawn(&a, &w);
    wait_for_lines(first, w.out, 2, &w);
    workdir w2 = w; /* the second process's stderr to its own file */
    snprintf(w2.err, sizeof w2.err, "%s/stderr2.txt", w.dir);
    const char *resume[] = {"--resume", NULL};
    for (int r = 0; r < 2; r++) {
        int rc = run_with(&w2, w.out, r ? resume : NULL);
        char *err = test_read_file(w2.err, NULL);
        cr_assert_eq(rc, 1, "second writer%s: exit %d: %s", r ? " (--resume)" : "", rc, err);
        cr_assert(strstr(err, "another process is writing this file"), "%s", err);
        free(err);
    }
    int st;
    cr_assert_eq(waitpid(first, &st, 0), first);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the first job failed: %d", st);
    json_t *got = load_records(w.out);
    check_complete(got, ref, "first writer");
    json_decref(got);

    /* killed with the lock held: the next run gets it */
    unlink(w.out);
    pid_t victim = spawn(&a, &w);
    wait_for_lines(victim, w.out, 2, &w);
    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert_eq(waitpid(victim, &st, 0), victim);
    resume_and_check(&w, ref, "resume after SIGKILL with the lock held");
    unlink(w2.err);
    json_decref(ref);
    workdir_remove(&w);
}

/* A field that fails before "id" in the line: the error record still carries the id. A UTF-8
 * byte-order mark at the start of the input is skipped, not taken for part of the first line. */
Test(jobs, id_read_first_and_byte_order_mark_skipped) {
    workdir w;
    workdir_make(&w);
    const char text[] = "\xEF\xBB\xBF{\"id\": \"bom\", \"prompt\": \"Hello\", \"max_tokens\": 2}\n"
                        "{\"temperature\": -1, \"id\": \"late\", \"prompt\": \"x\"}\n"
                        "{\"top_p\": \"high\", \"prompt\": \"x\", \"id\": 17}\n";
    test_write_file(w.in, text, sizeof text - 1);
    int rc = run_with(&w, w.out, NULL);
    char *err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, err);
    free(err);
    json_t *recs = load_records(w.out);
    cr_assert_eq(json_array_size(recs), 3);
    json_t *r0 = json_array_get(recs, 0), *r1 = json_array_get(recs, 1), *r2 = json_array_get(recs, 2);
    cr_assert_str_eq(json_string_value(json_object_get(r0, "id")), "bom", "%s", json_dumps(r0, 0));
    cr_assert(json_object_get(r0, "tokens"), "the line after the BOM did not run: %s", json_dumps(r0, 0));
    cr_assert_str_eq(json_string_value(json_object_get(r1, "id")), "late", "%s", json_dumps(r1, 0));
    cr_assert(strstr(json_string_value(json_object_get(r1, "error")), "temperature"));
    cr_assert_eq(json_integer_value(json_object_get(r2, "id")), 17, "%s", json_dumps(r2, 0));
    cr_assert(strstr(json_string_value(json_object_get(r2, "error")), "top_p"));
    json_decref(recs);
    unlink(w.out);
    workdir_remove(&w);
}

/* Non-finite logits are an error of that request (an error record, exit status 1), never a token 0
 * or an empty "stop"; the other requests run as usual. */
Test(jobs, non_finite_logits_give_an_error_record) {
    workdir w;
    workdir_make(&w);
    char model[128];
    snprintf(model, sizeof model, "%s/model", w.dir);
    cr_assert_eq(mkdir(model, 0755), 0);
    cr_assert_eq(tl_write_overflowing_model(model), 0);
    const char text[] = "{\"id\": \"fox\", \"prompt\": \"The quick brown fox\", \"max_tokens\": 3, \"temperature\": 0}\n"
                        "{\"id\": \"hello\", \"prompt\": \"Hello\", \"max_tokens\": 3, \"temperature\": 0.7}\n"
                        "{\"id\": \"fox2\", \"prompt\": \"a fox\", \"max_tokens\": 3, \"temperature\": 0.7}\n";
    test_write_file(w.in, text, sizeof text - 1);
    args a;
    args_init(&a, &w, w.out);
    a.v[3] = model;
    int rc = run(&a, &w);
    char *err = test_read_file(w.err, NULL);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, err);
    free(err);
    json_t *recs = load_records(w.out);
    cr_assert_eq(json_array_size(recs), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *r = json_array_get(recs, i);
        const char *e = json_string_value(json_object_get(r, "error"));
        if (i == 1) {
            cr_assert(!e, "the good request failed: %s", e);
            cr_assert_eq(json_array_size(json_object_get(r, "tokens")), 3, "%s", json_dumps(r, 0));
            cr_assert_str_eq(json_string_value(json_object_get(r, "finish_reason")), "length");
            continue;
        }
        cr_assert(e && strstr(e, "not finite"), "record %zu: %s", i, json_dumps(r, 0));
        cr_assert(!json_object_get(r, "tokens") && !json_object_get(r, "finish_reason"), "%s", json_dumps(r, 0));
        cr_assert_eq(json_integer_value(json_object_get(r, "line")), (json_int_t)i + 1);
    }
    json_decref(recs);
    /* the same through --prompt: a message and status 1, no text */
    char cmd[512], *out;
    snprintf(cmd, sizeof cmd, "%s generate --device cpu --threads 1 --model %s --prompt 'The quick brown fox' -n 3 2>&1",
             cli_bin(), model);
    cr_assert_eq(run_capture(cmd, &out), 1, "%s", out);
    cr_assert(strstr(out, "not finite"), "%s", out);
    free(out);
    tl_rmtree(model);
    workdir_remove(&w);
}
