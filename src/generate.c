/* generate.c: the scheduler behind gpt2_engine_step. Continuous batching over the backend's KV-cache
 * slots: queued requests are prefilled into free slots (long prompts in pieces of the step's token
 * budget), every slot that holds its whole prompt decodes one token per step, and a slot freed by a
 * finished or cancelled request takes the next queued request at the next step, so the batch stays
 * full until the queue runs out. Backend-agnostic: it only calls forward and sample. */
#include "generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "util.h"

const char *gpt2_finish_name(gpt2_finish f) {
    switch (f) {
    case GPT2_FINISH_LENGTH: return "length";
    case GPT2_FINISH_STOP: return "stop";
    case GPT2_FINISH_CANCELLED: return "cancelled";
    case GPT2_FINISH_ERROR: return "error";
    }
    return "unknown";
}

void gpt2_job_free(gpt2_job *j) {
    if (!j) return;
    free(j->prompt);
    free(j->echo_lp);
    free(j->echo_top_ids);
    free(j->echo_top_lp);
    free(j->gen_top_ids);
    free(j->gen_top_lp);
    free(j->beam_slot);
    free(j->own_slot);
    gpt2_beam_free(&j->bs);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->stop);
    free(j);
}

/* Largest m <= n such that text[0..m) does not end inside a UTF-8 sequence that could still be
 * completed by later bytes. Invalid bytes count as complete: they will never become valid. */
static size_t utf8_safe_prefix(const char *text, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)text[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: look further back */
        int need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return (size_t)need > back ? n - back : n;
    }
    return n;
}

/* Calls the job's callback unless it has dropped out; a nonzero return drops it. */
static void deliver(gpt2_job *j, gpt2_event *ev) {
    if (j->dropped || !j->on_event) return;
    ev->id = j->id;
    ev->user = j->user;
    if (j->on_event(ev)) j->dropped = 1;
}

/* TEXT events up to byte `upto` and TOKEN events for the tokens that end at or before `tok_upto`. */
static void emit(const gpt2_engine *e, gpt2_slot *sl, size_t upto, size_t tok_upto) {
    gpt2_job *j = sl->job;
    const int *gen = sl->hist + (sl->n_hist - sl->n_gen);
    while (sl->n_token_events < sl->n_gen && sl->tok_end[sl->n_token_events] <= tok_upto) {
        int k = sl->n_token_events++;
        gpt2_event ev = {.kind = GPT2_EVENT_TOKEN, .token = gen[k], .logprob = sl->lp[k], .n_top = j->n_top};
        if (j->n_top > 0) {
            ev.top_ids = j->gen_top_ids + (size_t)k * (size_t)j->n_top;
            ev.top_logprobs = j->gen_top_lp + (size_t)k * (size_t)j->n_top;
        }
        size_t n;
        if (gpt2_token_bytes(e->tok, gen[k], &ev.bytes, &n, NULL) != GPT2_OK) {
            ev.bytes = "";
            n = 0;
        }
        ev.n_bytes = n;
        deliver(j, &ev);
    }
    if (upto > sl->emitted) {
        gpt2_event ev = {.kind = GPT2_EVENT_TEXT, .text = sl->text + sl->emitted, .n_text = upto - sl->emitted};
        sl->emitted = upto;
        deliver(j, &ev);
    }
}

/* Appends a token's bytes to the slot's text. */
static gpt2_status append_text(const gpt2_engine *e, gpt2_slot *sl, int token, gpt2_error *err) {
    const char *b;
    size_t n;
    gpt2_status st = gpt2_token_bytes(e->tok, token, &b, &n, err);
    if (st != GPT2_OK) return st;
    if (sl->n_text + n + 1 > sl->cap_text) {
        size_t cap = (sl->cap_text ? sl->cap_text * 2 : 256) + n + 1;
        char *t = realloc(sl->text, cap);
        if (!t) return gpt2_fail(err, GPT2_ERR_NOMEM, "generate: out of memory for output text");
        sl->text = t;
        sl->cap_text = cap;
    }
    memcpy(sl->text + sl->n_text, b, n);
    sl->n_text += n;
    sl->text[sl->n_text] = '\0';
    return GPT2_OK;
}

/* Position of the first stop string in the text, searching only where a new one can start; -1 if none. */
static long find_stop(const gpt2_job *j, const gpt2_slot *sl, size_t old_len) {
    long best = -1;
    for (int i = 0; i < j->n_stop; i++) {
        size_t k = strlen(j->stop[i]);
        if (k == 0 || k > sl->n_text) continue;
        size_t from = old_len + 1 > k ? old_len + 1 - k : 0;
        const char *hit = memmem(sl->text + from, sl->n_text - from, j->stop[i], k);
        if (hit && (best < 0 || hit - sl->text < best)) best = hit - sl->text;
    }
    return best;
}

