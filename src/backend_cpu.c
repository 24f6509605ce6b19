/* backend_cpu.c: the float32 reference engine. The forward pass reads top to bottom in cpu_forward. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ops_cpu.h"
#include "util.h"

/* Activations for up to N tokens of one forward, and the KV cache; allocated once. */
typedef struct {
    float *x;      /* (N, C) residual stream */
    float *ln;     /* (N, C) layernorm output */
    float *qkv;    /* (N, 3C) */
    float *atty;   /* (N, C) attention output before projection */
    float *tmp;    /* (N, C) projection outputs */
    float *fch;    /* (N, 4C) MLP hidden, GELU applied in place */
    float *lnf;    /* (R, C) final layernorm of the rows whose logits are wanted */
    float *logits; /* (R, V); R = N when all_logits is allowed, else max_slots */
    float *work;   /* (V) a row of logits for the sampler to change, so logits stay as computed */
    int *tokens;   /* (N) */
    int *pos;      /* (N) */
    int *rows;     /* (R) index into the N tokens of each logits row */
    float *kcache; /* (L, S, NH, maxT, HS); maxT = opts.max_seq */
    float *vcache; /* (L, S, NH, maxT, HS) */
    int n_rows;    /* logits rows held from the last forward */
    gpt2_sample_scratch scratch;
} cpu_state;

static void cpu_state_free(cpu_state *s) {
    if (!s) return;
    free(s->x);
    free(s->ln);
    free(s->qkv);
    free(s->atty);
    free(s->tmp);
    free(s->fch);
    free(s->lnf);
    free(s->logits);
    free(s->work);
    free(s->tokens);
    free(s->pos);
    free(s->rows);
    free(s->kcache);
    free(s->vcache);
    gpt2_sample_scratch_free(&s->scratch);
    free(s);
}

/* malloc of a * b floats with an overflow check; NULL on failure. */
static float *alloc_floats(size_t a, size_t b) {
    size_t n, bytes;
    if (gpt2_mul_size(a, b, &n) || gpt2_mul_size(n, sizeof(float), &bytes)) return NULL;
    return malloc(bytes ? bytes : 1);
}

static float *cache_layer(float *cache, const gpt2_config *c, const gpt2_backend_opts *o, int l, int slot) {
    size_t per_slot = (size_t)c->n_embd * (size_t)o->max_seq; /* NH * maxT * HS */
    return cache + ((size_t)l * (size_t)o->max_slots + (size_t)slot) * per_slot;
}

