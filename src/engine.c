/* engine.c: the public engine API (gpt2.h): creation from options, the request queue, cancellation,
 * logits and the plan. The scheduler that gpt2_engine_step runs is in generate.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "request.h"
#include "util.h"

const char *gpt2_dtype_name(gpt2_dtype d) {
    return d == GPT2_DTYPE_F16 ? "fp16" : d == GPT2_DTYPE_BF16 ? "bf16" : "fp32";
}

gpt2_engine_opts gpt2_engine_opts_default(void) {
    gpt2_engine_opts o = {.device = "auto", .dtype = GPT2_DTYPE_F32, .cuda_graphs = 1};
    return o;
}

/* The engine around a backend; on failure nothing is freed but the engine itself. */
static gpt2_status engine_init(gpt2_engine **out, gpt2_backend *be, gpt2_tokenizer *tok, int eot, gpt2_error *err) {
    *out = NULL;
    gpt2_engine *e = calloc(1, sizeof *e);
    if (!e) return gpt2_fail(err, GPT2_ERR_NOMEM, "engine: out of memory");
    e->be = be;
    e->model = be->model;
    e->tok = tok;
    e->eot = eot;
    e->next_id = 1;
    gpt2_status st = gpt2_sched_init(e, err);
    if (st != GPT2_OK) {
        free(e);
        return st;
    }
    if (pthread_mutex_init(&e->lock, NULL)) {
        gpt2_sched_free(e);
        free(e);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "engine: cannot create its mutex");
    }
    if (pthread_mutex_init(&e->tok_lock, NULL)) {
        pthread_mutex_destroy(&e->lock);
        gpt2_sched_free(e);
        free(e);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "engine: cannot create its mutex");
    }
    *out = e;
    return GPT2_OK;
}

gpt2_status gpt2_engine_wrap(gpt2_backend *be, gpt2_tokenizer *tok, int eot, gpt2_engine **out, gpt2_error *err) {
    return engine_init(out, be, tok, eot, err);
}

gpt2_status gpt2_engine_create_from(const gpt2_model *m, gpt2_tokenizer *tok, const gpt2_engine_opts *opts,
                                    gpt2_engine **out, gpt2_error *err) {
    if (!out) return gpt2_fail(err, GPT2_ERR_ARG, "engine: no place for the engine (out is NULL)");
    *out = NULL;
    if (!m || !tok) return gpt2_fail(err, GPT2_ERR_ARG, "engine: a model and a tokenizer are needed");
    gpt2_engine_opts o = opts ? *opts : gpt2_engine_opts_default();
    const char *device = o.device ? o.device : "auto";
    if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "auto"))
        return gpt2_fail(err, GPT2_ERR_ARG, "device '%s': expected cpu, cuda or auto", device);
    if (o.max_slots < 0) return gpt2_fail(err, GPT2_ERR_ARG, "max_slots = %d: must be >= 0 (0: default)", o.max_slots);
    if (o.max_seq < 0) return gpt2_fail(err, GPT2_ERR_ARG, "max_seq = %d: must be >= 0 (0: n_positions)", o.max_seq);
    if (o.max_tokens < 0)
        return gpt2_fail(err, GPT2_ERR_ARG, "max_tokens = %d: must be >= 0 (0: default)", o.max_tokens);
    if (o.n_threads < 0) return gpt2_fail(err, GPT2_ERR_ARG, "n_threads = %d: must be >= 0 (0: default)", o.n_threads);
    int cuda = !strcmp(device, "cuda") || (!strcmp(device, "auto") && gpt2_cuda_device_count() > 0);
    gpt2_backend_opts bo = {
        .max_slots = o.max_slots ? o.max_slots : cuda ? 64 : 8,
        .max_seq = o.max_seq ? o.max_seq : m->cfg.n_positions,
        .all_logits = o.logits ? 1 : 0,
        .dtype = o.dtype,
        .allow_tf32 = o.allow_tf32 ? 1 : 0,
        .n_threads = o.n_threads,
        .no_cuda_graphs = o.cuda_graphs ? 0 : 1,
    };
    bo.max_tokens = o.max_tokens ? o.max_tokens : bo.max_slots + (cuda ? 4096 : 256);
    gpt2_backend *be = NULL;
    gpt2_status st = gpt2_backend_create(device, m, &bo, &be, err);
    if (st != GPT2_OK) return st;
    if ((st = engine_init(out, be, tok, gpt2_tokenizer_eot(tok), err)) != GPT2_OK) {
        gpt2_backend_free(be);
        return st;
    }
    (*out)->own_be = 1;
    return GPT2_OK;
}

