/* sampler.c: one row of logits -> one token. The CUDA sampling kernels follow the same steps, in the
 * same order, with the same tie-breaking, so that equal logits give equal tokens on every backend. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

gpt2_sampling gpt2_sampling_default(void) {
    gpt2_sampling p = {.temperature = 0.0f,
                       .top_k = 0,
                       .top_p = 1.0f,
                       .repetition_penalty = 1.0f,
                       .frequency_penalty = 0.0f,
                       .presence_penalty = 0.0f,
                       .seed = 0};
    return p;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

float gpt2_sample_uniform(uint64_t seed, uint64_t step) {
    uint64_t r = splitmix64(splitmix64(seed) ^ (step * 0xD1B54A32D192ED03ull));
    return (float)(r >> 40) * (1.0f / 16777216.0f); /* 24 bits: exact in float, < 1 */
}

int gpt2_sample_scratch_init(gpt2_sample_scratch *s, int n_vocab) {
    memset(s, 0, sizeof *s);
    s->idx = malloc(sizeof(int) * (size_t)n_vocab);
    s->prob = malloc(sizeof(float) * (size_t)n_vocab);
    s->count = calloc((size_t)n_vocab, sizeof(int));
    s->n_vocab = n_vocab;
    if (!s->idx || !s->prob || !s->count) {
        gpt2_sample_scratch_free(s);
        return -1;
    }
    return 0;
}

void gpt2_sample_scratch_free(gpt2_sample_scratch *s) {
    free(s->idx);
    free(s->prob);
    free(s->count);
    memset(s, 0, sizeof *s);
}

/* Penalties, in place. Repetition (Hugging Face): each distinct token of prompt + generated once,
 * divide a positive logit by the penalty, multiply a negative one. Frequency and presence (OpenAI):
 * over generated tokens, subtract count * frequency + (count > 0) * presence. */
static void apply_penalties(float *logits, int V, const gpt2_sample_req *r, int *count) {
    const gpt2_sampling *p = r->p;
    int rep = p->repetition_penalty != 1.0f;
    int freq = p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
    if (!rep && !freq) return;
    if (rep) {
        /* count doubles as a "seen" mark here, cleared after */
        for (int i = 0; i < r->n_history; i++) {
            int t = r->history[i];
            if (t < 0 || t >= V || count[t]) continue;
            count[t] = 1;
            float x = logits[t];
            logits[t] = x > 0 ? x / p->repetition_penalty : x * p->repetition_penalty;
        }
        for (int i = 0; i < r->n_history; i++) {
            int t = r->history[i];
            if (t >= 0 && t < V) count[t] = 0;
        }
    }
    if (freq) {
        for (int i = r->n_prompt; i < r->n_history; i++) {
            int t = r->history[i];
            if (t >= 0 && t < V) count[t]++;
        }
        for (int i = r->n_prompt; i < r->n_history; i++) {
            int t = r->history[i];
            if (t < 0 || t >= V || count[t] == 0) continue;
            logits[t] -= (float)count[t] * p->frequency_penalty + p->presence_penalty;
            count[t] = 0; /* applied once per distinct token */
        }
    }
}

int gpt2_ngram_banned(const int *seq, int n, int ngram, int V, int *seen, int *banned) {
    if (ngram <= 0 || n < ngram) return 0;
    const int pre = ngram - 1;
    const int *suffix = seq + n - pre; /* the n-gram's first ngram - 1 tokens, if the next token completes it */
    int nb = 0;
    for (int j = 0; j + ngram <= n; j++) {
        if (memcmp(seq + j, suffix, sizeof(int) * (size_t)pre)) continue;
        const int t = seq[j + pre];
        if (t < 0 || t >= V) continue;
        if (seen) {
            if (seen[t]) continue;
            seen[t] = 1;
        }
        banned[nb++] = t;
    }
    return nb;
}

