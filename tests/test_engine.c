/* test_engine.c: the public engine API (gpt2.h): streamed tokens and their logprobs against an
 * independent log-softmax of full-sequence logits, cancellation, end-of-text handling, token-id and
 * text prompts, threads, the plan, logits against transformers, and errors that name the field. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "loader_util.h"

#define SMALL FIXTURES "/small"
#define TINY FIXTURES "/tiny"

TestSuite(engine, .fini = test_cleanup);

/* Everything one request's callback saw. */
typedef struct {
    gpt2_request_id id;
    int n_token_events, tokens[256];
    float logprobs[256];
    char token_bytes[8192];
    size_t n_token_bytes;
    char text[8192];
    size_t n_text;
    int finished, n_events_after_finish;
    gpt2_finish reason;
    int fin_tokens[256], n_fin_tokens;
    float fin_logprobs[256];
    char fin_text[8192];
    size_t n_fin_text;
    int prompt_tokens;
    int stop_after_tokens; /* > 0: return nonzero at that TOKEN event */
    char error[256];       /* FINISH's error text */
    int n_top[256];        /* TOKEN: n_top, top_ids, top_logprobs */
    int top_ids[256][20];
    float top_lp[256][20];
    int n_prompt_events, prompt_event_at; /* PROMPT events, and TOKEN events seen before the first */
    int p_tokens[256], p_n, p_n_top;      /* the PROMPT event's payload */
    float p_lp[256];
    int p_top_ids[256][20];
    float p_top_lp[256][20];
} seen;

static int on_event(const gpt2_event *ev) {
    seen *s = ev->user;
    if (s->finished) {
        s->n_events_after_finish++;
        return 0;
    }
    s->id = ev->id;
    if (ev->kind == GPT2_EVENT_FINISH && ev->error) snprintf(s->error, sizeof s->error, "%s", ev->error);
    switch (ev->kind) {
    case GPT2_EVENT_TOKEN:
        cr_assert_lt(s->n_token_events, 256);
        cr_assert_lt(s->n_token_bytes + ev->n_bytes, sizeof s->token_bytes);
        s->tokens[s->n_token_events] = ev->token;
        s->n_top[s->n_token_events] = ev->n_top;
        cr_assert(ev->n_top >= 0 && ev->n_top <= 20);
        if (ev->n_top > 0) {
            memcpy(s->top_ids[s->n_token_events], ev->top_ids, sizeof(int) * (size_t)ev->n_top);
            memcpy(s->top_lp[s->n_token_events], ev->top_logprobs, sizeof(float) * (size_t)ev->n_top);
        }
        s->logprobs[s->n_token_events++] = ev->logprob;
        memcpy(s->token_bytes + s->n_token_bytes, ev->bytes, ev->n_bytes);
        s->n_token_bytes += ev->n_bytes;
        return s->stop_after_tokens > 0 && s->n_token_events >= s->stop_after_tokens;
    case GPT2_EVENT_TEXT:
        cr_assert_lt(s->n_text + ev->n_text, sizeof s->text);
        memcpy(s->text + s->n_text, ev->text, ev->n_text);
        s->n_text += ev->n_text;
        return 0;
    case GPT2_EVENT_PROMPT:
        if (s->n_prompt_events++ == 0) s->prompt_event_at = s->n_token_events;
        cr_assert(ev->n_tokens <= 256 && ev->n_top >= 0 && ev->n_top <= 20);
        s->p_n = ev->n_tokens;
        s->p_n_top = ev->n_top;
        memcpy(s->p_tokens, ev->tokens, sizeof(int) * (size_t)ev->n_tokens);
        memcpy(s->p_lp, ev->logprobs, sizeof(float) * (size_t)ev->n_tokens);
        for (int i = 0; i < ev->n_tokens && ev->n_top > 0; i++) {
            memcpy(s->p_top_ids[i], ev->top_ids + (size_t)i * ev->n_top, sizeof(int) * (size_t)ev->n_top);
            memcpy(s->p_top_lp[i], ev->top_logprobs + (size_t)i * ev->n_top, sizeof(float) * (size_t)ev->n_top);
        }
        return 0;
    case GPT2_EVENT_FINISH:
        s->finished = 1;
        s->reason = ev->finish;
        s->prompt_tokens = ev->prompt_tokens;
        cr_assert_leq(ev->n_tokens, 256);
        s->n_fin_tokens = ev->n_tokens;
        cr_assert(ev->tokens && ev->logprobs && ev->text, "FINISH with a NULL pointer");
        memcpy(s->fin_tokens, ev->tokens, sizeof(int) * (size_t)ev->n_tokens);
        memcpy(s->fin_logprobs, ev->logprobs, sizeof(float) * (size_t)ev->n_tokens);
        cr_assert_lt(ev->n_text, sizeof s->fin_text);
        memcpy(s->fin_text, ev->text, ev->n_text);
        s->n_fin_text = ev->n_text;
        return 0;
    }
    return 0;
}

static gpt2_engine *engine_on(const char *dir, int slots, int logits) {
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = "cpu";
    o.max_slots = slots;
    o.logits = logits;
    gpt2_engine *e = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(dir, &o, &e, &err), GPT2_OK, "%s", err.msg);
    return test_keep(e, gpt2_engine_destroy);
}

