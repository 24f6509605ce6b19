/* test_sampler.c: the sampler's filters, penalties, seeding and distributions. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "sampler.h"

enum { V = 1000 };

static void random_logits(float *l, int n, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < n; i++) l[i] = 4.0f * trand_float(&s);
}

static int sample(const float *logits, int n, const gpt2_sampling *p, uint64_t step, const int *hist, int n_hist,
                  int n_prompt) {
    static float work[V];
    gpt2_sample_scratch s;
    cr_assert_eq(gpt2_sample_scratch_init(&s, n), 0);
    memcpy(work, logits, sizeof(float) * (size_t)n);
    gpt2_sample_req r = {.p = p, .step = step, .history = hist, .n_history = n_hist, .n_prompt = n_prompt};
    int t = gpt2_sample_row(work, n, &r, &s);
    gpt2_sample_scratch_free(&s);
    return t;
}

/* rank of token t in logits (0 = largest; ties by lower id first), computed independently */
static int rank_of(const float *l, int n, int t) {
    int r = 0;
    for (int i = 0; i < n; i++)
        if (l[i] > l[t] || (l[i] == l[t] && i < t)) r++;
    return r;
}

Test(sampler, greedy_is_argmax_and_ties_go_to_lowest_id) {
    float l[V];
    for (int seed = 1; seed <= 20; seed++) {
        random_logits(l, V, (uint64_t)seed);
        gpt2_sampling p = gpt2_sampling_default();
        int t = sample(l, V, &p, 0, NULL, 0, 0);
        cr_assert_eq(rank_of(l, V, t), 0);
    }
    for (int i = 0; i < V; i++) l[i] = 0.5f;
    l[700] = l[300] = 2.0f;
    gpt2_sampling p = gpt2_sampling_default();
    cr_assert_eq(sample(l, V, &p, 0, NULL, 0, 0), 300);
}

Test(sampler, top_k_never_leaves_its_set) {
    float l[V];
    random_logits(l, V, 7);
    gpt2_sampling p = gpt2_sampling_default();
    p.temperature = 2.0f; /* flat enough that a bug would show */
    p.top_k = 5;
    int seen[5] = {0};
    for (int step = 0; step < 3000; step++) {
        p.seed = (uint64_t)step * 31;
        int t = sample(l, V, &p, (uint64_t)step, NULL, 0, 0);
        int r = rank_of(l, V, t);
        cr_assert_lt(r, 5, "step %d picked rank %d", step, r);
        seen[r]++;
    }
    for (int r = 0; r < 5; r++) cr_assert_gt(seen[r], 0, "rank %d never drawn", r);
}

