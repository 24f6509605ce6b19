/* test_mpi.c: `mpirun -n R gpt2 generate` (issue 13), on the CPU, over loopback.
 *
 * Runs the CLI ($GPT2_BIN) under Open MPI's mpirun (--oversubscribe: more ranks than the CI's two
 * cores; TCP over the loopback interface only) on the tiny fixture model, and checks that
 *   - 1, 2 and 3 ranks write an output file byte-identical to a single process's (no mpirun) for a
 *     300-request greedy job (100 under the sanitizers), and that every rank ran some of it;
 *   - SIGKILL of one rank mid-job (rank 1, then rank 0 of the resumed job) leaves a byte prefix of that
 *     file, and --resume (under mpirun) then completes it byte-identically;
 *   - a rank stopped alone (SIGTERM to it, not to mpirun) gives its requests back to the others, which
 *     complete the same file (exit status 1);
 *   - bad input lines get one error record each and one summary on stderr, not one per rank; a
 *     duplicate id is reported once;
 *   - each rank binds to a GPU: CUDA_VISIBLE_DEVICES becomes one entry of the visible list, by node-
 *     local rank, or as $GPT2_MPI_GPUS says (a malformed one is refused);
 *   - `mpirun gpt2 bench` prints one report, with the ranks' aggregate throughput.
 * The reference is the CLI's own single-process run: these tests check that distribution changes
 * nothing (test_generate.c checks the tokens themselves against transformers). Without MPI in the
 * build (make MPI=0) or without mpirun they skip visibly. Also here: progress lines on a stderr that
 * is not a terminal (--progress-interval), which need no MPI. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define MODEL FIXTURES "/tiny"
/* Requests of the big jobs: 300, or 100 under the sanitizers (`make asan`: GPT2_CC names them), which
 * make every rank several times slower and look for memory errors, not for a long job's. */
static int n_req(void) {
    const char *cc = getenv("GPT2_CC");
    return cc && strstr(cc, "-fsanitize") ? 100 : 300;
}
#define N_REQ n_req()
#define RUN_LIMIT_S 180 /* a run that hangs is killed after this (our own limit, see test_jobs.c) */

/* ---------------------------------------------------------------------------------------------- */
/* Files and processes                                                                              */

typedef struct {
    char dir[64];
    char in[128], out[128], ref[128], err[128], log[128];
} workdir;

static void workdir_make(workdir *w) {
    snprintf(w->dir, sizeof w->dir, "/tmp/gpt2_test_mpi_XXXXXX");
    cr_assert(mkdtemp(w->dir), "mkdtemp: %s", strerror(errno));
    snprintf(w->in, sizeof w->in, "%s/in.jsonl", w->dir);
    snprintf(w->out, sizeof w->out, "%s/out.jsonl", w->dir);
    snprintf(w->ref, sizeof w->ref, "%s/ref.jsonl", w->dir);
    snprintf(w->err, sizeof w->err, "%s/stderr.txt", w->dir);
    snprintf(w->log, sizeof w->log, "%s/stdout.txt", w->dir);
}

static void workdir_remove(workdir *w) {
    DIR *d = opendir(w->dir);
    if (d) {
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", w->dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(w->dir);
}

static size_t count_lines(const char *path) {
    FILE *f = fopen(path, "rb");
    size_t lines = 0;
    if (!f) return 0;
    for (int c; (c = getc(f)) != EOF;) lines += c == '\n';
    fclose(f);
    return lines;
}

static size_t count_str(const char *hay, const char *needle) {
    size_t k = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) k++;
    return k;
}

/* argv of a run: `mpirun [options] -n R gpt2 ...` (ranks > 0) or `gpt2 ...` (ranks 0). */
#define MAX_ARGS 48
typedef struct {
    const char *v[MAX_ARGS + 1];
    int n;
    char nbuf[16];
} args;