static gpt2_request_id submit(gpt2_engine *e, gpt2_request r, seen *s) {
    r.on_event = on_event;
    r.user = s;
    gpt2_request_id id = 0;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_submit(e, &r, &id, &err), GPT2_OK, "%s", err.msg);
    cr_assert_neq(id, 0);
    return id;
}

static void run_all(gpt2_engine *e) {
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_engine_pending(e), 0);
}

/* log_softmax(row)[k] in long double, written here independently of the library. */
static double ref_logprob(const float *row, int V, int k) {
    long double mx = row[0], sum = 0;
    for (int i = 1; i < V; i++)
        if (row[i] > mx) mx = row[i];
    for (int i = 0; i < V; i++) sum += expl((long double)row[i] - mx);
    return (double)((long double)row[k] - mx - logl(sum));
}

/* The stream: TOKEN events carry each token, its bytes and log_softmax(raw logits)[token], where the
 * raw logits are those of the whole sequence in one forward (what `gpt2 logits` writes); penalties
 * and temperature change the draw, not the reported logprob. TEXT events add up to the final text,
 * FINISH repeats the tokens and logprobs. */
Test(engine, stream_and_logprobs_match_a_full_forward) {
    gpt2_engine *e = engine_on(SMALL, 2, 1);
    const gpt2_model *m = gpt2_engine_model(e);
    const int V = m->cfg.vocab_size;
    int prompt[] = {11, 200, 37, 999, 512, 3};
    gpt2_request r = {.prompt = prompt, .n_prompt = 6, .max_tokens = 20, .sampling = gpt2_sampling_default(),
                      .logprobs = 1, .ignore_eot = 1};
    r.sampling.temperature = 1.7f;
    r.sampling.top_k = 40;
    r.sampling.repetition_penalty = 1.8f;
    r.sampling.presence_penalty = 1.5f;
    r.sampling.seed = 9;
    seen *s = test_calloc(1, sizeof *s);
    submit(e, r, s);
    run_all(e);
    cr_assert(s->finished);
    cr_assert_eq(s->reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(s->n_token_events, 20);
    cr_assert_eq(s->n_fin_tokens, 20);
    cr_assert_eq(s->prompt_tokens, 6);
    cr_assert_eq(memcmp(s->tokens, s->fin_tokens, sizeof(int) * 20), 0);
    cr_assert_eq(s->n_events_after_finish, 0);
    /* bytes: each token's, text: the decoded tokens */
    gpt2_tokenizer *tok = gpt2_engine_tokenizer(e);
    char *dec;
    size_t n_dec;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_decode(tok, s->tokens, 20, &dec, &n_dec, &err), GPT2_OK, "%s", err.msg);
    test_keep(dec, free);
    cr_assert_eq(s->n_token_bytes, n_dec);
    cr_assert_eq(memcmp(s->token_bytes, dec, n_dec), 0);
    cr_assert_eq(s->n_text, n_dec);
    cr_assert_eq(memcmp(s->text, dec, n_dec), 0);
    cr_assert_eq(s->n_fin_text, n_dec);

    /* the independent reference: logits of prompt + generated tokens in one forward */
    int T = 6 + 20 - 1, *seq = test_calloc((size_t)T, sizeof(int));
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + 6, s->tokens, sizeof(int) * 19);
    float *logits = test_calloc((size_t)T * V, sizeof(float));
    cr_assert_eq(gpt2_engine_logits(e, seq, T, logits, &err), GPT2_OK, "%s", err.msg);
    for (int k = 0; k < 20; k++) {
        const float *row = logits + (size_t)(5 + k) * V;
        double want = ref_logprob(row, V, s->tokens[k]);
        cr_assert(fabs(s->logprobs[k] - want) < 1e-4, "token %d (%d): logprob %.6f, log_softmax of the full forward %.6f",
                  k, s->tokens[k], s->logprobs[k], want);
        cr_assert_eq(s->fin_logprobs[k], s->logprobs[k]);
    }
}

/* Without the logprobs flag the stream reports NAN, and the tokens are the same. */
Test(engine, logprobs_only_when_asked) {
    gpt2_engine *e = engine_on(TINY, 2, 0);
    int prompt[] = {464, 2068, 7586};
    gpt2_request r = {.prompt = prompt, .n_prompt = 3, .max_tokens = 6, .sampling = gpt2_sampling_default()};
    seen *a = test_calloc(1, sizeof *a), *b = test_calloc(1, sizeof *b);
    submit(e, r, a);
    r.logprobs = 1;
    submit(e, r, b);
    run_all(e);
    cr_assert_eq(a->n_token_events, b->n_token_events);
    cr_assert_eq(memcmp(a->tokens, b->tokens, sizeof(int) * (size_t)a->n_token_events), 0);
    for (int k = 0; k < a->n_token_events; k++) {
        cr_assert(isnan(a->logprobs[k]), "token %d: logprob %g without the flag", k, a->logprobs[k]);
        cr_assert(b->logprobs[k] <= 0 && isfinite(b->logprobs[k]));
    }
}

/* The CPU backend's sample: out_logprobs against an independent log-softmax of the logits it read,
 * with penalties and temperature on (which the sampler applies to its own copy of the row). */
