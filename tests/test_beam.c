/* test_beam.c: beam search against transformers' generate(num_beams=...) on the fixture models
 * (tests/data/decoding_golden.json, made by tools/make_fixtures.py --decoding): every returned
 * hypothesis token for token, its score, its end (end-of-text or length), for several beam counts,
 * length penalties, early_stopping false/true/never, no_repeat_ngram_size and "n" outputs; the
 * requests of one model run together in one engine (beams of many requests batched, slots forked
 * by copying KV caches), beside a greedy request that must come out as it does alone; the number of
 * steps each search runs (the early stop). Suite ngram: no_repeat_ngram_size with greedy and
 * sampling (num_beams 1) against transformers' generate(no_repeat_ngram_size=...), on the CPU and,
 * where there is a GPU, on CUDA. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

TestSuite(beam, .fini = test_cleanup);

#define MAXH 8
#define MAXT 64

typedef struct {
    int finished, n_hyps, n_tokens, n_token_events;
    gpt2_finish finish;
    int tokens[MAXT], token_events[MAXT];
    int hyp_tokens[MAXH][MAXT], hyp_n[MAXH];
    float hyp_score[MAXH], hyp_lp[MAXH][MAXT];
    gpt2_finish hyp_finish[MAXH];
    char text[1024];
    size_t n_text;
} beam_seen;

static int on_event(const gpt2_event *ev) {
    beam_seen *s = ev->user;
    if (ev->kind == GPT2_EVENT_TOKEN) {
        cr_assert_lt(s->n_token_events, MAXT);
        s->token_events[s->n_token_events++] = ev->token;
    }
    if (ev->kind != GPT2_EVENT_FINISH) return 0;
    s->finished++;
    s->finish = ev->finish;
    s->n_hyps = ev->n_hyps;
    cr_assert_leq(ev->n_tokens, MAXT);
    s->n_tokens = ev->n_tokens;
    memcpy(s->tokens, ev->tokens, sizeof(int) * (size_t)ev->n_tokens);
    cr_assert_lt(ev->n_text, sizeof s->text);
    memcpy(s->text, ev->text, ev->n_text);
    s->n_text = ev->n_text;
    cr_assert_leq(ev->n_hyps, MAXH);
    for (int h = 0; h < ev->n_hyps; h++) {
        s->hyp_n[h] = ev->hyps[h].n_tokens;
        memcpy(s->hyp_tokens[h], ev->hyps[h].tokens, sizeof(int) * (size_t)ev->hyps[h].n_tokens);
        memcpy(s->hyp_lp[h], ev->hyps[h].logprobs, sizeof(float) * (size_t)ev->hyps[h].n_tokens);
        s->hyp_score[h] = ev->hyps[h].score;
        s->hyp_finish[h] = ev->hyps[h].finish;
    }
    return 0;
}

static gpt2_engine *engine_dev(const char *model, int slots, const char *device) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, model);
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = device;
    o.max_slots = slots;
    gpt2_engine *e = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(dir, &o, &e, &err), GPT2_OK, "%s", err.msg);
    return test_keep(e, gpt2_engine_destroy);
}

static gpt2_engine *engine_on(const char *model, int slots) { return engine_dev(model, slots, "cpu"); }

static json_t *golden(void) {
    json_error_t jerr;
    json_t *g = json_load_file("tests/data/decoding_golden.json", 0, &jerr);
    cr_assert(g, "tests/data/decoding_golden.json: %s", jerr.text);
    return test_keep(g, json_decref);
}

static int early_code(json_t *v) {
    if (json_is_string(v)) return 2; /* "never" */
    return json_is_true(v) ? 1 : 0;
}

/* Runs every golden case of `model` in one engine of `slots` slots, with a greedy request beside them,
 * and checks each against transformers. Returns how many cases it ran. */
