/* backend_cpu.c: the CPU engine. The forward pass reads top to bottom in cpu_forward.
 *
 * Activations and accumulation are float32. The weight matrices (the four of each block and the
 * lm_head) are copied at creation into the backend's own packed form (ops_cpu.h: panels of 16 output
 * columns), in float32 or, with opts.dtype fp16 / bf16, rounded to 16 bits, which halves the bytes a
 * decode step reads. Embeddings, biases and layernorm parameters are read from the model in float32.
 * The kernels run on the widest instruction set the CPU has (cpu_isa_best), on opts.n_threads
 * threads (0: the OpenMP default) passed to every op; no process-wide OpenMP setting is changed. */
#include <math.h>
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
    cpu_packed *mats; /* (4L + 1) packed matrices: per layer qkv, attproj, fc, fcproj; then lm_head */
    void *mat_mem;    /* the one allocation behind every mats[i].data */
    size_t mat_bytes; /* bytes of mat_mem */
    cpu_isa isa;      /* instruction set of the fast kernels */
    int nt;           /* threads per op (0: OpenMP default) */
} cpu_state;

/* Index into cpu_state.mats */
enum { MAT_QKV, MAT_ATTPROJ, MAT_FC, MAT_FCPROJ, MATS_PER_LAYER };
#define MAT(s, l, k) (&(s)->mats[(size_t)(l) * MATS_PER_LAYER + (k)])

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
    free(s->mats);
    free(s->mat_mem);
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

static gpt2_status cpu_forward(gpt2_backend *be, const gpt2_chunk *chunks, int n_chunks, int all_logits,
                               gpt2_error *err) {
    cpu_state *s = be->ctx;
    const gpt2_config *c = &be->model->cfg;
    const gpt2_weights *w = &be->model->w;
    const gpt2_backend_opts *o = &be->opts;
    gpt2_status st = gpt2_backend_check_chunks(o, chunks, n_chunks, all_logits, c->vocab_size, err);
    if (st != GPT2_OK) return st;
    int C = c->n_embd, NH = c->n_head, HS = C / NH, maxT = o->max_seq, nt = s->nt;
    cpu_isa isa = s->isa;

    int N = 0;
    for (int i = 0; i < n_chunks; i++)
        for (int t = 0; t < chunks[i].n; t++, N++) {
            s->tokens[N] = chunks[i].tokens[t];
            s->pos[N] = chunks[i].pos + t;
        }
    encoder_forward_cpu(s->x, s->tokens, s->pos, w->wte, w->wpe, N, C, nt);

    for (int l = 0; l < c->n_layer; l++) {
        size_t lc = (size_t)l * C;
        layernorm_forward_cpu(s->ln, s->x, w->ln1w + lc, w->ln1b + lc, N, C, c->layer_norm_epsilon, nt);
        matmul_packed_isa(isa, s->qkv, s->ln, MAT(s, l, MAT_QKV), w->qkvb + lc * 3, N, nt);
        int off = 0;
        for (int i = 0; i < n_chunks; i++) {
            const gpt2_chunk *ch = &chunks[i];
            float *kc = cache_layer(s->kcache, c, o, l, ch->slot);
            float *vc = cache_layer(s->vcache, c, o, l, ch->slot);
            const float *qkv = s->qkv + (size_t)off * 3 * C;
            kv_append_cpu(kc, vc, qkv, ch->pos, ch->n, NH, HS, maxT);
            if (attention_forward_isa(isa, s->atty + (size_t)off * C, qkv, 3 * C, kc, vc, ch->pos, ch->n, NH, HS, maxT,
                                      nt))
                return gpt2_fail(err, GPT2_ERR_NOMEM, "cpu forward: attention scratch allocation failed");
            off += ch->n;
        }
        matmul_packed_isa(isa, s->tmp, s->atty, MAT(s, l, MAT_ATTPROJ), w->attprojb + lc, N, nt);
        residual_forward_cpu(s->x, s->x, s->tmp, (size_t)N * C, nt);
        layernorm_forward_cpu(s->ln, s->x, w->ln2w + lc, w->ln2b + lc, N, C, c->layer_norm_epsilon, nt);
        matmul_packed_isa(isa, s->fch, s->ln, MAT(s, l, MAT_FC), w->fcb + lc * 4, N, nt);
        gelu_forward_isa(isa, s->fch, s->fch, (size_t)N * 4 * C, nt);
        matmul_packed_isa(isa, s->tmp, s->fch, MAT(s, l, MAT_FCPROJ), w->fcprojb + lc, N, nt);
        residual_forward_cpu(s->x, s->x, s->tmp, (size_t)N * C, nt);
    }

    /* Final layernorm and unembedding only for the rows whose logits are wanted. */
    int R = 0;
    if (all_logits) {
        for (int n = 0; n < N; n++) s->rows[R++] = n;
    } else { /* each chunk's last token, then the other tokens of the all_rows chunks (backend.h) */
        int end = 0;
        for (int i = 0; i < n_chunks; i++) {
            end += chunks[i].n;
            s->rows[R++] = end - 1;
        }
        int start = 0;
        for (int i = 0; i < n_chunks; i++) {
            for (int t = 0; chunks[i].all_rows && t < chunks[i].n - 1; t++) s->rows[R++] = start + t;
            start += chunks[i].n;
        }
    }
    for (int r = 0; r < R; r++) memcpy(s->ln + (size_t)r * C, s->x + (size_t)s->rows[r] * C, sizeof(float) * C);
    layernorm_forward_cpu(s->lnf, s->ln, w->lnfw, w->lnfb, R, C, c->layer_norm_epsilon, nt);
    matmul_packed_isa(isa, s->logits, s->lnf, &s->mats[(size_t)c->n_layer * MATS_PER_LAYER], NULL, R, nt);
    s->n_rows = R;
    return GPT2_OK;
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

static gpt2_status cpu_copy_slot(gpt2_backend *be, int src, int dst, int n_pos, gpt2_error *err) {
    cpu_state *s = be->ctx;
    const gpt2_config *c = &be->model->cfg;
    const gpt2_backend_opts *o = &be->opts;
    gpt2_status st = gpt2_backend_check_copy(o, src, dst, n_pos, err);
    if (st != GPT2_OK || n_pos == 0) return st;
    const int NH = c->n_head, HS = c->n_embd / NH, maxT = o->max_seq;
    const size_t run = sizeof(float) * (size_t)n_pos * (size_t)HS; /* one head's first n_pos positions */
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < NH; h++) {
            size_t off = (size_t)h * (size_t)maxT * (size_t)HS; /* (NH, maxT, HS) within a slot */
            memcpy(cache_layer(s->kcache, c, o, l, dst) + off, cache_layer(s->kcache, c, o, l, src) + off, run);
            memcpy(cache_layer(s->vcache, c, o, l, dst) + off, cache_layer(s->vcache, c, o, l, src) + off, run);
        }
    return GPT2_OK;
}