static void args_add(args *a, const char *s) {
    cr_assert_lt(a->n, MAX_ARGS);
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

/* mpirun on the PATH, or the test skips (visibly). */
static const char *find_mpirun(void) {
    static char path[512];
    const char *p = getenv("PATH");
    for (const char *s = p ? p : ""; *s;) {
        const char *e = strchr(s, ':');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        snprintf(path, sizeof path, "%.*s/mpirun", (int)len, s);
        if (access(path, X_OK) == 0) return path;
        s += len + (e ? 1 : 0);
    }
    cr_skip_test("mpirun is not on the PATH (openmpi-bin; `make deps` installs it)");
    return NULL;
}

/* MPI in the build and mpirun on the PATH, or the test skips (visibly). */
static const char *mpirun_path(void) {
#ifndef GPT2_HAVE_MPI
    cr_skip_test("built without MPI (make MPI=1 with mpicc, or `make deps` to install Open MPI)");
#endif
    return find_mpirun();
}

/* `gpt2 COMMAND` on the tiny model, one CPU thread per rank, under `mpirun -n ranks` (0: no mpirun). */
static void args_init(args *a, int ranks, const char *command) {
    a->n = 0;
    a->v[0] = NULL;
    if (ranks > 0) {
        args_add(a, find_mpirun());
        /* loopback only, no binding to cores (3 ranks on 2 cores), Open MPI's own point-to-point */
        const char *mpi[] = {"--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,tcp", "--mca",
                             "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo", "--mca", "pml", "ob1"};
        for (size_t i = 0; i < sizeof mpi / sizeof *mpi; i++) args_add(a, mpi[i]);
        if (geteuid() == 0) args_add(a, "--allow-run-as-root"); /* CI runs as root */
        snprintf(a->nbuf, sizeof a->nbuf, "%d", ranks);
        args_add(a, "-n");
        args_add(a, a->nbuf);
    }
    const char *base[] = {cli_bin(), command, "--model", MODEL, "--threads", "1"};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++) args_add(a, base[i]);
}

static void args_generate(args *a, int ranks, const workdir *w, const char *output) {
    args_init(a, ranks, "generate");
    const char *more[] = {"--device", "cpu", "--batch", "2", "--input", w->in, "--output", output};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) args_add(a, more[i]);
}

/* Starts it in its own process group, stdout to w->log, stderr to w->err, with the environment
 * plus `env` ("NAME=value" items, NULL-terminated) and GPT2_TEST_MPI_DIR=w->dir, which tells this
 * run's ranks from other tests'. */
static pid_t spawn(const args *a, const workdir *w, const char *const *env) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        int out = open(w->log, O_WRONLY | O_CREAT | O_TRUNC, 0644), err = open(w->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(127);
        setenv("GPT2_TEST_MPI_DIR", w->dir, 1);
        setenv("OMPI_MCA_mpi_yield_when_idle", "1", 1); /* ranks waiting in MPI leave the cores to the others */
        /* under `make asan`: Open MPI's own leaks are not this program's (see the file); full stacks,
         * since its components are unloaded by exit and only the frames below them have names */
        char *supp = realpath("tests/lsan_mpi.supp", NULL);
        if (supp) {
            char opt[1024];
            snprintf(opt, sizeof opt, "suppressions=%s:print_suppressions=0:fast_unwind_on_malloc=0", supp);
            setenv("LSAN_OPTIONS", opt, 1);
        }
        for (size_t i = 0; env && env[i]; i++) putenv((char *)env[i]);
        execv(a->v[0], (char *const *)a->v);
        _exit(127);
    }
    return pid;
}

