/* sample.cu: penalties, argmax, and top-k / top-p / inverse-CDF sampling, one block per request,
 * without sorting the vocabulary.
 *
 * The float operations that decide a token are those of src/sampler.c, written with explicit
 * rounding intrinsics so that nvcc cannot contract them into FMAs: x / p and x * p for the repetition
 * penalty, x - (c * f + pres) for frequency and presence, x / temperature.
 *
 * sampler.c sorts the row (descending, ties by lowest id), keeps the first top_k, then the shortest
 * prefix whose mass reaches top_p, and draws the first token of that order whose running mass exceeds
 * uniform * sum. Each of those three cuts is "the first element, in sorted order, at which a running
 * sum crosses a target" (a running count for top_k), and that element can be found without the
 * order: a radix select over the keys' order-preserving 32-bit images, 8 bits per pass, MSB first;
 * each pass histograms the weight (count or probability) of the surviving candidates per digit, and
 * one thread walks the 256 buckets from the top to the one where the running sum crosses. The
 * candidates tied at the final key are then taken in id order by a block prefix scan. The set kept
 * by a cut is {key > t} + {key == t, id <= j}, so the next cut needs no list either. Cost: about 5
 * passes over the row per cut, instead of a segmented sort of G x V pairs.
 * What can differ from the CPU is the last bit of a probability (expf there, exp in double here,
 * rounded to float) and the order of the double-precision sums (bucket by bucket here, sequential
 * there): far below what moves a 24-bit uniform draw across a token boundary, except on exact ties of
 * the draw with a boundary; where rounding makes a bucket's finer digits miss a crossing that its
 * coarse digit showed, the crossing is taken at that bucket's end.
 *
 * Temperature: scaled_i = (l_i - max_j l_j) / T on both backends, so the largest is exactly 0 and no
 * temperature, however small (1e-45), overflows to inf or makes a NaN: a tiny T is greedy in effect.
 * A row holding a NaN or an Inf gives -1 (GPT2_SAMPLE_NONFINITE), as in src/sampler.c, and so does a
 * sampled row whose max turns non-finite after the penalties. Greedy argmax still orders NaN below
 * every number (as sampler.c's strict `>` scan does) and returns 0 when logit 0 is NaN, a total order
 * that keeps the reduction's result independent of its shape. Rows are `ld` floats apart (ld >= V: the
 * logits buffer is padded for cuBLAS); columns V..ld-1 are never read. */
#include <limits.h>

#include "cuda_common.cuh"
#include "sample.cuh"

using namespace gpt2_cuda;

enum { PREP_THREADS = 512, SEL_THREADS = 1024 };
enum { SAMPLE_NONFINITE = -1 }; /* == GPT2_SAMPLE_NONFINITE of src/sampler.h */

/* (v, i) comes before (bv, bi) in argmax order: any number before NaN, larger before smaller, and
 * on ties (NaN with NaN included) the lower index first. A total order, so the reduction's shape
 * cannot change the result. */
__device__ __forceinline__ bool argmax_before(float v, int i, float bv, int bi) {
    const bool vn = isnan(v), bn = isnan(bv);
    if (vn != bn) return bn;
    if (!vn && v != bv) return v > bv;
    return i < bi;
}