gpt2_status gpt2_engine_create(const char *model_dir, const gpt2_engine_opts *opts, gpt2_engine **out,
                               gpt2_error *err) {
    if (!out) return gpt2_fail(err, GPT2_ERR_ARG, "engine: no place for the engine (out is NULL)");
    *out = NULL;
    if (!model_dir) return gpt2_fail(err, GPT2_ERR_ARG, "engine: no model directory");
    gpt2_model *m = NULL;
    gpt2_tokenizer *tok = NULL;
    const char *tdir = opts && opts->tokenizer_dir ? opts->tokenizer_dir : model_dir;
    gpt2_status st = gpt2_tokenizer_load(tdir, &tok, err);
    if (st == GPT2_OK) st = gpt2_model_load(model_dir, &m, err);
    if (st == GPT2_OK) st = gpt2_engine_create_from(m, tok, opts, out, err);
    if (st != GPT2_OK) {
        gpt2_model_free(m);
        gpt2_tokenizer_free(tok);
        return st;
    }
    (*out)->own_model = m;
    (*out)->own_tok = tok;
    return GPT2_OK;
}

void gpt2_engine_destroy(gpt2_engine *e) {
    if (!e) return;
    for (gpt2_job *j = e->q_head; j;) {
        gpt2_job *n = j->qnext;
        gpt2_job_free(j);
        j = n;
    }
    gpt2_sched_free(e); /* and the jobs in slots */
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->tok_lock);
    if (e->own_be) gpt2_backend_free(e->be);
    gpt2_model_free(e->own_model);
    gpt2_tokenizer_free(e->own_tok);
    free(e);
}

/* The job's prompt: the ids, or the encoded text. */
static gpt2_status job_prompt(gpt2_engine *e, const gpt2_request *r, gpt2_job *j, gpt2_error *err) {
    if (r->prompt) {
        if (r->n_prompt < 1) return gpt2_fail(err, GPT2_ERR_ARG, "prompt: %d token ids, need at least 1", r->n_prompt);
        if (!(j->prompt = malloc(sizeof(int) * (size_t)r->n_prompt)))
            return gpt2_fail(err, GPT2_ERR_NOMEM, "prompt: out of memory for %d ids", r->n_prompt);
        memcpy(j->prompt, r->prompt, sizeof(int) * (size_t)r->n_prompt);
        j->n_prompt = r->n_prompt;
        return GPT2_OK;
    }
    if (!r->prompt_text) return gpt2_fail(err, GPT2_ERR_ARG, "prompt: neither token ids nor prompt_text given");
    size_t n = 0;
    pthread_mutex_lock(&e->tok_lock);
    gpt2_status st = gpt2_encode(e->tok, r->prompt_text, r->n_prompt_text, !r->no_special, &j->prompt, &n, err);
    pthread_mutex_unlock(&e->tok_lock);
    if (st != GPT2_OK) return st;
    if (n == 0) return gpt2_fail(err, GPT2_ERR_ARG, "prompt_text: encodes to no tokens");
    if (n > (size_t)e->max_seq)
        return gpt2_fail(err, GPT2_ERR_LIMIT, "prompt_text: %zu tokens leave no room for output in max_seq %d", n,
                         e->max_seq);
    j->n_prompt = (int)n;
    return GPT2_OK;
}

/* The job's echo and top-logprob arrays (sizes from n_prompt, cap_gen and n_top, overflow-checked). */
static gpt2_status job_logprob_buffers(gpt2_job *j, gpt2_error *err) {
    size_t k = (size_t)j->n_top, n_echo, n_gen;
    if (gpt2_mul_size((size_t)j->n_prompt, k, &n_echo) || gpt2_mul_size((size_t)j->cap_gen, k, &n_gen))
        return gpt2_fail(err, GPT2_ERR_LIMIT, "top_logprobs: %d alternatives of %d positions overflow", j->n_top,
                         j->n_prompt + j->cap_gen);
    /* calloc checks n x size itself */
    if (j->echo) {
        j->echo_lp = calloc((size_t)j->n_prompt, sizeof(float));
        j->echo_top_ids = calloc(n_echo ? n_echo : 1, sizeof(int));
        j->echo_top_lp = calloc(n_echo ? n_echo : 1, sizeof(float));
        if (!j->echo_lp || !j->echo_top_ids || !j->echo_top_lp) goto nomem;
        j->echo_lp[0] = NAN;
        for (size_t i = 0; i < k; i++) {
            j->echo_top_ids[i] = -1; /* row 0: no context */
            j->echo_top_lp[i] = NAN;
        }
    }
    if (n_gen > 0) {
        j->gen_top_ids = calloc(n_gen, sizeof(int));
        j->gen_top_lp = calloc(n_gen, sizeof(float));
        if (!j->gen_top_ids || !j->gen_top_lp) goto nomem;
    }
    return GPT2_OK;
nomem:
    return gpt2_fail(err, GPT2_ERR_NOMEM, "submit: out of memory for the logprobs of %d positions",
                     j->n_prompt + j->cap_gen);
}

