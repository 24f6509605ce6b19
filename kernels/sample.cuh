/* sample.cuh: sampling one token per logits row on the device, the same way as gpt2_sample_row. */
#ifndef GPT2_KERNELS_SAMPLE_CUH
#define GPT2_KERNELS_SAMPLE_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* One request, as the host prepares it (plain C, copied to the device as is). */
typedef struct {
    float temperature;        /* > 0 unless greedy */
    float top_p;              /* < 1: nucleus filter */
    float repetition_penalty; /* != 1: on */
    float frequency_penalty;
    float presence_penalty;
    float uniform;            /* gpt2_sample_uniform(seed, step), drawn on the host */
    int top_k;                /* > 0 and < V: keep the top_k best */
    int greedy;               /* temperature <= 0 or top_k == 1: argmax after penalties */
    int row;                  /* logits row to read */
    int hist_off;             /* history of this request: history[hist_off .. hist_off + n_hist) */
    int n_hist;               /* prompt then generated tokens (0 when no penalty is on) */
    int n_prompt;             /* the first n_prompt of them are the prompt */
    int ban_off;              /* no_repeat_ngram_size: the banned tokens, history[ban_off .. ban_off + n_ban) */
    int n_ban;                /* (gpt2_ngram_banned on the host, a token may repeat), 0: none */
} gpt2_cuda_sample_params;

/* Device scratch for up to `rows` requests per call; count must be all zero before the first call
 * (each call leaves it zero again). */
typedef struct {
    int rows;    /* G */
    int V;
    float *keys; /* (G, V) penalised, tempered logits of each request */
    int *count;  /* (G, V) token counts for the penalties */
} gpt2_cuda_sample_scratch;

/* out_tokens (n) on the device: one token per request i reading logits row params[i].row, n <= G.
 *   logits (rows, ld) float, ld >= V, columns 0..V-1 read, left unchanged; params (n) and history on
 *   the device (each request's penalty history and its banned tokens).
 * Steps as gpt2_sample_row: repetition penalty over the distinct tokens of the whole history, then
 * frequency and presence penalties over the generated part, then -inf for each banned token (the
 * n-gram ban, listed in history by the host); greedy rows take the argmax (lowest id on
 * ties, NaN below every number, 0 when logit 0 is NaN); the others take (l - max l) / temperature
 * and, in the order of a descending sort with ties by lowest id (found by radix selection, never
 * sorted), keep the top_k first, take the probabilities exp(l - max) over them, keep the shortest
 * prefix whose mass reaches top_p, and return the token where the running sum first exceeds
 * uniform * sum. Two launches at most (penalties + argmax or tempering; the selection), one block per
 * request.
 * out_logprobs (n) on the device, or NULL: log_softmax of the raw row (before penalties and
 * temperature) at the chosen token.
 * any_sampled: 0 when every request is greedy (skips the selection launch). */
cudaError_t sample_cuda(int *out_tokens, float *out_logprobs, const float *logits, int V, int ld,
                        const gpt2_cuda_sample_params *params, const int *history, int n, int any_sampled,
                        const gpt2_cuda_sample_scratch *scr, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