static int run_model(const char *model, int slots, int *eot_cases) {
    json_t *cases = json_object_get(golden(), "beams");
    gpt2_engine *e = engine_on(model, slots);
    size_t nc = json_array_size(cases);
    beam_seen *seen = test_calloc(nc + 2, sizeof *seen);
    int *prompts[64];
    int n_prompt[64], ran = 0;
    gpt2_error err = {0};
    /* the greedy request alone first, then beside the beams */
    int gp[] = {3, 14, 15, 92, 65};
    gpt2_request g = {.prompt = gp, .n_prompt = 5, .max_tokens = 10, .sampling = gpt2_sampling_default(),
                      .on_event = on_event, .user = &seen[nc]};
    cr_assert_eq(gpt2_engine_submit(e, &g, NULL, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    for (size_t c = 0; c < nc; c++) {
        json_t *cs = json_array_get(cases, c);
        if (strcmp(json_string_value(json_object_get(cs, "model")), model)) continue;
        prompts[c] = test_keep(json_ints(json_object_get(cs, "prompt"), &n_prompt[c]), free);
        gpt2_request r = {.prompt = prompts[c], .n_prompt = n_prompt[c],
                          .max_tokens = (int)json_integer_value(json_object_get(cs, "max_new_tokens")),
                          .sampling = gpt2_sampling_default(), .logprobs = 1, .beam = gpt2_beam_default(),
                          .on_event = on_event, .user = &seen[c]};
        r.beam.num_beams = (int)json_integer_value(json_object_get(cs, "num_beams"));
        r.beam.length_penalty = (float)json_number_value(json_object_get(cs, "length_penalty"));
        r.beam.early_stopping = early_code(json_object_get(cs, "early_stopping"));
        r.beam.no_repeat_ngram_size = (int)json_integer_value(json_object_get(cs, "no_repeat_ngram_size"));
        r.beam.n = (int)json_integer_value(json_object_get(cs, "n"));
        cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "case %zu: %s", c, err.msg);
        if (ran++ == 0) { /* the greedy request again, among the beam searches */
            g.user = &seen[nc + 1];
            cr_assert_eq(gpt2_engine_submit(e, &g, NULL, &err), GPT2_OK, "%s", err.msg);
        }
    }
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(seen[nc + 1].n_tokens, seen[nc].n_tokens);
    cr_assert_eq(memcmp(seen[nc + 1].tokens, seen[nc].tokens, sizeof(int) * (size_t)seen[nc].n_tokens), 0,
                 "greedy beside beam searches differs from greedy alone");
    cr_assert_eq(seen[nc].n_hyps, 0);
    const int eot = gpt2_tokenizer_eot(gpt2_engine_tokenizer(e));
    for (size_t c = 0; c < nc; c++) {
        json_t *cs = json_array_get(cases, c);
        if (strcmp(json_string_value(json_object_get(cs, "model")), model)) continue;
        json_t *hyps = json_object_get(cs, "hypotheses");
        beam_seen *s = &seen[c];
        cr_assert_eq(s->finished, 1, "case %zu: %d FINISH events", c, s->finished);
        cr_assert_eq(s->n_hyps, (int)json_array_size(hyps), "case %zu: %d hypotheses, transformers %zu", c, s->n_hyps,
                     json_array_size(hyps));
        for (int h = 0; h < s->n_hyps; h++) {
            json_t *hy = json_array_get(hyps, (size_t)h);
            int n;
            int *want = test_keep(json_ints(json_object_get(hy, "tokens"), &n), free);
            int ends_eot = n > 0 && want[n - 1] == eot;
            if (ends_eot) ++*eot_cases;
            cr_assert_eq(s->hyp_finish[h], ends_eot ? GPT2_FINISH_STOP : GPT2_FINISH_LENGTH, "case %zu hyp %d", c, h);
            cr_assert_eq(s->hyp_n[h], n - ends_eot, "case %zu hypothesis %d: %d tokens, transformers %d", c, h,
                         s->hyp_n[h], n - ends_eot);
            for (int i = 0; i < n - ends_eot; i++)
                cr_assert_eq(s->hyp_tokens[h][i], want[i], "case %zu hypothesis %d token %d: %d, transformers %d", c,
                             h, i, s->hyp_tokens[h][i], want[i]);
            double ws = json_number_value(json_object_get(hy, "score"));
            cr_assert(fabs(s->hyp_score[h] - ws) < 1e-4 + 1e-4 * fabs(ws), "case %zu hypothesis %d: score %.6f, "
                      "transformers %.6f", c, h, s->hyp_score[h], ws);
            for (int i = 0; i < s->hyp_n[h]; i++) cr_assert(s->hyp_lp[h][i] <= 0 && isfinite(s->hyp_lp[h][i]));
        }
        /* the event's own output is the best hypothesis, and its TOKEN events spell it */
        cr_assert_eq(s->n_tokens, s->hyp_n[0]);
        cr_assert_eq(memcmp(s->tokens, s->hyp_tokens[0], sizeof(int) * (size_t)s->n_tokens), 0);
        cr_assert_eq(s->n_token_events, s->n_tokens);
        cr_assert_eq(memcmp(s->token_events, s->tokens, sizeof(int) * (size_t)s->n_tokens), 0);
        cr_assert_eq(s->finish, s->hyp_finish[0]);
    }
    return ran;
}

Test(beam, small_matches_transformers) {
    int eot = 0;
    cr_assert_gt(run_model("small", 12, &eot), 0);
}

Test(beam, tiny_matches_transformers) {
    int eot = 0;
    cr_assert_gt(run_model("tiny", 7, &eot), 0);
}

/* The end-of-text cases: hypotheses that end with it are "stop", without the token, and ranked with
 * it counted in their length. One slot fewer than the beams of all cases: requests queue for slots. */
Test(beam, end_of_text_matches_transformers) {
    int eot = 0;
    cr_assert_gt(run_model("beam-eot", 5, &eot), 0);
    cr_assert_gt(eot, 0, "no golden hypothesis ends with end-of-text: the cases show nothing");
}

/* The early stop: each golden case alone in an engine, counting gpt2_engine_step calls until its
 * FINISH, equals the steps transformers' _beam_search ran (len(scores): its early-stop heuristic,
 * early_stopping true, or the length limit). The short prompts are prefilled in the first step with
 * the first beam step, so one engine step is one search step. The heuristic saves steps only, so
 * the token checks above cannot see it: this does (the cases where early_stopping false stopped
 * before max_new_tokens). */
Test(beam, steps_match_transformers_early_stop) {
    json_t *cases = json_object_get(golden(), "beams");
    const char *models[] = {"small", "tiny", "beam-eot"};
    int heuristic_stops = 0, n_cases = 0;
    for (int mi = 0; mi < 3; mi++) {
        gpt2_engine *e = engine_on(models[mi], 5);
        for (size_t c = 0; c < json_array_size(cases); c++) {
            json_t *cs = json_array_get(cases, c);
            if (strcmp(json_string_value(json_object_get(cs, "model")), models[mi])) continue;
            int n_prompt;
            int *prompt = test_keep(json_ints(json_object_get(cs, "prompt"), &n_prompt), free);
            const int max_new = (int)json_integer_value(json_object_get(cs, "max_new_tokens"));
            const int want = (int)json_integer_value(json_object_get(cs, "steps"));
            cr_assert(want >= 1 && want <= max_new, "case %zu: golden steps %d", c, want);
            beam_seen *s = test_calloc(1, sizeof *s);
            gpt2_request r = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = max_new,
                              .sampling = gpt2_sampling_default(), .beam = gpt2_beam_default(), .on_event = on_event,
                              .user = s};
            r.beam.num_beams = (int)json_integer_value(json_object_get(cs, "num_beams"));
            r.beam.length_penalty = (float)json_number_value(json_object_get(cs, "length_penalty"));
            r.beam.early_stopping = early_code(json_object_get(cs, "early_stopping"));
            r.beam.no_repeat_ngram_size = (int)json_integer_value(json_object_get(cs, "no_repeat_ngram_size"));
            r.beam.n = (int)json_integer_value(json_object_get(cs, "n"));
            gpt2_error err = {0};
            cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "case %zu: %s", c, err.msg);
            int steps = 0, busy = 1;
            while (!s->finished && busy && steps <= max_new + 1) {
                cr_assert_eq(gpt2_engine_step(e, &busy, &err), GPT2_OK, "%s", err.msg);
                steps++;
            }
            cr_assert_eq(s->finished, 1, "case %zu: no FINISH after %d steps", c, steps);
            cr_assert_eq(steps, want, "case %zu (%s, %d beams, early_stopping %d): %d steps, transformers ran %d", c,
                         models[mi], r.beam.num_beams, r.beam.early_stopping, steps, want);
            cr_assert_eq(gpt2_engine_pending(e), 0);
            heuristic_stops += r.beam.early_stopping == 0 && want < max_new;
            n_cases++;
        }
    }
    cr_assert_gt(n_cases, 10);
    cr_assert_geq(heuristic_stops, 2, "no golden case stops early by the heuristic: the test shows nothing");
}