/* Beam search settings (gpt2.h, gpt2_beam); the messages name the field. */
static gpt2_status check_beam(const gpt2_engine *e, const gpt2_request *r, gpt2_error *err) {
    const gpt2_beam *b = &r->beam;
    const gpt2_sampling d = gpt2_sampling_default();
    if (b->num_beams < 0 || b->num_beams > GPT2_MAX_BEAMS)
        return gpt2_fail(err, GPT2_ERR_ARG, "num_beams %d: must be in 0..%d (0 or 1: off)", b->num_beams,
                         GPT2_MAX_BEAMS);
    /* every decoding mode: greedy, sampling and beams ban n-grams alike (transformers' processor) */
    if (b->no_repeat_ngram_size < 0 || b->no_repeat_ngram_size > e->max_seq)
        return gpt2_fail(err, GPT2_ERR_ARG, "no_repeat_ngram_size %d: must be in 0..%d (0: off; max_seq)",
                         b->no_repeat_ngram_size, e->max_seq);
    if (b->num_beams < 2) {
        if (b->n > 1)
            return gpt2_fail(err, GPT2_ERR_ARG, "n %d: more than one output needs num_beams >= n", b->n);
        return GPT2_OK;
    }
    if (b->num_beams > e->S)
        return gpt2_fail(err, GPT2_ERR_LIMIT, "num_beams %d: each beam takes a slot, the engine has %d (max_slots)",
                         b->num_beams, e->S);
    if (2 * b->num_beams > e->model->cfg.vocab_size)
        return gpt2_fail(err, GPT2_ERR_ARG, "num_beams %d: more than half the vocabulary", b->num_beams);
    if (b->n < 0 || b->n > b->num_beams)
        return gpt2_fail(err, GPT2_ERR_ARG, "n %d: must be in 1..num_beams (%d)", b->n, b->num_beams);
    if (!isfinite(b->length_penalty) || fabsf(b->length_penalty) > 100.0f)
        return gpt2_fail(err, GPT2_ERR_ARG, "length_penalty %g: must be a number in -100..100", b->length_penalty);
    if (b->early_stopping < 0 || b->early_stopping > 2)
        return gpt2_fail(err, GPT2_ERR_ARG, "early_stopping %d: must be 0 (false), 1 (true) or 2 (never)",
                         b->early_stopping);
    if (r->n_stop > 0) return gpt2_fail(err, GPT2_ERR_ARG, "stop: not supported with beam search (num_beams >= 2)");
    if (r->top_logprobs > 0)
        return gpt2_fail(err, GPT2_ERR_ARG, "top_logprobs: not supported with beam search (num_beams >= 2)");
    if (r->sampling.repetition_penalty != d.repetition_penalty || r->sampling.frequency_penalty != 0.0f ||
        r->sampling.presence_penalty != 0.0f)
        return gpt2_fail(err, GPT2_ERR_ARG, "repetition_penalty, frequency_penalty, presence_penalty: not supported "
                                            "with beam search (num_beams >= 2)");
    return GPT2_OK;
}