/* Moves a finished job to the done list (freed at the end of the step). */
static void retire(gpt2_engine *e, gpt2_job *j) {
    j->qnext = e->done;
    e->done = j;
}

/* Ends the request in a slot: the rest of its events, FINISH, and the slot is free. */
static void finish(gpt2_engine *e, gpt2_slot *sl, gpt2_finish reason) {
    gpt2_job *j = sl->job;
    emit(e, sl, sl->n_text, sl->n_text);
    gpt2_event ev = {.kind = GPT2_EVENT_FINISH, .finish = reason, .tokens = sl->hist + (sl->n_hist - sl->n_gen),
                     .logprobs = sl->lp, .n_tokens = sl->n_gen, .text = sl->text ? sl->text : "",
                     .n_text = sl->n_text, .prompt_tokens = j->n_prompt};
    deliver(j, &ev);
    sl->job = NULL;
    retire(e, j);
}

/* The backend's sampler found a non-finite logits row for this slot's request: that request fails
 * alone (FINISH with GPT2_FINISH_ERROR, its slot freed), since a token drawn from NaNs would be
 * garbage passed off as output. Held-back text is not flushed. */
static void fail_nonfinite(gpt2_engine *e, gpt2_slot *sl) {
    gpt2_job *j = sl->job;
    char msg[256];
    if (j->no_repeat_ngram > 0) /* a sampled row whose every token the ban took is -inf too (sampler.h) */
        snprintf(msg, sizeof msg,
                 "the logits for generated token %d are not finite (NaN or Inf), or no_repeat_ngram_size %d bans "
                 "every token: no token can be drawn", sl->n_gen, j->no_repeat_ngram);
    else
        snprintf(msg, sizeof msg,
                 "the logits for generated token %d are not finite (NaN or Inf): the model's forward pass broke down",
                 sl->n_gen);
    gpt2_event ev = {.kind = GPT2_EVENT_FINISH, .finish = GPT2_FINISH_ERROR, .tokens = sl->hist + (sl->n_hist - sl->n_gen),
                     .logprobs = sl->lp, .n_tokens = sl->n_gen, .text = sl->text ? sl->text : "",
                     .n_text = sl->n_text, .prompt_tokens = j->n_prompt, .error = msg};
    deliver(j, &ev);
    sl->job = NULL;
    retire(e, j);
}

/* A request that ends without a slot (cancelled while queued, or max_tokens 0). */
static void finish_unstarted(gpt2_engine *e, gpt2_job *j, gpt2_finish reason) {
    static const int no_tokens[1];
    static const float no_logprobs[1];
    gpt2_event ev = {.kind = GPT2_EVENT_FINISH, .finish = reason, .tokens = no_tokens, .logprobs = no_logprobs,
                     .text = "", .prompt_tokens = j->n_prompt};
    deliver(j, &ev);
    retire(e, j);
}

/* Takes a sampled token into a slot; finishes the request when it is done. */
static gpt2_status take_token(gpt2_engine *e, gpt2_slot *sl, int token, float logprob, gpt2_error *err) {
    const gpt2_job *j = sl->job;
    if (token == e->eot && !j->ignore_eot) {
        finish(e, sl, GPT2_FINISH_STOP);
        return GPT2_OK;
    }
    sl->hist[sl->n_hist++] = token;
    sl->lp[sl->n_gen] = logprob;
    sl->n_gen++;
    size_t old_len = sl->n_text;
    gpt2_status st = append_text(e, sl, token, err);
    if (st != GPT2_OK) return st;
    sl->tok_end[sl->n_gen - 1] = sl->n_text;
    long at = find_stop(j, sl, old_len);
    if (at >= 0) {
        sl->n_text = (size_t)at;
        while (sl->n_gen > 0 && sl->tok_end[sl->n_gen - 1] > (size_t)at) {
            sl->n_gen--;
            sl->n_hist--;
        }
        finish(e, sl, GPT2_FINISH_STOP);
        return GPT2_OK;
    }
    if (sl->n_gen >= j->max_tokens || sl->n_hist >= e->max_seq) {
        finish(e, sl, GPT2_FINISH_LENGTH);
        return GPT2_OK;
    }
    /* Bytes from here on may still turn out to start a stop string. */
    size_t hold = j->max_stop;
    size_t safe = sl->n_text > hold ? sl->n_text - (hold ? hold - 1 : 0) : 0;
    emit(e, sl, utf8_safe_prefix(sl->text, safe), safe);
    return GPT2_OK;
}