Test(beam, bad_settings_name_the_field) {
    gpt2_engine *e = engine_on("small", 4);
    int p[] = {1, 2, 3};
    const char *stops[] = {"x"};
    struct {
        const char *field;
        gpt2_status st;
    } want[] = {{"num_beams", GPT2_ERR_LIMIT}, {"num_beams", GPT2_ERR_ARG}, {"n 3", GPT2_ERR_ARG},
                {"early_stopping", GPT2_ERR_ARG}, {"no_repeat_ngram_size", GPT2_ERR_ARG},
                {"stop", GPT2_ERR_ARG}, {"repetition_penalty", GPT2_ERR_ARG}, {"top_logprobs", GPT2_ERR_ARG},
                {"n 2", GPT2_ERR_ARG}, {"length_penalty", GPT2_ERR_ARG}};
    for (int k = 0; k < 10; k++) {
        gpt2_request r = {.prompt = p, .n_prompt = 3, .max_tokens = 4, .sampling = gpt2_sampling_default(),
                          .beam = gpt2_beam_default()};
        r.beam.num_beams = 2;
        switch (k) {
        case 0: r.beam.num_beams = 5; break;        /* more than the 4 slots */
        case 1: r.beam.num_beams = 65; break;
        case 2: r.beam.n = 3; break;                 /* more than the beams */
        case 3: r.beam.early_stopping = 3; break;
        case 4: r.beam.num_beams = 1; r.beam.no_repeat_ngram_size = -1; break; /* greedy takes 0..max_seq */
        case 5: r.stop = stops; r.n_stop = 1; break;
        case 6: r.sampling.repetition_penalty = 1.2f; break;
        case 7: r.logprobs = 1; r.top_logprobs = 2; break;
        case 8: r.beam.num_beams = 1; r.beam.n = 2; break;
        case 9: r.beam.length_penalty = NAN; break;
        }
        gpt2_error err = {0};
        cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), want[k].st, "case %d: %s", k, err.msg);
        cr_assert(strstr(err.msg, want[k].field), "case %d: the message does not name %s: %s", k, want[k].field,
                  err.msg);
    }
    cr_assert_eq(gpt2_engine_pending(e), 0);
}

