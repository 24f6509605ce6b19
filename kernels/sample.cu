/* sample.cu: penalties, argmax, and top-k / top-p / inverse-CDF sampling, one block per request.
 *
 * The float operations that decide a token are those of src/sampler.c, written with explicit
 * rounding intrinsics so that nvcc cannot contract them into FMAs: x / p and x * p for the repetition
 * penalty, x - (c * f + pres) for frequency and presence, x / temperature. The sort is CUB's stable
 * segmented sort (ties keep the lower id first, as the CPU comparator). What can differ from the CPU
 * is the last bit of a probability (expf there, exp in double here, rounded to float) and the order
 * of the double-precision running sums: both far below what moves a 24-bit uniform draw across a
 * token boundary, except on exact ties of the draw with a boundary.
 *
 * Temperature: scaled_i = (l_i - max_j l_j) / T on both backends, so the largest is exactly 0 and no
 * temperature, however small (1e-45), overflows to inf or makes a NaN: a tiny T is greedy in effect.
 * Greedy argmax orders NaN below every number (as src/sampler.c's strict `>` scan does) and returns
 * 0 when logit 0 is NaN, which is where that scan stays. Rows are `ld` floats apart (ld >= V: the
 * logits buffer is padded for cuBLAS); columns V..ld-1 are never read. */
#include <cub/device/device_segmented_sort.cuh>

#include "cuda_common.cuh"
#include "sample.cuh"

using namespace gpt2_cuda;

enum { PREP_THREADS = 512, FIN_THREADS = 1024 };

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
                       const int *history, int n, int G, float *keys, int *vals, int *count, int *seg) {
    __shared__ float sv[PREP_THREADS / 32];
    __shared__ int si[PREP_THREADS / 32];
    const int r = blockIdx.x, tid = threadIdx.x;
    const size_t base = (size_t)r * V;
    if (r >= n) { /* unused row: an empty segment for the sort */
        if (tid == 0) seg[r] = seg[G + r] = (int)base;
        return;
    }
    const gpt2_cuda_sample_params pr = params[r];
    const float *src = logits + (size_t)pr.row * ld;
    float *x = keys + base;
    int *cnt = count + base;
    const int *hist = history + pr.hist_off;
    for (int i = tid; i < V; i += blockDim.x) x[i] = src[i];
    __syncthreads();

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
        if (tid == 0) {
            out[r] = isnan(x[0]) ? 0 : best; /* the CPU scan never leaves a NaN at index 0 */
            seg[r] = seg[G + r] = (int)base;
        }
        return;
    }
    float mx = -INFINITY;
    for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = block_max(mx, sv);
    for (int i = tid; i < V; i += blockDim.x) {
        float v = __fdiv_rn(__fsub_rn(x[i], mx), pr.temperature); /* max first: the largest is 0, never inf */
        x[i] = v == 0.0f ? 0.0f : v; /* -0 sorts as +0, as the CPU comparator sees them */
        vals[base + i] = i;
    }
    if (tid == 0) {
        seg[r] = (int)base;
        seg[G + r] = (int)(base + V);
    }
}

/* Inclusive prefix sum over the block (FIN_THREADS threads); *total gets the block's sum. */
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
        double t = wt[lane]; /* FIN_THREADS / 32 == 32 warps */
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

/* Smallest i < n with cum[i] >= thr (ge) or thr < cum[i] (!ge); n when there is none. */
__device__ int block_first(const double *cum, int n, double thr, bool ge, int *si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int best = n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (ge ? cum[i] >= thr : thr < cum[i]) {
            best = i;
            break;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) best = min(best, __shfl_xor_sync(0xffffffffu, best, o));
    if (lane == 0) si[warp] = best;
    __syncthreads();
    best = si[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) best = min(best, si[w]);
    __syncthreads();
    return best;
}

