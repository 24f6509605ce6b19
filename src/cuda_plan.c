/* cuda_plan.c: the CUDA backend's memory plan (every region of the one arena, its offset and size,
 * from the config and the options), the pointers into it, and the weight upload. See cuda_internal.h. */
#include <limits.h>
#include <string.h>

#include "cuda_internal.h"
#include "util.h"

#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/gemv.cuh"

_Static_assert(GEMV_MAX_ROWS >= 0 && GEMV_MAX_ROWS <= GPT2_GEMV_MAX_M, "the GEMV kernels take at most 16 rows");

/* Appends a region of count * elem bytes at the next aligned offset; 0 ok, -1 on overflow. */
static int take(size_t *cur, size_t count, size_t elem, size_t *off) {
    size_t bytes, start;
    if (gpt2_mul_size(count, elem, &bytes) || *cur > SIZE_MAX - ARENA_ALIGN) return -1;
    start = (*cur + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (gpt2_add_size(start, bytes, cur)) return -1;
    *off = start;
    return 0;
}

/* a * b, setting *bad on overflow. */
static size_t mulc(size_t a, size_t b, int *bad) {
    size_t r;
    if (gpt2_mul_size(a, b, &r)) {
        *bad = 1;
        return 0;
    }
    return r;
}

/* Fills p for model m and options o. GPT2_ERR_DEVICE_MEM when a size overflows size_t. */
gpt2_status gpt2_cuda_make_plan(const gpt2_model *m, const gpt2_backend_opts *o, gpt2_cuda_plan *p, gpt2_error *err) {
    const gpt2_config *c = &m->cfg;
    memset(p, 0, sizeof *p);
    const size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer, V = (size_t)c->vocab_size;
    const size_t S = (size_t)o->max_slots, N = (size_t)o->max_tokens;
    const size_t maxT = (size_t)o->max_seq, es = gpt2_cuda_dtype_size(o->dtype);
    if (c->vocab_size > INT_MAX - VOCAB_PAD)
        return gpt2_fail(err, GPT2_ERR_CONFIG, "cuda: vocab_size %d is too large", c->vocab_size);
    p->Vp = (c->vocab_size + VOCAB_PAD - 1) / VOCAB_PAD * VOCAB_PAD;
    const size_t Vp = (size_t)p->Vp;
    const int NH = c->n_head, HS = c->n_embd / c->n_head;
    int bad = 0, ovf = 0; /* bad: a region overflowed; ovf: a product did (kept apart: `bad |= take(mulc(..))`
                           * would read bad before mulc sets it) */
    const size_t VpC = mulc(Vp, C, &ovf), NC = mulc(N, C, &ovf);
    size_t cur = 0;

    p->rows_cap = o->all_logits ? o->max_tokens : o->max_slots;
    p->tiles_cap = (o->max_tokens + GPT2_ATTN_PREFILL_BQ - 1) / GPT2_ATTN_PREFILL_BQ + o->max_slots;
    p->sample_rows = p->rows_cap < SAMPLE_GROUP ? p->rows_cap : SAMPLE_GROUP;
    /* staging per request: its penalty history (<= maxT) and its n-gram ban list (<= maxT) */
    if ((size_t)p->sample_rows * (2 * maxT + 1) > INT_MAX || (size_t)p->sample_rows * V > INT_MAX)
        return gpt2_fail(err, GPT2_ERR_DEVICE_MEM, "cuda: sampling scratch for %d rows overflows", p->sample_rows);
    p->hist_cap = p->sample_rows * (2 * o->max_seq + 1);
    p->attn_scratch_floats = attention_decode_scratch_floats(o->max_slots, NH, HS, o->max_seq);
    p->attn_n_counters = attention_decode_counters(o->max_slots, NH);
    if (p->attn_scratch_floats == 0 || p->attn_n_counters == 0) ovf = 1; /* 0: a size overflowed */
    p->gemv_max_rows = GEMV_MAX_ROWS; /* the widest product is the MLP's up projection, OC = 4C */
    p->gemv_scratch_floats = mulc(mulc((size_t)GPT2_GEMV_MAX_KSPLIT, (size_t)p->gemv_max_rows, &ovf), 4 * C, &ovf);
    p->gemv_n_counters = gemv_counters(4 * c->n_embd);

    /* weights: the table's kinds in order, each (L, ...) or alone, in T; the lm_head with Vp rows */
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        size_t n = 0;
        if (k == GPT2_T_LMHEAD && m->w.tied) {
            p->w[k] = p->w[GPT2_T_WTE];
            continue;
        }
        if (gpt2_tensor_numel(c, (gpt2_tensor_kind)k, NULL, &n)) ovf = 1;
        if (k == GPT2_T_LMHEAD || (k == GPT2_T_WTE && m->w.tied)) n = VpC; /* (Vp, C), rows V.. zero */
        bad |= take(&cur, n, es, &p->w[k]);
    }
    p->weight_bytes = cur;

    /* activations for N tokens */
    bad |= take(&cur, NC, es, &p->resid);                 /* (N, C) residual stream */
    bad |= take(&cur, NC, es, &p->ln);                    /* (N, C) layernorm output */
    bad |= take(&cur, mulc(NC, 3, &ovf), es, &p->qkv);    /* (N, 3C) */
    bad |= take(&cur, NC, es, &p->att);                   /* (N, C) attention output */
    bad |= take(&cur, NC, es, &p->tmp);                   /* (N, C) projection outputs */
    bad |= take(&cur, mulc(NC, 4, &ovf), es, &p->fch);    /* (N, 4C) MLP hidden */
    bad |= take(&cur, mulc((size_t)p->rows_cap, Vp, &ovf), sizeof(float), &p->logits); /* (R, Vp) float */

    /* KV cache, (L, S, NH, maxT, HS) each */
    const size_t before_kv = cur, kv = mulc(mulc(L, S, &ovf), mulc(maxT, C, &ovf), &ovf);
    bad |= take(&cur, kv, es, &p->kcache);
    bad |= take(&cur, kv, es, &p->vcache);
    p->kv_bytes = cur - before_kv;

    bad |= take(&cur, p->attn_scratch_floats, sizeof(float), &p->attn_scratch); /* (S, NH, nsplit, HS+2) */
    bad |= take(&cur, p->attn_n_counters, sizeof(unsigned), &p->attn_counters);  /* (S, NH) zero: arena cleared */
    bad |= take(&cur, p->gemv_scratch_floats, sizeof(float), &p->gemv_scratch);  /* (ksplit, M, OC) */
    bad |= take(&cur, p->gemv_n_counters, sizeof(unsigned), &p->gemv_counters);  /* zero: the arena is cleared */

    /* per-forward inputs: ints, mirrored in pinned host memory (all small: counts of tokens and slots) */
    p->i_tok = 0;                                      /* (N) */
    p->i_pos = p->i_tok + N;                           /* (N) */
    p->i_slot = p->i_pos + N;                          /* (N) */
    p->i_row = p->i_slot + N;                          /* (N) final layernorm's output row, or -1 */
    p->i_chunks = p->i_row + N;                        /* (S, 4) slot, pos, n, start */
    p->i_tiles = p->i_chunks + 4 * S;                  /* (tiles_cap, 2) chunk, q0 */
    p->i_dtok = p->i_tiles + 2 * (size_t)p->tiles_cap; /* (S) decode: token */
    p->i_dpos = p->i_dtok + S;                         /* (S) decode: position */
    p->i_dslot = p->i_dpos + S;                        /* (S) decode: slot */
    p->n_inputs = p->i_dslot + S;
    bad |= take(&cur, p->n_inputs, sizeof(int), &p->inputs);

    /* sampling (G * V < 2^31 was checked above) */
    const size_t G = (size_t)p->sample_rows, GV = G * V;
    bad |= take(&cur, G, sizeof(gpt2_cuda_sample_params), &p->s_params); /* (G) */
    bad |= take(&cur, (size_t)p->hist_cap, sizeof(int), &p->s_hist);      /* (G * (2 maxT + 1)) */
    bad |= take(&cur, G, sizeof(int), &p->s_out);                         /* (G) */
    bad |= take(&cur, G, sizeof(float), &p->s_lp);                        /* (G) */
    bad |= take(&cur, GV, sizeof(float), &p->s_keys);                     /* (G, V) */
    bad |= take(&cur, GV, sizeof(int), &p->s_count);                      /* (G, V) */

    bad |= take(&cur, CUBLAS_WORKSPACE_BYTES, 1, &p->cublas_ws);
    bad |= ovf;
    p->total = cur;

    if (o->dtype != GPT2_DTYPE_F32) {
        size_t n = m->w.n_floats < STAGING_FLOATS ? m->w.n_floats : STAGING_FLOATS;
        p->staging_bytes = (n ? n : 1) * sizeof(float);
    }
    if (bad) return gpt2_fail(err, GPT2_ERR_DEVICE_MEM, "cuda: the plan's size overflows (max_slots %d, max_seq %d, "
                                                        "max_tokens %d)", o->max_slots, o->max_seq, o->max_tokens);
    return GPT2_OK;
}