/* Ends a run that overran: SIGTERM (mpirun passes it on to its ranks), then SIGKILL to the group. */
static void kill_run(pid_t pid) {
    kill(pid, SIGTERM);
    double t0 = test_now_s();
    int st;
    while (waitpid(pid, &st, WNOHANG) == 0 && test_now_s() - t0 < 5) test_sleep_ms(20);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

/* Waits for the run; returns its exit status (asserts that it ended in time). */
static int wait_run(pid_t pid, const args *a) {
    int st;
    double t0 = test_now_s();
    pid_t done;
    while ((done = waitpid(pid, &st, WNOHANG)) == 0 && test_now_s() - t0 < RUN_LIMIT_S) test_sleep_ms(5);
    if (done != pid) {
        kill_run(pid);
        cr_assert_fail("%s did not finish within %d s", a->v[0], RUN_LIMIT_S);
    }
    kill(-pid, SIGKILL); /* nothing of the run survives it */
    cr_assert(WIFEXITED(st), "%s was killed by signal %d", a->v[0], WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    cr_assert_neq(WEXITSTATUS(st), 127, "cannot run %s (set GPT2_BIN)", a->v[0]);
    return WEXITSTATUS(st);
}

static int run(const args *a, const workdir *w, const char *const *env) { return wait_run(spawn(a, w, env), a); }

/* Runs and asserts success; returns its stderr. */
static char *run_ok(const args *a, const workdir *w, const char *what) {
    int rc = run(a, w, NULL);
    char *err = test_read_file_kept(w->err, NULL);
    cr_assert_eq(rc, 0, "%s: exit status %d: %s", what, rc, err);
    return err;
}

/* The pid of rank `rank` of this test's run: a process whose environment has this workdir's
 * GPT2_TEST_MPI_DIR and OMPI_COMM_WORLD_RANK=rank; 0 while there is none. */
static pid_t find_rank(const workdir *w, int rank) {
    char want_dir[192], want_rank[64];
    snprintf(want_dir, sizeof want_dir, "GPT2_TEST_MPI_DIR=%s", w->dir);
    snprintf(want_rank, sizeof want_rank, "OMPI_COMM_WORLD_RANK=%d", rank);
    DIR *d = opendir("/proc");
    cr_assert(d);
    pid_t found = 0;
    for (struct dirent *e; !found && (e = readdir(d));) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        char path[64], buf[1 << 16];
        snprintf(path, sizeof path, "/proc/%ld/environ", pid);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        int dir = 0, rk = 0;
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) {
            buf[n] = '\0';
            dir |= !strcmp(buf + i, want_dir);
            rk |= !strcmp(buf + i, want_rank);
        }
        if (dir && rk) found = (pid_t)pid;
    }
    closedir(d);
    return found;
}

/* Waits until `path` holds at least `lines` lines; fails if the run ends first. */
static void wait_for_lines(pid_t pid, const char *path, size_t lines, const workdir *w) {
    double t0 = test_now_s();
    while (count_lines(path) < lines) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            cr_assert_fail("the run ended (status %d) before writing %zu records: %s", st, lines,
                           test_read_file_kept(w->err, NULL));
        if (test_now_s() - t0 > RUN_LIMIT_S) {
            kill_run(pid);
            cr_assert_fail("no %zu records in %s after %d s", lines, path, RUN_LIMIT_S);
        }
        test_sleep_ms(2);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Requests                                                                                         */

static const char *const PROMPTS[] = {"The quick brown fox", "Once upon a time", "In the beginning",
                                      "Hello, my name is", "Caf\\u00e9 au lait", "1, 2, 3, 4,"};

/* n greedy requests with distinct ids and 2..6 new tokens; every tenth has no id (its records go by
 * line number, "id": null). Line `bad` (1-based, 0: none) asks for a negative temperature. */
static void write_requests(const workdir *w, int n, int bad) {
    char *buf = test_keep(malloc((size_t)n * 160), free);
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        char id[32] = "";
        if (i % 10 != 9) snprintf(id, sizeof id, "\"id\": \"q%03d\", ", i);
        k += (size_t)snprintf(buf + k, 160, "{%s\"prompt\": \"%s %d\", \"max_tokens\": %d, \"temperature\": %s}\n", id,
                              PROMPTS[i % 6], i, 2 + i % 5, i + 1 == bad ? "-1" : "0");
    }
    test_write_file(w->in, buf, k);
}