/* The first n_rows logits rows of the last forward into e->logits_h (allocated on first use). */
static gpt2_status read_rows(gpt2_engine *e, int n_rows, gpt2_error *err) {
    if (!e->logits_h) {
        size_t n;
        if (gpt2_mul_size((size_t)e->rows_cap, (size_t)e->model->cfg.vocab_size, &n) ||
            !(e->logits_h = calloc(n, sizeof(float))))
            return gpt2_fail(err, GPT2_ERR_NOMEM, "engine: out of memory for %d host rows of logits", e->rows_cap);
    }
    return e->be->read_logits(e->be, e->logits_h, n_rows, err);
}

/* The prompt logprobs that chunk k (all_rows, of slot sl, not yet counted in n_cached) gives: the
 * row of its token t predicts prompt position pos + t + 1. */
static void echo_rows(gpt2_engine *e, gpt2_slot *sl, int k) {
    gpt2_job *j = sl->job;
    const gpt2_chunk *ch = &e->chunks[k];
    const int V = e->model->cfg.vocab_size;
    for (int t = 0; t < ch->n; t++) {
        int p = ch->pos + t + 1;
        if (p >= j->n_prompt) break;
        int row = t == ch->n - 1 ? k : e->chunk_extra[k] + t;
        const float *l = e->logits_h + (size_t)row * (size_t)V;
        j->echo_lp[p] = gpt2_logprob_row(l, V, j->prompt[p]);
        if (j->n_top > 0)
            gpt2_top_logprobs_row(l, V, j->n_top, j->echo_top_ids + (size_t)p * (size_t)j->n_top,
                                  j->echo_top_lp + (size_t)p * (size_t)j->n_top);
    }
}

/* The PROMPT event, once the whole prompt is cached. */
static void send_prompt(gpt2_engine *e, gpt2_slot *sl) {
    gpt2_job *j = sl->job;
    (void)e;
    j->prompt_sent = 1;
    gpt2_event ev = {.kind = GPT2_EVENT_PROMPT, .tokens = j->prompt, .n_tokens = j->n_prompt, .logprobs = j->echo_lp,
                     .prompt_tokens = j->n_prompt, .n_top = j->n_top, .top_ids = j->echo_top_ids,
                     .top_logprobs = j->echo_top_lp, .text = "", .bytes = ""};
    deliver(j, &ev);
}

/* Ends a beam search: TOKEN and TEXT events of the best hypothesis, FINISH with the best n (or, for a
 * cancelled or failed one, none), and its K slots are free. */
static void end_beams(gpt2_engine *e, gpt2_job *j, gpt2_finish reason, const char *error) {
    gpt2_beam_state *b = &j->bs;
    const int cap = b->max_len - b->P;
    int n = reason == GPT2_FINISH_CANCELLED || error ? 0 : (j->beam.n < b->n_fin ? j->beam.n : b->n_fin);
    gpt2_hypothesis hyps[GPT2_MAX_BEAMS] = {{0}};
    char *texts[GPT2_MAX_BEAMS] = {0};
    float *lps = n ? malloc(sizeof(float) * (size_t)n * (size_t)cap) : NULL;
    if (n && !lps) {
        n = 0;
        error = "out of memory for the beam search's output";
        reason = GPT2_FINISH_ERROR;
    }
    for (int h = 0; h < n; h++) {
        const int *toks = b->fin_tokens + (size_t)h * cap;
        int len = b->fin_len[h], eos = b->eos >= 0 && len > 0 && toks[len - 1] == b->eos;
        int nt = len - eos;
        size_t bytes = 0;
        for (int i = 0; i < nt; i++) {
            const char *tb;
            size_t nb = 0;
            if (gpt2_token_bytes(e->tok, toks[i], &tb, &nb, NULL) == GPT2_OK) bytes += nb;
        }
        if ((texts[h] = malloc(bytes + 1))) {
            size_t at = 0;
            for (int i = 0; i < nt; i++) {
                const char *tb;
                size_t nb = 0;
                if (gpt2_token_bytes(e->tok, toks[i], &tb, &nb, NULL) == GPT2_OK) memcpy(texts[h] + at, tb, nb);
                at += nb;
            }
            texts[h][at] = '\0';
        }
        for (int i = 0; i < nt; i++)
            lps[(size_t)h * cap + i] = j->want_logprobs ? b->fin_lp[(size_t)h * cap + i] : NAN;
        hyps[h] = (gpt2_hypothesis){.tokens = toks, .logprobs = lps + (size_t)h * cap, .n_tokens = nt,
                                    .text = texts[h] ? texts[h] : "", .n_text = texts[h] ? bytes : 0,
                                    .score = b->fin_score[h], .finish = eos ? GPT2_FINISH_STOP : GPT2_FINISH_LENGTH};
    }
    if (n > 0) {
        for (int i = 0; i < hyps[0].n_tokens; i++) {
            gpt2_event ev = {.kind = GPT2_EVENT_TOKEN, .token = hyps[0].tokens[i], .logprob = hyps[0].logprobs[i]};
            size_t nb = 0;
            if (gpt2_token_bytes(e->tok, ev.token, &ev.bytes, &nb, NULL) != GPT2_OK) ev.bytes = "";
            ev.n_bytes = nb;
            deliver(j, &ev);
        }
        if (hyps[0].n_text) {
            gpt2_event ev = {.kind = GPT2_EVENT_TEXT, .text = hyps[0].text, .n_text = hyps[0].n_text};
            deliver(j, &ev);
        }
    }
    static const int no_tokens[1];
    static const float no_logprobs[1];
    gpt2_event ev = {.kind = GPT2_EVENT_FINISH, .finish = n ? hyps[0].finish : reason,
                     .tokens = n ? hyps[0].tokens : no_tokens, .logprobs = n ? hyps[0].logprobs : no_logprobs,
                     .n_tokens = n ? hyps[0].n_tokens : 0, .text = n ? hyps[0].text : "",
                     .n_text = n ? hyps[0].n_text : 0, .prompt_tokens = j->n_prompt, .error = error,
                     .n_hyps = n, .hyps = hyps};
    if (error) ev.finish = GPT2_FINISH_ERROR;
    deliver(j, &ev);
    for (int h = 0; h < n; h++) free(texts[h]);
    free(lps);
    for (int i = 0; i < j->K; i++) e->slots[j->own_slot[i]].job = NULL;
    retire(e, j);
}