/* Device bytes the plan needs at its peak: the arena, the conversion staging, and headroom. */
size_t gpt2_cuda_plan_need(const gpt2_cuda_plan *p) {
    size_t need = p->total;
    if (need > SIZE_MAX - p->staging_bytes - HEADROOM_BYTES) return SIZE_MAX;
    return need + p->staging_bytes + HEADROOM_BYTES;
}

/* Largest max_slots (<= o->max_slots - 1) whose plan fits in `avail` bytes; 0 when none. Every plan
 * grows with max_slots, so a bisection finds it. */
int gpt2_cuda_largest_fitting_slots(const gpt2_model *m, const gpt2_backend_opts *o, size_t avail) {
    int lo = 0, hi = o->max_slots - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        gpt2_backend_opts t = *o;
        t.max_slots = mid;
        gpt2_cuda_plan p;
        if (gpt2_cuda_make_plan(m, &t, &p, NULL) == GPT2_OK && gpt2_cuda_plan_need(&p) <= avail)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

void gpt2_cuda_point(gpt2_cuda_ctx *x, const gpt2_model *m) {
    const gpt2_cuda_plan *p = &x->plan;
    char *a = x->arena;
    for (int k = 0; k < GPT2_N_TENSORS; k++) x->w.t[k] = a + p->w[k];
    x->a.resid = a + p->resid;
    x->a.ln = a + p->ln;
    x->a.qkv = a + p->qkv;
    x->a.att = a + p->att;
    x->a.tmp = a + p->tmp;
    x->a.fch = a + p->fch;
    x->a.logits = (float *)(a + p->logits);
    x->a.attn_scratch = (float *)(a + p->attn_scratch);
    x->a.attn_counters = (unsigned *)(a + p->attn_counters);
    x->a.gemv_scratch = (float *)(a + p->gemv_scratch);
    x->a.gemv_counters = (unsigned *)(a + p->gemv_counters);
    x->a.in_d = (int *)(a + p->inputs);
    x->kv.k = a + p->kcache;
    x->kv.v = a + p->vcache;
    x->smp.params_d = (gpt2_cuda_sample_params *)(a + p->s_params);
    x->smp.hist_d = (int *)(a + p->s_hist);
    x->smp.out_d = (int *)(a + p->s_out);
    x->smp.lp_d = (float *)(a + p->s_lp);
    x->smp.scr = (gpt2_cuda_sample_scratch){
        .rows = p->sample_rows,
        .V = m->cfg.vocab_size,
        .keys = (float *)(a + p->s_keys),
        .count = (int *)(a + p->s_count), /* zero: the arena is cleared once at creation */
    };
}

/* Copies n host floats to dst in the storage type, through `staging` (staging_floats) when converting. */
static gpt2_status upload(gpt2_cuda_ctx *x, gpt2_dtype dt, void *dst, const float *src, size_t n, float *staging,
                          size_t staging_floats, gpt2_error *err) {
    if (n == 0) return GPT2_OK;
    if (dt == GPT2_DTYPE_F32) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, x->stream));
        CUDA_CHECK(cudaStreamSynchronize(x->stream));
        return GPT2_OK;
    }
    for (size_t done = 0; done < n;) {
        size_t k = n - done < staging_floats ? n - done : staging_floats;
        CUDA_CHECK(cudaMemcpyAsync(staging, src + done, k * sizeof(float), cudaMemcpyHostToDevice, x->stream));
        CUDA_CHECK(convert_cuda((char *)dst + done * gpt2_cuda_dtype_size(dt), dt, staging, GPT2_DTYPE_F32, k,
                                x->stream));
        CUDA_CHECK(cudaStreamSynchronize(x->stream)); /* staging is reused by the next piece */
        done += k;
    }
    return GPT2_OK;
}

