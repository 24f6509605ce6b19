/* beam.c: the host side of beam search, following transformers' _beam_search step for step
 * (generation/utils.py, 5.x: _get_top_k_continuations, _get_running_beams_for_next_iteration,
 * _update_finished_beams, _check_early_stop_heuristic, _beam_search_has_unfinished_sequences) for a
 * batch of one. Scores are float32 as there: log_softmax values added to the running score in
 * float32, finished scores divided in float32 by float(length^penalty) computed in double.
 *
 * What transformers computes over all K x V continuations is done here over each beam's 2K best
 * (the best 2K of all are among them). Before the first step every beam holds the prompt and beams
 * 1..K-1 score -1e9, so only beam 0's continuations can be chosen: the first step reads one row. */
#include "beam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "util.h"

#define NEG_BIG (-1.0e9f) /* transformers' "very large negative" */

void gpt2_beam_free(gpt2_beam_state *b) {
    if (!b) return;
    free(b->run_score);
    free(b->fin_score);
    free(b->fin_len);
    free(b->fin_tokens);
    free(b->fin_lp);
    free(b->row);
    free(b->cand_beam);
    free(b->cand_tok);
    free(b->cand_acc);
    free(b->cand_lp);
    free(b->order);
    free(b->sel);
    free(b->ban);
    free(b->ban_list);
    memset(b, 0, sizeof *b);
}

gpt2_status gpt2_beam_init(gpt2_beam_state *b, int K, int V, int P, int max_new, int eos, int ngram, int early,
                           float length_penalty, gpt2_error *err) {
    memset(b, 0, sizeof *b);
    size_t fin, cand;
    if (K < 1 || max_new < 1 || gpt2_mul_size((size_t)K, (size_t)max_new, &fin) ||
        gpt2_mul_size((size_t)K, 2 * (size_t)K, &cand))
        return gpt2_fail(err, GPT2_ERR_LIMIT, "num_beams %d: beam state for %d tokens overflows", K, max_new);
    *b = (gpt2_beam_state){.K = K, .V = V, .P = P, .max_len = P + max_new, .eos = eos, .ngram = ngram,
                           .early = early, .length_penalty = length_penalty, .cur_len = P, .n_running = 1,
                           .unsat = 1};
    b->run_score = calloc((size_t)K, sizeof(float));
    b->fin_score = calloc((size_t)K, sizeof(float));
    b->fin_len = calloc((size_t)K, sizeof(int));
    b->fin_tokens = calloc(fin, sizeof(int));
    b->fin_lp = calloc(fin, sizeof(float));
    b->row = calloc((size_t)V, sizeof(float));
    b->cand_beam = calloc(cand, sizeof(int));
    b->cand_tok = calloc(cand, sizeof(int));
    b->cand_acc = calloc(cand, sizeof(float));
    b->cand_lp = calloc(cand, sizeof(float));
    b->order = calloc(cand, sizeof(int));
    b->sel = calloc(2 * (size_t)K, sizeof(int));
    b->ban = calloc((size_t)V, sizeof(int));
    b->ban_list = calloc((size_t)b->max_len, sizeof(int));
    if (!b->run_score || !b->fin_score || !b->fin_len || !b->fin_tokens || !b->fin_lp || !b->row || !b->cand_beam ||
        !b->cand_tok || !b->cand_acc || !b->cand_lp || !b->order || !b->sel || !b->ban ||
        !b->ban_list) {
        gpt2_beam_free(b);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "num_beams %d: out of memory for the beam state", K);
    }
    return GPT2_OK;
}

/* Candidates ordered by accumulated score, ties to the lower flat index (beam * V + token). */
static int by_acc(const void *x, const void *y, void *ctx) {
    const gpt2_beam_state *b = ctx;
    int i = *(const int *)x, j = *(const int *)y;
    float a = b->cand_acc[i], c = b->cand_acc[j];
    if (a != c) return a > c ? -1 : 1;
    long fi = (long)b->cand_beam[i] * b->V + b->cand_tok[i];
    long fj = (long)b->cand_beam[j] * b->V + b->cand_tok[j];
    return (fi > fj) - (fi < fj);
}

/* Adds a finished hypothesis (parent's generated tokens + tok) when it ranks among the best K. */
static void add_finished(gpt2_beam_state *b, float score, const int *gen, const float *gen_lp, int n_gen, int tok,
                         float lp) {
    const int cap = b->max_len - b->P, K = b->K;
    int at = b->n_fin;
    while (at > 0 && score > b->fin_score[at - 1]) at--; /* after equal scores: older ones first */
    if (at >= K) return;
    int last = b->n_fin < K ? b->n_fin : K - 1;
    for (int i = last; i > at; i--) { /* shift down, dropping the K-th when full */
        b->fin_score[i] = b->fin_score[i - 1];
        b->fin_len[i] = b->fin_len[i - 1];
        memcpy(b->fin_tokens + (size_t)i * cap, b->fin_tokens + (size_t)(i - 1) * cap, sizeof(int) * (size_t)cap);
        memcpy(b->fin_lp + (size_t)i * cap, b->fin_lp + (size_t)(i - 1) * cap, sizeof(float) * (size_t)cap);
    }
    b->fin_score[at] = score;
    b->fin_len[at] = n_gen + 1;
    memcpy(b->fin_tokens + (size_t)at * cap, gen, sizeof(int) * (size_t)n_gen);
    memcpy(b->fin_lp + (size_t)at * cap, gen_lp, sizeof(float) * (size_t)n_gen);
    b->fin_tokens[(size_t)at * cap + n_gen] = tok;
    b->fin_lp[(size_t)at * cap + n_gen] = lp;
    if (b->n_fin < K) b->n_fin++;
}