static gpt2_status cpu_forward_run(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                                   gpt2_error *err) {
    cpu_state *s = be->ctx;
    const gpt2_config *c = &be->model->cfg;
    const gpt2_weights *w = &be->model->w;
    const gpt2_backend_opts *o = &be->opts;
    gpt2_status st = gpt2_backend_check_chunks(o, chunks, n_chunks, all_logits, c->vocab_size, err);
    if (st != GPT2_OK) return st;
    int C = c->n_embd, NH = c->n_head, HS = C / NH, V = c->vocab_size, maxT = o->max_seq;

    int N = 0;
    for (int i = 0; i < n_chunks; i++)
        for (int t = 0; t < chunks[i].n; t++, N++) {
            s->tokens[N] = chunks[i].tokens[t];
            s->pos[N] = chunks[i].pos + t;
        }
    encoder_forward_cpu(s->x, s->tokens, s->pos, w->wte, w->wpe, N, C);

    for (int l = 0; l < c->n_layer; l++) {
        size_t lc = (size_t)l * C;
        layernorm_forward_cpu(s->ln, s->x, w->ln1w + lc, w->ln1b + lc, N, C, c->layer_norm_epsilon);
        matmul_forward_cpu(s->qkv, s->ln, w->qkvw + lc * 3 * C, w->qkvb + lc * 3, N, C, 3 * C);
        int off = 0;
        for (int i = 0; i < n_chunks; i++) {
            const gpt2_chunk *ch = &chunks[i];
            float *kc = cache_layer(s->kcache, c, o, l, ch->slot);
            float *vc = cache_layer(s->vcache, c, o, l, ch->slot);
            const float *qkv = s->qkv + (size_t)off * 3 * C;
            kv_append_cpu(kc, vc, qkv, ch->pos, ch->n, NH, HS, maxT);
            if (attention_forward_cpu(s->atty + (size_t)off * C, qkv, 3 * C, kc, vc, ch->pos, ch->n, NH, HS, maxT))
                return gpt2_fail(err, GPT2_ERR_NOMEM, "cpu forward: attention scratch allocation failed");
            off += ch->n;
        }
        matmul_forward_cpu(s->tmp, s->atty, w->attprojw + lc * C, w->attprojb + lc, N, C, C);
        residual_forward_cpu(s->x, s->x, s->tmp, (size_t)N * C);
        layernorm_forward_cpu(s->ln, s->x, w->ln2w + lc, w->ln2b + lc, N, C, c->layer_norm_epsilon);
        matmul_forward_cpu(s->fch, s->ln, w->fcw + lc * 4 * C, w->fcb + lc * 4, N, C, 4 * C);
        gelu_forward_cpu(s->fch, s->fch, (size_t)N * 4 * C);
        matmul_forward_cpu(s->tmp, s->fch, w->fcprojw + lc * 4 * C, w->fcprojb + lc, N, 4 * C, C);
        residual_forward_cpu(s->x, s->x, s->tmp, (size_t)N * C);
    }

    /* Final layernorm and unembedding only for the rows whose logits are wanted. */
    int R = 0;
    if (all_logits) {
        for (int n = 0; n < N; n++) s->rows[R++] = n;
    } else {
        int end = 0;
        for (int i = 0; i < n_chunks; i++) {
            end += chunks[i].n;
            s->rows[R++] = end - 1;
        }
    }
    for (int r = 0; r < R; r++) memcpy(s->ln + (size_t)r * C, s->x + (size_t)s->rows[r] * C, sizeof(float) * C);
    layernorm_forward_cpu(s->lnf, s->ln, w->lnfw, w->lnfb, R, C, c->layer_norm_epsilon);
    matmul_nt_forward_cpu(s->logits, s->lnf, w->lm_head, R, C, V);
    s->n_rows = R;
    return GPT2_OK;
}

/* opts.n_threads applies to this call only: the calling thread's OpenMP setting (a per-thread ICV) is
 * put back after, so the library leaves no process or thread state behind. */
static gpt2_status cpu_forward(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                               gpt2_error *err) {
    int n = be->opts.n_threads, before = omp_get_max_threads();
    if (n > 0) omp_set_num_threads(n);
    gpt2_status st = cpu_forward_run(be, chunks, n_chunks, all_logits, err);
    if (n > 0) omp_set_num_threads(before);
    return st;
}

static gpt2_status cpu_read_logits(gpt2_backend *be, float *dst, int n_rows, gpt2_error *err) {
    cpu_state *s = be->ctx;
    if (n_rows < 0 || n_rows > s->n_rows)
        return gpt2_fail(err, GPT2_ERR_ARG, "read_logits: %d rows asked, the last forward made %d", n_rows,
                         s->n_rows);
    memcpy(dst, s->logits, sizeof(float) * (size_t)n_rows * (size_t)be->model->cfg.vocab_size);
    return GPT2_OK;
}