/* Argmax in argmax_before order over the block; every thread gets the result. */
__device__ int block_argmax(float bv, int bi, float *sv, int *si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (argmax_before(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    bv = sv[0];
    bi = si[0];
    for (int w = 1; w < nw; w++)
        if (argmax_before(sv[w], si[w], bv, bi)) {
            bv = sv[w];
            bi = si[w];
        }
    __syncthreads(); /* sv, si are reused by the caller */
    return bi;
}

/* Max (fmaxf: NaN ignored unless all are NaN) and sum over the block; every thread gets the result. */
__device__ float block_max(float v, float *sv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) sv[warp] = v;
    __syncthreads();
    v = sv[0];
    for (int w = 1; w < nw; w++) v = fmaxf(v, sv[w]);
    __syncthreads();
    return v;
}
__device__ float block_sum(float v, float *sv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sv[warp] = v;
    __syncthreads();
    v = sv[0];
    for (int w = 1; w < nw; w++) v += sv[w];
    __syncthreads();
    return v;
}

__global__ void __launch_bounds__(PREP_THREADS)
    sample_prep_kernel(int *out, const float *logits, int V, int ld, const gpt2_cuda_sample_params *params,
                       const int *history, int n, float *keys, int *count) {
    __shared__ float sv[PREP_THREADS / 32];
    __shared__ int si[PREP_THREADS / 32];
    const int r = blockIdx.x, tid = threadIdx.x;
    const size_t base = (size_t)r * V;
    if (r >= n) return;
    const gpt2_cuda_sample_params pr = params[r];
    const float *src = logits + (size_t)pr.row * ld;
    float *x = keys + base;
    int *cnt = count + base;
    const int *hist = history + pr.hist_off;
    int bad = 0;
    for (int i = tid; i < V; i += blockDim.x) {
        x[i] = src[i];
        bad |= !isfinite(x[i]);
    }
    /* A NaN or Inf logit means the forward broke down: no token is an answer (sampler.c returns
     * GPT2_SAMPLE_NONFINITE, -1, for such a row; the select kernel skips it). */
    if (__syncthreads_or(bad)) {
        if (tid == 0) out[r] = SAMPLE_NONFINITE;
        return;
    }

    /* repetition: each distinct token of the history once (the first thread to mark it applies it) */
    if (pr.repetition_penalty != 1.0f) {
        for (int i = tid; i < pr.n_hist; i += blockDim.x) {
            int t = hist[i];
            if (t < 0 || t >= V || atomicExch(&cnt[t], 1) != 0) continue;
            float v = x[t];
            x[t] = v > 0.0f ? __fdiv_rn(v, pr.repetition_penalty) : __fmul_rn(v, pr.repetition_penalty);
        }
        __syncthreads();
        for (int i = tid; i < pr.n_hist; i += blockDim.x) {
            int t = hist[i];
            if (t >= 0 && t < V) cnt[t] = 0;
        }
        __syncthreads();
    }
    /* frequency and presence: over the generated tokens, once per distinct token with its count */
    if (pr.frequency_penalty != 0.0f || pr.presence_penalty != 0.0f) {
        for (int i = pr.n_prompt + tid; i < pr.n_hist; i += blockDim.x) {
            int t = hist[i];
            if (t >= 0 && t < V) atomicAdd(&cnt[t], 1);
        }
        __syncthreads();
        for (int i = pr.n_prompt + tid; i < pr.n_hist; i += blockDim.x) {
            int t = hist[i];
            if (t < 0 || t >= V) continue;
            int c = atomicExch(&cnt[t], 0);
            if (c == 0) continue;
            x[t] = __fsub_rn(x[t], __fadd_rn(__fmul_rn((float)c, pr.frequency_penalty), pr.presence_penalty));
        }
        __syncthreads();
    }
    /* the n-gram ban after the penalties, as sampler.c (a repeated id writes the same -inf) */
    if (pr.n_ban > 0) {
        const int *ban = history + pr.ban_off;
        for (int i = tid; i < pr.n_ban; i += blockDim.x) {
            int t = ban[i];
            if (t >= 0 && t < V) x[t] = -INFINITY;
        }
        __syncthreads();
    }

    if (pr.greedy) {
        float bv = NAN;
        int bi = 0x7fffffff;
        for (int i = tid; i < V; i += blockDim.x) {
            float v = x[i];
            if (argmax_before(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
        int best = block_argmax(bv, bi, sv, si);
        if (tid == 0) out[r] = isnan(x[0]) ? 0 : best; /* the CPU scan never leaves a NaN at index 0 */
        return;
    }
    float mx = -INFINITY;
    for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = block_max(mx, sv);
    if (!isfinite(mx)) { /* a penalty overflowed, or the ban left no token: as sampler.c */
        if (tid == 0) out[r] = SAMPLE_NONFINITE;
        return;
    }
    if (tid == 0) out[r] = 0; /* not -1: the select kernel draws this row's token */
    for (int i = tid; i < V; i += blockDim.x) {
        float v = __fdiv_rn(__fsub_rn(x[i], mx), pr.temperature); /* max first: the largest is 0, never inf */
        x[i] = v == 0.0f ? 0.0f : v; /* -0 orders as +0, as the CPU comparator sees them */
    }
}

/* Inclusive prefix sum over the block (SEL_THREADS == 1024 threads); *total gets the block's sum. */
__device__ double block_scan(double v, double *wt, double *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double y = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += y;
    }
    if (lane == 31) wt[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = wt[lane]; /* SEL_THREADS / 32 == 32 warps */
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            double y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += y;
        }
        wt[lane] = t;
    }
    __syncthreads();
    if (warp > 0) v += wt[warp - 1];
    *total = wt[31];
    __syncthreads(); /* wt is rewritten by the next call */
    return v;
}

/* ---------------------------------------------------------------------------------------------- */
/* Selection without a sort                                                                        */

static_assert(SEL_THREADS == 1024, "block_scan assumes 32 warps");

/* Order-preserving image of a float: a < b (as floats, no NaN) iff ord(a) < ord(b). */
__device__ __forceinline__ unsigned ord_of(float f) {
    const unsigned b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* A cut of the sorted order: the elements up to and including (ord, id), i.e. key images above ord,
 * and those equal to it with an id <= id. {0, INT_MAX} keeps everything. */
typedef struct {
    unsigned ord;
    int id;
} cut_t;
__device__ __forceinline__ bool in_cut(unsigned o, int i, cut_t c) { return o > c.ord || (o == c.ord && i <= c.id); }

/* The probability of a tempered key (max 0), as the CPU's softmax numerator. */
__device__ __forceinline__ double prob_of(float key) { return (double)(float)exp((double)key); }

typedef struct {
    double hist[256]; /* weight per digit of one radix pass */
    int cnt[256];     /* members per digit (weights can be 0) */
    double wt[32];    /* block_scan / block sums */
    int si[32];       /* block min / max */
    double acc;
    int chosen;
} sel_smem;

__device__ double block_sum_d(double v, double *wt) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) wt[warp] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < SEL_THREADS / 32; w++) s += wt[w]; /* same order in every thread: one value */
    __syncthreads();
    return s;
}