/* One beam search step of job j, whose running beams were all forwarded this step (their rows are in
 * e->logits_h at each slot's `row`): the next running beams take the job's slots, a beam that forks
 * copies its parent's KV cache into a slot of a beam that ended. */
static gpt2_status beam_step(gpt2_engine *e, gpt2_job *j, gpt2_error *err) {
    gpt2_beam_state *b = &j->bs;
    const int V = e->model->cfg.vocab_size, K = j->K, n_run = b->n_running;
    j->beam_stepped = 1;
    for (int i = 0; i < n_run; i++)
        if (e->slots[j->beam_slot[i]].n_cached != e->slots[j->beam_slot[i]].n_hist) return GPT2_OK; /* prefilling */
    gpt2_slot *first = &e->slots[j->beam_slot[0]];
    if (j->echo && !j->prompt_sent) send_prompt(e, first);
    if (j->max_tokens == 0) {
        end_beams(e, j, GPT2_FINISH_LENGTH, NULL);
        return GPT2_OK;
    }
    const float *rows[GPT2_MAX_BEAMS];
    const int *hist[GPT2_MAX_BEAMS];
    const float *lps[GPT2_MAX_BEAMS];
    for (int i = 0; i < n_run; i++) {
        gpt2_slot *sl = &e->slots[j->beam_slot[i]];
        rows[i] = e->logits_h + (size_t)sl->row * (size_t)V;
        hist[i] = sl->hist;
        lps[i] = sl->lp;
    }
    gpt2_beam_next next[GPT2_MAX_BEAMS];
    if (gpt2_beam_step(b, rows, hist, lps, next) != 0) {
        end_beams(e, j, GPT2_FINISH_ERROR, "the logits of a beam are not finite (NaN or Inf): the model's forward "
                                           "pass broke down");
        return GPT2_OK;
    }
    if (b->done) {
        end_beams(e, j, GPT2_FINISH_LENGTH, NULL);
        return GPT2_OK;
    }
    /* slots: a beam's first child keeps its slot, the others take the slots no child keeps */
    const int len = b->cur_len - 1, n_gen = len - j->n_prompt;
    int dest[GPT2_MAX_BEAMS], kept[GPT2_MAX_BEAMS] = {0}, used[GPT2_MAX_BEAMS] = {0};
    for (int i = 0; i < K; i++) {
        dest[i] = -1;
        if (!kept[next[i].parent]) {
            kept[next[i].parent] = 1;
            dest[i] = j->beam_slot[next[i].parent];
        }
    }
    for (int i = 0; i < K; i++)
        for (int o = 0; o < K; o++)
            if (j->own_slot[o] == dest[i]) used[o] = 1;
    for (int i = 0, o = 0; i < K; i++) {
        if (dest[i] >= 0) continue;
        while (used[o]) o++;
        used[o] = 1;
        dest[i] = j->own_slot[o];
        const gpt2_slot *src = &e->slots[j->beam_slot[next[i].parent]];
        gpt2_slot *d = &e->slots[dest[i]];
        memcpy(d->hist, src->hist, sizeof(int) * (size_t)len);
        memcpy(d->lp, src->lp, sizeof(float) * (size_t)n_gen);
        gpt2_status st = e->be->copy_slot(e->be, (int)(src - e->slots), dest[i], len, err);
        if (st != GPT2_OK) return st;
    }
    for (int i = 0; i < K; i++) {
        gpt2_slot *d = &e->slots[dest[i]];
        d->hist[len] = next[i].token;
        d->lp[n_gen] = j->want_logprobs ? next[i].logprob : NAN;
        d->n_hist = len + 1;
        d->n_cached = len;
        d->n_gen = n_gen + 1;
        j->beam_slot[i] = dest[i];
    }
    return GPT2_OK;
}