/* The single-process reference (no mpirun), into w->ref. */
static void reference_run(const workdir *w) {
    args a;
    args_generate(&a, 0, w, w->ref);
    run_ok(&a, w, "single-process run");
    cr_assert_eq(count_lines(w->ref), N_REQ);
}

/* The output file equals the reference byte for byte. */
static void check_same(const workdir *w, const char *what) {
    size_t n_ref, n_out;
    char *ref = test_read_file_kept(w->ref, &n_ref), *out = test_read_file_kept(w->out, &n_out);
    size_t i = 0;
    while (i < n_ref && i < n_out && ref[i] == out[i]) i++;
    cr_assert(n_ref == n_out && i == n_ref, "%s: the output differs from the single-process run's at byte %zu (%zu "
              "bytes, want %zu)", what, i, n_out, n_ref);
}

/* Each of the R ranks ran some requests (stderr: "requests run per rank: a b c"), together N_REQ. */
static void check_spread(const char *err, int R) {
    const char *p = strstr(err, "requests run per rank:");
    cr_assert(p, "no per-rank summary: %s", err);
    p += strlen("requests run per rank:");
    int total = 0;
    for (int r = 0; r < R; r++) {
        char *end;
        long k = strtol(p, &end, 10);
        cr_assert(end != p, "summary for %d ranks: %s", R, err);
        cr_assert_gt(k, 0, "rank %d ran no request: %s", r, err);
        total += (int)k;
        p = end;
    }
    cr_assert_eq(total, N_REQ, "%s", err);
}

TestSuite(mpi, .fini = test_cleanup);

/* ---------------------------------------------------------------------------------------------- */
/* Tests                                                                                            */

Test(mpi, ranks_write_the_single_process_file) {
    mpirun_path();
    workdir w;
    workdir_make(&w);
    write_requests(&w, N_REQ, 0);
    reference_run(&w);
    for (int R = 1; R <= 3; R++) {
        args a;
        args_generate(&a, R, &w, w.out);
        char what[32];
        snprintf(what, sizeof what, "%d rank%s", R, R > 1 ? "s" : "");
        if (R == 3) args_add(&a, "--progress-interval"), args_add(&a, "0.05");
        char *err = run_ok(&a, &w, what);
        check_same(&w, what);
        if (R > 1) check_spread(err, R);
        if (R == 3) { /* rank 0's progress: plain lines (stderr is a file), one at the end */
            char final[64];
            snprintf(final, sizeof final, "progress: %d/%d requests done", N_REQ, N_REQ);
            cr_assert(strstr(err, final), "no final progress line: %s", err);
            cr_assert(strstr(err, "tokens/s") && strstr(err, "s left"), "%s", err);
        }
    }
    workdir_remove(&w);
}

/* Starts a 3-rank job (resuming), waits for `lines` records, SIGKILLs rank `victim` and waits for the
 * job to end: the file is then a byte prefix of the reference (a torn last line allowed: --resume
 * cuts it), shorter than it. */
static void kill_rank(const workdir *w, int resume, size_t lines, int victim) {
    args a;
    args_generate(&a, 3, w, w->out);
    if (resume) args_add(&a, "--resume");
    pid_t pid = spawn(&a, w, NULL);
    wait_for_lines(pid, w->out, lines, w);
    pid_t rank = 0;
    for (double t0 = test_now_s(); !(rank = find_rank(w, victim)) && test_now_s() - t0 < 30;) test_sleep_ms(5);
    cr_assert(rank, "rank %d of the job not found", victim);
    cr_assert_eq(kill(rank, SIGKILL), 0, "kill: %s", strerror(errno));
    int st;
    double t0 = test_now_s();
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (test_now_s() - t0 > 60) {
            kill_run(pid);
            cr_assert_fail("mpirun still runs 60 s after rank %d was killed", victim);
        }
        test_sleep_ms(5);
    }
    kill(-pid, SIGKILL);
    cr_assert(!WIFEXITED(st) || WEXITSTATUS(st) != 0, "the job ended well although rank %d was killed", victim);
    size_t n_ref, n_out;
    char *ref = test_read_file_kept(w->ref, &n_ref), *out = test_read_file_kept(w->out, &n_out);
    cr_assert(n_out < n_ref, "the job finished before rank %d was killed", victim);
    cr_assert(!memcmp(ref, out, n_out), "after the kill of rank %d the output is not a prefix of the single-process "
              "run's", victim);
    cr_assert_geq(count_lines(w->out), lines);
}