/* max (want_max) or min over the block of ints; every thread gets it. */
__device__ int block_ext_i(int v, bool want_max, int *si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int y = __shfl_xor_sync(0xffffffffu, v, o);
        v = want_max ? max(v, y) : min(v, y);
    }
    if (lane == 0) si[warp] = v;
    __syncthreads();
    v = si[0];
    for (int w = 1; w < SEL_THREADS / 32; w++) v = want_max ? max(v, si[w]) : min(v, si[w]);
    __syncthreads();
    return v;
}

/* Sum of the weights (probabilities) of the members of cut c. */
__device__ double cut_mass(const float *k, int V, cut_t c, sel_smem &sm) {
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += SEL_THREADS) {
        const float f = k[i];
        if (in_cut(ord_of(f), i, c)) s += prob_of(f);
    }
    return block_sum_d(s, sm.wt);
}

/* The last member of cut c in sorted order: the smallest key, and among its ties the largest id. */
__device__ cut_t cut_last(const float *k, int V, cut_t c, sel_smem &sm) {
    unsigned lo = 0xffffffffu;
    for (int i = threadIdx.x; i < V; i += SEL_THREADS) {
        const unsigned o = ord_of(k[i]);
        if (in_cut(o, i, c)) lo = min(lo, o);
    }
    /* unsigned min through the int helper: flip the sign bit so that signed order is unsigned order */
    lo = (unsigned)block_ext_i((int)(lo ^ 0x80000000u), false, sm.si) ^ 0x80000000u;
    int id = -1;
    for (int i = threadIdx.x; i < V; i += SEL_THREADS) {
        const unsigned o = ord_of(k[i]);
        if (o == lo && in_cut(o, i, c)) id = max(id, i);
    }
    id = block_ext_i(id, true, sm.si);
    return cut_t{lo, id};
}

/* The first member of cut c, in sorted order (key descending, then id ascending), at which the
 * running weight (1 per element when !MASS, its probability when MASS) reaches target (ge: >=) or
 * exceeds it (!ge: >). false when the members' whole weight does not get there. */
template <bool MASS>
__device__ bool cut_crossing(const float *k, int V, cut_t c, double target, bool ge, sel_smem &sm, cut_t *res) {
    const int tid = threadIdx.x;
    unsigned prefix = 0, pmask = 0;
    double above = 0.0; /* weight of the members ordered before every element with this prefix */
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int d = tid; d < 256; d += SEL_THREADS) {
            sm.hist[d] = 0.0;
            sm.cnt[d] = 0;
        }
        __syncthreads();
        for (int i = tid; i < V; i += SEL_THREADS) {
            const float f = k[i];
            const unsigned o = ord_of(f);
            if ((o & pmask) == prefix && in_cut(o, i, c)) {
                const int d = (int)((o >> shift) & 255u);
                atomicAdd(&sm.hist[d], MASS ? prob_of(f) : 1.0);
                atomicAdd(&sm.cnt[d], 1);
            }
        }
        __syncthreads();
        if (tid == 0) {
            double acc = above;
            int ch = -1, lowest = -1;
            for (int d = 255; d >= 0; d--) {
                if (sm.cnt[d] == 0) continue;
                const double nx = acc + sm.hist[d];
                if (ge ? nx >= target : nx > target) {
                    ch = d;
                    break;
                }
                acc = nx;
                lowest = d;
            }
            /* A finer pass can miss, by rounding, the crossing its coarse bucket showed: take the
             * crossing at the bucket's end (its last non-empty digit), as the sum over it said. */
            if (ch < 0 && pass > 0 && lowest >= 0) {
                ch = lowest;
                acc -= sm.hist[lowest];
            }
            sm.chosen = ch;
            sm.acc = acc;
        }
        __syncthreads();
        const int ch = sm.chosen;
        above = sm.acc;
        __syncthreads(); /* sm is rewritten by the next pass */
        if (ch < 0) return false;
        prefix |= (unsigned)ch << shift;
        pmask |= 255u << shift;
    }
    /* the members whose key image is exactly prefix, in id order */
    double carry = above;
    for (int base = 0; base < V; base += SEL_THREADS) {
        const int i = base + tid;
        bool tied = false;
        double w = 0.0;
        if (i < V) {
            const float f = k[i];
            const unsigned o = ord_of(f);
            tied = o == prefix && in_cut(o, i, c);
            if (tied) w = MASS ? prob_of(f) : 1.0;
        }
        double total;
        const double run = carry + block_scan(w, sm.wt, &total);
        const int cand = block_ext_i(tied && (ge ? run >= target : run > target) ? i : INT_MAX, false, sm.si);
        if (cand != INT_MAX) {
            *res = cut_t{prefix, cand};
            return true;
        }
        carry += total;
    }
    /* the tie group missed by rounding what the histogram saw: its last element */
    int id = -1;
    for (int i = tid; i < V; i += SEL_THREADS) {
        const unsigned o = ord_of(k[i]);
        if (o == prefix && in_cut(o, i, c)) id = max(id, i);
    }
    id = block_ext_i(id, true, sm.si);
    *res = cut_t{prefix, id};
    return true;
}