gpt2_beam gpt2_beam_default(void) {
    gpt2_beam d = {.num_beams = 1, .length_penalty = 1.0f, .early_stopping = 0, .no_repeat_ngram_size = 0, .n = 1};
    return d;
}

int gpt2_beam_step(gpt2_beam_state *b, const float *const *rows, const int *const *hist, const float *const *lps,
                   gpt2_beam_next *next) {
    const int K = b->K, V = b->V, K2 = 2 * K, n_gen = b->cur_len - b->P;
    int n_cand = 0;
    /* a. each running beam's 2K best continuations: log_softmax of the raw row, banned n-grams out */
    for (int r = 0; r < b->n_running; r++) {
        const float *l = rows[r];
        float mx = l[0];
        for (int v = 0; v < V; v++) {
            if (!isfinite(l[v])) return -1;
            if (l[v] > mx) mx = l[v];
        }
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp((double)l[v] - (double)mx);
        const double ls = log(sum);
        /* the banned tokens, marked in ban (gpt2_ngram_banned, as the sampler's) */
        const int n_ban = gpt2_ngram_banned(hist[r], b->cur_len, b->ngram, V, b->ban, b->ban_list);
        int *ids = b->order; /* scratch: this beam's best, by raw logit (same order as log_softmax) */
        int n = 0;
        for (int v = 0; v < V; v++) {
            if (b->ban[v]) continue;
            if (n == K2 && !(l[v] > l[ids[K2 - 1]])) continue;
            int at = n < K2 ? n++ : K2 - 1;
            while (at > 0 && l[v] > l[ids[at - 1]]) {
                ids[at] = ids[at - 1];
                at--;
            }
            ids[at] = v;
        }
        for (int i = 0; i < n_ban; i++) b->ban[b->ban_list[i]] = 0;
        for (int i = 0; i < n; i++) {
            float lp = (float)((double)l[ids[i]] - (double)mx - ls);
            b->cand_beam[n_cand] = r;
            b->cand_tok[n_cand] = ids[i];
            b->cand_lp[n_cand] = lp;
            b->cand_acc[n_cand] = b->run_score[r] + lp; /* float32, as the running scores are */
            n_cand++;
        }
    }
    /* b. the best 2K of all */
    for (int i = 0; i < n_cand; i++) b->order[i] = i;
    qsort_r(b->order, (size_t)n_cand, sizeof(int), by_acc, b);
    const int n_sel = n_cand < K2 ? n_cand : K2;
    memcpy(b->sel, b->order, sizeof(int) * (size_t)n_sel);
    int all_hit = 1, n_next = 0;
    int hit[2 * GPT2_MAX_BEAMS]; /* K <= GPT2_MAX_BEAMS (gpt2_engine_submit) */
    for (int i = 0; i < n_sel; i++) {
        int c = b->sel[i];
        hit[i] = (b->eos >= 0 && b->cand_tok[c] == b->eos) || b->cur_len + 1 >= b->max_len;
        all_hit &= hit[i];
    }
    /* c. the next running beams: the best K that did not just stop (then, if too few, those that did,
     * with their score lowered by 1e9, as transformers keeps them) */
    float new_score[GPT2_MAX_BEAMS];
    for (int pass = 0; pass < 2 && n_next < K; pass++)
        for (int i = 0; i < n_sel && n_next < K; i++) {
            if (hit[i] != pass) continue;
            int c = b->sel[i];
            next[n_next] = (gpt2_beam_next){.parent = b->cand_beam[c], .token = b->cand_tok[c], .logprob = b->cand_lp[c]};
            new_score[n_next++] = pass ? b->cand_acc[c] + NEG_BIG : b->cand_acc[c];
        }
    /* d. finished: those of the best K candidates that stopped, score / length^penalty */
    const float denom = (float)pow((double)(n_gen + 1), (double)b->length_penalty);
    for (int i = 0; i < n_sel && i < K; i++) {
        if (!hit[i]) continue;
        int c = b->sel[i], r = b->cand_beam[c];
        add_finished(b, b->cand_acc[c] / denom, hist[r] + b->P, lps[r], n_gen, b->cand_tok[c], b->cand_lp[c]);
    }
    for (int i = 0; i < n_next; i++) b->run_score[i] = new_score[i];
    b->n_running = n_next;
    b->cur_len++;
    /* e. can a running beam still beat the worst finished one? */
    if (b->n_fin == K) {
        int best_len = b->early == 2 && b->length_penalty > 0.0f ? b->max_len - b->P : b->cur_len - b->P;
        float best = b->run_score[0] / (float)pow((double)best_len, (double)b->length_penalty);
        b->unsat = b->unsat && best > b->fin_score[K - 1];
    }
    b->done = !b->unsat || (b->early == 1 && b->n_fin == K) || all_hit || n_next < K;
    return 0;
}
