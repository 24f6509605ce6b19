/* test_generate.c: the continuous-batching scheduler: batch independence, stops, limits, streaming. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "generate.h"

/* Buffers, models and backends are freed by test_cleanup, also when an assertion ends a test early. */
TestSuite(generate, .fini = test_cleanup);

typedef struct {
    int tokens[256];
    int n;
    char text[4096];
    size_t n_text;
    char streamed[4096];
    size_t n_streamed;
    gpt2_finish reason;
    int finished;
} result;

static int on_finish(void *user, int req, const int *tokens, int n, const char *text, size_t n_text,
                     gpt2_finish reason) {
    result *r = (result *)user + req;
    cr_assert_eq(r->finished, 0, "request %d finished twice", req);
    cr_assert_leq(n, 256);
    cr_assert_lt(n_text, sizeof r->text);
    memcpy(r->tokens, tokens, sizeof(int) * (size_t)n);
    r->n = n;
    memcpy(r->text, text, n_text);
    r->n_text = n_text;
    r->reason = reason;
    r->finished = 1;
    return 0;
}

static int on_text(void *user, int req, const char *bytes, size_t n) {
    result *r = (result *)user + req;
    cr_assert_lt(r->n_streamed + n, sizeof r->streamed);
    memcpy(r->streamed + r->n_streamed, bytes, n);
    r->n_streamed += n;
    return 0;
}

typedef struct {
    gpt2_model *m;
    gpt2_tokenizer *tok;
} fixture;

static fixture open_tiny(void) {
    fixture f = {0};
    gpt2_error err = {0};
    cr_assert_eq(gpt2_model_load(FIXTURES "/tiny", &f.m, &err), GPT2_OK, "%s", err.msg);
    test_keep(f.m, gpt2_model_free);
    cr_assert_eq(gpt2_tokenizer_load(FIXTURES "/tiny", &f.tok, &err), GPT2_OK, "%s", err.msg);
    test_keep(f.tok, gpt2_tokenizer_free);
    return f;
}

static result *run(fixture *f, const gpt2_request *reqs, int n, int slots, int budget, int eot) {
    gpt2_backend *be = test_keep(cpu_backend(f->m, slots, f->m->cfg.n_positions, budget), gpt2_backend_free);
    result *res = test_calloc((size_t)n, sizeof *res);
    gpt2_gen_callbacks cb = {.user = res, .on_finish = on_finish, .on_text = on_text};
    gpt2_error err = {0};
    cr_assert_eq(gpt2_generate(be, f->tok, eot, reqs, n, &cb, &err), GPT2_OK, "%s", err.msg);
    for (int i = 0; i < n; i++) {
        cr_assert(res[i].finished, "request %d never finished", i);
        cr_assert_eq(res[i].n_streamed, res[i].n_text, "request %d: streamed %zu bytes, final text %zu", i,
                     res[i].n_streamed, res[i].n_text);
        cr_assert_eq(memcmp(res[i].streamed, res[i].text, res[i].n_text), 0);
    }
    return res;
}

static int prompt_ids[8][24];

static void make_requests(gpt2_request *r, int n, float temperature) {
    uint64_t s = 77;
    for (int i = 0; i < n; i++) {
        int len = 1 + (int)(trand(&s) % 20);
        for (int k = 0; k < len; k++) prompt_ids[i][k] = (int)(trand(&s) % 50000);
        r[i] = (gpt2_request){.prompt = prompt_ids[i], .n_prompt = len, .max_tokens = 5 + i * 3,
                              .sampling = gpt2_sampling_default()};
        r[i].sampling.temperature = temperature;
        r[i].sampling.top_k = 50;
        r[i].sampling.seed = 1000 + (uint64_t)i;
    }
}