Test(engine, cpu_backend_sample_logprobs) {
    gpt2_model *m = test_keep(load_fixture("small"), gpt2_model_free);
    const int V = m->cfg.vocab_size, B = 3;
    gpt2_backend *be = test_keep(cpu_backend(m, B, 32, 64), gpt2_backend_free);
    int ids[B][7];
    gpt2_chunk ch[B];
    for (int b = 0; b < B; b++) {
        random_ids(ids[b], 7, V, 100 + (uint64_t)b);
        ch[b] = (gpt2_chunk){.slot = b, .pos = 0, .n = 3 + 2 * b, .tokens = ids[b]};
    }
    gpt2_error err = {0};
    cr_assert_eq(be->forward(be, ch, B, 0, &err), GPT2_OK, "%s", err.msg);
    float *rows = test_calloc((size_t)B * V, sizeof(float));
    cr_assert_eq(be->read_logits(be, rows, B, &err), GPT2_OK, "%s", err.msg);
    gpt2_sampling p[B];
    gpt2_sample_req req[B];
    for (int b = 0; b < B; b++) {
        p[b] = gpt2_sampling_default();
        p[b].temperature = 0.5f + b;
        p[b].repetition_penalty = 2.0f;
        p[b].frequency_penalty = 1.0f;
        p[b].seed = (uint64_t)b;
        req[b] = (gpt2_sample_req){.p = &p[b], .step = 1, .history = ids[b], .n_history = ch[b].n, .n_prompt = 1};
    }
    int tok[B], tok2[B];
    float lp[B];
    cr_assert_eq(be->sample(be, req, B, tok, lp, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->sample(be, req, B, tok2, NULL, &err), GPT2_OK, "%s", err.msg);
    for (int b = 0; b < B; b++) {
        double want = ref_logprob(rows + (size_t)b * V, V, tok[b]);
        cr_assert(fabs(lp[b] - want) < 1e-5, "row %d: %.7f, want %.7f", b, lp[b], want);
        cr_assert_eq(tok[b], tok2[b], "row %d: the logprobs changed the draw", b);
    }
}

/* Cancelling a running request finishes it as "cancelled" at the next step and its slot takes the
 * queued request, which then runs exactly as it runs alone. A queued request cancelled before it
 * starts finishes without tokens. */
Test(engine, cancel_frees_the_slot_for_a_queued_request) {
    gpt2_engine *e = engine_on(TINY, 1, 0);
    int pa[] = {10, 20, 30}, pb[] = {40, 50, 60, 70}, pc[] = {5};
    gpt2_request ra = {.prompt = pa, .n_prompt = 3, .max_tokens = 50, .sampling = gpt2_sampling_default()};
    gpt2_request rb = {.prompt = pb, .n_prompt = 4, .max_tokens = 5, .sampling = gpt2_sampling_default()};
    gpt2_request rc = {.prompt = pc, .n_prompt = 1, .max_tokens = 5, .sampling = gpt2_sampling_default()};
    seen *a = test_calloc(1, sizeof *a), *b = test_calloc(1, sizeof *b), *c = test_calloc(1, sizeof *c);
    gpt2_request_id ia = submit(e, ra, a);
    submit(e, rb, b);
    gpt2_request_id ic = submit(e, rc, c);
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_cancel(e, ic, &err), GPT2_OK, "%s", err.msg); /* queued */
    int busy;
    for (int i = 0; i < 3; i++) cr_assert_eq(gpt2_engine_step(e, &busy, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(a->n_token_events, 3);
    cr_assert_eq(b->n_token_events, 0, "b ran while the only slot was taken");
    cr_assert(c->finished, "the cancelled queued request was not finished");
    cr_assert_eq(c->reason, GPT2_FINISH_CANCELLED);
    cr_assert_eq(c->n_fin_tokens, 0);
    cr_assert_eq(busy, 2);
    cr_assert_eq(gpt2_engine_cancel(e, ia, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_engine_step(e, &busy, &err), GPT2_OK, "%s", err.msg);
    cr_assert(a->finished);
    cr_assert_eq(a->reason, GPT2_FINISH_CANCELLED);
    cr_assert_eq(a->n_fin_tokens, 3);
    cr_assert_eq(b->n_token_events, 1, "b did not take the freed slot in the same step");
    run_all(e);
    cr_assert(b->finished);
    cr_assert_eq(b->reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(b->n_fin_tokens, 5);
    cr_assert_str_eq(gpt2_finish_name(a->reason), "cancelled");
    /* b alone on a fresh engine */
    gpt2_engine *e2 = engine_on(TINY, 1, 0);
    seen *alone = test_calloc(1, sizeof *alone);
    submit(e2, rb, alone);
    run_all(e2);
    cr_assert_eq(memcmp(alone->fin_tokens, b->fin_tokens, sizeof(int) * 5), 0);
    /* a finished request cannot be cancelled; the error names it */
    cr_assert_eq(gpt2_engine_cancel(e, ia, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "not queued or running"), "%s", err.msg);
}

/* A callback's nonzero return cancels its request alone: no more events, not even FINISH. */
Test(engine, callback_nonzero_return_drops_the_request) {
    gpt2_engine *e = engine_on(TINY, 2, 0);
    int p[] = {10, 20, 30};
    gpt2_request r = {.prompt = p, .n_prompt = 3, .max_tokens = 8, .sampling = gpt2_sampling_default()};
    seen *a = test_calloc(1, sizeof *a), *b = test_calloc(1, sizeof *b);
    a->stop_after_tokens = 2;
    submit(e, r, a);
    submit(e, r, b);
    run_all(e);
    cr_assert_eq(a->n_token_events, 2);
    cr_assert(!a->finished);
    cr_assert(b->finished);
    cr_assert_eq(b->n_fin_tokens, 8);
}

/* A text prompt is encoded at submit; the same prompt as ids gives the same output. */
Test(engine, text_and_token_id_prompts_agree) {
    gpt2_engine *e = engine_on(TINY, 2, 0);
    const char *text = "Hello world, this is";
    int *ids;
    size_t n;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_encode(gpt2_engine_tokenizer(e), text, strlen(text), 1, &ids, &n, &err), GPT2_OK);
    test_keep(ids, free);
    gpt2_request rt = {.prompt_text = text, .n_prompt_text = strlen(text), .max_tokens = 7,
                       .sampling = gpt2_sampling_default()};
    rt.sampling.temperature = 0.8f;
    rt.sampling.seed = 3;
    gpt2_request ri = rt;
    ri.prompt_text = NULL;
    ri.prompt = ids;
    ri.n_prompt = (int)n;
    seen *a = test_calloc(1, sizeof *a), *b = test_calloc(1, sizeof *b);
    submit(e, rt, a);
    submit(e, ri, b);
    run_all(e);
    cr_assert_eq(a->prompt_tokens, (int)n);
    cr_assert_eq(a->n_fin_tokens, 7);
    cr_assert_eq(memcmp(a->fin_tokens, b->fin_tokens, sizeof(int) * 7), 0);
    cr_assert_eq(a->n_fin_text, b->n_fin_text);
}

/* Requests submitted from another thread while this one steps all run. */
typedef struct {
    gpt2_engine *e;
    seen *s;
    int n;
    gpt2_status st[8];
} submitter;

static void *submit_thread(void *arg) {
    submitter *t = arg;
    static int p[] = {7, 8, 9};
    for (int i = 0; i < t->n; i++) {
        gpt2_request r = {.prompt = p, .n_prompt = 3, .max_tokens = 3 + i, .sampling = gpt2_sampling_default(),
                          .on_event = on_event, .user = &t->s[i]};
        t->st[i] = gpt2_engine_submit(t->e, &r, NULL, NULL);
    }
    return NULL;
}

Test(engine, submit_from_another_thread) {
    gpt2_engine *e = engine_on(TINY, 2, 0);
    submitter t = {.e = e, .n = 8};
    t.s = test_calloc(8, sizeof(seen));
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, submit_thread, &t), 0);
    gpt2_error err = {0};
    int done = 0;
    for (int guard = 0; done < 8 && guard < 100000; guard++) {
        cr_assert_eq(gpt2_engine_step(e, NULL, &err), GPT2_OK, "%s", err.msg);
        done = 0;
        for (int i = 0; i < 8; i++) done += t.s[i].finished;
    }
    pthread_join(th, NULL);
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(t.st[i], GPT2_OK);
        cr_assert(t.s[i].finished, "request %d never finished", i);
        cr_assert_eq(t.s[i].n_fin_tokens, 3 + i);
    }
}

