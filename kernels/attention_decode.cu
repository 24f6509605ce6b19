/* attention_decode.cu: split-K decode attention in one launch, float accumulation.
 *
 * Block = 4 warps = one split of up to 128 keys of one (row, head); the index arithmetic is
 * kernels/attention_layout.h's (simulated on the CPU by tools/sim_attention.c). A key row is read
 * as 16-byte chunks: a group of LPK lanes shares a key (lane gl owns chunks gl, gl + LPK, ...), so
 * one warp load covers 32 / LPK whole key rows, contiguous in the cache (512 bytes per instruction
 * at HS = 64 in fp16), and UNROLL such loads are issued before the first is used.
 *   scores:  per-lane partial dot products, summed over the LPK lanes of the group by shuffles; the
 *            group's first lane stores the score in shared memory (log2 units: q pre-scaled by
 *            log2(e)/sqrt(HS));
 *   softmax: thread i of the block takes key k0 + i (SPLIT == threads): block max, exp2, block sum;
 *   P V:     the same key walk over V; each lane accumulates p * v for its chunks, then the groups of
 *            a warp are summed by shuffles and the warps through shared memory.
 * Merge: a row of one split (len <= 128) writes its output directly. Otherwise the block writes its
 * partial (HS sums, max, sum) to scratch, fences, and takes a ticket on its (row, head) counter; the
 * block that draws the last ticket (ns - 1, ns = the row's splits) merges all partials in split
 * order, reading them through L2 (__ldcg), and resets the counter.
 * append: the block of a row's last split (the one whose keys end at pos) first writes the new token's
 * K and V (qkv's k and v plus their bias, rounded to T) into the cache at pos and then reads them
 * back like any other key (a __syncthreads makes the block's global writes visible to the block;
 * the loads are plain, not the read-only path, for that reason). No other block of the launch reads
 * position pos of that (slot, head), so this replaces the separate kv_append launch without a race. */
#include "attention_decode.cuh"
#include "attention_layout.h"
#include "cuda_common.cuh"

using namespace gpt2_cuda;

enum { DC_SPLIT = ATTN_DC_SPLIT, DC_WARPS = ATTN_DC_WARPS, DC_THREADS = DC_WARPS * 32, DC_KPS = ATTN_DC_KPS,
       DC_UNROLL = ATTN_DC_UNROLL, DC_MAX_HS = 256 };
static_assert(DC_SPLIT == DC_THREADS, "one key per thread in the softmax");
static_assert(DC_SPLIT == GPT2_ATTN_DECODE_SPLIT, "the header's split is the layout's");
static_assert(DC_KPS % (DC_UNROLL * 8) == 0, "a warp's key steps tile its keys for every kpw (<= 8)");

static int n_splits(int maxT) { return (maxT + DC_SPLIT - 1) / DC_SPLIT; }

extern "C" size_t attention_decode_scratch_floats(int B, int NH, int HS, int maxT) {
    if (B < 1 || NH < 1 || HS < 1 || maxT < 1) return 0;
    size_t n = 0;
    if (__builtin_mul_overflow((size_t)B * (size_t)NH, (size_t)n_splits(maxT), &n) ||
        __builtin_mul_overflow(n, (size_t)HS + 2, &n))
        return 0;
    return n;
}

extern "C" size_t attention_decode_counters(int B, int NH) {
    if (B < 1 || NH < 1) return 0;
    return (size_t)B * (size_t)NH;
}

/* One chunk of VEC values at p + d0 as floats (zeros when !ok): a 16-byte load when VEC values are
 * 16 bytes (HS a multiple of VEC: the chunk is wholly in or out), else one value. A plain load, not
 * __ldg: the block may have just written this row (append). */
template <typename T, int VEC>
__device__ __forceinline__ void load_chunk(const T *p, int d0, int HS, bool ok, float (&f)[VEC]) {
    if constexpr (VEC * sizeof(T) == 16) {
        if (ok && d0 < HS) {
            const uint4 u = *reinterpret_cast<const uint4 *>(p + d0);
            T e[VEC];
            memcpy(e, &u, 16);
#pragma unroll
            for (int v = 0; v < VEC; v++) f[v] = to_float(e[v]);
        } else {
#pragma unroll
            for (int v = 0; v < VEC; v++) f[v] = 0.0f;
        }
    } else {
        static_assert(VEC == 1, "a chunk is 16 bytes or one value");
        f[0] = ok && d0 < HS ? to_float(p[d0]) : 0.0f;
    }
}