/* Packs the model's weight matrices into s->mats (one allocation, s->mat_mem) as element type wt.
 * Returns 0, or -1 when the size overflows or the allocation fails. */
static int pack_weights(cpu_state *s, const gpt2_model *m, cpu_wtype wt, int nt) {
    const gpt2_config *c = &m->cfg;
    const gpt2_weights *w = &m->w;
    const int L = c->n_layer, C = c->n_embd, n_mats = L * MATS_PER_LAYER + 1;
    const size_t esize = wt == CPU_W_F32 ? sizeof(float) : sizeof(uint16_t);
    /* each block matrix: (L, K, OC) in the model ([in, out]); the lm_head comes last, (V, C) */
    struct {
        const float *src;
        int K, OC;
    } table[MATS_PER_LAYER] = {
        [MAT_QKV] = {w->qkvw, C, 3 * C},
        [MAT_ATTPROJ] = {w->attprojw, C, C},
        [MAT_FC] = {w->fcw, C, 4 * C},
        [MAT_FCPROJ] = {w->fcprojw, 4 * C, C},
    };
    s->mats = calloc((size_t)n_mats, sizeof *s->mats);
    if (!s->mats) return -1;
    size_t total = 0;
    for (int i = 0; i < n_mats; i++) {
        cpu_packed *p = &s->mats[i];
        int k = i % MATS_PER_LAYER, last = i == n_mats - 1;
        p->K = last ? C : table[k].K;
        p->OC = last ? c->vocab_size : table[k].OC;
        p->wt = wt;
        size_t n = cpu_packed_elems(p->K, p->OC);
        if (!n || __builtin_add_overflow(total, n, &total)) return -1;
    }
    size_t bytes;
    if (gpt2_mul_size(total, esize, &bytes) || !(s->mat_mem = malloc(bytes))) return -1;
    s->mat_bytes = bytes;
    char *at = s->mat_mem;
    for (int i = 0; i < n_mats; i++) {
        cpu_packed *p = &s->mats[i];
        int l = i / MATS_PER_LAYER, k = i % MATS_PER_LAYER, last = i == n_mats - 1;
        const float *src = last ? w->lm_head : table[k].src + (size_t)l * (size_t)p->K * (size_t)p->OC;
        p->data = at;
        cpu_pack(p, src, last, nt); /* the lm_head is (OC, K): transposed */
        at += cpu_packed_elems(p->K, p->OC) * esize;
    }
    return 0;
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
    s->isa = cpu_isa_best();
    s->nt = opts->n_threads;
    cpu_wtype wt = opts->dtype == GPT2_DTYPE_F16 ? CPU_W_F16 : opts->dtype == GPT2_DTYPE_BF16 ? CPU_W_BF16 : CPU_W_F32;
    if (pack_weights(s, m, wt, s->nt)) {
        cpu_state_free(s);
        free(be);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "cpu backend: cannot allocate its %s copy of the weight matrices",
                         wt == CPU_W_F32 ? "fp32" : wt == CPU_W_F16 ? "fp16" : "bf16");
    }
    be->name = "cpu";
    snprintf(be->device_name, sizeof be->device_name, "CPU");
    be->host_bytes = sizeof(float) * (N * C * 11 + R * C + R * V + V * 2 + 2 * cache_floats) + sizeof(int) * (2 * N + R + 2 * V) +
                    s->mat_bytes; /* the packed weight matrices */
    be->opts = *opts;
    be->model = m;
    be->ctx = s;
    be->forward = cpu_forward;
    be->read_logits = cpu_read_logits;
    be->sample = cpu_sample;
    be->copy_slot = cpu_copy_slot;
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
