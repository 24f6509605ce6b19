/* attention_decode.cu: split-K decode attention, float accumulation.
 *
 * Pass 1, block = 4 warps = one split of up to 128 keys of one (row, head). Warp w takes keys
 * k0 + 32w .. k0 + 32w + 31; for each key the lanes share the dot product (lane owns dims lane,
 * lane+32, ...; loads coalesced along the head dimension) and a warp reduction finishes it, the score
 * landing in lane j for key j. Block max and exp-sum follow; P V is accumulated the same way, the
 * probabilities broadcast by shuffles. Eight keys are loaded before any of them is used, so that
 * eight loads are in flight per warp. Scores in log2 units (q pre-scaled by log2(e)/sqrt(HS)).
 * Pass 2, one block per (row, head): the usual merge of softmax partials.
 * append: the block of a row's last split (the one whose keys end at pos) first writes the new token's
 * K and V (qkv's k and v plus their bias, rounded to T) into the cache at pos and then reads them
 * back like any other key (a __syncthreads makes the block's global writes visible to the block).
 * No other block of the launch reads position pos of that (slot, head), so this replaces the separate
 * kv_append launch of every decode layer without a race. */
#include "attention_decode.cuh"
#include "cuda_common.cuh"

using namespace gpt2_cuda;

enum { DC_SPLIT = GPT2_ATTN_DECODE_SPLIT, DC_WARPS = 4, DC_THREADS = DC_WARPS * 32, DC_UNROLL = 8 };
static_assert(DC_SPLIT == DC_WARPS * 32, "one key per lane per warp");

static int n_splits(int maxT) { return (maxT + DC_SPLIT - 1) / DC_SPLIT; }

extern "C" size_t attention_decode_scratch_floats(int B, int NH, int HS, int maxT) {
    if (B < 1 || NH < 1 || HS < 1 || maxT < 1) return 0;
    return (size_t)B * NH * n_splits(maxT) * ((size_t)HS + 2);
}

template <typename T, int DPL>
__global__ void __launch_bounds__(DC_THREADS)
    attention_decode_split_kernel(const T *qkv, const T *qkv_bias, T *kcache, T *vcache, const int *slot,
                                  const int *pos, int B, int NH, int HS, int maxT, int S, int nsplit, int append,
                                  float qscale, float *part_acc, float *part_ml) {
    __shared__ float red[DC_WARPS];
    __shared__ float wacc[DC_WARPS][32 * DPL];

    const int b = blockIdx.x / nsplit, sp = blockIdx.x - b * nsplit, h = blockIdx.y;
    if (b >= B) return;
    const int s = slot[b], p = pos[b];
    if (s < 0 || s >= S || p < 0 || p >= maxT) return;
    const int len = p + 1, k0 = sp * DC_SPLIT;
    if (k0 >= len) return; /* past this row's context: pass 2 reads only splits below len */
    const int k1 = min(k0 + DC_SPLIT, len);
    const int C = NH * HS, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    float q[DPL];
    const T *qrow = qkv + (size_t)b * 3 * C + (size_t)h * HS;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        const int d = lane + 32 * i;
        float v = 0.0f;
        if (d < HS) v = (to_float(qrow[d]) + (qkv_bias ? to_float(qkv_bias[h * HS + d]) : 0.0f)) * qscale;
        q[i] = v;
    }

    const size_t head = ((size_t)s * NH + h) * (size_t)maxT * HS;
    const int kw = k0 + warp * 32; /* this warp's first key */

    if (append && k1 == len) { /* block-uniform: this is the split holding key p */
        const T *kn = qkv + (size_t)b * 3 * C + C + (size_t)h * HS, *vn = kn + C;
        for (int d = threadIdx.x; d < HS; d += DC_THREADS) {
            float kv = to_float(kn[d]), vv = to_float(vn[d]);
            if (qkv_bias) {
                kv += to_float(qkv_bias[C + h * HS + d]);
                vv += to_float(qkv_bias[2 * C + h * HS + d]);
            }
            kcache[head + (size_t)p * HS + d] = from_float<T>(kv);
            vcache[head + (size_t)p * HS + d] = from_float<T>(vv);
        }
        __syncthreads();
    }

    /* scores: lane j ends up holding the score of key kw + j (-inf past k1) */
    float my = -INFINITY;
    for (int j0 = 0; j0 < 32 && kw + j0 < k1; j0 += DC_UNROLL) {
        float kv[DC_UNROLL][DPL];
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            const int key = kw + j0 + u;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int d = lane + 32 * i;
                kv[u][i] = (key < k1 && d < HS) ? to_float(kcache[head + (size_t)key * HS + d]) : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) dot += q[i] * kv[u][i];
            dot = warp_sum(dot);
            if (lane == j0 + u && kw + j0 + u < k1) my = dot;
        }
    }

    const float wm = warp_max(my);
    if (lane == 0) red[warp] = wm;
    __syncthreads();
    float m = red[0];