/* `gpt2 generate` JSONL beam fields reach the engine: the record's tokens, score and "beams" are the
 * engine's FINISH hypotheses for the same prompt and settings (which the tests above hold to
 * transformers); a bad early_stopping is named. */
Test(beam, generate_jsonl_records_the_hypotheses) {
    const char *lines = "{\"id\": 1, \"prompt\": \"The lighthouse keeper\", \"max_tokens\": 6, \"num_beams\": 3, "
                        "\"n\": 2, \"length_penalty\": 0.5, \"early_stopping\": \"never\", "
                        "\"no_repeat_ngram_size\": 2}\n"
                        "{\"id\": 2, \"prompt\": \"Hi\", \"num_beams\": 2, \"early_stopping\": 1}\n";
    char *out = NULL;
    int rc = test_run_generate(FIXTURES "/tiny", lines, 0, &out);
    cr_assert_eq(rc, 1);
    char *nl = strchr(out, '\n');
    cr_assert(nl);
    json_t *rec = test_keep(json_loadb(out, (size_t)(nl - out), 0, NULL), json_decref);
    json_t *bad = test_keep(json_loads(nl + 1, 0, NULL), json_decref);
    cr_assert(rec && bad);
    cr_assert(strstr(json_string_value(json_object_get(bad, "error")), "\"early_stopping\""));

    gpt2_engine *e = engine_on("tiny", 4);
    int *ids;
    size_t n_ids;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_encode(gpt2_engine_tokenizer(e), "The lighthouse keeper", 21, 1, &ids, &n_ids, &err), GPT2_OK);
    test_keep(ids, free);
    beam_seen *s = test_calloc(1, sizeof *s);
    gpt2_request r = {.prompt = ids, .n_prompt = (int)n_ids, .max_tokens = 6, .sampling = gpt2_sampling_default(),
                      .beam = gpt2_beam_default(), .on_event = on_event, .user = s};
    r.beam.num_beams = 3;
    r.beam.n = 2;
    r.beam.length_penalty = 0.5f;
    r.beam.early_stopping = 2;
    r.beam.no_repeat_ngram_size = 2;
    cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    json_t *beams = json_object_get(rec, "beams");
    cr_assert_eq(json_array_size(beams), 2);
    for (int h = 0; h < 2; h++) {
        json_t *b = json_array_get(beams, (size_t)h);
        int n;
        int *t = test_keep(json_ints(json_object_get(b, "tokens"), &n), free);
        cr_assert_eq(n, s->hyp_n[h]);
        cr_assert_eq(memcmp(t, s->hyp_tokens[h], sizeof(int) * (size_t)n), 0, "hypothesis %d", h);
        cr_assert(fabs(json_number_value(json_object_get(b, "score")) - s->hyp_score[h]) < 1e-6);
    }
    cr_assert(json_equal(json_object_get(rec, "tokens"), json_object_get(json_array_get(beams, 0), "tokens")));
}