Test(mpi, sigkill_of_a_rank_then_resume) {
    mpirun_path();
    workdir w;
    workdir_make(&w);
    write_requests(&w, N_REQ, 0);
    reference_run(&w);
    kill_rank(&w, 0, (size_t)N_REQ * 2 / 15, 1); /* a worker, after 40 of 300 records */
    kill_rank(&w, 1, (size_t)N_REQ * 2 / 5, 0);  /* then the writer itself, in the resumed job, after 120 */
    args a;
    args_generate(&a, 2, &w, w.out);
    args_add(&a, "--resume");
    char *err = run_ok(&a, &w, "--resume under mpirun");
    check_same(&w, "SIGKILL + --resume");
    cr_assert(strstr(err, "requests already in"), "%s", err);
    workdir_remove(&w);
}

/* A rank stopped on its own (SIGTERM to rank 1 alone, not through mpirun) gives its unfinished
 * requests back: the others complete the file, byte-identical, and the exit status (rank 0's) is 1,
 * naming what happened. */
Test(mpi, a_rank_stopped_alone_gives_its_requests_back) {
    mpirun_path();
    workdir w;
    workdir_make(&w);
    write_requests(&w, N_REQ, 0);
    reference_run(&w);
    args a;
    args_generate(&a, 3, &w, w.out);
    pid_t pid = spawn(&a, &w, NULL);
    wait_for_lines(pid, w.out, (size_t)N_REQ / 10, &w);
    pid_t rank = 0;
    for (double t0 = test_now_s(); !(rank = find_rank(&w, 1)) && test_now_s() - t0 < 30;) test_sleep_ms(5);
    cr_assert(rank, "rank 1 of the job not found");
    cr_assert_eq(kill(rank, SIGTERM), 0, "kill: %s", strerror(errno));
    int rc = wait_run(pid, &a);
    char *err = test_read_file_kept(w.err, NULL);
    cr_assert_eq(rc, 1, "exit status %d after rank 1 stopped (want 1): %s", rc, err);
    check_same(&w, "rank 1 stopped");
    cr_assert(strstr(err, "rank 1: interrupted") && strstr(err, "1 rank stopped early"), "%s", err);
    workdir_remove(&w);
}

/* Every rank reads the input, but one error record per bad line and one summary are written: the
 * file equals the single process's, and stderr says it once. A duplicate id: one message. */
Test(mpi, input_error_reported_once) {
    mpirun_path();
    workdir w;
    workdir_make(&w);
    write_requests(&w, 30, 5);
    args a;
    args_generate(&a, 0, &w, w.ref);
    cr_assert_eq(run(&a, &w, NULL), 1, "single process with a bad line: %s", test_read_file_kept(w.err, NULL));
    args_generate(&a, 3, &w, w.out);
    int rc = run(&a, &w, NULL);
    char *err = test_read_file_kept(w.err, NULL);
    cr_assert_eq(rc, 1, "exit status %d with a bad line (want 1): %s", rc, err);
    check_same(&w, "3 ranks, a bad line");
    char *out = test_read_file_kept(w.out, NULL);
    cr_assert_eq(count_str(out, "\"error\""), 1, "%s", out);
    cr_assert(strstr(out, "\"line\":5,\"error\"") && strstr(out, "temperature"), "%s", out);
    cr_assert_eq(count_str(err, "requests failed"), 1, "the failure is reported %zu times: %s",
                 count_str(err, "requests failed"), err);
    cr_assert(strstr(err, "1 of 30 requests failed"), "%s", err);

    /* a duplicate id: refused before any work, said once */
    size_t n;
    char *in = test_read_file_kept(w.in, &n);
    char *q7 = strstr(in, "\"q007\"");
    cr_assert(q7);
    memcpy(q7, "\"q003\"", 6);
    test_write_file(w.in, in, n);
    rc = run(&a, &w, NULL);
    err = test_read_file_kept(w.err, NULL);
    cr_assert_neq(rc, 0, "a duplicate id was accepted: %s", err);
    cr_assert_eq(count_str(err, "duplicate id"), 1, "reported %zu times: %s", count_str(err, "duplicate id"), err);
    workdir_remove(&w);
}