template <typename T, int VEC, int LPK, int NCH>
__global__ void __launch_bounds__(DC_THREADS)
    attention_decode_kernel(T *out, const T *qkv, const T *qkv_bias, T *kcache, T *vcache, const int *slot,
                            const int *pos, int B, int NH, int HS, int maxT, int S, int nsplit, int append,
                            float qscale, float *part_acc, float *part_ml, unsigned *counters) {
    constexpr int KPW = 32 / LPK;
    const attn_dc_geom G = {VEC, LPK, NCH, KPW};
    __shared__ float sc[DC_SPLIT];                 /* (SPLIT) scores, then probabilities, of this split */
    __shared__ float red[DC_WARPS];                /* (WARPS) block reductions */
    __shared__ float wacc[DC_WARPS][DC_MAX_HS];    /* (WARPS, HS) per-warp P V */
    __shared__ float tot_l;
    __shared__ int last;

    const int b = blockIdx.x / nsplit, sp = blockIdx.x - b * nsplit, h = blockIdx.y;
    if (b >= B) return;
    const int C = NH * HS, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int group = lane / LPK, gl = lane - group * LPK;
    T *o = out + (size_t)b * C + (size_t)h * HS;
    const int s = slot[b], p = pos[b];
    if (s < 0 || s >= S || p < 0 || p >= maxT) { /* padding: zeros, from the row's first block */
        if (sp == 0)
            for (int d = tid; d < HS; d += DC_THREADS) o[d] = from_float<T>(0.0f);
        return;
    }
    const int len = p + 1, k0 = sp * DC_SPLIT;
    if (k0 >= len) return; /* past this row's context */
    const int k1 = min(k0 + DC_SPLIT, len), nk = k1 - k0, ns = attn_dc_nsplit_of(p);

    /* q: this lane's chunks, bias added, pre-scaled */
    float q[NCH][VEC];
    const T *qrow = qkv + (size_t)b * 3 * C + (size_t)h * HS;
#pragma unroll
    for (int c = 0; c < NCH; c++)
#pragma unroll
        for (int v = 0; v < VEC; v++) {
            const int d = attn_dc_dim0(gl, c, G) + v;
            q[c][v] = d < HS ? (to_float(qrow[d]) + (qkv_bias ? to_float(qkv_bias[h * HS + d]) : 0.0f)) * qscale
                             : 0.0f;
        }

    const size_t head = ((size_t)s * NH + h) * (size_t)maxT * HS; /* this (slot, head): (maxT, HS) */
    if (append && k1 == len) { /* block-uniform: this split holds key p */
        const T *kn = qkv + (size_t)b * 3 * C + C + (size_t)h * HS, *vn = kn + C;
        for (int d = tid; d < HS; d += DC_THREADS) {
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
    const T *kh = kcache + head, *vh = vcache + head;

    /* scores of keys k0 .. k1-1 into sc */
    for (int j0 = 0; j0 < DC_KPS; j0 += DC_UNROLL * KPW) {
        float kv[DC_UNROLL][NCH][VEC];
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) { /* every load of the step before any use */
            const int key = attn_dc_key(k0, warp, j0, u, group, KPW);
            const T *row = kh + (size_t)(key < k1 ? key : k0) * HS;
#pragma unroll
            for (int c = 0; c < NCH; c++) load_chunk<T, VEC>(row, attn_dc_dim0(gl, c, G), HS, key < k1, kv[u][c]);
        }
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int v = 0; v < VEC; v++) dot += q[c][v] * kv[u][c][v];
#pragma unroll
            for (int off = LPK / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
            const int key = attn_dc_key(k0, warp, j0, u, group, KPW);
            if (gl == 0 && key < k1) sc[key - k0] = dot;
        }
    }
    __syncthreads();

    /* softmax over the split: thread tid owns key k0 + tid */
    const float my = tid < nk ? sc[tid] : -INFINITY;
    const float wm = warp_max(my);
    if (lane == 0) red[warp] = wm;
    __syncthreads();
    float m = red[0];
#pragma unroll
    for (int w = 1; w < DC_WARPS; w++) m = fmaxf(m, red[w]);
    __syncthreads(); /* red is reused for the sums */
    const float pr = tid < nk ? exp2f(my - m) : 0.0f; /* m is finite: key k0 always has a score */
    sc[tid] = pr;
    const float ws = warp_sum(pr);
    if (lane == 0) red[warp] = ws;
    __syncthreads();
    if (tid == 0) {
        float l = 0.0f;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) l += red[w];
        tot_l = l;
    }

    /* P V over the same keys */
    float acc[NCH][VEC];