/* ---------------------------------------------------------------------------------------------- */
/* no_repeat_ngram_size without beams (greedy and sampling)                                        */

TestSuite(ngram, .fini = test_cleanup);

typedef struct {
    int finished;
    gpt2_finish finish;
    int n;
    int tokens[MAXT];
    char error[256];
} gen_seen;

static int on_gen(const gpt2_event *ev) {
    gen_seen *s = ev->user;
    if (ev->kind != GPT2_EVENT_FINISH) return 0;
    s->finished++;
    s->finish = ev->finish;
    cr_assert_leq(ev->n_tokens, MAXT);
    s->n = ev->n_tokens;
    memcpy(s->tokens, ev->tokens, sizeof(int) * (size_t)ev->n_tokens);
    if (ev->error) snprintf(s->error, sizeof s->error, "%s", ev->error);
    return 0;
}

/* Whether some n-gram occurs twice in prompt + out. */
static int has_repeat(const int *prompt, int np, const int *out, int no, int n) {
    int seq[2 * MAXT];
    cr_assert_leq(np + no, 2 * MAXT);
    memcpy(seq, prompt, sizeof(int) * (size_t)np);
    memcpy(seq + np, out, sizeof(int) * (size_t)no);
    for (int i = 0; i + n <= np + no; i++)
        for (int j = i + 1; j + n <= np + no; j++)
            if (!memcmp(seq + i, seq + j, sizeof(int) * (size_t)n)) return 1;
    return 0;
}