static gpt2_status cpu_sample(gpt2_backend *be, const gpt2_sample_req *reqs, int n, int *out_tokens,
                              float *out_logprobs, gpt2_error *err) {
    cpu_state *s = be->ctx;
    int V = be->model->cfg.vocab_size;
    if (n < 0 || n > s->n_rows)
        return gpt2_fail(err, GPT2_ERR_ARG, "sample: %d rows asked, the last forward made %d", n, s->n_rows);
    for (int i = 0; i < n; i++) {
        const float *raw = s->logits + (size_t)i * V;
        memcpy(s->work, raw, sizeof(float) * (size_t)V);
        out_tokens[i] = gpt2_sample_row(s->work, V, &reqs[i], &s->scratch);
        /* from the raw row: the sampler changed only its copy */
        if (out_logprobs)
            out_logprobs[i] = out_tokens[i] >= 0 ? gpt2_logprob_row(s->logits + (size_t)i * V, V, out_tokens[i]) : NAN;
    }
    return GPT2_OK;
}

static void cpu_destroy(gpt2_backend *be) {
    cpu_state_free(be->ctx);
    free(be);
}

gpt2_status gpt2_backend_cpu_create(const gpt2_model *m, const gpt2_backend_opts *opts, gpt2_backend **out,
                                    gpt2_error *err) {
    *out = NULL;
    gpt2_status st = gpt2_backend_check_opts(m, opts, err);
    if (st != GPT2_OK) return st;
    if (opts->dtype != GPT2_DTYPE_F32)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "cpu backend: float32 only");
    const gpt2_config *c = &m->cfg;
    size_t N = (size_t)opts->max_tokens, C = (size_t)c->n_embd, V = (size_t)c->vocab_size;
    size_t R = opts->all_logits ? N : (size_t)opts->max_slots;
    size_t cache_floats;
    if (gpt2_mul3_size((size_t)c->n_layer * (size_t)opts->max_slots, C, (size_t)opts->max_seq, &cache_floats))
        return gpt2_fail(err, GPT2_ERR_LIMIT, "cpu backend: KV cache size overflows");

    gpt2_backend *be = calloc(1, sizeof *be);
    cpu_state *s = calloc(1, sizeof *s);
    if (!be || !s) goto nomem;
    s->x = alloc_floats(N, C);
    s->ln = alloc_floats(N, C);
    s->qkv = alloc_floats(N, 3 * C);
    s->atty = alloc_floats(N, C);
    s->tmp = alloc_floats(N, C);
    s->fch = alloc_floats(N, 4 * C);
    s->lnf = alloc_floats(R, C);
    s->logits = alloc_floats(R, V);
    s->work = alloc_floats(V, 1);
    s->tokens = malloc(sizeof(int) * N);
    s->pos = malloc(sizeof(int) * N);
    s->rows = malloc(sizeof(int) * R);
    s->kcache = alloc_floats(cache_floats, 1);
    s->vcache = alloc_floats(cache_floats, 1);
    if (!s->x || !s->ln || !s->qkv || !s->atty || !s->tmp || !s->fch || !s->lnf || !s->logits || !s->work || !s->tokens ||
        !s->pos || !s->rows || !s->kcache || !s->vcache || gpt2_sample_scratch_init(&s->scratch, c->vocab_size))
        goto nomem;
    be->name = "cpu";
    snprintf(be->device_name, sizeof be->device_name, "CPU");
    be->host_bytes = sizeof(float) * (N * C * 11 + R * C + R * V + V * 2 + 2 * cache_floats) + sizeof(int) * (2 * N + R + 2 * V);
    be->opts = *opts;
    be->model = m;
    be->ctx = s;
    be->forward = cpu_forward;
    be->read_logits = cpu_read_logits;
    be->sample = cpu_sample;
    be->destroy = cpu_destroy;
    *out = be;
    return GPT2_OK;
nomem:
    cpu_state_free(s);
    free(be);
    return gpt2_fail(err, GPT2_ERR_NOMEM,
                     "cpu backend: cannot allocate activations for %zu tokens and a KV cache of %d x %d positions "
                     "(%.1f MiB)",
                     N, opts->max_slots, opts->max_seq, 2.0 * (double)cache_floats * 4 / (1 << 20));
}