/* GPU binding, seen in the line each rank prints (no GPU is needed: the names are only passed on). */
Test(mpi, ranks_bind_to_visible_devices) {
    mpirun_path();
    workdir w;
    workdir_make(&w);
    write_requests(&w, 3, 0);
    args a;
    args_init(&a, 3, "generate");
    const char *more[] = {"--device", "auto", "--input", w.in, "--output", w.out};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) args_add(&a, more[i]);
    static const struct {
        const char *gpus;   /* $GPT2_MPI_GPUS, or NULL */
        const char *dev[3]; /* CUDA_VISIBLE_DEVICES of ranks 0, 1, 2 */
    } cases[] = {{NULL, {"GPU-a", "GPU-b", "GPU-a"}}, {"1,1,0", {"GPU-b", "GPU-b", "GPU-a"}}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char gpus[64];
        snprintf(gpus, sizeof gpus, "GPT2_MPI_GPUS=%s", cases[c].gpus ? cases[c].gpus : "");
        const char *env[] = {"CUDA_VISIBLE_DEVICES=GPU-a,GPU-b", cases[c].gpus ? gpus : NULL, NULL};
        int rc = run(&a, &w, env);
        char *err = test_read_file_kept(w.err, NULL);
        cr_assert_eq(rc, 0, "exit status %d: %s", rc, err);
        for (int r = 0; r < 3; r++) {
            char line[128];
            snprintf(line, sizeof line, "rank %d of 3 (node-local rank %d): CUDA_VISIBLE_DEVICES=%s\n", r, r,
                     cases[c].dev[r]);
            cr_assert(strstr(err, line), "GPT2_MPI_GPUS=%s: no '%s' in: %s", cases[c].gpus ? cases[c].gpus : "(unset)",
                      line, err);
        }
        cr_assert_eq(count_lines(w.out), 3);
    }
    /* an index past the visible devices is refused, naming the variable */
    const char *env[] = {"CUDA_VISIBLE_DEVICES=GPU-a,GPU-b", "GPT2_MPI_GPUS=0,2", NULL};
    int rc = run(&a, &w, env);
    char *err = test_read_file_kept(w.err, NULL);
    cr_assert_neq(rc, 0, "GPT2_MPI_GPUS=0,2 with two devices was accepted: %s", err);
    cr_assert(strstr(err, "GPT2_MPI_GPUS '0,2'"), "%s", err);
    /* --device cpu binds nothing */
    a.v[a.n - 5] = "cpu";
    const char *env2[] = {"CUDA_VISIBLE_DEVICES=GPU-a,GPU-b", NULL};
    cr_assert_eq(run(&a, &w, env2), 0, "%s", test_read_file_kept(w.err, NULL));
    cr_assert(!strstr(test_read_file_kept(w.err, NULL), "CUDA_VISIBLE_DEVICES"), "--device cpu bound a GPU");
    workdir_remove(&w);
}