__global__ void __launch_bounds__(FIN_THREADS)
    sample_finish_kernel(int *out, int V, const gpt2_cuda_sample_params *params, int n, const float *keys,
                         const int *vals, double *cumbuf) {
    __shared__ double wt[32];
    __shared__ int si[32];
    const int r = blockIdx.x;
    if (r >= n) return;
    const gpt2_cuda_sample_params pr = params[r];
    if (pr.greedy) return;
    const size_t base = (size_t)r * V;
    const float *k = keys + base;
    const int *idx = vals + base;
    double *cum = cumbuf + base;

    int nc = (pr.top_k > 0 && pr.top_k < V) ? pr.top_k : V;
    const float mx = k[0];
    double carry = 0.0;
    for (int b0 = 0; b0 < nc; b0 += FIN_THREADS) {
        const int i = b0 + threadIdx.x;
        double p = 0.0;
        if (i < nc) p = (double)(float)exp((double)__fsub_rn(k[i], mx));
        double total;
        const double incl = block_scan(p, wt, &total);
        if (i < nc) cum[i] = carry + incl;
        carry += total;
    }
    __syncthreads(); /* cum complete and visible to the block */

    double sum = cum[nc - 1];
    if (pr.top_p < 1.0f) {
        int keep = block_first(cum, nc, (double)pr.top_p * sum, true, si);
        nc = keep < nc ? keep + 1 : nc;
        sum = cum[nc - 1];
    }
    const double u = (double)pr.uniform * sum;
    int pick = block_first(cum, nc, u, false, si);
    if (pick >= nc) pick = nc - 1;
    if (threadIdx.x == 0) out[r] = idx[pick];
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

extern "C" cudaError_t sample_cuda_sort_bytes(int G, int V, size_t *bytes) {
    if (G < 1 || V < 1 || (long long)G * V > 0x7fffffffLL || !bytes) return cudaErrorInvalidValue;
    *bytes = 0;
    return cub::DeviceSegmentedSort::StableSortPairsDescending(
        (void *)nullptr, *bytes, (const float *)nullptr, (float *)nullptr, (const int *)nullptr, (int *)nullptr,
        (::cuda::std::int64_t)G * V, (::cuda::std::int64_t)G, (const int *)nullptr, (const int *)nullptr, (cudaStream_t)0);
}

/* The sampled rows: sort each row's keys, then the inverse-CDF draw. */
static cudaError_t sort_and_draw(int *out_tokens, int V, const gpt2_cuda_sample_params *params, int n,
                                 const gpt2_cuda_sample_scratch *scr, cudaStream_t stream) {
    const int G = scr->rows;
    cudaError_t e;
    size_t bytes = scr->sort_bytes;
    e = cub::DeviceSegmentedSort::StableSortPairsDescending(scr->sort_temp, bytes, scr->keys_in, scr->keys_out,
                                                           scr->vals_in, scr->vals_out, (::cuda::std::int64_t)G * V,
                                                           (::cuda::std::int64_t)G, scr->seg, scr->seg + G, stream);
    if (e != cudaSuccess) return e;
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    sample_finish_kernel<<<n, FIN_THREADS, 0, stream>>>(out_tokens, V, params, n, scr->keys_out, scr->vals_out,
                                                        scr->cum);
    return cudaGetLastError();
}

extern "C" cudaError_t sample_cuda(int *out_tokens, float *out_logprobs, const float *logits, int V, int ld,
                                   const gpt2_cuda_sample_params *params, const int *history, int n, int any_sort,
                                   const gpt2_cuda_sample_scratch *scr, cudaStream_t stream) {
    if (!scr || n < 0 || n > scr->rows || V != scr->V || V < 1 || ld < V) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (!out_tokens || !logits || !params || !history || !scr->keys_in || !scr->keys_out || !scr->vals_in ||
        !scr->vals_out || !scr->cum || !scr->count || !scr->seg)
        return cudaErrorInvalidValue;
    const int G = scr->rows;
    sample_prep_kernel<<<G, PREP_THREADS, 0, stream>>>(out_tokens, logits, V, ld, params, history, n, G,
                                                       scr->keys_in, scr->vals_in, scr->count, scr->seg);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    if (any_sort && (e = sort_and_draw(out_tokens, V, params, n, scr, stream)) != cudaSuccess) return e;
    if (!out_logprobs) return cudaSuccess;
    sample_logprob_kernel<<<n, PREP_THREADS, 0, stream>>>(out_logprobs, out_tokens, logits, V, ld, params, n);
    return cudaGetLastError();
}