Test(sampler, top_p_never_leaves_the_nucleus) {
    float l[V];
    random_logits(l, V, 11);
    for (int i = 0; i < V; i++) l[i] *= 2.0f;
    /* the nucleus, independently: sort probabilities descending in double */
    double prob[V], sum = 0;
    int order[V];
    for (int i = 0; i < V; i++) {
        order[i] = i;
        prob[i] = exp((double)l[i]);
        sum += prob[i];
    }
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (l[order[j]] > l[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    double cum = 0;
    int nucleus = 0;
    while (cum < 0.5 * sum) cum += prob[order[nucleus++]];
    gpt2_sampling p = gpt2_sampling_default();
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    for (int step = 0; step < 3000; step++) {
        int t = sample(l, V, &p, (uint64_t)step, NULL, 0, 0);
        int r = rank_of(l, V, t);
        cr_assert_lt(r, nucleus + 1, "step %d picked rank %d outside the nucleus of %d", step, r, nucleus);
    }
}

Test(sampler, seeded_draws_are_reproducible_and_seeds_differ) {
    float l[V];
    random_logits(l, V, 3);
    gpt2_sampling p = gpt2_sampling_default();
    p.temperature = 1.5f;
    int differ = 0;
    for (int step = 0; step < 200; step++) {
        p.seed = 42;
        int a = sample(l, V, &p, (uint64_t)step, NULL, 0, 0);
        int b = sample(l, V, &p, (uint64_t)step, NULL, 0, 0);
        cr_assert_eq(a, b);
        p.seed = 43;
        differ += sample(l, V, &p, (uint64_t)step, NULL, 0, 0) != a;
    }
    cr_assert_gt(differ, 100, "seeds 42 and 43 agree on %d of 200 draws", 200 - differ);
}

/* Frequencies over many draws against softmax(logits / T), within 5 standard deviations. */
static void check_distribution(float temperature) {
    float l[5] = {1.0f, 0.0f, -1.0f, 2.0f, 0.5f};
    double p[5], sum = 0;
    for (int i = 0; i < 5; i++) sum += p[i] = exp((double)l[i] / temperature);
    int count[5] = {0}, n = 40000;
    gpt2_sampling sp = gpt2_sampling_default();
    sp.temperature = temperature;
    sp.seed = 1234;
    for (int step = 0; step < n; step++) count[sample(l, 5, &sp, (uint64_t)step, NULL, 0, 0)]++;
    for (int i = 0; i < 5; i++) {
        double pi = p[i] / sum, sd = sqrt(n * pi * (1 - pi));
        cr_assert_lt(fabs(count[i] - n * pi), 5 * sd + 1, "T=%g token %d: %d draws, expected %.0f", temperature, i,
                     count[i], n * pi);
    }
}

Test(sampler, distribution_matches_softmax) {
    check_distribution(1.0f);
    check_distribution(0.5f);
    check_distribution(3.0f);
}

Test(sampler, uniform_numbers_are_in_range_and_spread) {
    double mean = 0;
    int bins[10] = {0};
    for (uint64_t step = 0; step < 100000; step++) {
        float u = gpt2_sample_uniform(99, step);
        cr_assert(u >= 0.0f && u < 1.0f);
        mean += u;
        bins[(int)(u * 10)]++;
    }
    cr_assert_lt(fabs(mean / 100000 - 0.5), 0.01);
    for (int i = 0; i < 10; i++) cr_assert(bins[i] > 9500 && bins[i] < 10500, "bin %d: %d", i, bins[i]);
}

Test(sampler, repetition_penalty_follows_hugging_face) {
    float l[6] = {3.0f, 2.9f, -1.0f, 0.0f, 1.0f, 2.95f};
    int hist[] = {0, 0, 2, 5};
    gpt2_sampling p = gpt2_sampling_default();
    p.repetition_penalty = 2.0f;
    /* 0: 3.0 -> 1.5 (once, though it appears twice); 5: 2.95 -> 1.475; 2: -1 -> -2; so 1 wins */
    cr_assert_eq(sample(l, 6, &p, 0, hist, 4, 2), 1);
    float w[6];
    memcpy(w, l, sizeof w);
    gpt2_sample_scratch s;
    cr_assert_eq(gpt2_sample_scratch_init(&s, 6), 0);
    gpt2_sample_req r = {.p = &p, .history = hist, .n_history = 4, .n_prompt = 2};
    gpt2_sample_row(w, 6, &r, &s);
    gpt2_sample_scratch_free(&s);
    cr_assert_float_eq(w[0], 1.5f, 1e-6);
    cr_assert_float_eq(w[2], -2.0f, 1e-6);
    cr_assert_float_eq(w[5], 1.475f, 1e-6);
    cr_assert_float_eq(w[1], 2.9f, 1e-6);
}

Test(sampler, frequency_and_presence_penalties_count_generated_tokens_only) {
    float w[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    int hist[] = {3, 3, 0, 0, 0, 1}; /* prompt {3, 3}; generated 0 x3, 1 x1 */
    gpt2_sampling p = gpt2_sampling_default();
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    gpt2_sample_scratch s;
    cr_assert_eq(gpt2_sample_scratch_init(&s, 4), 0);
    gpt2_sample_req r = {.p = &p, .history = hist, .n_history = 6, .n_prompt = 2};
    cr_assert_eq(gpt2_sample_row(w, 4, &r, &s), 2); /* 2 untouched and lowest untouched id */
    gpt2_sample_scratch_free(&s);
    cr_assert_float_eq(w[0], 1.0f - 1.5f - 0.25f, 1e-6);
    cr_assert_float_eq(w[1], 1.0f - 0.5f - 0.25f, 1e-6);
    cr_assert_float_eq(w[3], 1.0f, 1e-6);
}

/* Samples one row of any width (the helper above is for rows of at most V). */
static int sample_wide(const float *logits, int n, const gpt2_sampling *p, uint64_t step) {
    float *work = malloc(sizeof(float) * (size_t)n);
    cr_assert(work);
    gpt2_sample_scratch s;
    cr_assert_eq(gpt2_sample_scratch_init(&s, n), 0);
    memcpy(work, logits, sizeof(float) * (size_t)n);
    gpt2_sample_req r = {.p = p, .step = step};
    int t = gpt2_sample_row(work, n, &r, &s);
    gpt2_sample_scratch_free(&s);
    free(work);
    return t;
}

/* Tiny positive temperatures: l / T overflows to +-inf for T = 1e-45 or 1e-38, and a softmax of infs
 * is NaN (which picked the lowest-ranked token). Scaled as (l - max) / T they tend to greedy: on a real
 * row of the tiny model (50257 logits) every draw, with every filter, is the argmax. */
Test(sampler, tiny_temperatures_give_the_argmax_on_a_real_row) {
    gpt2_model *m = load_fixture("tiny");
    const int ids[] = {464, 2068, 7586, 21831}; /* "The quick brown fox" */
    const int T = 4, NV = m->cfg.vocab_size;
    float *all = full_logits(m, ids, T);
    for (int row = 0; row < T; row++) {
        const float *l = all + (size_t)row * (size_t)NV;
        int best = argmax_row(l, NV), worst = 0;
        for (int i = 1; i < NV; i++)
            if (l[i] < l[worst]) worst = i;
        const float temps[] = {1e-45f, 1e-44f, 1e-38f, 1e-30f, 1e-20f};
        for (size_t k = 0; k < sizeof temps / sizeof *temps; k++) {
            gpt2_sampling p = gpt2_sampling_default();
            p.temperature = temps[k];
            cr_assert_gt(p.temperature, 0.0f);
            for (int step = 0; step < 20; step++) {
                p.seed = (uint64_t)(7 * step + row);
                p.top_k = step % 3 == 1 ? 40 : 0;
                p.top_p = step % 3 == 2 ? 0.9f : 1.0f;
                int t = sample_wide(l, NV, &p, (uint64_t)step);
                cr_assert_eq(t, best, "row %d, T=%g, step %d: token %d (argmax %d, lowest-ranked %d)", row,
                             (double)temps[k], step, t, best, worst);
            }
        }
    }
    free(all);
    gpt2_model_free(m);
}

/* With a tie at the top, a tiny temperature draws among the tied tokens only, each about half the time. */
Test(sampler, tiny_temperature_splits_ties_by_the_draw) {
    float l[V];
    random_logits(l, V, 11);
    int a = 123, b = 777;
    l[a] = l[b] = 10.0f; /* above every other (random ones are in [-4, 4)) */
    gpt2_sampling p = gpt2_sampling_default();
    p.temperature = 1e-45f;
    p.seed = 5;
    int na = 0, nb = 0;
    for (int step = 0; step < 400; step++) {
        int t = sample(l, V, &p, (uint64_t)step, NULL, 0, 0);
        cr_assert(t == a || t == b, "step %d: token %d is not one of the tied maxima", step, t);
        na += t == a;
        nb += t == b;
    }
    cr_assert(na > 140 && nb > 140, "ties split %d / %d", na, nb);
}

/* A NaN or an infinity anywhere in the row (a broken forward) gives GPT2_SAMPLE_NONFINITE, greedy or
 * not, never a token. */
Test(sampler, non_finite_logits_are_reported_not_sampled) {
    const float bad[] = {NAN, INFINITY, -INFINITY};
    const int where[] = {0, 1, 500, V - 1};
    for (size_t b = 0; b < 3; b++)
        for (size_t w = 0; w < 4; w++)
            for (int mode = 0; mode < 3; mode++) {
                float l[V];
                random_logits(l, V, 21 + b);
                l[where[w]] = bad[b];
                gpt2_sampling p = gpt2_sampling_default();
                if (mode >= 1) p.temperature = 0.8f, p.seed = 9;
                if (mode == 2) p.top_k = 50, p.top_p = 0.9f;
                int t = sample(l, V, &p, 0, NULL, 0, 0);
                cr_assert_eq(t, GPT2_SAMPLE_NONFINITE, "%g at %d, mode %d: got token %d", (double)bad[b], where[w],
                             mode, t);
            }
}

/* The k most likely of a row: by rank (ties to the lower id) and with log_softmax values, against an
 * independent rank count and a long-double log-softmax, on a row with many ties and on random rows. */
Test(sampler, top_logprobs_row_orders_by_rank_with_ties_to_the_lower_id) {
    float tied[7] = {2, 5, 5, 1, 5, 0, 2};
    int ids[20];
    float lp[20];
    gpt2_top_logprobs_row(tied, 7, 5, ids, lp);
    const int want[5] = {1, 2, 4, 0, 6};
    for (int i = 0; i < 5; i++) cr_assert_eq(ids[i], want[i], "tied row: position %d is %d, want %d", i, ids[i], want[i]);
    float l[V];
    for (int seed = 1; seed <= 10; seed++) {
        random_logits(l, V, (uint64_t)seed * 7);
        l[seed * 3] = l[seed * 5]; /* a tie among them, maybe near the top */
        int k = seed * 2;
        gpt2_top_logprobs_row(l, V, k, ids, lp);
        long double mx = l[0], sum = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > mx) mx = l[i];
        for (int i = 0; i < V; i++) sum += expl((long double)l[i] - mx);
        for (int i = 0; i < k; i++) {
            cr_assert_eq(rank_of(l, V, ids[i]), i, "seed %d: position %d holds id %d of rank %d", seed, i, ids[i],
                         rank_of(l, V, ids[i]));
            double ref = (double)((long double)l[ids[i]] - mx - logl(sum));
            cr_assert(fabs(lp[i] - ref) < 1e-5, "seed %d position %d: %.7f, want %.7f", seed, i, lp[i], ref);
            cr_assert_eq(lp[i], gpt2_logprob_row(l, V, ids[i]), "differs from gpt2_logprob_row");
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* no_repeat_ngram_size                                                                             */

/* Whether appending t to seq (n tokens) makes its last n-gram one that seq already holds: the
 * definition of transformers' NoRepeatNGramLogitsProcessor, checked by brute force on seq + [t]. */
static int repeats_if_appended(const int *seq, int n, int ngram, int t) {
    if (n + 1 < ngram) return 0;
    int ext[64];
    memcpy(ext, seq, sizeof(int) * (size_t)n);
    ext[n] = t;
    const int last = n + 1 - ngram; /* start of the new last n-gram */
    for (int j = 0; j < last; j++) {
        int same = 1;
        for (int k = 0; k < ngram && same; k++) same = ext[j + k] == ext[last + k];
        if (same) return 1;
    }
    return 0;
}

/* gpt2_ngram_banned against that definition on random sequences over a small alphabet (so that
 * n-grams repeat), every n-gram size from 1 to past the length, with marks (each token once, in the
 * order of its first window, marks set exactly for the list) and without (one entry per window). */
Test(sampler, ngram_ban_lists_exactly_the_tokens_that_would_repeat) {
    enum { A = 5, NV = 6 }; /* ids 0..4 in the sequences, 5 never: V = 6 */
    uint64_t s = 99;
    int total_banned = 0;
    for (int trial = 0; trial < 400; trial++) {
        int seq[48], n = (int)(trand(&s) % 40);
        for (int i = 0; i < n; i++) seq[i] = (int)(trand(&s) % A);
        if (trial % 7 == 0 && n > 3) seq[n / 2] = NV + 3; /* outside the vocabulary: bans nothing */
        for (int ngram = 0; ngram <= 6; ngram++) {
            int seen[NV] = {0}, list[64], list_all[64];
            int nb = gpt2_ngram_banned(seq, n, ngram, NV, seen, list);
            int na = gpt2_ngram_banned(seq, n, ngram, NV, NULL, list_all);
            int want_windows = 0;
            for (int j = 0; ngram > 0 && j + ngram <= n; j++) {
                int same = 1;
                for (int k = 0; k < ngram - 1 && same; k++) same = seq[j + k] == seq[n - ngram + 1 + k];
                want_windows += same && seq[j + ngram - 1] < NV;
            }
            cr_assert_eq(na, want_windows, "trial %d ngram %d: %d windows listed, %d match", trial, ngram, na,
                         want_windows);
            int want_n = 0;
            for (int t = 0; t < NV; t++) {
                int want = ngram > 0 && repeats_if_appended(seq, n, ngram, t);
                want_n += want;
                cr_assert_eq(seen[t], want, "trial %d ngram %d token %d: mark %d, should be %d", trial, ngram, t,
                             seen[t], want);
                int in_all = 0;
                for (int i = 0; i < na; i++) in_all |= list_all[i] == t;
                cr_assert_eq(in_all, want, "trial %d ngram %d token %d (no marks)", trial, ngram, t);
            }
            cr_assert_eq(nb, want_n, "trial %d ngram %d: %d listed, %d banned", trial, ngram, nb, want_n);
            for (int i = 0; i < nb; i++)
                for (int k = 0; k < i; k++) cr_assert_neq(list[i], list[k], "listed twice");
            /* the marked list is the unmarked one without repeats, in the same order */
            for (int i = 0, k = 0; i < na; i++) {
                int dup = 0;
                for (int q = 0; q < i; q++) dup |= list_all[q] == list_all[i];
                if (!dup) cr_assert_eq(list[k++], list_all[i]);
            }
            total_banned += nb;
        }
    }
    cr_assert_gt(total_banned, 1000, "the sequences banned almost nothing: the check shows nothing");
}

/* A row whose best tokens would repeat a 2-gram of the history: greedy takes the best one not
 * banned, the banned logits are -inf afterwards, a 3-gram ban over the same history bans nothing,
 * penalties still apply to the others, and sampling never draws a banned token (and draws it almost
 * always without the ban). */
Test(sampler, no_repeat_ngram_bans_for_greedy_and_sampling) {
    float l[6] = {1.0f, 3.0f, 4.0f, 0.5f, 3.9f, -1.0f};
    int hist[] = {1, 4, 2, 1, 2, 3, 1}; /* ends with 1; (1, 4) and (1, 2) were seen: 4 and 2 are banned */
    gpt2_sampling p = gpt2_sampling_default();
    gpt2_sample_scratch s;
    cr_assert_eq(gpt2_sample_scratch_init(&s, 6), 0);
    float w[6];
    memcpy(w, l, sizeof w);
    gpt2_sample_req r = {.p = &p, .history = hist, .n_history = 7, .n_prompt = 2, .no_repeat_ngram = 2};
    cr_assert_eq(gpt2_sample_row(w, 6, &r, &s), 1, "the best token not banned");
    cr_assert(isinf(w[4]) && w[4] < 0 && isinf(w[2]) && w[2] < 0, "banned: %g %g", (double)w[4], (double)w[2]);
    cr_assert_eq(w[1], 3.0f);
    for (int i = 0; i < 6; i++) cr_assert_eq(s.count[i], 0, "scratch marks left set");
    r.no_repeat_ngram = 0;
    memcpy(w, l, sizeof w);
    cr_assert_eq(gpt2_sample_row(w, 6, &r, &s), 2, "without the ban: the argmax");
    r.no_repeat_ngram = 3; /* (3, 1, x) never occurred: nothing banned */
    memcpy(w, l, sizeof w);
    cr_assert_eq(gpt2_sample_row(w, 6, &r, &s), 2);
    /* ... 3, 4 now: (4, 2) was seen, so only 2 is banned; with a repetition penalty of 2 over
     * {1, 2, 3, 4}: 1 -> 1.5, 4 -> 1.95, 0 (unseen) stays 1.0 */
    hist[6] = 4;
    l[2] = 9.0f;
    p.repetition_penalty = 2.0f;
    r.no_repeat_ngram = 2;
    memcpy(w, l, sizeof w);
    cr_assert_eq(gpt2_sample_row(w, 6, &r, &s), 4);
    cr_assert(isinf(w[2]) && w[2] < 0);
    cr_assert_float_eq(w[4], 1.95f, 1e-6);
    cr_assert_float_eq(w[1], 1.5f, 1e-6);
    cr_assert_float_eq(w[0], 1.0f, 1e-6);
    /* sampling: 2 holds about 99% of the mass */
    p.repetition_penalty = 1.0f;
    p.temperature = 1.0f;
    int drawn_with = 0, drawn_without = 0;
    for (int k = 0; k < 400; k++) {
        p.seed = (uint64_t)k;
        for (int ban = 0; ban < 2; ban++) {
            memcpy(w, l, sizeof w);
            r.no_repeat_ngram = ban ? 2 : 0;
            int t = gpt2_sample_row(w, 6, &r, &s);
            cr_assert(t >= 0 && t < 6);
            if (t == 2) ++*(ban ? &drawn_with : &drawn_without);
        }
    }
    cr_assert_eq(drawn_with, 0, "a banned token was drawn %d times", drawn_with);
    cr_assert_gt(drawn_without, 300);
    gpt2_sample_scratch_free(&s);
}

/* When the ban takes every token (no_repeat_ngram_size 1 over a history holding the whole
 * vocabulary): greedy gives 0, as torch's argmax of an all -inf row; sampling cannot draw and says
 * so (GPT2_SAMPLE_NONFINITE; transformers' softmax is NaN there). */
Test(sampler, ban_of_every_token) {
    float l[3] = {0.5f, 2.0f, 1.0f};
    int hist[] = {2, 0, 1};
    gpt2_sampling p = gpt2_sampling_default();
    gpt2_sample_scratch s;
    cr_assert_eq(gpt2_sample_scratch_init(&s, 3), 0);
    gpt2_sample_req r = {.p = &p, .history = hist, .n_history = 3, .n_prompt = 1, .no_repeat_ngram = 1};
    float w[3];
    memcpy(w, l, sizeof w);
    cr_assert_eq(gpt2_sample_row(w, 3, &r, &s), 0);
    p.temperature = 0.7f;
    memcpy(w, l, sizeof w);
    cr_assert_eq(gpt2_sample_row(w, 3, &r, &s), GPT2_SAMPLE_NONFINITE);
    r.n_history = 2; /* 1 not seen yet: the only token left */
    memcpy(w, l, sizeof w);
    cr_assert_eq(gpt2_sample_row(w, 3, &r, &s), 1);
    gpt2_sample_scratch_free(&s);
}