/* One block per sampled (not greedy) request: top_k, then top_p, then the draw, as sampler.c. */
__global__ void __launch_bounds__(SEL_THREADS)
    sample_select_kernel(int *out, int V, const gpt2_cuda_sample_params *params, int n, const float *keys) {
    __shared__ sel_smem sm;
    const int r = blockIdx.x;
    if (r >= n) return;
    const gpt2_cuda_sample_params pr = params[r];
    if (pr.greedy || out[r] == SAMPLE_NONFINITE) return; /* done by the prep kernel */
    const float *k = keys + (size_t)r * V;

    cut_t cut = {0u, INT_MAX}, next;
    if (pr.top_k > 0 && pr.top_k < V && cut_crossing<false>(k, V, cut, (double)pr.top_k, true, sm, &next))
        cut = next; /* the top_k-th element in sorted order: the running count reaches top_k there */
    double sum = cut_mass(k, V, cut, sm);
    if (pr.top_p < 1.0f && cut_crossing<true>(k, V, cut, (double)pr.top_p * sum, true, sm, &next)) {
        cut = next; /* the shortest prefix whose mass reaches top_p * sum */
        sum = cut_mass(k, V, cut, sm);
    }
    const double u = (double)pr.uniform * sum;
    cut_t pick;
    if (!cut_crossing<true>(k, V, cut, u, false, sm, &pick)) pick = cut_last(k, V, cut, sm);
    if (threadIdx.x == 0) out[r] = pick.id;
}

/* out_lp[r] = log_softmax(raw logits row params[r].row)[tokens[r]], in float with the max subtracted. */
__global__ void __launch_bounds__(PREP_THREADS)
    sample_logprob_kernel(float *out_lp, const int *tokens, const float *logits, int V, int ld,
                          const gpt2_cuda_sample_params *params, int n) {
    __shared__ float sv[PREP_THREADS / 32];
    const int r = blockIdx.x;
    if (r >= n) return;
    const float *src = logits + (size_t)params[r].row * ld;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, src[i]);
    mx = block_max(mx, sv);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(src[i] - mx);
    sum = block_sum(sum, sv);
    if (threadIdx.x == 0) {
        const int t = tokens[r];
        out_lp[r] = t >= 0 && t < V ? (src[t] - mx) - logf(sum) : NAN;
    }
}

extern "C" cudaError_t sample_cuda(int *out_tokens, float *out_logprobs, const float *logits, int V, int ld,
                                   const gpt2_cuda_sample_params *params, const int *history, int n, int any_sampled,
                                   const gpt2_cuda_sample_scratch *scr, cudaStream_t stream) {
    if (!scr || n < 0 || n > scr->rows || V != scr->V || V < 1 || ld < V) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (!out_tokens || !logits || !params || !history || !scr->keys || !scr->count) return cudaErrorInvalidValue;
    sample_prep_kernel<<<n, PREP_THREADS, 0, stream>>>(out_tokens, logits, V, ld, params, history, n, scr->keys,
                                                       scr->count);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    if (any_sampled) {
        sample_select_kernel<<<n, SEL_THREADS, 0, stream>>>(out_tokens, V, params, n, scr->keys);
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
    if (!out_logprobs) return cudaSuccess;
    sample_logprob_kernel<<<n, PREP_THREADS, 0, stream>>>(out_logprobs, out_tokens, logits, V, ld, params, n);
    return cudaGetLastError();
}