/* Two ranks benchmark side by side: one report (rank 0's), with their aggregate throughput. */
Test(mpi, bench_aggregates_over_ranks) {
    mpirun_path();
    workdir w;
    workdir_make(&w);
    char json[192];
    snprintf(json, sizeof json, "%s/bench.json", w.dir);
    args a;
    args_init(&a, 2, "bench");
    const char *more[] = {"--device", "cpu", "--batch", "1,3", "--prompt-len", "5", "--gen-len", "4",
                          "--warmup", "0", "--json", json};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) args_add(&a, more[i]);
    run_ok(&a, &w, "bench under mpirun");
    char *out = test_read_file_kept(w.log, NULL);
    cr_assert_eq(count_str(out, "gpt2 bench:"), 1, "more than one report: %s", out);
    cr_assert_eq(count_str(out, "aggregate over 2 ranks"), 1, "%s", out);
    json_error_t e;
    json_t *root = json_load_file(json, 0, &e);
    cr_assert(root, "%s: %s", json, e.text);
    test_keep(root, json_decref);
    cr_assert_eq(json_integer_value(json_object_get(root, "ranks")), 2);
    json_t *res = json_object_get(root, "results");
    cr_assert_eq(json_array_size(res), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *r = json_array_get(res, i), *agg = json_object_get(r, "aggregate");
        cr_assert(agg, "batch %zu: no aggregate", i);
        const char *keys[] = {"prefill_tok_s", "decode_tok_s", "e2e_tok_s"};
        for (int k = 0; k < 3; k++) {
            double v = json_real_value(json_object_get(agg, keys[k]));
            cr_assert(isfinite(v) && v > 0, "batch %zu: aggregate %s = %g", i, keys[k], v);
        }
    }
    workdir_remove(&w);
}

/* A build without MPI started as several ranks refuses, once, rather than run the job once per rank. */
Test(mpi, build_without_mpi_refuses_several_ranks) {
#ifdef GPT2_HAVE_MPI
    cr_skip_test("built with MPI (this checks a build made with MPI=0)");
#endif
    workdir w;
    workdir_make(&w);
    write_requests(&w, 3, 0);
    args a;
    args_generate(&a, 2, &w, w.out);
    int rc = run(&a, &w, NULL);
    char *err = test_read_file_kept(w.err, NULL);
    cr_assert_neq(rc, 0, "%s", err);
    cr_assert_eq(count_str(err, "built without MPI"), 1, "%s", err);
    cr_assert_eq(count_lines(w.out), 0, "a rank wrote records");
    workdir_remove(&w);
}

/* Progress on a stderr that is not a terminal: nothing by default, a plain line per interval with
 * --progress-interval (no MPI needed). */
TestSuite(progress, .fini = test_cleanup);

Test(progress, plain_lines_when_stderr_is_a_file) {
    workdir w;
    workdir_make(&w);
    write_requests(&w, 20, 0);
    args a;
    args_generate(&a, 0, &w, w.out);
    char *err = run_ok(&a, &w, "default");
    cr_assert(!strstr(err, "progress") && !strchr(err, '\r'), "progress on a file without --progress: %s", err);
    args_add(&a, "--progress-interval");
    args_add(&a, "0.001");
    err = run_ok(&a, &w, "--progress-interval");
    cr_assert(!strchr(err, '\r'), "a terminal's carriage returns in a file: %s", err);
    cr_assert_geq(count_str(err, "gpt2 generate: progress: "), 2, "%s", err);
    cr_assert(strstr(err, "gpt2 generate: progress: 20/20 requests done, "), "no final line: %s", err);
    cr_assert(strstr(err, " tokens/s, ") && strstr(err, " s left\n"), "%s", err);
    args_generate(&a, 0, &w, w.out);
    args_add(&a, "--progress-interval");
    args_add(&a, "-1");
    cr_assert_eq(run(&a, &w, NULL), 2, "a negative interval was accepted");
    cr_assert(strstr(test_read_file_kept(w.err, NULL), "--progress-interval"));
    workdir_remove(&w);
}