static void start(gpt2_slot *sl, gpt2_job *j) {
    sl->job = j;
    memcpy(sl->hist, j->prompt, sizeof(int) * (size_t)j->n_prompt);
    sl->n_hist = j->n_prompt;
    sl->n_cached = 0;
    sl->n_gen = 0;
    sl->n_token_events = 0;
    sl->n_text = 0;
    sl->emitted = 0;
}

gpt2_status gpt2_sched_init(gpt2_engine *e, gpt2_error *err) {
    e->S = e->be->opts.max_slots;
    e->max_seq = e->be->opts.max_seq;
    size_t S = (size_t)e->S;
    e->slots = calloc(S, sizeof *e->slots);
    e->chunks = calloc(S, sizeof *e->chunks);
    e->sr = calloc(S, sizeof *e->sr);
    e->chunk_slot = calloc(S, sizeof(int));
    e->sampled = calloc(S, sizeof(int));
    e->logprobs = calloc(S, sizeof(float));
    e->scratch_jobs = calloc(S, sizeof(gpt2_job *));
    e->chunk_extra = calloc(S, sizeof(int));
    e->part_slot = calloc(S, sizeof(int));
    e->part_n = calloc(S, sizeof(int));
    int rows = gpt2_backend_logit_rows(&e->be->opts);
    e->rows_cap = rows < e->S + 256 ? rows : e->S + 256;
    if (!e->slots || !e->chunks || !e->sr || !e->chunk_slot || !e->sampled || !e->logprobs || !e->scratch_jobs ||
        !e->chunk_extra || !e->part_slot || !e->part_n)
        goto nomem;
    for (size_t i = 0; i < S; i++) {
        e->slots[i].hist = malloc(sizeof(int) * (size_t)e->max_seq);
        e->slots[i].tok_end = malloc(sizeof(size_t) * (size_t)e->max_seq);
        e->slots[i].lp = malloc(sizeof(float) * (size_t)e->max_seq);
        if (!e->slots[i].hist || !e->slots[i].tok_end || !e->slots[i].lp) goto nomem;
    }
    return GPT2_OK;
nomem:
    gpt2_sched_free(e);
    return gpt2_fail(err, GPT2_ERR_NOMEM, "engine: cannot allocate scheduler state for %d slots", e->S);
}

void gpt2_sched_free(gpt2_engine *e) {
    if (e->slots)
        for (int i = 0; i < e->S; i++) {
            gpt2_job_free(e->slots[i].job);
            free(e->slots[i].hist);
            free(e->slots[i].tok_end);
            free(e->slots[i].lp);
            free(e->slots[i].text);
        }
    free(e->slots);
    free(e->chunks);
    free(e->sr);
    free(e->chunk_slot);
    free(e->sampled);
    free(e->logprobs);
    free(e->scratch_jobs);
    free(e->chunk_extra);
    free(e->part_slot);
    free(e->part_n);
    free(e->logits_h);
    e->chunk_extra = e->part_slot = e->part_n = NULL;
    e->logits_h = NULL;
    e->slots = NULL;
    e->chunks = NULL;
    e->sr = NULL;
    e->chunk_slot = NULL;
    e->sampled = NULL;
    e->logprobs = NULL;
    e->scratch_jobs = NULL;
}

/* Unlinks a job from the live list (lock held). */
static void unlink_live(gpt2_engine *e, gpt2_job *j) {
    if (j->prev) j->prev->next = j->next;
    else e->live = j->next;
    if (j->next) j->next->prev = j->prev;
    e->n_live--;
}

/* The done list: off the live list (under the lock), then freed. */
static int release_done(gpt2_engine *e) {
    pthread_mutex_lock(&e->lock);
    for (gpt2_job *j = e->done; j; j = j->qnext) unlink_live(e, j);
    int busy = e->n_live;
    pthread_mutex_unlock(&e->lock);
    while (e->done) {
        gpt2_job *j = e->done;
        e->done = j->qnext;
        gpt2_job_free(j);
    }
    return busy;
}