/* The golden greedy no_repeat_ngram_size cases of `model` on `device`, all at once in an engine of 3
 * slots (they batch and queue), each with the ban and without it: with it, transformers' tokens;
 * without, transformers' plain greedy tokens, which differ (so an engine that ignores the field
 * fails). Returns the cases run. */
static int run_greedy_ngram(const char *model, const char *device) {
    json_t *cases = json_object_get(golden(), "greedy_ngram");
    const size_t nc = json_array_size(cases);
    cr_assert_gt(nc, 0, "no greedy_ngram cases in tests/data/decoding_golden.json");
    gpt2_engine *e = engine_dev(model, 3, device);
    gen_seen *seen = test_calloc(2 * nc, sizeof *seen);
    int *prompts[32], n_prompt[32], ran = 0;
    cr_assert_leq(nc, 32);
    gpt2_error err = {0};
    for (size_t c = 0; c < nc; c++) {
        json_t *cs = json_array_get(cases, c);
        if (strcmp(json_string_value(json_object_get(cs, "model")), model)) continue;
        prompts[c] = test_keep(json_ints(json_object_get(cs, "prompt"), &n_prompt[c]), free);
        for (int ban = 0; ban < 2; ban++) {
            gpt2_request r = {.prompt = prompts[c], .n_prompt = n_prompt[c],
                              .max_tokens = (int)json_integer_value(json_object_get(cs, "max_new_tokens")),
                              .sampling = gpt2_sampling_default(), .beam = gpt2_beam_default(), .on_event = on_gen,
                              .user = &seen[2 * c + (size_t)ban]};
            r.sampling.repetition_penalty = (float)json_number_value(json_object_get(cs, "repetition_penalty"));
            if (ban) r.beam.no_repeat_ngram_size = (int)json_integer_value(json_object_get(cs, "no_repeat_ngram_size"));
            cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "case %zu: %s", c, err.msg);
        }
        ran++;
    }
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    const int eot = gpt2_tokenizer_eot(gpt2_engine_tokenizer(e));
    for (size_t c = 0; c < nc; c++) {
        json_t *cs = json_array_get(cases, c);
        if (strcmp(json_string_value(json_object_get(cs, "model")), model)) continue;
        const int ngram = (int)json_integer_value(json_object_get(cs, "no_repeat_ngram_size"));
        for (int ban = 0; ban < 2; ban++) {
            gen_seen *s = &seen[2 * c + (size_t)ban];
            int n;
            int *want = test_keep(json_ints(json_object_get(cs, ban ? "tokens" : "tokens_without_ban"), &n), free);
            int ends_eot = n > 0 && want[n - 1] == eot;
            cr_assert_eq(s->finished, 1, "%s case %zu ban %d: %d FINISH events", device, c, ban, s->finished);
            cr_assert_eq(s->finish, ends_eot ? GPT2_FINISH_STOP : GPT2_FINISH_LENGTH, "%s case %zu ban %d: %s", device,
                         c, ban, s->error);
            cr_assert_eq(s->n, n - ends_eot, "%s case %zu ban %d: %d tokens, transformers %d", device, c, ban, s->n,
                         n - ends_eot);
            for (int i = 0; i < s->n; i++)
                cr_assert_eq(s->tokens[i], want[i], "%s case %zu (ngram %d) ban %d token %d: %d, transformers %d",
                             device, c, ngram, ban, i, s->tokens[i], want[i]);
        }
        cr_assert(seen[2 * c].n != seen[2 * c + 1].n ||
                      memcmp(seen[2 * c].tokens, seen[2 * c + 1].tokens, sizeof(int) * (size_t)seen[2 * c].n),
                  "case %zu: the ban changed nothing, so this case cannot tell", c);
        cr_assert(has_repeat(prompts[c], n_prompt[c], seen[2 * c].tokens, seen[2 * c].n, ngram));
        cr_assert(!has_repeat(prompts[c], n_prompt[c], seen[2 * c + 1].tokens, seen[2 * c + 1].n, ngram),
                  "case %zu: a %d-gram repeats despite the ban", c, ngram);
    }
    return ran;
}

