/* test_forward.c: the CPU reference forward against Hugging Face transformers' logits (golden files made
 * by tools/make_fixtures.py), KV-cache equivalence, ragged batches and chunked prefill. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "generate.h"

/* float32 against transformers' float32 eager: the spec asks about 1e-3; we hold far tighter. */
#define LOGIT_ATOL 2e-4

static gpt2_backend *cpu_backend_n(const gpt2_model *m, int S, int maxT, int N) { return cpu_backend(m, S, maxT, N); }

Test(forward, tiny_f16_hub_layout_matches_transformers) { check_golden_logits("tiny", cpu_backend_n, LOGIT_ATOL, "cpu"); }
Test(forward, tiny_bf16_save_pretrained_matches_transformers) {
    check_golden_logits("tiny-bf16", cpu_backend_n, LOGIT_ATOL, "cpu");
}
Test(forward, small_f32_matches_transformers) { check_golden_logits("small", cpu_backend_n, LOGIT_ATOL, "cpu"); }
Test(forward, untied_sharded_matches_transformers) {
    check_golden_logits("small-untied-sharded", cpu_backend_n, LOGIT_ATOL, "cpu");
}

Test(forward, greedy_tiny_matches_transformers) { check_golden_greedy("tiny", cpu_backend_n, "cpu"); }
Test(forward, greedy_small_matches_transformers) { check_golden_greedy("small", cpu_backend_n, "cpu"); }
Test(forward, greedy_untied_matches_transformers) { check_golden_greedy("small-untied-sharded", cpu_backend_n, "cpu"); }

static void assert_rows_close(const float *a, const float *b, int V, double tol, const char *what, int row) {
    for (int v = 0; v < V; v++)
        cr_assert(fabs(a[v] - b[v]) <= tol, "%s, row %d column %d: %.7f vs %.7f", what, row, v, a[v], b[v]);
}

/* Prefill a few tokens, then one token per step: every step's logits equal the full forward's row. */
Test(forward, incremental_decoding_equals_full_forward) {
    gpt2_model *m = load_fixture("small");
    int V = m->cfg.vocab_size, T = m->cfg.n_positions; /* up to the full context */
    int *ids = malloc(sizeof(int) * (size_t)T);
    random_ids(ids, T, V, 5);
    float *full = full_logits(m, ids, T);
    gpt2_backend *be = cpu_backend(m, 2, T, T);
    gpt2_error err = {0};
    float *row = malloc(sizeof(float) * (size_t)V * 8);
    int prefill = 7;
    gpt2_chunk ch = {.slot = 1, .pos = 0, .n = prefill, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->read_logits(be, row, 1, &err), GPT2_OK);
    assert_rows_close(row, full + (size_t)(prefill - 1) * V, V, 1e-5, "prefill", prefill - 1);
    for (int t = prefill; t < T; t++) {
        ch = (gpt2_chunk){.slot = 1, .pos = t, .n = 1, .tokens = ids + t};
        cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_OK, "%s", err.msg);
        cr_assert_eq(be->read_logits(be, row, 1, &err), GPT2_OK);
        assert_rows_close(row, full + (size_t)t * V, V, 1e-5, "decode step", t);
    }
    /* one past the context is refused, not written out of bounds */
    ch = (gpt2_chunk){.slot = 1, .pos = T, .n = 1, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_LIMIT);
    free(row);
    free(full);
    free(ids);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

/* Sequences of different lengths and positions in one forward give each sequence's own logits. */
Test(forward, ragged_batch_equals_separate_sequences) {
    gpt2_model *m = load_fixture("small-untied-sharded");
    int V = m->cfg.vocab_size;
    enum { B = 4 };
    int lens[B] = {1, 17, 5, 40}, *ids[B];
    float *full[B];
    for (int b = 0; b < B; b++) {
        ids[b] = malloc(sizeof(int) * (size_t)lens[b]);
        random_ids(ids[b], lens[b], V, 100 + (uint64_t)b);
        full[b] = full_logits(m, ids[b], lens[b]);
    }
    gpt2_backend *be = cpu_backend(m, B, m->cfg.n_positions, 128);
    gpt2_error err = {0};
    /* first: prefixes of different lengths in one ragged forward (slots in scrambled order) */
    int split[B] = {1, 9, 2, 33};
    int slot_of[B] = {2, 0, 3, 1};
    gpt2_chunk ch[B];
    for (int b = 0; b < B; b++) ch[b] = (gpt2_chunk){.slot = slot_of[b], .pos = 0, .n = split[b], .tokens = ids[b]};
    cr_assert_eq(be->forward(be, ch, B, 1, &err), GPT2_OK, "%s", err.msg);
    int total = 1 + 9 + 2 + 33;
    float *rows = malloc(sizeof(float) * (size_t)V * (size_t)total);
    cr_assert_eq(be->read_logits(be, rows, total, &err), GPT2_OK);
    for (int b = 0, off = 0; b < B; off += split[b], b++)
        for (int t = 0; t < split[b]; t++)
            assert_rows_close(rows + (size_t)(off + t) * V, full[b] + (size_t)t * V, V, 1e-5, "ragged prefill", t);
    /* then: the rest, as chunks continuing at different positions (sequence 0 is complete) */
    int n = 0;
    for (int b = 1; b < B; b++)
        ch[n++] = (gpt2_chunk){.slot = slot_of[b], .pos = split[b], .n = lens[b] - split[b], .tokens = ids[b] + split[b]};
    cr_assert_eq(be->forward(be, ch, n, 0, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->read_logits(be, rows, n, &err), GPT2_OK);
    for (int k = 0; k < n; k++) {
        int b = k + 1;
        assert_rows_close(rows + (size_t)k * V, full[b] + (size_t)(lens[b] - 1) * V, V, 1e-5, "continued chunk", b);
    }
    for (int b = 0; b < B; b++) {
        free(ids[b]);
        free(full[b]);
    }
    free(rows);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}

Test(forward, bad_chunks_are_refused) {
    gpt2_model *m = load_fixture("small");
    gpt2_backend *be = cpu_backend(m, 2, 16, 8);
    gpt2_error err = {0};
    int ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    gpt2_chunk ch = {.slot = 2, .pos = 0, .n = 1, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "slot 2"), "%s", err.msg);
    ch = (gpt2_chunk){.slot = 0, .pos = 0, .n = 9, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_ARG); /* over max_tokens */
    ids[0] = m->cfg.vocab_size;
    ch = (gpt2_chunk){.slot = 0, .pos = 0, .n = 1, .tokens = ids};
    cr_assert_eq(be->forward(be, &ch, 1, 0, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "vocabulary"), "%s", err.msg);
    gpt2_chunk two[2] = {{.slot = 1, .pos = 0, .n = 1, .tokens = ids + 1}, {.slot = 1, .pos = 0, .n = 1, .tokens = ids + 1}};
    cr_assert_eq(be->forward(be, two, 2, 0, &err), GPT2_ERR_ARG);
    gpt2_backend_free(be);
    gpt2_model_free(m);
}