gpt2_status gpt2_sched_step(gpt2_engine *e, int *busy, gpt2_error *err) {
    gpt2_backend *be = e->be;
    gpt2_status st = GPT2_OK;
    gpt2_job *cancelled = NULL; /* queued jobs that were cancelled, in queue order reversed */

    /* 1. Cancellations: running jobs marked (or dropped by their callback), queued jobs marked. */
    pthread_mutex_lock(&e->lock);
    int *cancel_slot = e->chunk_slot, n_cancel = 0; /* chunk_slot is free until the forward */
    for (int i = 0; i < e->S; i++)
        if (e->slots[i].job && (e->slots[i].job->cancel || e->slots[i].job->dropped)) cancel_slot[n_cancel++] = i;
    for (gpt2_job **p = &e->q_head, *prev = NULL; *p;) {
        gpt2_job *j = *p;
        if (j->cancel) {
            *p = j->qnext;
            if (e->q_tail == j) e->q_tail = prev;
            j->queued = 0;
            j->qnext = cancelled;
            cancelled = j;
        } else {
            prev = j;
            p = &j->qnext;
        }
    }
    pthread_mutex_unlock(&e->lock);
    for (int k = 0; k < n_cancel; k++) {
        gpt2_slot *sl = &e->slots[cancel_slot[k]];
        if (!sl->job) continue; /* a beam search's other slot, released with the first */
        if (sl->job->K) end_beams(e, sl->job, GPT2_FINISH_CANCELLED, NULL);
        else finish(e, sl, GPT2_FINISH_CANCELLED);
    }
    /* reverse to queue order */
    gpt2_job *in_order = NULL;
    while (cancelled) {
        gpt2_job *j = cancelled;
        cancelled = j->qnext;
        j->qnext = in_order;
        in_order = j;
    }
    while (in_order) {
        gpt2_job *j = in_order;
        in_order = j->qnext;
        finish_unstarted(e, j, GPT2_FINISH_CANCELLED);
    }

    /* 2. Admission: queued requests into free slots, in order; requests that want no tokens finish at
     * once without a slot. */
    int n_free = 0;
    for (int i = 0; i < e->S; i++) n_free += e->slots[i].job == NULL;
    gpt2_job *zero = NULL, **zero_tail = &zero;
    int n_admit = 0, taken = 0;
    pthread_mutex_lock(&e->lock);
    while (e->q_head && (taken + (e->q_head->K ? e->q_head->K : 1) <= n_free ||
                         (e->q_head->max_tokens == 0 && !e->q_head->echo))) {
        gpt2_job *j = e->q_head;
        if (!(j->max_tokens == 0 && !j->echo)) taken += j->K ? j->K : 1;
        e->q_head = j->qnext;
        if (!e->q_head) e->q_tail = NULL;
        j->queued = 0;
        j->qnext = NULL;
        if (j->max_tokens == 0 && !j->echo) { /* with echo it is prefilled for its PROMPT event */
            *zero_tail = j;
            zero_tail = &j->qnext;
        } else e->scratch_jobs[n_admit++] = j;
    }
    pthread_mutex_unlock(&e->lock);
    while (zero) {
        gpt2_job *j = zero;
        zero = j->qnext;
        finish_unstarted(e, j, GPT2_FINISH_LENGTH);
    }
    for (int i = 0, k = 0; i < e->S && k < n_admit; i++) {
        if (e->slots[i].job) continue;
        gpt2_job *j = e->scratch_jobs[k++];
        start(&e->slots[i], j);
        for (int b = 1, s = i + 1; b < j->K; s++) /* a beam search reserves its other slots */
            if (!e->slots[s].job) {
                e->slots[s].job = j;
                e->slots[s].n_hist = e->slots[s].n_cached = e->slots[s].n_gen = 0;
                j->own_slot[b++] = s;
            }
        if (j->K) j->own_slot[0] = j->beam_slot[0] = i;
    }

    /* 3. One forward over the active slots. Chunks that end a slot's pending tokens (decode steps, last
     * prefill pieces) come first, since their rows are sampled; partial prefill pieces follow within the
     * token budget. A prompt being echoed needs a logits row per token: those rows come from what the
     * backend holds beyond one row per active slot, so a long echoed prompt may take several steps. */
    int budget = be->opts.max_tokens, n_full = 0, n_part = 0, n_active = 0;
    for (int i = 0; i < e->S; i++) n_active += e->slots[i].job != NULL;
    int extra_left = e->rows_cap - n_active; /* >= 0: rows_cap >= S */
    int *part_slot = e->part_slot, *part_n = e->part_n;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->S; i++) {
            gpt2_slot *sl = &e->slots[i];
            if (!sl->job) continue;
            int pending = sl->n_hist - sl->n_cached;
            if (pending <= 0) continue; /* a beam search's slot that holds no beam yet */
            if ((pass == 0) != (pending == 1)) continue; /* decode steps first, then prefills */
            if (budget <= 0) break;
            int take = pending < budget ? pending : budget;
            int echo = sl->job->echo && sl->n_cached < sl->job->n_prompt;
            if (echo && take - 1 > extra_left) take = 1 + extra_left;
            if (take == pending) {
                e->chunk_slot[n_full++] = i;
            } else {
                part_slot[n_part] = i;
                part_n[n_part++] = take;
            }
            budget -= take;
            if (echo) extra_left -= take - 1;
        }
    /* rows 0..n_sampled-1 are sampled by the backend; the beam searches' rows follow (read on the host) */
    int n_sampled = 0;
    for (int k = 0; k < n_full; k++)
        if (!e->slots[e->chunk_slot[k]].job->K) {
            int t = e->chunk_slot[k];
            memmove(e->chunk_slot + n_sampled + 1, e->chunk_slot + n_sampled, sizeof(int) * (size_t)(k - n_sampled));
            e->chunk_slot[n_sampled++] = t;
        }
    int want_lp = 0, want_host = 0, n_chunks = 0;
    for (int k = 0; k < n_full; k++) {
        gpt2_slot *sl = &e->slots[e->chunk_slot[k]];
        const gpt2_job *j = sl->job;
        e->chunks[k] = (gpt2_chunk){.slot = e->chunk_slot[k], .pos = sl->n_cached, .n = sl->n_hist - sl->n_cached,
                                    .tokens = sl->hist + sl->n_cached,
                                    .all_rows = j->echo && sl->n_cached < j->n_prompt};
        e->sr[k] = (gpt2_sample_req){.p = &j->sampling, .step = (uint64_t)sl->n_gen, .history = sl->hist,
                                     .n_history = sl->n_hist, .n_prompt = j->n_prompt,
                                     .no_repeat_ngram = j->no_repeat_ngram};
        want_lp |= j->want_logprobs;
        want_host |= j->n_top > 0 || e->chunks[k].all_rows || j->K;
    }
    n_chunks = n_full;
    for (int k = 0; k < n_part; k++) {
        gpt2_slot *sl = &e->slots[part_slot[k]];
        const gpt2_job *j = sl->job;
        e->chunks[n_chunks] = (gpt2_chunk){.slot = part_slot[k], .pos = sl->n_cached, .n = part_n[k],
                                           .tokens = sl->hist + sl->n_cached,
                                           .all_rows = j->echo && sl->n_cached < j->n_prompt};
        want_host |= e->chunks[n_chunks].all_rows;
        n_chunks++;
    }
    int n_rows = n_chunks; /* logits rows of this forward (backend.h: last tokens, then all_rows tokens) */
    for (int k = 0; k < n_chunks; k++) {
        e->chunk_extra[k] = e->chunks[k].all_rows && e->chunks[k].n > 1 ? n_rows : -1;
        if (e->chunks[k].all_rows) n_rows += e->chunks[k].n - 1;
    }
    if (n_chunks > 0) {
        if ((st = be->forward(be, e->chunks, n_chunks, 0, err)) != GPT2_OK) goto out;
        if (want_host && (st = read_rows(e, n_rows, err)) != GPT2_OK) goto out;
        if (n_sampled > 0 &&
            (st = be->sample(be, e->sr, n_sampled, e->sampled, want_lp ? e->logprobs : NULL, err)) != GPT2_OK)
            goto out;
        /* only now: after a failure the same tokens are forwarded again (rewriting their KV entries) */
        for (int k = 0; k < n_chunks; k++) {
            gpt2_slot *sl = &e->slots[e->chunks[k].slot];
            if (e->chunks[k].all_rows) echo_rows(e, sl, k);
            sl->n_cached += e->chunks[k].n;
        }
        for (int k = n_sampled; k < n_full; k++) e->slots[e->chunk_slot[k]].row = k;
        for (int k = n_sampled; k < n_full; k++) {
            gpt2_slot *sl = &e->slots[e->chunk_slot[k]];
            gpt2_job *j = sl->job;
            if (!j || j->beam_stepped) continue;
            if ((st = beam_step(e, j, err)) != GPT2_OK) goto out;
        }
        for (int k = n_sampled; k < n_full; k++) {
            gpt2_slot *sl = &e->slots[e->chunk_slot[k]];
            if (sl->job) sl->job->beam_stepped = 0;
        }
        for (int k = 0; k < n_sampled; k++) {
            gpt2_slot *sl = &e->slots[e->chunk_slot[k]];
            gpt2_job *j = sl->job;
            if (j->echo && !j->prompt_sent) send_prompt(e, sl);
            if (e->sampled[k] == GPT2_SAMPLE_NONFINITE) {
                fail_nonfinite(e, sl);
                continue;
            }
            if (j->max_tokens == 0) { /* echo alone: the prompt was all it wanted */
                finish(e, sl, GPT2_FINISH_LENGTH);
                continue;
            }
            if (j->n_top > 0 && sl->n_gen < j->cap_gen)
                gpt2_top_logprobs_row(e->logits_h + (size_t)k * (size_t)e->model->cfg.vocab_size,
                                      e->model->cfg.vocab_size, j->n_top,
                                      j->gen_top_ids + (size_t)sl->n_gen * (size_t)j->n_top,
                                      j->gen_top_lp + (size_t)sl->n_gen * (size_t)j->n_top);
            float lp = j->want_logprobs ? e->logprobs[k] : NAN;
            if ((st = take_token(e, sl, e->sampled[k], lp, err)) != GPT2_OK) goto out;
        }
    }
