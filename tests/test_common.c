/* test_common.c: helpers shared by the model tests (see common.h), plus a check of the helpers. */
#include "common.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

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
    gpt2_error err = {0};
    gpt2_chunk ch = {.slot = 0, .pos = 0, .n = T, .tokens = ids};
    float *out = malloc(sizeof(float) * (size_t)T * (size_t)m->cfg.vocab_size);
    cr_assert(out);
    cr_assert_eq(be->forward(be, &ch, 1, 1, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->read_logits(be, out, T, &err), GPT2_OK, "%s", err.msg);
    gpt2_backend_free(be);
    return out;
}

uint64_t trand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float trand_float(uint64_t *s) { return (float)((double)(trand(s) >> 40) / (double)(1 << 23) - 1.0); }

const char *cli_bin(void) {
    const char *b = getenv("GPT2_BIN");
    return b && *b ? b : "build/gpt2";
}

int run_capture(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    cr_assert(buf);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (cap - n < 2) {
            buf = realloc(buf, cap *= 2);
            cr_assert(buf);
        }
    }
    buf[n] = '\0';
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
