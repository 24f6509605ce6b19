/* test_beam.c: beam search against transformers' generate(num_beams=...) on the fixture models
 * (tests/data/decoding_golden.json, made by tools/make_fixtures.py --decoding): every returned
 * hypothesis token for token, its score, its end (end-of-text or length), for several beam counts,
 * length penalties, early_stopping false/true/never, no_repeat_ngram_size and "n" outputs; the
 * requests of one model run together in one engine (beams of many requests batched, slots forked
 * by copying KV caches), beside a greedy request that must come out as it does alone. */
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

static gpt2_engine *engine_on(const char *model, int slots) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, model);
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = "cpu";
    o.max_slots = slots;
    gpt2_engine *e = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_engine_create(dir, &o, &e, &err), GPT2_OK, "%s", err.msg);
    return test_keep(e, gpt2_engine_destroy);
}

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
    char in[] = "/tmp/gpt2-beam-XXXXXX";
    int fd = mkstemp(in);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, lines, strlen(lines)), (ssize_t)strlen(lines));
    close(fd);
    char cmd[512], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s generate --model %s/tiny --device cpu --input %s 2>/dev/null", cli_bin(), FIXTURES,
             in);
    int rc = run_capture(cmd, &out);
    unlink(in);
    test_keep(out, free);
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