gpt2_status gpt2_cuda_upload_weights(gpt2_cuda_ctx *x, const gpt2_model *m, gpt2_dtype dt, gpt2_error *err) {
    float *staging = NULL;
    gpt2_status st = GPT2_OK;
    if (dt != GPT2_DTYPE_F32) CUDA_CHECK(cudaMalloc((void **)&staging, x->plan.staging_bytes));
    for (int k = 0; k < GPT2_N_TENSORS && st == GPT2_OK; k++) {
        size_t n = 0;
        if (k == GPT2_T_LMHEAD && m->w.tied) continue; /* it is wte */
        if (gpt2_tensor_numel(&m->cfg, (gpt2_tensor_kind)k, NULL, &n)) /* cannot happen: the loader counted it */
            st = gpt2_fail(err, GPT2_ERR_CONFIG, "cuda: tensor %s: size overflows", gpt2_tensors[k].name);
        else
            st = upload(x, dt, x->w.t[k], gpt2_tensor_data(&m->w, (gpt2_tensor_kind)k), n, staging,
                        x->plan.staging_bytes / sizeof(float), err);
    }
    if (staging) {
        cudaError_t e = cudaFree(staging);
        if (st == GPT2_OK && e != cudaSuccess) return gpt2_cuda_fail(err, e, "cudaFree(staging)", __FILE__, __LINE__);
    }
    return st;
}