#pragma unroll
    for (int c = 0; c < NCH; c++)
#pragma unroll
        for (int v = 0; v < VEC; v++) acc[c][v] = 0.0f;
    for (int j0 = 0; j0 < DC_KPS; j0 += DC_UNROLL * KPW) {
        float vv[DC_UNROLL][NCH][VEC];
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            const int key = attn_dc_key(k0, warp, j0, u, group, KPW);
            const T *row = vh + (size_t)(key < k1 ? key : k0) * HS;
#pragma unroll
            for (int c = 0; c < NCH; c++) load_chunk<T, VEC>(row, attn_dc_dim0(gl, c, G), HS, key < k1, vv[u][c]);
        }
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            const int key = attn_dc_key(k0, warp, j0, u, group, KPW);
            const float pk = key < k1 ? sc[key - k0] : 0.0f;
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int v = 0; v < VEC; v++) acc[c][v] += pk * vv[u][c][v];
        }
    }
    /* the warp's groups summed (lanes gl, gl + LPK, ... hold the same dims), group 0 stores */
#pragma unroll
    for (int off = LPK; off < 32; off <<= 1)
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int v = 0; v < VEC; v++) acc[c][v] += __shfl_xor_sync(0xffffffffu, acc[c][v], off);
    if (group == 0)
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int v = 0; v < VEC; v++) {
                const int d = attn_dc_dim0(gl, c, G) + v;
                if (d < HS) wacc[warp][d] = acc[c][v];
            }
    __syncthreads();

    if (ns == 1) { /* the whole context in this block: no partials */
        const float inv = 1.0f / tot_l;
        for (int d = tid; d < HS; d += DC_THREADS) {
            float a = 0.0f;
#pragma unroll
            for (int w = 0; w < DC_WARPS; w++) a += wacc[w][d];
            o[d] = from_float<T>(a * inv);
        }
        return;
    }
    const unsigned long long part = attn_dc_part(b, h, sp, NH, nsplit);
    for (int d = tid; d < HS; d += DC_THREADS) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) a += wacc[w][d];
        part_acc[part * HS + d] = a;
    }
    if (tid == 0) {
        part_ml[2 * part] = m;
        part_ml[2 * part + 1] = tot_l;
    }
    __threadfence(); /* this block's partial is visible before its ticket */
    __syncthreads();
    unsigned *ticket = &counters[(size_t)b * NH + h];
    if (tid == 0) last = atomicAdd(ticket, 1u) == (unsigned)(ns - 1);
    __syncthreads();
    if (!last) return;
    __threadfence(); /* the other blocks' partials are visible (their fence came before their ticket) */
    const unsigned long long part0 = attn_dc_part(b, h, 0, NH, nsplit);
    float M = -INFINITY;
    for (int k = 0; k < ns; k++) M = fmaxf(M, __ldcg(&part_ml[2 * (part0 + k)]));
    float L = 0.0f;
    for (int k = 0; k < ns; k++)
        L += __ldcg(&part_ml[2 * (part0 + k) + 1]) * exp2f(__ldcg(&part_ml[2 * (part0 + k)]) - M);
    const float inv = 1.0f / L;
    for (int d = tid; d < HS; d += DC_THREADS) {
        float a = 0.0f;
        for (int k = 0; k < ns; k++)
            a += __ldcg(&part_acc[(part0 + k) * HS + d]) * exp2f(__ldcg(&part_ml[2 * (part0 + k)]) - M);
        o[d] = from_float<T>(a * inv);
    }
    if (tid == 0) *ticket = 0u; /* ready for the next launch */
}