#pragma unroll
    for (int w = 1; w < DC_WARPS; w++) m = fmaxf(m, red[w]);
    __syncthreads(); /* red is reused for the sums */
    /* m is finite: key k0 < k1 always has a score */
    const float pr = my == -INFINITY ? 0.0f : exp2f(my - m);
    const float wl = warp_sum(pr);
    if (lane == 0) red[warp] = wl;

    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    for (int j0 = 0; j0 < 32 && kw + j0 < k1; j0 += DC_UNROLL) {
        float vv[DC_UNROLL][DPL];
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            const int key = kw + j0 + u;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int d = lane + 32 * i;
                vv[u][i] = (key < k1 && d < HS) ? to_float(vcache[head + (size_t)key * HS + d]) : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            const float pj = __shfl_sync(0xffffffffu, pr, j0 + u); /* 0 for keys past k1 */
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] += pj * vv[u][i];
        }
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) wacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();

    const size_t part = ((size_t)b * NH + h) * nsplit + sp;
    if (threadIdx.x == 0) {
        float l = 0.0f;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) l += red[w];
        part_ml[2 * part] = m;
        part_ml[2 * part + 1] = l;
    }
    for (int d = threadIdx.x; d < HS; d += DC_THREADS) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) a += wacc[w][d];
        part_acc[part * HS + d] = a;
    }
}

template <typename T>
__global__ void attention_decode_merge_kernel(T *out, const int *slot, const int *pos, int B, int NH, int HS, int maxT,
                                              int S, int nsplit, const float *part_acc, const float *part_ml) {
    const int b = blockIdx.x / NH, h = blockIdx.x - b * NH;
    if (b >= B) return;
    T *o = out + (size_t)b * NH * HS + (size_t)h * HS;
    const int s = slot[b], p = pos[b];
    if (s < 0 || s >= S || p < 0 || p >= maxT) {
        for (int d = threadIdx.x; d < HS; d += blockDim.x) o[d] = from_float<T>(0.0f);
        return;
    }
    const int ns = (p + DC_SPLIT) / DC_SPLIT; /* ceil((p + 1) / SPLIT) <= nsplit, as p < maxT */
    const size_t part0 = ((size_t)b * NH + h) * nsplit;
    float M = -INFINITY;
    for (int k = 0; k < ns; k++) M = fmaxf(M, part_ml[2 * (part0 + k)]);
    float L = 0.0f;
    for (int k = 0; k < ns; k++) L += part_ml[2 * (part0 + k) + 1] * exp2f(part_ml[2 * (part0 + k)] - M);
    const float inv = 1.0f / L;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float a = 0.0f;
        for (int k = 0; k < ns; k++) a += part_acc[(part0 + k) * HS + d] * exp2f(part_ml[2 * (part0 + k)] - M);
        o[d] = from_float<T>(a * inv);
    }
}

template <typename T, int DPL>
static cudaError_t launch_decode(T *out, const T *qkv, const T *qkv_bias, T *kcache, T *vcache, const int *slot,
                                 const int *pos, int B, int NH, int HS, int maxT, int S, int append, float *scratch,
                                 cudaStream_t stream) {
    const int nsplit = n_splits(maxT);
    float *part_acc = scratch;                                         /* (B, NH, nsplit, HS) */
    float *part_ml = scratch + (size_t)B * NH * nsplit * (size_t)HS;   /* (B, NH, nsplit, 2) */
    const float qscale = 1.4426950408889634f / sqrtf((float)HS);
    dim3 grid1((unsigned)((size_t)B * nsplit), (unsigned)NH);
    attention_decode_split_kernel<T, DPL><<<grid1, DC_THREADS, 0, stream>>>(
        qkv, qkv_bias, kcache, vcache, slot, pos, B, NH, HS, maxT, S, nsplit, append, qscale, part_acc, part_ml);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    attention_decode_merge_kernel<T><<<(unsigned)((size_t)B * NH), 64, 0, stream>>>(out, slot, pos, B, NH, HS, maxT, S,
                                                                                  nsplit, part_acc, part_ml);
    return cudaGetLastError();
}

extern "C" cudaError_t attention_decode_cuda(void *out, const void *qkv, const void *qkv_bias, void *kcache,
                                             void *vcache, const int *slot, const int *pos, int B, int NH, int HS,
                                             int maxT, int S, int append, float *scratch, size_t scratch_floats,
                                             gpt2_dtype dtype, cudaStream_t stream) {
    if (B < 0 || NH < 1 || NH > 65535 || HS < 1 || HS > 256 || maxT < 1 || S < 1) return cudaErrorInvalidValue;
    if (B == 0) return cudaSuccess;
    if (!out || !qkv || !kcache || !vcache || !slot || !pos || !scratch) return cudaErrorInvalidValue;
    if ((size_t)B * n_splits(maxT) > 0x7fffffffu) return cudaErrorInvalidValue;
    if (scratch_floats < attention_decode_scratch_floats(B, NH, HS, maxT)) return cudaErrorInvalidValue;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        T *o = (T *)out;
        const T *q = (const T *)qkv, *qb = (const T *)qkv_bias;
        T *kc = (T *)kcache, *vc = (T *)vcache;
        const int a = append != 0;
        if (HS <= 32) return launch_decode<T, 1>(o, q, qb, kc, vc, slot, pos, B, NH, HS, maxT, S, a, scratch, stream);
        if (HS <= 64) return launch_decode<T, 2>(o, q, qb, kc, vc, slot, pos, B, NH, HS, maxT, S, a, scratch, stream);
        if (HS <= 128) return launch_decode<T, 4>(o, q, qb, kc, vc, slot, pos, B, NH, HS, maxT, S, a, scratch, stream);
        return launch_decode<T, 8>(o, q, qb, kc, vc, slot, pos, B, NH, HS, maxT, S, a, scratch, stream);
    });
}
