/* fuzz_model.c: gpt2_model_load on a fuzzed checkpoint (one safetensors file, or a sharded index with
 * its shards) next to a fixed, valid config.json of a 2-layer model (C 4, NH 2, V 8, maxT 4).
 *
 * Input: without the separator "\n#file#\n", all of it is model.safetensors. With it, the parts are
 * model.safetensors.index.json, then shards s1.safetensors, s2.safetensors, s3.safetensors (the seeds'
 * indexes name these). The files go to one temporary directory, rewritten for each input. A refused
 * checkpoint must come with a message; a loaded model must have every parameter pointer inside its one
 * allocation, the documented float count, lm_head == wte exactly when tied, and readable memory. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"

#define SEP "\n#file#\n"
#define MAX_SHARDS 3

static char g_dir[64];
static const char CONFIG[] = "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 4, \"vocab_size\": 8,"
                             " \"model_type\": \"gpt2\"}";
static const char *const FILES[] = {"model.safetensors.index.json", "s1.safetensors", "s2.safetensors",
                                    "s3.safetensors", "model.safetensors"};

static void put_file(const char *name, const void *data, size_t n) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

static void drop_file(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    unlink(path);
}

static void cleanup(void) {
    for (size_t i = 0; i < sizeof FILES / sizeof *FILES; i++) drop_file(FILES[i]);
    drop_file("config.json");
    rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    snprintf(g_dir, sizeof g_dir, "/tmp/gpt2_fuzz_model_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        abort();
    }
    atexit(cleanup);
    put_file("config.json", CONFIG, sizeof CONFIG - 1);
    return 0;
}

static int inside(const gpt2_weights *w, const float *p, size_t n) {
    return p && p >= w->memory && (size_t)(p - w->memory) + n <= w->n_floats;
}

static void check_model(const gpt2_model *m) {
    const gpt2_config *c = &m->cfg;
    FUZZ_CHECK(c->n_layer == 2 && c->n_head == 2 && c->n_embd == 4 && c->n_positions == 4 && c->vocab_size == 8,
               "config changed");
    const gpt2_weights *w = &m->w;
    const size_t C = 4, V = 8, T = 4, L = 2;
    size_t want = V * C + T * C + L * (C + C + C * 3 * C + 3 * C + C * C + C + C + C + C * 4 * C + 4 * C + 4 * C * C + C) +
                  C + C + (w->tied ? 0 : V * C);
    FUZZ_CHECK(w->n_floats == want, "n_floats %zu, want %zu (tied %d)", w->n_floats, want, w->tied);
    struct {
        const float *p;
        size_t n;
    } params[] = {{w->wte, V * C},          {w->wpe, T * C},         {w->ln1w, L * C},          {w->ln1b, L * C},
                  {w->qkvw, L * C * 3 * C}, {w->qkvb, L * 3 * C},    {w->attprojw, L * C * C},  {w->attprojb, L * C},
                  {w->ln2w, L * C},         {w->ln2b, L * C},        {w->fcw, L * C * 4 * C},   {w->fcb, L * 4 * C},
                  {w->fcprojw, L * 4 * C * C}, {w->fcprojb, L * C},  {w->lnfw, C},              {w->lnfb, C},
                  {w->lm_head, V * C}};
    for (size_t i = 0; i < sizeof params / sizeof *params; i++)
        FUZZ_CHECK(inside(w, params[i].p, params[i].n), "parameter %zu outside the allocation", i);
    FUZZ_CHECK((w->lm_head == w->wte) == (w->tied != 0), "tied %d but lm_head %s wte", w->tied,
               w->lm_head == w->wte ? "==" : "!=");
    volatile float sum = 0;
    for (size_t i = 0; i < w->n_floats; i++) sum += w->memory[i]; /* ASan: all of it is allocated */
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (size_t i = 0; i < sizeof FILES / sizeof *FILES; i++) drop_file(FILES[i]);
    const uint8_t *sep = memmem(data, size, SEP, sizeof SEP - 1);
    if (!sep) {
        put_file("model.safetensors", data, size);
    } else {
        const uint8_t *p = data, *end = data + size;
        for (size_t part = 0; part <= MAX_SHARDS && p <= end; part++) {
            const uint8_t *q = memmem(p, (size_t)(end - p), SEP, sizeof SEP - 1);
            const uint8_t *stop = q && part < MAX_SHARDS ? q : end;
            put_file(FILES[part], p, (size_t)(stop - p));
            if (stop == end) break;
            p = stop + sizeof SEP - 1;
        }
    }
    gpt2_model *m = (gpt2_model *)0x1;
    gpt2_error err = {0};
    gpt2_status s = gpt2_model_load(g_dir, &m, &err);
    if (s != GPT2_OK) {
        fuzz_check_error(s, &err);
        FUZZ_CHECK(m == NULL, "*out not NULL after a failure");
        FUZZ_CHECK(s == GPT2_ERR_FORMAT || s == GPT2_ERR_IO || s == GPT2_ERR_NOMEM || s == GPT2_ERR_CONFIG,
                   "status %d: %s", (int)s, err.msg);
        FUZZ_CHECK(strstr(err.msg, g_dir) != NULL, "message names no file: %s", err.msg);
        return 0;
    }
    check_model(m);
    gpt2_model_free(m);
    return 0;
}