template <typename T, int VEC, int LPK, int NCH>
static cudaError_t launch_decode(T *out, const T *qkv, const T *qkv_bias, T *kcache, T *vcache, const int *slot,
                                 const int *pos, int B, int NH, int HS, int maxT, int S, int append, float *scratch,
                                 unsigned *counters, cudaStream_t stream) {
    const int nsplit = n_splits(maxT);
    float *part_acc = scratch;                                         /* (B, NH, nsplit, HS) */
    float *part_ml = scratch + (size_t)B * NH * nsplit * (size_t)HS;   /* (B, NH, nsplit, 2) */
    const float qscale = 1.4426950408889634f / sqrtf((float)HS);      /* log2(e) / sqrt(HS) */
    dim3 grid((unsigned)((size_t)B * nsplit), (unsigned)NH);
    attention_decode_kernel<T, VEC, LPK, NCH><<<grid, DC_THREADS, 0, stream>>>(
        out, qkv, qkv_bias, kcache, vcache, slot, pos, B, NH, HS, maxT, S, nsplit, append, qscale, part_acc, part_ml,
        counters);
    return cudaGetLastError();
}

extern "C" cudaError_t attention_decode_cuda(void *out, const void *qkv, const void *qkv_bias, void *kcache,
                                             void *vcache, const int *slot, const int *pos, int B, int NH, int HS,
                                             int maxT, int S, int append, float *scratch, size_t scratch_floats,
                                             unsigned *counters, size_t n_counters, gpt2_dtype dtype,
                                             cudaStream_t stream) {
    if (B < 0 || NH < 1 || NH > 65535 || HS < 1 || HS > DC_MAX_HS || maxT < 1 || S < 1) return cudaErrorInvalidValue;
    if (B == 0) return cudaSuccess;
    if (!out || !qkv || !kcache || !vcache || !slot || !pos || !scratch || !counters) return cudaErrorInvalidValue;
    if ((size_t)B * n_splits(maxT) > 0x7fffffffu) return cudaErrorInvalidValue;
    const size_t need = attention_decode_scratch_floats(B, NH, HS, maxT);
    if (need == 0 || scratch_floats < need || n_counters < attention_decode_counters(B, NH))
        return cudaErrorInvalidValue;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        constexpr int V16 = 16 / sizeof(T);
        T *o = (T *)out, *kc = (T *)kcache, *vc = (T *)vcache;
        const T *q = (const T *)qkv, *qb = (const T *)qkv_bias;
        const int a = append != 0;
        const int vector_ok = (HS * sizeof(T)) % 16 == 0 && (uintptr_t)kcache % 16 == 0 && (uintptr_t)vcache % 16 == 0;
        const attn_dc_geom g = attn_dc_geometry(HS, (int)sizeof(T), vector_ok);
#define DC_LAUNCH(VEC, LPK, NCH)                                                                             \
    launch_decode<T, VEC, LPK, NCH>(o, q, qb, kc, vc, slot, pos, B, NH, HS, maxT, S, a, scratch, counters, stream)
        if (g.vec == 1) {
            if (g.nch == 1) return DC_LAUNCH(1, 32, 1);
            if (g.nch == 2) return DC_LAUNCH(1, 32, 2);
            if (g.nch == 4) return DC_LAUNCH(1, 32, 4);
            return DC_LAUNCH(1, 32, 8);
        }
        if (g.nch == 2) return DC_LAUNCH(V16, 32, 2);
        if (g.lpk == 4) return DC_LAUNCH(V16, 4, 1);
        if (g.lpk == 8) return DC_LAUNCH(V16, 8, 1);
        if (g.lpk == 16) return DC_LAUNCH(V16, 16, 1);
        return DC_LAUNCH(V16, 32, 1);
#undef DC_LAUNCH
    });
}