/* A request's sampled output depends on its seed alone, not on the batch, slots or prefill budget. */
Test(generate, seeded_output_is_independent_of_the_batch) {
    fixture f = open_tiny();
    gpt2_request reqs[8];
    make_requests(reqs, 8, 1.3f);
    result *batched = run(&f, reqs, 8, 3, 20, -1);
    result *wide = run(&f, reqs, 8, 8, 200, -1);
    for (int i = 0; i < 8; i++) {
        result *alone = run(&f, &reqs[i], 1, 1, 64, -1);
        cr_assert_eq(alone->n, reqs[i].max_tokens);
        cr_assert_eq(batched[i].n, alone->n);
        cr_assert_eq(wide[i].n, alone->n);
        cr_assert_eq(memcmp(batched[i].tokens, alone->tokens, sizeof(int) * (size_t)alone->n), 0, "request %d", i);
        cr_assert_eq(memcmp(wide[i].tokens, alone->tokens, sizeof(int) * (size_t)alone->n), 0, "request %d", i);
        cr_assert_eq(alone->reason, GPT2_FINISH_LENGTH);
    }
    /* and another seed gives another continuation */
    reqs[7].sampling.seed = 5;
    result *other = run(&f, &reqs[7], 1, 1, 64, -1);
    cr_assert_neq(memcmp(other->tokens, batched[7].tokens, sizeof(int) * (size_t)other->n), 0);
}

/* The text equals the decoded tokens. */
Test(generate, text_is_the_decoded_tokens) {
    fixture f = open_tiny();
    gpt2_request reqs[4];
    make_requests(reqs, 4, 1.0f);
    result *r = run(&f, reqs, 4, 2, 64, -1);
    for (int i = 0; i < 4; i++) {
        char *text;
        size_t n;
        gpt2_error err = {0};
        cr_assert_eq(gpt2_decode(f.tok, r[i].tokens, (size_t)r[i].n, &text, &n, &err), GPT2_OK);
        test_keep(text, free);
        cr_assert_eq(n, r[i].n_text);
        cr_assert_eq(memcmp(text, r[i].text, n), 0);
    }
}

/* A stop string cuts the text just before it; tokens reaching into it are dropped. */
Test(generate, stop_string_cuts_before_it) {
    fixture f = open_tiny();
    gpt2_request reqs[1];
    make_requests(reqs, 1, 0.0f);
    reqs[0].max_tokens = 24;
    result *free_run = run(&f, reqs, 1, 1, 64, -1);
    cr_assert_eq(free_run->n, 24);
    cr_assert_gt(free_run->n_text, 12);
    /* a stop string that starts inside the text, spanning several bytes */
    size_t at = free_run->n_text / 2;
    char stop[4] = {0};
    memcpy(stop, free_run->text + at, 3);
    size_t first = (size_t)((char *)memmem(free_run->text, free_run->n_text, stop, strlen(stop)) - free_run->text);
    const char *stops[] = {"never-in-this-output-\x01", stop};
    reqs[0].stop = stops;
    reqs[0].n_stop = 2;
    result *cut = run(&f, reqs, 1, 1, 64, -1);
    cr_assert_eq(cut->reason, GPT2_FINISH_STOP);
    cr_assert_eq(cut->n_text, first);
    cr_assert_eq(memcmp(cut->text, free_run->text, first), 0);
    /* the kept tokens decode to a prefix of the cut text, and one more token would reach the stop */
    char *dec;
    size_t n_dec;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_decode(f.tok, cut->tokens, (size_t)cut->n, &dec, &n_dec, &err), GPT2_OK);
    test_keep(dec, free);
    cr_assert_leq(n_dec, first);
    cr_assert_eq(memcmp(dec, free_run->text, n_dec), 0);
    cr_assert_eq(memcmp(cut->tokens, free_run->tokens, sizeof(int) * (size_t)cut->n), 0);
}