/* The plan says what the engine chose; the defaults are the documented ones. */
Test(engine, plan_reports_the_choice) {
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = "cpu";
    gpt2_engine *e = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(SMALL, &o, &e, &err), GPT2_OK, "%s", err.msg);
    test_keep(e, gpt2_engine_destroy);
    gpt2_plan p;
    cr_assert_eq(gpt2_engine_plan(e, &p), GPT2_OK);
    cr_assert_str_eq(p.device, "cpu");
    cr_assert_eq(p.dtype, GPT2_DTYPE_F32);
    cr_assert_eq(p.max_slots, 8);
    cr_assert_eq(p.max_seq, 128);
    cr_assert_eq(p.max_tokens, 8 + 256);
    cr_assert_eq(p.device_bytes, 0);
    /* at least the two KV caches: 2 x L x S x max_seq x C floats */
    cr_assert_geq(p.host_bytes, (size_t)2 * 3 * 8 * 128 * 64 * 4);
    cr_assert_eq(p.cuda_graphs, 0);
}

/* The thread count is an option of the call, not process state: the caller's OpenMP setting is the
 * same after an engine with n_threads = 1 has run. */
Test(engine, threads_option_leaves_openmp_state_alone) {
    int before = omp_get_max_threads();
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = "cpu";
    o.n_threads = before > 1 ? 1 : 2;
    o.max_slots = 1;
    gpt2_engine *e = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(TINY, &o, &e, &err), GPT2_OK, "%s", err.msg);
    test_keep(e, gpt2_engine_destroy);
    int p[] = {1, 2, 3};
    seen *s = test_calloc(1, sizeof *s);
    submit(e, (gpt2_request){.prompt = p, .n_prompt = 3, .max_tokens = 2, .sampling = gpt2_sampling_default()}, s);
    run_all(e);
    cr_assert_eq(omp_get_max_threads(), before, "the engine changed the caller's OpenMP thread count");
}

