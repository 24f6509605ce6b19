/* test_common.c: helpers shared by the model tests (see common.h), plus a check of the helpers. */
#include "common.h"

#include "generate.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *const fixture_models[] = {"tiny", "tiny-bf16", "small", "small-untied-sharded"};
const int n_fixture_models = 4;

json_t *golden_load(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s/golden.json", FIXTURES, name);
    json_error_t e;
    json_t *g = json_load_file(path, 0, &e);
    cr_assert(g != NULL, "%s: %s (line %d); run tools/make_fixtures.py", path, e.text, e.line);
    return g;
}

int *json_ints(json_t *arr, int *n) {
    cr_assert(json_is_array(arr));
    *n = (int)json_array_size(arr);
    int *v = malloc(sizeof(int) * (size_t)(*n + 1));
    cr_assert(v);
    for (int i = 0; i < *n; i++) v[i] = (int)json_integer_value(json_array_get(arr, (size_t)i));
    return v;
}

gpt2_backend *cpu_backend(const gpt2_model *m, int S, int maxT, int N) {
    gpt2_backend_opts o = {.max_slots = S, .max_seq = maxT, .max_tokens = N, .all_logits = 1};
    gpt2_backend *be = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_backend_create("cpu", m, &o, &be, &err), GPT2_OK, "%s", err.msg);
    return be;
}

float *full_logits(const gpt2_model *m, const int *ids, int T) {
    gpt2_backend *be = cpu_backend(m, 1, T, T);
    float *out = forward_all(be, ids, T);
    gpt2_backend_free(be);
    return out;
}

gpt2_model *load_fixture(const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
    gpt2_model *m = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_model_load(dir, &m, &err), GPT2_OK, "%s: %s", dir, err.msg);
    return m;
}

float *forward_all(gpt2_backend *be, const int *ids, int T) {
    int V = be->model->cfg.vocab_size;
    gpt2_error err = {0};
    gpt2_chunk ch = {.slot = 0, .pos = 0, .n = T, .tokens = ids};
    float *out = malloc(sizeof(float) * (size_t)T * (size_t)V);
    cr_assert(out);
    cr_assert_eq(be->forward(be, &ch, 1, 1, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->read_logits(be, out, T, &err), GPT2_OK, "%s", err.msg);
    return out;
}

int argmax_row(const float *x, int n) {
    int best = 0;
    for (int v = 1; v < n; v++)
        if (x[v] > x[best]) best = v;
    return best;
}

void random_ids(int *ids, int n, int V, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < n; i++) ids[i] = (int)(trand(&s) % (uint64_t)V);
}

double check_golden_logits(const char *name, backend_maker make, double atol, const char *label) {
    gpt2_model *m = load_fixture(name);
    json_t *g = golden_load(name);
    json_t *cases = json_object_get(g, "cases");
    int V = m->cfg.vocab_size;
    gpt2_backend *be = make(m, 1, m->cfg.n_positions, m->cfg.n_positions);
    double worst = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        int T, n_cols;
        int *ids = json_ints(json_object_get(cs, "ids"), &T);
        int *cols = json_ints(json_object_get(cs, "cols"), &n_cols);
        json_t *rows = json_object_get(cs, "logits");
        cr_assert_eq((int)json_array_size(rows), T);
        float *ours = forward_all(be, ids, T);
        for (int t = 0; t < T; t++) {
            json_t *row = json_array_get(rows, (size_t)t);
            int best_ref = 0;
            for (int k = 0; k < n_cols; k++) {
                double ref = json_number_value(json_array_get(row, (size_t)k));
                double got = ours[(size_t)t * V + cols[k]];
                double d = fabs(got - ref);
                if (d > worst) worst = d;
                cr_assert(d <= atol, "%s (%s) case %zu position %d column %d: ours %.7f, transformers %.7f", name,
                          label, c, t, cols[k], got, ref);
                if (ref > json_number_value(json_array_get(row, (size_t)best_ref))) best_ref = k;
            }
            /* the columns include every row's argmax, so top-1 over the full vocabulary must agree */
            int best = argmax_row(ours + (size_t)t * V, V);
            cr_assert_eq(best, cols[best_ref], "%s (%s) case %zu position %d: argmax %d, transformers %d", name, label,
                         c, t, best, cols[best_ref]);
        }
        free(ours);
        free(ids);
        free(cols);
    }
    cr_log_info("%s (%s): max |logit - transformers| = %.3g", name, label, worst);
    gpt2_backend_free(be);
    json_decref(g);
    gpt2_model_free(m);
    return worst;
}

typedef struct {
    int tokens[1024];
    int n;
} collected;

static int collect_finish(void *user, int req, const int *tokens, int n, const char *text, size_t n_text,
                          gpt2_finish reason) {
    collected *c = (collected *)user + req;
    cr_assert_leq(n, 1024);
    memcpy(c->tokens, tokens, sizeof(int) * (size_t)n);
    c->n = n;
    return 0;
}

