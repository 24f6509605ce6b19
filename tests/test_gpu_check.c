/* test_gpu_check.c: tools/gpu_check.sh's own logic, on any machine.
 *
 * The GPU check must fit one device call, so its step runner is what matters here: a step that
 * outlives its limit is recorded as TIMEOUT and the next step still runs; a step's limit is capped by
 * what is left of the budget; a step with no budget left is SKIPPED; and without a GPU every GPU step
 * says "no GPU" and the script ends with its own exit status (3) and a clear verdict. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* A fresh scratch folder under /tmp (OUT and the script's work folder go there). */
static void scratch(char *dir, size_t n) {
    snprintf(dir, n, "/tmp/gpt2-gpu-check-XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp failed");
}

/* The file's contents (malloc'ed), or NULL. */
static char *slurp(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 16);
    cr_assert(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The summary.tsv line of the k-th step (1-based) split into step, status and limit. */
static void step_line(const char *tsv, int k, char *name, char *status, int *limit) {
    const char *p = tsv;
    for (int i = 1; i < k; i++) {
        p = strchr(p, '\n');
        cr_assert(p, "summary.tsv has fewer than %d lines:\n%s", k, tsv);
        p++;
    }
    int secs = 0;
    cr_assert_eq(sscanf(p, "%63[^\t]\t%31[^\t]\t%d\t%d", name, status, &secs, limit), 4, "line %d: %.80s", k, p);
}

static void rm_rf(const char *dir) {
    char cmd[600], *out = NULL;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(run_capture(cmd, &out), 0);
    free(out);
}

Test(gpu_check, step_limits_and_budget, .timeout = 60) {
    char dir[64], cmd[512], *out = NULL;
    scratch(dir, sizeof dir);
    /* budget 8 s: sleep (limit 1), ok, sleep (limit 100, capped by the budget), ok (no budget left) */
    snprintf(cmd, sizeof cmd, "OUT='%s' GPU_CHECK_WORK='%s/work' tools/gpu_check.sh selftest 2>&1", dir, dir);
    int rc = run_capture(cmd, &out);
    cr_assert_eq(rc, 1, "exit %d (a timed-out step must fail the run):\n%s", rc, out);
    char *tsv = slurp(dir, "summary.tsv"), *txt = slurp(dir, "summary.txt"), *tgz = slurp(dir, "logs.tar.gz");
    cr_assert(tsv && txt && tgz, "summary.tsv, summary.txt and logs.tar.gz must be under OUT:\n%s", out);
    char name[64], status[32];
    int limit;
    step_line(tsv, 1, name, status, &limit);
    cr_assert(!strcmp(name, "selftest_sleep") && !strcmp(status, "TIMEOUT") && limit == 1, "%s", tsv);
    step_line(tsv, 2, name, status, &limit); /* the step after a timeout still runs */
    cr_assert(!strcmp(name, "selftest_ok") && !strcmp(status, "ok"), "%s", tsv);
    step_line(tsv, 3, name, status, &limit); /* capped by the budget left, not its own 100 s */
    cr_assert(!strcmp(name, "selftest_sleep") && !strcmp(status, "TIMEOUT") && limit >= 1 && limit <= 8, "%s", tsv);
    step_line(tsv, 4, name, status, &limit);
    cr_assert(!strcmp(name, "selftest_ok") && !strcmp(status, "SKIPPED"), "%s", tsv);
    cr_assert(strstr(txt, "FAIL: 3 step(s)"), "%s", txt);
    cr_assert(strstr(out, "sleeping past my limit") && !strstr(out, "not reached"), "%s", out);
    free(tsv);
    free(txt);
    free(tgz);
    free(out);
    rm_rf(dir);
}

Test(gpu_check, without_a_gpu_every_gpu_step_says_so, .timeout = 60) {
    char dir[64], cmd[512], *out = NULL;
    scratch(dir, sizeof dir);
    /* NVIDIA_SMI=false: no GPU, even on a machine that has one */
    snprintf(cmd, sizeof cmd, "NVIDIA_SMI=false OUT='%s' GPU_CHECK_WORK='%s/work' tools/gpu_check.sh quick 2>&1", dir,
             dir);
    int rc = run_capture(cmd, &out);
    cr_assert_eq(rc, 3, "exit %d, want 3 (no GPU):\n%s", rc, out);
    char *tsv = slurp(dir, "summary.tsv"), *txt = slurp(dir, "summary.txt");
    cr_assert(tsv && txt, "%s", out);
    const char *want[] = {"deps", "build", "test", "compare", "bench", "oracle", "memcheck"};
    for (int k = 1; k <= 7; k++) {
        char name[64], status[32];
        int limit;
        step_line(tsv, k, name, status, &limit);
        cr_assert_str_eq(name, want[k - 1]);
        /* deps needs no GPU: it checks that jansson, PCRE2 and Criterion link (they do wherever this runs) */
        cr_assert_str_eq(status, k == 1 ? "ok" : "no-GPU", "step %s:\n%s", name, tsv);
    }
    cr_assert(strstr(txt, "NO GPU: the 6 GPU step(s) did not run; nothing was checked on a GPU"), "%s", txt);
    cr_assert(strstr(out, "no GPU: 'false -L' lists none"), "%s", out);
    free(tsv);
    free(txt);
    free(out);
    rm_rf(dir);
}

Test(gpu_check, bad_mode_is_a_usage_error) {
    char *out = NULL;
    cr_assert_eq(run_capture("tools/gpu_check.sh fast 2>&1", &out), 2);
    cr_assert(strstr(out, "usage: tools/gpu_check.sh quick|full|selftest"), "%s", out);
    free(out);
}