/* gpt2_engine_logits against transformers' logits (golden.json of the small model, every column). */
Test(engine, logits_match_transformers) {
    gpt2_engine *e = engine_on(SMALL, 1, 1);
    json_t *g = test_keep(golden_load("small"), json_decref);
    json_t *cases = json_object_get(g, "cases");
    const int V = gpt2_engine_model(e)->cfg.vocab_size;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        int T, n_cols;
        int *ids = test_keep(json_ints(json_object_get(cs, "ids"), &T), free);
        int *cols = test_keep(json_ints(json_object_get(cs, "cols"), &n_cols), free);
        float *out = test_calloc((size_t)T * V, sizeof(float));
        gpt2_error err = {0};
        cr_assert_eq(gpt2_engine_logits(e, ids, T, out, &err), GPT2_OK, "%s", err.msg);
        json_t *rows = json_object_get(cs, "logits");
        for (int t = 0; t < T; t++)
            for (int k = 0; k < n_cols; k++) {
                double ref = json_number_value(json_array_get(json_array_get(rows, (size_t)t), (size_t)k));
                double got = out[(size_t)t * V + cols[k]];
                cr_assert(fabs(got - ref) < 1e-4, "case %zu position %d column %d: %.6f, transformers %.6f", c, t,
                          cols[k], got, ref);
            }
    }
}

static void expect_create_error(const char *dir, gpt2_engine_opts o, gpt2_status want, const char *names) {
    gpt2_engine *e = (gpt2_engine *)1;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(dir, &o, &e, &err), want, "%s: %s", names, err.msg);
    cr_assert_null(e);
    cr_assert(strstr(err.msg, names), "the message does not name %s: %s", names, err.msg);
}

static void expect_submit_error(gpt2_engine *e, gpt2_request r, gpt2_status want, const char *names) {
    gpt2_error err = {0};
    gpt2_request_id id = 77;
    cr_assert_eq(gpt2_engine_submit(e, &r, &id, &err), want, "%s: %s", names, err.msg);
    cr_assert_eq(id, 0);
    cr_assert(strstr(err.msg, names), "the message does not name %s: %s", names, err.msg);
}

Test(engine, errors_name_the_field) {
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = "tpu";
    expect_create_error(TINY, o, GPT2_ERR_ARG, "device 'tpu'");
    o.device = "cpu";
    o.dtype = (gpt2_dtype)7;
    expect_create_error(TINY, o, GPT2_ERR_ARG, "dtype 7");
    o.dtype = GPT2_DTYPE_F32;
    o.max_seq = 100000;
    expect_create_error(TINY, o, GPT2_ERR_ARG, "max_seq");
    o.max_seq = 0;
    o.max_slots = 4;
    o.max_tokens = 2;
    expect_create_error(TINY, o, GPT2_ERR_ARG, "max_tokens");
    o.max_tokens = 0;
    expect_create_error("/nonexistent-model-dir", o, GPT2_ERR_IO, "/nonexistent-model-dir");

    o.max_seq = 16;
    gpt2_engine *e = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(TINY, &o, &e, &err), GPT2_OK, "%s", err.msg);
    test_keep(e, gpt2_engine_destroy);
    int ok[] = {1, 2, 3}, bad[] = {1, 1 << 30}, long_prompt[16] = {0};
    gpt2_request r = {.prompt = ok, .n_prompt = 3, .max_tokens = 2, .sampling = gpt2_sampling_default()};
    gpt2_request x = r;
    x.n_prompt = 0;
    expect_submit_error(e, x, GPT2_ERR_ARG, "prompt");
    x = r;
    x.prompt = NULL;
    expect_submit_error(e, x, GPT2_ERR_ARG, "prompt");
    x.prompt_text = "";
    x.n_prompt_text = 0;
    expect_submit_error(e, x, GPT2_ERR_ARG, "prompt_text");
    x = r;
    x.prompt = bad;
    x.n_prompt = 2;
    expect_submit_error(e, x, GPT2_ERR_ARG, "vocabulary");
    x = r;
    x.prompt = long_prompt;
    x.n_prompt = 16;
    expect_submit_error(e, x, GPT2_ERR_LIMIT, "max_seq 16");
    x = r;
    x.max_tokens = -1;
    expect_submit_error(e, x, GPT2_ERR_ARG, "max_tokens");
    x = r;
    x.sampling.temperature = -1;
    expect_submit_error(e, x, GPT2_ERR_ARG, "temperature");
    x = r;
    x.sampling.top_p = 0;
    expect_submit_error(e, x, GPT2_ERR_ARG, "top_p");
    const char *stops[] = {"ok", ""};
    x = r;
    x.stop = stops;
    x.n_stop = 2;
    expect_submit_error(e, x, GPT2_ERR_ARG, "stop[1]");
    cr_assert_eq(gpt2_engine_pending(e), 0, "a refused request was queued");
    float out[8];
    cr_assert_eq(gpt2_engine_logits(e, ok, 3, out, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "logits option"), "%s", err.msg);
    cr_assert_eq(gpt2_engine_cancel(e, 12345, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "12345"), "%s", err.msg);
}

/* A model whose forward overflows on one token (tl_write_overflowing_model): the request holding it
 * finishes with GPT2_FINISH_ERROR and a message, the other runs as usual. */