Test(ngram, greedy_matches_transformers) {
    cr_assert_gt(run_greedy_ngram("small", "cpu"), 3);
    cr_assert_gt(run_greedy_ngram("tiny", "cpu"), 1);
}

/* Sampled requests (temperature 0.5, top_p 0.95, several seeds) with no_repeat_ngram_size 2 never
 * repeat a 2-gram of prompt + output; without the ban the same seeds do, some of them. Returns the
 * number of seeds whose output the ban changed. */
static int run_sampled_ngram(const char *device) {
    enum { SEEDS = 6, N = 40 };
    gpt2_engine *e = engine_dev("small", 4, device);
    gen_seen *seen = test_calloc(2 * SEEDS, sizeof *seen);
    int prompt[] = {20, 188, 156, 21, 788}; /* the first golden greedy case's first 5: its greedy output loops */
    gpt2_error err = {0};
    for (int k = 0; k < SEEDS; k++)
        for (int ban = 0; ban < 2; ban++) {
            gpt2_request r = {.prompt = prompt, .n_prompt = 5, .max_tokens = N, .sampling = gpt2_sampling_default(),
                              .beam = gpt2_beam_default(), .on_event = on_gen, .user = &seen[2 * k + ban]};
            r.sampling.temperature = 0.5f; /* low enough that this model's loops show */
            r.sampling.top_p = 0.95f;
            r.sampling.seed = 1000 + (uint64_t)k;
            r.beam.no_repeat_ngram_size = ban ? 2 : 0;
            cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "%s", err.msg);
        }
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    int repeats_without = 0, changed = 0;
    for (int k = 0; k < SEEDS; k++) {
        const gen_seen *plain = &seen[2 * k], *banned = &seen[2 * k + 1];
        cr_assert_eq(plain->finished, 1);
        cr_assert_eq(banned->finished, 1);
        cr_assert_eq(banned->n, N, "%s seed %d: %d tokens (%s)", device, k, banned->n, banned->error);
        cr_assert(!has_repeat(prompt, 5, banned->tokens, banned->n, 2), "%s seed %d: a 2-gram repeats", device, k);
        repeats_without += has_repeat(prompt, 5, plain->tokens, plain->n, 2);
        changed += plain->n != banned->n || memcmp(plain->tokens, banned->tokens, sizeof(int) * (size_t)plain->n);
    }
    cr_assert_gt(repeats_without, 0, "%s: no seed repeats a 2-gram without the ban: the check shows nothing", device);
    return changed;
}

Test(ngram, sampled_output_never_repeats_an_ngram) { cr_assert_gt(run_sampled_ngram("cpu"), 0); }

/* The same on the CUDA backend (the ban lists go up with the penalty histories, sample_prep_kernel
 * sets them to -inf). */
Test(ngram, cuda_matches_transformers_and_never_repeats) {
    if (gpt2_cuda_device_count() == 0)
        cr_skip_test("no CUDA GPU visible: this test runs on a GPU machine (tools/gpu_check.sh)");
    cr_assert_gt(run_greedy_ngram("small", "cuda"), 3);
    cr_assert_gt(run_greedy_ngram("tiny", "cuda"), 1);
    cr_assert_gt(run_sampled_ngram("cuda"), 0);
}

