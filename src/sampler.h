/* sampler.h: turning one row of logits into one token, identically on every backend.
 *
 * Order of operations (as Hugging Face's logits processors): repetition penalty over prompt and
 * generated tokens, frequency and presence penalties over generated tokens, the n-gram ban
 * (no_repeat_ngram_size: -inf), then temperature, top-k, top-p, and a draw. (transformers runs
 * NoRepeatNGramLogitsProcessor right after the repetition penalty; a banned logit is -inf whatever
 * a penalty does to it, so the ban after the OpenAI-style penalties gives the same row.)
 * Temperature 0 is greedy (argmax after penalties; ties go to the lowest id).
 * The draw uses one uniform number per step derived from (seed, step) alone, so a request's output
 * does not depend on what else is in the batch.
 */
#ifndef GPT2_SAMPLER_H
#define GPT2_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "gpt2.h"

/* gpt2_sampling and gpt2_sampling_default are public: see gpt2.h. */

typedef struct {
    const gpt2_sampling *p;
    uint64_t step;      /* index of the token being generated (0 for the first) */
    const int *history; /* (n_history) prompt tokens then generated tokens */
    int n_history;
    int n_prompt;       /* the first n_prompt of history are the prompt */
    int no_repeat_ngram; /* no_repeat_ngram_size, 0 off: gpt2_ngram_banned(history) get -inf */
} gpt2_sample_req;

/* The uniform number in [0, 1) for (seed, step): splitmix64, 24-bit mantissa. */
float gpt2_sample_uniform(uint64_t seed, uint64_t step);

/* Scratch for gpt2_sample_row: n_vocab ints and n_vocab floats. */
typedef struct {
    int *idx;     /* (V) */
    float *prob;  /* (V) */
    int *count;   /* (V) token counts for penalties */
    int n_vocab;
} gpt2_sample_scratch;
int gpt2_sample_scratch_init(gpt2_sample_scratch *s, int n_vocab); /* 0 ok, -1 out of memory */
void gpt2_sample_scratch_free(gpt2_sample_scratch *s);

/* Returned instead of a token when the row holds a NaN or an infinity (a broken forward); the
 * scheduler reports it as an error of that request. Backends return it from sample() too. */
enum { GPT2_SAMPLE_NONFINITE = -1 };

/* no_repeat_ngram_size, as transformers' NoRepeatNGramLogitsProcessor: the tokens t that would
 * complete an n-gram seq (n tokens: prompt then generated) already holds, i.e. those for which
 * (seq[n - ngram + 1 .. n), t) occurs in seq; ngram 1 bans every token of seq. None when ngram <= 0
 * or n < ngram. Writes them to banned and returns their count:
 *   seen != NULL: (V) marks, all 0 on entry; each banned token is listed once, in the order of the
 *     first window that bans it, and left marked (seen[t] = 1): the caller clears the marks through
 *     the list. Count <= min(V, n - ngram + 1).
 *   seen == NULL: one entry per matching window (a token may repeat). Count <= n - ngram + 1.
 * Ids outside 0..V-1 in seq ban nothing. One function for the sampler, the CUDA sampler's staging
 * and beam search. */
int gpt2_ngram_banned(const int *seq, int n, int ngram, int V, int *seen, int *banned);

/* Applies penalties, the n-gram ban and temperature to logits in place (V floats) and returns the
 * chosen token, or GPT2_SAMPLE_NONFINITE. Temperature scaling is (l - max l) / T, finite for every
 * T > 0. When the ban leaves no token, greedy returns 0 (torch's argmax of an all -inf row) and
 * sampling GPT2_SAMPLE_NONFINITE (transformers fails there too: softmax of all -inf is NaN). */
int gpt2_sample_row(float *logits, int n_vocab, const gpt2_sample_req *r, gpt2_sample_scratch *s);

/* log_softmax(logits)[token] over n_vocab raw logits, in double with the maximum subtracted. */
float gpt2_logprob_row(const float *logits, int n_vocab, int token);

/* The k (1..n_vocab) most likely tokens of one raw logits row and their log_softmax values (as
 * gpt2_logprob_row computes them): ids (k), logprobs (k), most likely first, ties to the lower id. */
void gpt2_top_logprobs_row(const float *logits, int n_vocab, int k, int *ids, float *logprobs);

#endif /* GPT2_SAMPLER_H */