Test(engine, non_finite_logits_fail_that_request_alone) {
    char dir[] = "/tmp/gpt2-engine-nan-XXXXXX";
    cr_assert(mkdtemp(dir));
    cr_assert_eq(tl_write_overflowing_model(dir), 0);
    gpt2_engine *e = engine_on(dir, 2, 0);
    tl_rmtree(dir);
    seen *fox = test_calloc(1, sizeof *fox), *hello = test_calloc(1, sizeof *hello);
    gpt2_request r = {.prompt_text = "The quick brown fox", .n_prompt_text = 19, .max_tokens = 3,
                      .sampling = gpt2_sampling_default()};
    submit(e, r, fox);
    r.prompt_text = "Hello";
    r.n_prompt_text = 5;
    submit(e, r, hello);
    run_all(e);
    cr_assert(fox->finished);
    cr_assert_eq(fox->reason, GPT2_FINISH_ERROR);
    cr_assert(strstr(fox->error, "not finite"), "%s", fox->error);
    cr_assert_str_eq(gpt2_finish_name(fox->reason), "error");
    cr_assert(hello->finished);
    cr_assert_eq(hello->reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(hello->n_fin_tokens, 3);
    cr_assert_eq(hello->error[0], '\0');
}

/* ---------------------------------------------------------------------------------------------- */
/* top_logprobs and echo                                                                           */

/* The reference for one row: log_softmax in long double and the ids sorted by (value desc, id asc),
 * by qsort, written here apart from the library's selection. */
static const float *g_sort_row;
static int by_row_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (g_sort_row[i] != g_sort_row[j]) return g_sort_row[i] > g_sort_row[j] ? -1 : 1;
    return (i > j) - (i < j);
}

static void check_top(const float *row, int V, int k, const int *ids, const float *lps, const char *where) {
    int *order = test_keep(malloc(sizeof(int) * (size_t)V), free);
    for (int i = 0; i < V; i++) order[i] = i;
    g_sort_row = row;
    qsort(order, (size_t)V, sizeof(int), by_row_desc);
    for (int i = 0; i < k; i++) {
        cr_assert_eq(ids[i], order[i], "%s: alternative %d is %d, the sorted row says %d", where, i, ids[i], order[i]);
        double want = ref_logprob(row, V, order[i]);
        cr_assert(fabs(lps[i] - want) < 1e-4, "%s: alternative %d: %.6f, want %.6f", where, i, lps[i], want);
    }
}

/* Each TOKEN event's k alternatives are the k largest of log_softmax(raw logits of a full forward),
 * penalties and temperature on (they change the draw, not the reported distribution); the chosen
 * token's logprob is reported whether or not it is among them, and equals its entry when it is. */
Test(engine, top_logprobs_match_a_full_forward) {
    gpt2_engine *e = engine_on(SMALL, 3, 0);
    const gpt2_model *m = gpt2_engine_model(e);
    const int V = m->cfg.vocab_size, K = 5, G = 16;
    int prompt[] = {11, 200, 37, 999, 512, 3, 77};
    gpt2_request r = {.prompt = prompt, .n_prompt = 7, .max_tokens = G, .sampling = gpt2_sampling_default(),
                      .logprobs = 1, .top_logprobs = K, .ignore_eot = 1};
    r.sampling.temperature = 2.5f;
    r.sampling.repetition_penalty = 1.6f;
    r.sampling.seed = 4;
    seen *s = test_calloc(1, sizeof *s), *plain = test_calloc(1, sizeof *plain);
    submit(e, r, s);
    gpt2_request r2 = r;
    r2.top_logprobs = 0;
    submit(e, r2, plain); /* batched with it: the same tokens, no alternatives */
    run_all(e);
    cr_assert_eq(s->n_token_events, G);
    cr_assert_eq(memcmp(s->tokens, plain->tokens, sizeof(int) * G), 0, "top_logprobs changed the draw");
    int T = 7 + G - 1, *seq = test_calloc((size_t)T, sizeof(int));
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + 7, s->tokens, sizeof(int) * (G - 1));
    float *logits = test_keep(full_logits(m, seq, T), free);
    int outside = 0;
    for (int k = 0; k < G; k++) {
        cr_assert_eq(s->n_top[k], K);
        cr_assert_eq(plain->n_top[k], 0);
        const float *row = logits + (size_t)(6 + k) * V;
        char where[64];
        snprintf(where, sizeof where, "token %d", k);
        check_top(row, V, K, s->top_ids[k], s->top_lp[k], where);
        cr_assert(fabs(s->logprobs[k] - ref_logprob(row, V, s->tokens[k])) < 1e-4);
        int in = 0;
        for (int i = 0; i < K; i++)
            if (s->top_ids[k][i] == s->tokens[k]) {
                in = 1;
                cr_assert_eq(s->top_lp[k][i], s->logprobs[k], "token %d: its own logprob differs in the list", k);
            }
        outside += !in;
    }
    cr_assert_gt(outside, 0, "temperature 2.5 never drew outside the top %d: the test shows nothing", K);
}

/* echo: one PROMPT event before any TOKEN, with the prompt's ids, logprobs[0] = NAN and log p(prompt[i] |
 * prompt[..i]) against a full forward, and the alternatives of each position. The engine holds no
 * all-rows logits (slots 2, logits off), so the 40-token prompt is prefilled a few rows per step while
 * another request decodes beside it; that request's tokens are those it makes alone. */