/* End-of-text ends a request with "stop" and is not part of the output. */
Test(generate, end_of_text_stops) {
    fixture f = open_tiny();
    gpt2_request reqs[1];
    make_requests(reqs, 1, 0.0f);
    reqs[0].max_tokens = 10;
    result *a = run(&f, reqs, 1, 1, 64, -1);
    /* pretend the 4th greedy token is end-of-text */
    result *b = run(&f, reqs, 1, 1, 64, a->tokens[3]);
    int first = 0;
    while (a->tokens[first] != a->tokens[3]) first++;
    cr_assert_eq(b->reason, GPT2_FINISH_STOP);
    cr_assert_eq(b->n, first);
}

/* With ignore_eot, end-of-text is an ordinary token: the request runs to max_tokens (benchmarks). */
Test(generate, ignore_eot_runs_to_max_tokens) {
    fixture f = open_tiny();
    gpt2_request reqs[1];
    make_requests(reqs, 1, 0.0f);
    reqs[0].max_tokens = 10;
    result *a = run(&f, reqs, 1, 1, 64, -1);
    reqs[0].ignore_eot = 1;
    result *b = run(&f, reqs, 1, 1, 64, a->tokens[3]); /* pretend the 4th token is end-of-text */
    cr_assert_eq(b->reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(b->n, 10);
    cr_assert_eq(memcmp(a->tokens, b->tokens, sizeof(int) * 10), 0);
}

Test(generate, limits) {
    fixture f = open_tiny();
    int ctx = f.m->cfg.n_positions;
    int *long_prompt = test_calloc((size_t)ctx, sizeof(int));
    for (int i = 0; i < ctx; i++) long_prompt[i] = 100 + i;
    gpt2_request r[3] = {
        {.prompt = long_prompt, .n_prompt = 3, .max_tokens = 0, .sampling = gpt2_sampling_default()},
        {.prompt = long_prompt, .n_prompt = ctx - 4, .max_tokens = 1000, .sampling = gpt2_sampling_default()},
        {.prompt = long_prompt, .n_prompt = 5, .max_tokens = 2, .sampling = gpt2_sampling_default()},
    };
    result *res = run(&f, r, 3, 2, 16, -1);
    cr_assert_eq(res[0].n, 0);
    cr_assert_eq(res[0].reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(res[1].n, 4, "context of %d, prompt %d: %d tokens", ctx, ctx - 4, res[1].n);
    cr_assert_eq(res[1].reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(res[2].n, 2);
    /* a prompt that fills the context is refused up front */
    gpt2_backend *be = test_keep(cpu_backend(f.m, 1, ctx, 16), gpt2_backend_free);
    gpt2_request full = {.prompt = long_prompt, .n_prompt = ctx, .max_tokens = 1, .sampling = gpt2_sampling_default()};
    gpt2_gen_callbacks cb = {0};
    gpt2_error err = {0};
    cr_assert_eq(gpt2_generate(be, f.tok, -1, &full, 1, &cb, &err), GPT2_ERR_LIMIT);
    cr_assert(strstr(err.msg, "request 0"), "%s", err.msg);
}

static volatile sig_atomic_t cancel_flag;
static int cancel_after_first(void *user, int req, const int *tokens, int n, const char *text, size_t n_text,
                              gpt2_finish reason) {
    int *count = user;
    (*count)++;
    cancel_flag = 1;
    return 0;
}

Test(generate, cancel_stops_after_the_current_step) {
    fixture f = open_tiny();
    gpt2_request reqs[8];
    make_requests(reqs, 8, 0.0f);
    gpt2_backend *be = test_keep(cpu_backend(f.m, 2, f.m->cfg.n_positions, 64), gpt2_backend_free);
    int count = 0;
    cancel_flag = 0;
    gpt2_gen_callbacks cb = {.user = &count, .on_finish = cancel_after_first, .cancel = &cancel_flag};
    gpt2_error err = {0};
    cr_assert_eq(gpt2_generate(be, f.tok, -1, reqs, 8, &cb, &err), GPT2_OK, "%s", err.msg);
    cr_assert(count >= 1 && count < 8, "%d requests finished", count);
}