gpt2_status gpt2_engine_submit(gpt2_engine *e, const gpt2_request *r, gpt2_request_id *id, gpt2_error *err) {
    if (id) *id = 0;
    if (!e || !r) return gpt2_fail(err, GPT2_ERR_ARG, "submit: no engine or no request");
    if (r->max_tokens < 0) return gpt2_fail(err, GPT2_ERR_ARG, "max_tokens %d: must be >= 0", r->max_tokens);
    gpt2_status st = gpt2_sampling_check(&r->sampling, err);
    if (st != GPT2_OK) return st;
    if (r->top_logprobs < 0 || r->top_logprobs > GPT2_MAX_TOP_LOGPROBS)
        return gpt2_fail(err, GPT2_ERR_ARG, "top_logprobs %d: must be in 0..%d", r->top_logprobs,
                         GPT2_MAX_TOP_LOGPROBS);
    if (r->top_logprobs > 0 && !r->logprobs)
        return gpt2_fail(err, GPT2_ERR_ARG, "top_logprobs %d: needs logprobs = 1", r->top_logprobs);
    if (r->n_stop < 0 || r->n_stop > GPT2_MAX_STOPS || (r->n_stop > 0 && !r->stop))
        return gpt2_fail(err, GPT2_ERR_ARG, "stop: %d stop strings, must be 0..%d", r->n_stop, GPT2_MAX_STOPS);
    for (int i = 0; i < r->n_stop; i++) {
        size_t k = r->stop[i] ? strlen(r->stop[i]) : 0;
        if (k == 0 || k > GPT2_MAX_STOP_LEN)
            return gpt2_fail(err, GPT2_ERR_ARG, "stop[%d]: each stop string must be 1..%d bytes", i, GPT2_MAX_STOP_LEN);
    }
    if ((st = check_beam(e, r, err)) != GPT2_OK) return st;
    gpt2_job *j = calloc(1, sizeof *j);
    if (!j) return gpt2_fail(err, GPT2_ERR_NOMEM, "submit: out of memory");
    if ((st = job_prompt(e, r, j, err)) != GPT2_OK) goto fail;
    const int V = e->model->cfg.vocab_size;
    for (int i = 0; i < j->n_prompt; i++)
        if (j->prompt[i] < 0 || j->prompt[i] >= V) {
            st = gpt2_fail(err, GPT2_ERR_ARG, "prompt: token id %d (#%d) outside the model's vocabulary 0..%d",
                           j->prompt[i], i + 1, V - 1);
            goto fail;
        }
    /* room for one token at least, unless only the prompt's logprobs are wanted (echo, max_tokens 0) */
    if (j->n_prompt >= e->max_seq + (r->echo && r->max_tokens == 0)) {
        st = gpt2_fail(err, GPT2_ERR_LIMIT, "prompt: %d tokens leave no room for output in max_seq %d", j->n_prompt,
                       e->max_seq);
        goto fail;
    }
    if (r->n_stop > 0 && !(j->stop = calloc((size_t)r->n_stop, sizeof(char *)))) goto nomem;
    for (int i = 0; i < r->n_stop; i++) {
        size_t k = strlen(r->stop[i]);
        if (!(j->stop[i] = malloc(k + 1))) goto nomem;
        memcpy(j->stop[i], r->stop[i], k + 1);
        j->n_stop = i + 1;
        if (k > j->max_stop) j->max_stop = k;
    }
    j->max_tokens = r->max_tokens;
    j->sampling = r->sampling;
    j->ignore_eot = r->ignore_eot ? 1 : 0;
    j->want_logprobs = r->logprobs ? 1 : 0;
    j->n_top = r->top_logprobs;
    j->echo = r->echo ? 1 : 0;
    j->no_repeat_ngram = r->beam.no_repeat_ngram_size;
    j->cap_gen = r->max_tokens < e->max_seq - j->n_prompt ? r->max_tokens : e->max_seq - j->n_prompt;
    if ((st = job_logprob_buffers(j, err)) != GPT2_OK) goto fail;
    if (r->beam.num_beams >= 2 && j->cap_gen > 0) {
        const int K = r->beam.num_beams, eot = e->eot;
        j->K = K;
        j->beam = r->beam;
        if (j->beam.n == 0) j->beam.n = 1;
        j->beam_slot = calloc((size_t)K, sizeof(int));
        j->own_slot = calloc((size_t)K, sizeof(int));
        if (!j->beam_slot || !j->own_slot) goto nomem;
        int eos = j->ignore_eot || eot < 0 || eot >= e->model->cfg.vocab_size ? -1 : eot;
        if ((st = gpt2_beam_init(&j->bs, K, e->model->cfg.vocab_size, j->n_prompt, j->cap_gen, eos,
                                 r->beam.no_repeat_ngram_size, r->beam.early_stopping, r->beam.length_penalty, err)))
            goto fail;
    }
    j->on_event = r->on_event;
    j->user = r->user;

    pthread_mutex_lock(&e->lock);
    j->id = e->next_id++;
    j->queued = 1;
    if (e->q_tail) e->q_tail->qnext = j;
    else e->q_head = j;
    e->q_tail = j;
    j->next = e->live;
    if (e->live) e->live->prev = j;
    e->live = j;
    e->n_live++;
    if (id) *id = j->id;
    pthread_mutex_unlock(&e->lock);
    return GPT2_OK;
nomem:
    st = gpt2_fail(err, GPT2_ERR_NOMEM, "submit: out of memory for the stop strings or the beams");
fail:
    gpt2_job_free(j);
    return st;
}