out:;
    int b = release_done(e);
    if (busy) *busy = b;
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* gpt2_generate: a fixed list of requests through the same scheduler                              */

typedef struct {
    const gpt2_gen_callbacks *cb;
    int aborted;
    int failed;    /* a request failed and there is no on_error: the run ends with GPT2_ERR_FORMAT */
    char msg[512];
} gen_state;

typedef struct {
    gen_state *g;
    int req;
} gen_user;

static int gen_event(const gpt2_event *ev) {
    const gen_user *u = ev->user;
    gen_state *g = u->g;
    const gpt2_gen_callbacks *cb = g->cb;
    int rc = 0;
    if (ev->kind == GPT2_EVENT_TEXT && cb->on_text) rc = cb->on_text(cb->user, u->req, ev->text, ev->n_text);
    if (ev->kind == GPT2_EVENT_FINISH && ev->finish == GPT2_FINISH_ERROR) {
        if (cb->on_error) rc = cb->on_error(cb->user, u->req, ev->error);
        else if (!g->failed) {
            g->failed = 1;
            snprintf(g->msg, sizeof g->msg, "request %d: %s", u->req, ev->error);
        }
    } else if (ev->kind == GPT2_EVENT_FINISH && cb->on_finish)
        rc = cb->on_finish(cb->user, u->req, ev->tokens, ev->n_tokens, ev->text, ev->n_text, ev->finish);
    if (rc) g->aborted = 1;
    return rc;
}