Test(engine, echo_reports_the_prompt_logprobs) {
    gpt2_engine *e = engine_on(SMALL, 2, 0);
    const gpt2_model *m = gpt2_engine_model(e);
    const int V = m->cfg.vocab_size, P = 40, K = 3;
    int prompt[40];
    random_ids(prompt, P, V, 321);
    int other[] = {5, 6, 7};
    gpt2_request ro = {.prompt = other, .n_prompt = 3, .max_tokens = 30, .sampling = gpt2_sampling_default(),
                       .ignore_eot = 1};
    seen *alone = test_calloc(1, sizeof *alone), *o = test_calloc(1, sizeof *o), *s = test_calloc(1, sizeof *s);
    submit(e, ro, alone);
    run_all(e);
    submit(e, ro, o);
    gpt2_error err = {0};
    int busy;
    cr_assert_eq(gpt2_engine_step(e, &busy, &err), GPT2_OK, "%s", err.msg); /* o is decoding now */
    gpt2_request r = {.prompt = prompt, .n_prompt = P, .max_tokens = 4, .sampling = gpt2_sampling_default(),
                      .logprobs = 1, .top_logprobs = K, .echo = 1, .ignore_eot = 1};
    submit(e, r, s);
    run_all(e);
    cr_assert_eq(memcmp(o->tokens, alone->tokens, sizeof(int) * 30), 0, "the echoed prefill changed another request");
    cr_assert_eq(s->n_prompt_events, 1);
    cr_assert_eq(s->prompt_event_at, 0, "PROMPT came after %d TOKEN events", s->prompt_event_at);
    cr_assert_eq(s->p_n, P);
    cr_assert_eq(s->p_n_top, K);
    cr_assert_eq(memcmp(s->p_tokens, prompt, sizeof prompt), 0);
    cr_assert(isnan(s->p_lp[0]), "logprobs[0] = %g, want NAN (no context)", s->p_lp[0]);
    float *logits = test_keep(full_logits(m, prompt, P), free);
    for (int i = 1; i < P; i++) {
        const float *row = logits + (size_t)(i - 1) * V;
        double want = ref_logprob(row, V, prompt[i]);
        cr_assert(fabs(s->p_lp[i] - want) < 1e-4, "prompt token %d: %.6f, want %.6f", i, s->p_lp[i], want);
        char where[64];
        snprintf(where, sizeof where, "prompt position %d", i);
        check_top(row, V, K, s->p_top_ids[i], s->p_top_lp[i], where);
    }
    /* and the first generated token's logprob comes from the prompt's last row */
    cr_assert(fabs(s->logprobs[0] - ref_logprob(logits + (size_t)(P - 1) * V, V, s->tokens[0])) < 1e-4);
    cr_assert_eq(s->n_fin_tokens, 4);
}

/* echo with max_tokens 0 scores the prompt: PROMPT, then FINISH "length" with no tokens. Without echo
 * the prompt gets no event at all. */
Test(engine, echo_with_no_tokens_scores_the_prompt) {
    gpt2_engine *e = engine_on(SMALL, 1, 0);
    const gpt2_model *m = gpt2_engine_model(e);
    const int V = m->cfg.vocab_size;
    int prompt[] = {42, 17, 600, 3, 999};
    gpt2_request r = {.prompt = prompt, .n_prompt = 5, .max_tokens = 0, .sampling = gpt2_sampling_default(),
                      .echo = 1};
    seen *s = test_calloc(1, sizeof *s), *q = test_calloc(1, sizeof *q);
    submit(e, r, s);
    r.echo = 0;
    r.max_tokens = 2;
    submit(e, r, q);
    run_all(e);
    cr_assert_eq(s->n_prompt_events, 1);
    cr_assert(s->finished);
    cr_assert_eq(s->reason, GPT2_FINISH_LENGTH);
    cr_assert_eq(s->n_fin_tokens, 0);
    cr_assert_eq(s->n_token_events, 0);
    cr_assert_eq(s->p_n_top, 0);
    float *logits = test_keep(full_logits(m, prompt, 5), free);
    for (int i = 1; i < 5; i++)
        cr_assert(fabs(s->p_lp[i] - ref_logprob(logits + (size_t)(i - 1) * V, V, prompt[i])) < 1e-4, "token %d", i);
    cr_assert_eq(q->n_prompt_events, 0);
    cr_assert_eq(q->n_fin_tokens, 2);
}

Test(engine, top_logprobs_errors_name_the_field) {
    gpt2_engine *e = engine_on(TINY, 1, 0);
    int ok[] = {1, 2, 3};
    gpt2_request r = {.prompt = ok, .n_prompt = 3, .max_tokens = 2, .sampling = gpt2_sampling_default(),
                      .logprobs = 1};
    r.top_logprobs = 21;
    expect_submit_error(e, r, GPT2_ERR_ARG, "top_logprobs");
    r.top_logprobs = -1;
    expect_submit_error(e, r, GPT2_ERR_ARG, "top_logprobs");
    r.top_logprobs = 2;
    r.logprobs = 0;
    expect_submit_error(e, r, GPT2_ERR_ARG, "top_logprobs");
    cr_assert_eq(gpt2_engine_pending(e), 0);
}

/* The backend's row layout with all_rows chunks (backend.h): row i is chunk i's last token, then the
 * other tokens of the all_rows chunks in order; each row equals the full-sequence forward's. */
static void rows_equal(const float *got, const float *want, int V, const char *what) {
    for (int v = 0; v < V; v++)
        cr_assert(fabs(got[v] - want[v]) < 1e-4, "%s: column %d: %.6f, full forward %.6f", what, v, got[v], want[v]);
}