void check_golden_greedy(const char *name, backend_maker make, const char *label) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
    gpt2_model *m = load_fixture(name);
    gpt2_tokenizer *tok = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(dir, &tok, &err), GPT2_OK, "%s", err.msg);
    json_t *g = golden_load(name);
    json_t *cases = json_object_get(g, "cases");
    int n = (int)json_array_size(cases);
    gpt2_request reqs[16];
    int *want[16], n_want[16];
    cr_assert_leq(n, 16);
    for (int i = 0; i < n; i++) {
        json_t *cs = json_array_get(cases, (size_t)i);
        reqs[i] = (gpt2_request){.sampling = gpt2_sampling_default()};
        reqs[i].prompt = json_ints(json_object_get(cs, "ids"), &reqs[i].n_prompt);
        want[i] = json_ints(json_object_get(cs, "greedy"), &n_want[i]);
        reqs[i].max_tokens = n_want[i];
    }
    /* 3 slots for 6+ requests: continuous batching, decode batches of 1..3 rows */
    gpt2_backend *be = make(m, 3, m->cfg.n_positions, 64);
    collected *got = calloc((size_t)n, sizeof *got);
    gpt2_gen_callbacks cb = {.user = got, .on_finish = collect_finish};
    /* no end-of-text stop here: the golden continuations run to max_new_tokens */
    cr_assert_eq(gpt2_generate(be, tok, -1, reqs, n, &cb, &err), GPT2_OK, "%s", err.msg);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(got[i].n, n_want[i], "%s (%s) case %d: %d tokens, want %d", name, label, i, got[i].n, n_want[i]);
        for (int k = 0; k < n_want[i]; k++)
            cr_assert_eq(got[i].tokens[k], want[i][k], "%s (%s) case %d token %d: %d, transformers %d", name, label, i,
                         k, got[i].tokens[k], want[i][k]);
        free((void *)reqs[i].prompt);
        free(want[i]);
    }
    free(got);
    gpt2_backend_free(be);
    json_decref(g);
    gpt2_tokenizer_free(tok);
    gpt2_model_free(m);
}

typedef struct {
    void *p;
    void (*fn)(void *);
} kept;
static kept *g_kept;
static size_t g_n_kept, g_cap_kept;

void *test_keep_fn(void *p, void (*fn)(void *)) {
    cr_assert(p != NULL, "allocation failed");
    if (g_n_kept == g_cap_kept) {
        size_t cap = g_cap_kept ? g_cap_kept * 2 : 32;
        kept *k = realloc(g_kept, cap * sizeof *k);
        if (!k) {
            fn(p);
            cr_assert_fail("out of memory for the cleanup list");
        }
        g_kept = k;
        g_cap_kept = cap;
    }
    g_kept[g_n_kept++] = (kept){p, fn};
    return p;
}

void test_cleanup(void) {
    while (g_n_kept > 0) {
        kept *k = &g_kept[--g_n_kept];
        k->fn(k->p);
    }
    free(g_kept);
    g_kept = NULL;
    g_cap_kept = 0;
}

void *test_calloc(size_t n, size_t size) { return test_keep(calloc(n ? n : 1, size ? size : 1), free); }

uint64_t trand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float trand_float(uint64_t *s) { return (float)((double)(trand(s) >> 40) / (double)(1 << 23) - 1.0); }

double test_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void test_sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

const char *cli_bin(void) {
    const char *b = getenv("GPT2_BIN");
    return b && *b ? b : "build/gpt2";
}

/* All of stream f, NUL-terminated and malloc'ed (asserts on allocation failure); *n its length. */
static char *read_stream(FILE *f, size_t *n) {
    size_t cap = 1 << 16, k = 0;
    char *buf = malloc(cap + 1);
    cr_assert(buf);
    size_t got;
    while ((got = fread(buf + k, 1, cap - k, f)) > 0) {
        k += got;
        if (k == cap) {
            buf = realloc(buf, (cap *= 2) + 1);
            cr_assert(buf);
        }
    }
    buf[k] = '\0';
    if (n) *n = k;
    return buf;
}

char *test_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        char *buf = malloc(1);
        cr_assert(buf);
        buf[0] = '\0';
        if (n) *n = 0;
        return buf;
    }
    char *buf = read_stream(f, n);
    fclose(f);
    return buf;
}

char *test_read_file_kept(const char *path, size_t *n) { return test_keep(test_read_file(path, n), free); }

void test_write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

int run_capture(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    char *buf = read_stream(p, NULL);
    int st = pclose(p);
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

Test(common, fixtures_are_present_and_from_transformers) {
    for (int i = 0; i < n_fixture_models; i++) {
        json_t *g = golden_load(fixture_models[i]);
        const char *src = json_string_value(json_object_get(g, "source"));
        cr_assert(src && strstr(src, "transformers"), "%s: golden not made by transformers", fixture_models[i]);
        cr_assert_gt(json_array_size(json_object_get(g, "cases")), 0);
        json_decref(g);
    }
}

int test_run_generate(const char *model, const char *lines, int with_stderr, char **out) {
    char in[] = "/tmp/gpt2-generate-XXXXXX";
    int fd = mkstemp(in);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, lines, strlen(lines)), (ssize_t)strlen(lines));
    close(fd);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s generate --model %s --device cpu --input %s %s", cli_bin(), model, in,
             with_stderr ? "2>&1" : "2>/dev/null");
    int rc = run_capture(cmd, out);
    unlink(in);
    test_keep(*out, free);
    return rc;
}
