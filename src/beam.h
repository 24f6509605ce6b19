/* beam.h (private): one beam search's bookkeeping on the host, step by step, with the semantics of
 * transformers' GenerationMixin._beam_search (5.x, batch of one, do_sample=False). The scheduler
 * (generate.c) owns the slots and the forwards; this module only chooses, from each running beam's
 * logits row, the next running beams and the finished hypotheses. */
#ifndef GPT2_BEAM_H
#define GPT2_BEAM_H

#include "gpt2.h"

/* One new running beam: the running beam it extends (index into the step's inputs) and its token. */
typedef struct {
    int parent;
    int token;
    float logprob; /* log_softmax(raw row)[token] */
} gpt2_beam_next;

typedef struct {
    int K, V;           /* beams, vocabulary */
    int P;              /* prompt tokens */
    int max_len;        /* P + most generated tokens */
    int eos;            /* end-of-text id, -1: none (or ignored) */
    int ngram;          /* no_repeat_ngram_size, 0 off */
    int early;          /* 0 heuristic, 1 true, 2 never */
    float length_penalty;
    int cur_len;        /* tokens of every running beam (prompt included) */
    int n_running;      /* 1 before the first step, then K */
    int unsat;          /* transformers' is_early_stop_heuristic_unsatisfied */
    int done;
    float *run_score;   /* (K) running beams' scores, best first */
    /* the finished hypotheses, best first */
    int n_fin;
    float *fin_score;   /* (K) */
    int *fin_len;       /* (K) generated tokens, end-of-text included */
    int *fin_tokens;    /* (K, max_len - P) */
    float *fin_lp;      /* (K, max_len - P) */
    /* scratch */
    float *row;         /* (V) */
    int *cand_beam, *cand_tok; /* (K * 2K) */
    float *cand_acc, *cand_lp; /* (K * 2K) */
    int *order;         /* (K * 2K) */
    int *sel;           /* (2K) indices into the candidates, best first */
    int *ban;           /* (V) banned-token marks of one beam, all 0 between beams */
    int *ban_list;      /* (max_len) the marked tokens (gpt2_ngram_banned) */
} gpt2_beam_state;

/* Allocates a search; GPT2_ERR_NOMEM / GPT2_ERR_LIMIT (sizes overflow). */
gpt2_status gpt2_beam_init(gpt2_beam_state *b, int K, int V, int P, int max_new, int eos, int ngram, int early,
                           float length_penalty, gpt2_error *err);
void gpt2_beam_free(gpt2_beam_state *b);

enum { GPT2_MAX_BEAMS = 64 };

/* One step: rows[i] (V) running beam i's raw logits; hist[i] (cur_len) their tokens, lps[i]
 * (cur_len - P) their generated tokens' logprobs. Fills next (K) with the new running beams (best
 * first), updates the finished set, and sets b->done when the search is over (then next is unused).
 * After it, cur_len has grown by one. Returns -1 when a row is not finite (the request fails). */
int gpt2_beam_step(gpt2_beam_state *b, const float *const *rows, const int *const *hist, const float *const *lps,
                   gpt2_beam_next *next);

#endif /* GPT2_BEAM_H */