Test(engine, cpu_forward_all_rows_layout) {
    gpt2_model *m = test_keep(load_fixture("small"), gpt2_model_free);
    const int V = m->cfg.vocab_size;
    gpt2_backend_opts bo = {.max_slots = 4, .max_seq = 32, .max_tokens = 40};
    gpt2_backend *be = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_backend_create("cpu", m, &bo, &be, &err), GPT2_OK, "%s", err.msg);
    test_keep(be, gpt2_backend_free);
    int a[3], b[5], c[2];
    random_ids(a, 3, V, 1);
    random_ids(b, 5, V, 2);
    random_ids(c, 2, V, 3);
    float *fa = test_keep(full_logits(m, a, 3), free), *fb = test_keep(full_logits(m, b, 5), free);
    float *fc = test_keep(full_logits(m, c, 2), free);
    gpt2_chunk ch[3] = {{.slot = 0, .n = 3, .tokens = a},
                        {.slot = 1, .n = 2, .tokens = b, .all_rows = 1},
                        {.slot = 2, .n = 2, .tokens = c, .all_rows = 1}};
    /* 3 + 1 + 1 = 5 rows > the 4 it holds: refused, naming the rows */
    cr_assert_eq(be->forward(be, ch, 3, 0, &err), GPT2_ERR_LIMIT);
    cr_assert(strstr(err.msg, "logits rows"), "%s", err.msg);
    ch[2].all_rows = 0;
    cr_assert_eq(be->forward(be, ch, 3, 0, &err), GPT2_OK, "%s", err.msg);
    float *rows = test_calloc((size_t)4 * V, sizeof(float));
    cr_assert_eq(be->read_logits(be, rows, 4, &err), GPT2_OK, "%s", err.msg);
    rows_equal(rows, fa + 2 * V, V, "row 0 (a's last)");
    rows_equal(rows + V, fb + V, V, "row 1 (b's last)");
    rows_equal(rows + 2 * V, fc + V, V, "row 2 (c's last)");
    rows_equal(rows + 3 * V, fb, V, "row 3 (b's first)");
    /* b goes on from position 2 with all rows: its last (4), then 2 and 3 */
    gpt2_chunk more = {.slot = 1, .pos = 2, .n = 3, .tokens = b + 2, .all_rows = 1};
    cr_assert_eq(be->forward(be, &more, 1, 0, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->read_logits(be, rows, 3, &err), GPT2_OK, "%s", err.msg);
    rows_equal(rows, fb + 4 * V, V, "b's position 4");
    rows_equal(rows + V, fb + 2 * V, V, "b's position 2");
    rows_equal(rows + 2 * V, fb + 3 * V, V, "b's position 3");
}

/* copy_slot on the CPU backend: slot 0's prompt copied whole to slot 3 and in part (4 positions) to
 * slot 2; each then decodes as a fresh sequence with that prefix would (full forward). */
Test(engine, cpu_copy_slot_forks_a_sequence) {
    gpt2_model *m = test_keep(load_fixture("small"), gpt2_model_free);
    const int V = m->cfg.vocab_size;
    gpt2_backend_opts bo = {.max_slots = 4, .max_seq = 32, .max_tokens = 32};
    gpt2_backend *be = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_backend_create("cpu", m, &bo, &be, &err), GPT2_OK, "%s", err.msg);
    test_keep(be, gpt2_backend_free);
    int p[11], next[2];
    random_ids(p, 10, V, 61);
    random_ids(next, 2, V, 62);
    gpt2_chunk pre = {.slot = 0, .n = 10, .tokens = p};
    cr_assert_eq(be->forward(be, &pre, 1, 0, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->copy_slot(be, 0, 3, 10, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(be->copy_slot(be, 0, 2, 4, &err), GPT2_OK, "%s", err.msg);
    gpt2_chunk dec[3] = {{.slot = 0, .pos = 10, .n = 1, .tokens = next},
                         {.slot = 3, .pos = 10, .n = 1, .tokens = next + 1},
                         {.slot = 2, .pos = 4, .n = 1, .tokens = next}};
    cr_assert_eq(be->forward(be, dec, 3, 0, &err), GPT2_OK, "%s", err.msg);
    float *rows = test_calloc((size_t)3 * V, sizeof(float));
    cr_assert_eq(be->read_logits(be, rows, 3, &err), GPT2_OK, "%s", err.msg);
    int s0[11], s3[11], s2[5];
    memcpy(s0, p, sizeof(int) * 10);
    memcpy(s3, p, sizeof(int) * 10);
    memcpy(s2, p, sizeof(int) * 4);
    s0[10] = next[0];
    s3[10] = next[1];
    s2[4] = next[0];
    float *f0 = test_keep(full_logits(m, s0, 11), free), *f3 = test_keep(full_logits(m, s3, 11), free);
    float *f2 = test_keep(full_logits(m, s2, 5), free);
    rows_equal(rows, f0 + 10 * V, V, "slot 0");
    rows_equal(rows + V, f3 + 10 * V, V, "slot 3 (copied from 0)");
    rows_equal(rows + 2 * V, f2 + 4 * V, V, "slot 2 (4 positions of 0)");
    cr_assert_eq(be->copy_slot(be, 1, 1, 3, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "copy_slot"), "%s", err.msg);
    cr_assert_eq(be->copy_slot(be, 0, 1, 33, &err), GPT2_ERR_ARG);
}