/* Any decoding mode takes no_repeat_ngram_size 0..max_seq; outside, the message names the field. */
Test(ngram, sizes_outside_the_range_name_the_field) {
    gpt2_engine *e = engine_on("small", 2); /* max_seq: n_positions 128 */
    int p[] = {1, 2, 3};
    const int sizes[] = {-1, 129, 1 << 20};
    for (int beams = 0; beams <= 2; beams += 2)
        for (int k = 0; k < 3; k++) {
            gpt2_request r = {.prompt = p, .n_prompt = 3, .max_tokens = 4, .sampling = gpt2_sampling_default(),
                              .beam = gpt2_beam_default()};
            r.beam.num_beams = beams;
            r.beam.no_repeat_ngram_size = sizes[k];
            gpt2_error err = {0};
            cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_ERR_ARG, "beams %d size %d", beams, sizes[k]);
            cr_assert(strstr(err.msg, "no_repeat_ngram_size"), "%s", err.msg);
        }
    gen_seen *s = test_calloc(1, sizeof *s);
    gpt2_request r = {.prompt = p, .n_prompt = 3, .max_tokens = 4, .sampling = gpt2_sampling_default(),
                      .beam = gpt2_beam_default(), .on_event = on_gen, .user = s};
    r.beam.no_repeat_ngram_size = 128; /* longer than the sequence can get: bans nothing */
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(s->n, 4);
}

/* `gpt2 generate` end to end: a JSONL line with no_repeat_ngram_size and no num_beams gives the
 * engine's banned greedy output (held to transformers above), which differs from the same line
 * without the field, and the two records have different fingerprints (so --resume cannot take one
 * for the other). */
Test(ngram, generate_jsonl_bans_without_beams) {
    const char *prompt = "The lighthouse keeper climbed the stairs";
    char lines[512];
    snprintf(lines, sizeof lines,
             "{\"id\": 1, \"prompt\": \"%s\", \"max_tokens\": 24, \"temperature\": 0, \"no_repeat_ngram_size\": 2}\n"
             "{\"id\": 2, \"prompt\": \"%s\", \"max_tokens\": 24, \"temperature\": 0}\n",
             prompt, prompt);
    char *out = NULL;
    int rc = test_run_generate(FIXTURES "/tiny", lines, 1, &out);
    cr_assert_eq(rc, 0, "%s", out);
    char *nl = strchr(out, '\n');
    cr_assert(nl);
    json_t *rec = test_keep(json_loadb(out, (size_t)(nl - out), 0, NULL), json_decref);
    json_t *plain = test_keep(json_loads(nl + 1, 0, NULL), json_decref);
    cr_assert(rec && plain, "%s", out);
    cr_assert(!json_object_get(rec, "error"), "%s", out);

    gpt2_engine *e = engine_on("tiny", 2);
    int *ids;
    size_t n_ids;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_encode(gpt2_engine_tokenizer(e), prompt, strlen(prompt), 1, &ids, &n_ids, &err), GPT2_OK);
    test_keep(ids, free);
    gen_seen *s = test_calloc(1, sizeof *s);
    gpt2_request r = {.prompt = ids, .n_prompt = (int)n_ids, .max_tokens = 24, .sampling = gpt2_sampling_default(),
                      .beam = gpt2_beam_default(), .on_event = on_gen, .user = s};
    r.beam.no_repeat_ngram_size = 2;
    cr_assert_eq(gpt2_engine_submit(e, &r, NULL, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_engine_run(e, &err), GPT2_OK, "%s", err.msg);
    int n, np;
    int *got = test_keep(json_ints(json_object_get(rec, "tokens"), &n), free);
    int *got_plain = test_keep(json_ints(json_object_get(plain, "tokens"), &np), free);
    cr_assert_eq(n, s->n);
    cr_assert_eq(memcmp(got, s->tokens, sizeof(int) * (size_t)n), 0, "the record is not the engine's banned output");
    cr_assert(!has_repeat(ids, (int)n_ids, got, n, 2));
    cr_assert(has_repeat(ids, (int)n_ids, got_plain, np, 2), "the plain greedy output repeats no 2-gram: this "
                                                              "prompt shows nothing");
    cr_assert(!json_equal(json_object_get(rec, "fp"), json_object_get(plain, "fp")),
              "the fingerprint leaves no_repeat_ngram_size out");
}