gpt2_status gpt2_generate(gpt2_backend *be, gpt2_tokenizer *tok, int eot, const gpt2_request *reqs, int n_reqs,
                          const gpt2_gen_callbacks *cb, gpt2_error *err) {
    int max_seq = be->opts.max_seq;
    for (int i = 0; i < n_reqs; i++) {
        if (reqs[i].n_prompt < 1 || !reqs[i].prompt)
            return gpt2_fail(err, GPT2_ERR_ARG, "request %d: empty prompt", i);
        if (reqs[i].n_prompt >= max_seq)
            return gpt2_fail(err, GPT2_ERR_LIMIT, "request %d: prompt of %d tokens leaves no room in a context of %d",
                             i, reqs[i].n_prompt, max_seq);
        if (reqs[i].max_tokens < 0) return gpt2_fail(err, GPT2_ERR_ARG, "request %d: max_tokens < 0", i);
    }
    gpt2_engine *e = NULL;
    gen_state g = {.cb = cb};
    gen_user *users = calloc((size_t)n_reqs + 1, sizeof *users);
    if (!users) return gpt2_fail(err, GPT2_ERR_NOMEM, "generate: out of memory for %d requests", n_reqs);
    gpt2_status st = gpt2_engine_wrap(be, tok, eot, &e, err);
    for (int i = 0; st == GPT2_OK && i < n_reqs; i++) {
        gpt2_request r = reqs[i];
        users[i] = (gen_user){.g = &g, .req = i};
        r.on_event = gen_event;
        r.user = &users[i];
        if ((st = gpt2_engine_submit(e, &r, NULL, err)) != GPT2_OK) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
            gpt2_fail(err, st, "request %d: %s", i, msg);
        }
    }
    int busy = n_reqs;
    while (st == GPT2_OK && busy > 0) {
        if (cb->cancel && *cb->cancel) break;
        st = gpt2_engine_step(e, &busy, err);
        if (st == GPT2_OK && g.failed) st = gpt2_fail(err, GPT2_ERR_FORMAT, "%s", g.msg);
        if (st == GPT2_OK && g.aborted) st = gpt2_fail(err, GPT2_ERR_ABORTED, "generation aborted by the caller");
    }
    gpt2_engine_destroy(e);
    free(users);
    return st;
}