gpt2_status gpt2_engine_cancel(gpt2_engine *e, gpt2_request_id id, gpt2_error *err) {
    if (!e) return gpt2_fail(err, GPT2_ERR_ARG, "cancel: no engine");
    pthread_mutex_lock(&e->lock);
    gpt2_job *j = e->live;
    while (j && j->id != id) j = j->next;
    if (j) j->cancel = 1;
    pthread_mutex_unlock(&e->lock);
    if (!j)
        return gpt2_fail(err, GPT2_ERR_ARG, "cancel: request %llu is not queued or running", (unsigned long long)id);
    return GPT2_OK;
}

int gpt2_engine_pending(gpt2_engine *e) {
    if (!e) return 0;
    pthread_mutex_lock(&e->lock);
    int n = e->n_live;
    pthread_mutex_unlock(&e->lock);
    return n;
}

gpt2_status gpt2_engine_step(gpt2_engine *e, int *busy, gpt2_error *err) {
    if (busy) *busy = 0;
    if (!e) return gpt2_fail(err, GPT2_ERR_ARG, "step: no engine");
    return gpt2_sched_step(e, busy, err);
}

gpt2_status gpt2_engine_run(gpt2_engine *e, gpt2_error *err) {
    int busy = 1;
    gpt2_status st = GPT2_OK;
    while (st == GPT2_OK && busy > 0) st = gpt2_engine_step(e, &busy, err);
    return st;
}

gpt2_status gpt2_engine_logits(gpt2_engine *e, const int *ids, int T, float *out, gpt2_error *err) {
    if (!e || !ids || !out) return gpt2_fail(err, GPT2_ERR_ARG, "logits: no engine, ids or output");
    gpt2_backend *be = e->be;
    if (!be->opts.all_logits)
        return gpt2_fail(err, GPT2_ERR_ARG, "logits: the engine was created without the logits option");
    if (T < 1 || T > e->max_seq)
        return gpt2_fail(err, GPT2_ERR_LIMIT, "logits: %d tokens: must be 1..%d (max_seq)", T, e->max_seq);
    const int V = e->model->cfg.vocab_size;
    for (int i = 0; i < T; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return gpt2_fail(err, GPT2_ERR_ARG, "logits: token id %d (#%d) outside the model's vocabulary 0..%d",
                             ids[i], i + 1, V - 1);
    int slot = 0;
    while (slot < e->S && e->slots[slot].job) slot++;
    if (slot == e->S) return gpt2_fail(err, GPT2_ERR_LIMIT, "logits: every slot holds a running request");
    const int piece = be->opts.max_tokens;
    for (int pos = 0; pos < T; pos += piece) {
        int n = T - pos < piece ? T - pos : piece;
        gpt2_chunk ch = {.slot = slot, .pos = pos, .n = n, .tokens = ids + pos};
        gpt2_status st = be->forward(be, &ch, 1, 1, err);
        if (st == GPT2_OK) st = be->read_logits(be, out + (size_t)pos * (size_t)V, n, err);
        if (st != GPT2_OK) return st;
    }
    return GPT2_OK;
}

gpt2_status gpt2_engine_plan(const gpt2_engine *e, gpt2_plan *out) {
    if (!e || !out) return GPT2_ERR_ARG;
    const gpt2_backend *be = e->be;
    memset(out, 0, sizeof *out);
    snprintf(out->device, sizeof out->device, "%s", be->name);
    snprintf(out->device_name, sizeof out->device_name, "%s", be->device_name[0] ? be->device_name : be->name);
    out->dtype = be->opts.dtype;
    out->max_slots = be->opts.max_slots;
    out->max_seq = be->opts.max_seq;
    out->max_tokens = be->opts.max_tokens;
    out->n_threads = be->opts.n_threads;
    out->cuda_graphs = !strcmp(be->name, "cuda") && !be->opts.no_cuda_graphs;
    out->device_bytes = be->device_bytes;
    out->host_bytes = be->host_bytes;
    snprintf(out->warning, sizeof out->warning, "%s", be->warning);
    return GPT2_OK;
}

const gpt2_model *gpt2_engine_model(const gpt2_engine *e) { return e ? e->model : NULL; }

gpt2_tokenizer *gpt2_engine_tokenizer(gpt2_engine *e) { return e ? e->tok : NULL; }