/* The n-gram ban: -inf for the tokens gpt2_ngram_banned lists (s->idx holds the list: at most V
 * distinct tokens; s->count is all 0 outside apply_penalties and is left so). */
static void apply_ngram_ban(float *logits, int V, const gpt2_sample_req *r, gpt2_sample_scratch *s) {
    const int nb = gpt2_ngram_banned(r->history, r->n_history, r->no_repeat_ngram, V, s->count, s->idx);
    for (int i = 0; i < nb; i++) {
        logits[s->idx[i]] = -INFINITY;
        s->count[s->idx[i]] = 0;
    }
}

/* Ties go to the lowest id everywhere, so the order is total. */
static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (l[i] > l[j]) return -1;
    if (l[i] < l[j]) return 1;
    return (i > j) - (i < j);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int gpt2_sample_row(float *logits, int V, const gpt2_sample_req *r, gpt2_sample_scratch *s) {
    const gpt2_sampling *p = r->p;
    /* A NaN or Inf logit means the forward broke down: no token is a meaningful answer. */
    for (int i = 0; i < V; i++)
        if (!isfinite(logits[i])) return GPT2_SAMPLE_NONFINITE;
    apply_penalties(logits, V, r, s->count);
    if (r->no_repeat_ngram > 0) apply_ngram_ban(logits, V, r, s);
    if (p->temperature <= 0.0f || p->top_k == 1) return argmax(logits, V);

    /* Subtract the row max before dividing by the temperature: every scaled logit is <= 0 and the
     * max is exactly 0, so no temperature can overflow it to inf (l / 1e-45 would, and the softmax
     * would then be NaN); exp(-inf) is 0. For tiny T this tends to greedy (ties split by the draw).
     * kernels/sample.cu follows the same rule. */
    float mx = logits[argmax(logits, V)];
    if (!isfinite(mx)) return GPT2_SAMPLE_NONFINITE; /* a penalty overflowed, or the ban left no token */
    for (int i = 0; i < V; i++) logits[i] = (logits[i] - mx) / p->temperature;

    /* Candidates in descending order; top-k keeps the first k. */
    int n = V;
    for (int i = 0; i < V; i++) s->idx[i] = i;
    qsort_r(s->idx, (size_t)V, sizeof(int), by_logit_desc, logits);
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;

    /* Softmax over the candidates (the first is 0, the max), in double for the normaliser. */
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        s->prob[i] = expf(logits[s->idx[i]]);
        sum += s->prob[i];
    }
    /* top-p: the smallest prefix whose mass reaches top_p (at least one token). */
    if (p->top_p < 1.0f) {
        double cum = 0.0, target = (double)p->top_p * sum;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += s->prob[i];
            if (cum >= target) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += s->prob[i];
    }
    /* Inverse CDF at one uniform number. */
    double u = (double)gpt2_sample_uniform(p->seed, r->step) * sum, cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum) return s->idx[i];
    }
    return s->idx[n - 1];
}

float gpt2_logprob_row(const float *logits, int V, int token) {
    float mx = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - (double)mx);
    return (float)((double)logits[token] - (double)mx - log(sum));
}

void gpt2_top_logprobs_row(const float *logits, int V, int k, int *ids, float *logprobs) {
    float mx = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - (double)mx);
    const double ls = log(sum);
    /* insertion into the k best so far: a later (higher) id goes after equal logits */
    int n = 0;
    for (int i = 0; i < V; i++) {
        float l = logits[i];
        if (n == k && !(l > logits[ids[k - 1]])) continue;
        int at = n < k ? n++ : k - 1;
        while (at > 0 && l > logits[ids[at - 1]]) {
            ids[at] = ids[at - 1];
            at--;
        }
        ids[at] = i;
    }
    for (int i = 0; i < k; i++) logprobs[i] = (float)((double)logits[ids[i]] - (double)mx - ls); /* as gpt2_logprob_row */
}
