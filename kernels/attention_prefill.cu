/* attention_prefill.cu: flash-style causal attention over a ragged batch, float accumulation.
 *
 * Block = 4 warps = one tile of BQ = 32 queries of one head; each warp owns R = 8 query rows. Keys go
 * through shared memory in tiles of BK = 32, one key per lane:
 *   scores:  lane j computes q_r . k_j for its warp's 8 rows (q broadcast from shared memory; the K
 *            tile rows are padded to HS+1 floats so the 32 lanes read 32 different banks);
 *   softmax: running max m and sum l per row (warp reductions), old accumulators rescaled;
 *   P V:     lane owns output dims lane, lane+32, ... (DPL of them) and sums p_j v_j over the tile.
 * Scores are kept in log2 units (q pre-scaled by log2(e)/sqrt(HS)) so that exp2f does the softmax. */
#include "attention_prefill.cuh"
#include "cuda_common.cuh"

using namespace gpt2_cuda;

enum { PF_BQ = GPT2_ATTN_PREFILL_BQ, PF_BK = 32, PF_WARPS = 4, PF_THREADS = PF_WARPS * 32, PF_R = PF_BQ / PF_WARPS };
static_assert(PF_R * PF_WARPS == PF_BQ, "each warp takes BQ / WARPS query rows");
static_assert(PF_BK == 32, "one key per lane");

static size_t prefill_smem_bytes(int HS) {
    /* Qs (BQ, HS) + Ks (BK, HS+1) + Vs (BK, HS) + Ps (WARPS, R, BK) floats */
    return sizeof(float) * ((size_t)PF_BQ * HS + (size_t)PF_BK * (HS + 1) + (size_t)PF_BK * HS + (size_t)PF_BQ * PF_BK);
}

template <typename T, int DPL>
__global__ void __launch_bounds__(PF_THREADS)
    attention_prefill_kernel(T *out, const T *qkv, const T *qkv_bias, const T *kcache, const T *vcache,
                             const int *chunks, const int *tiles, int NH, int HS, int maxT, int S, float qscale) {
    extern __shared__ float smem[];
    float *Qs = smem;                  /* (BQ, HS) pre-scaled queries */
    float *Ks = Qs + PF_BQ * HS;       /* (BK, HS+1) */
    float *Vs = Ks + PF_BK * (HS + 1); /* (BK, HS) */
    float *Ps = Vs + PF_BK * HS;       /* (WARPS * R, BK) probabilities of the current key tile */

    const int h = blockIdx.y;
    const int ci = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    const int slot = chunks[4 * ci], pos = chunks[4 * ci + 1], n = chunks[4 * ci + 2], start = chunks[4 * ci + 3];
    /* never true for the backend's inputs; uniform over the block, so no barrier is skipped by half of it */
    if (slot < 0 || slot >= S || pos < 0 || n < 1 || pos > maxT - n || q0 < 0 || q0 >= n || start < 0) return;

    const int C = NH * HS;
    const int nq = min(PF_BQ, n - q0);  /* valid queries in this tile */
    const int kv_end = pos + q0 + nq;   /* keys 0 .. kv_end-1 are visible to some query of the tile */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int e = tid; e < PF_BQ * HS; e += PF_THREADS) {
        const int r = e / HS, d = e - r * HS;
        float v = 0.0f;
        if (r < nq) {
            const size_t t = (size_t)start + q0 + r;
            v = to_float(qkv[t * 3 * C + (size_t)h * HS + d]);
            if (qkv_bias) v += to_float(qkv_bias[h * HS + d]);
            v *= qscale;
        }
        Qs[e] = v;
    }

    const int r0 = warp * PF_R;
    const bool warp_active = r0 < nq;
    const int qpos_last = pos + q0 + min(r0 + PF_R, nq) - 1; /* last query position of this warp */

    float m[PF_R], l[PF_R], acc[PF_R][DPL];
#pragma unroll
    for (int r = 0; r < PF_R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
    }

    const size_t head = ((size_t)slot * NH + h) * (size_t)maxT * HS; /* this slot's head: (maxT, HS) */
    for (int kt = 0; kt < kv_end; kt += PF_BK) {
        __syncthreads(); /* the previous tile is consumed (and Qs written, on the first pass) */
        const int nk = min(PF_BK, kv_end - kt);
        for (int e = tid; e < PF_BK * HS; e += PF_THREADS) {
            const int j = e / HS, d = e - j * HS;
            float kv = 0.0f, vv = 0.0f;
            if (j < nk) {
                const size_t src = head + (size_t)(kt + j) * HS + d;
                kv = to_float(kcache[src]);
                vv = to_float(vcache[src]);
            }
            Ks[j * (HS + 1) + d] = kv;
            Vs[e] = vv;
        }
        __syncthreads();
        if (!warp_active || kt > qpos_last) continue; /* warp-uniform: every key here is in the future */

        float s[PF_R];
#pragma unroll
        for (int r = 0; r < PF_R; r++) s[r] = 0.0f;
        const float *kr = Ks + lane * (HS + 1);
        for (int d = 0; d < HS; d++) {
            const float kd = kr[d];
#pragma unroll
            for (int r = 0; r < PF_R; r++) s[r] += Qs[(r0 + r) * HS + d] * kd;
        }

        const int kpos = kt + lane;
        float *prow = Ps + (size_t)r0 * PF_BK;
#pragma unroll
        for (int r = 0; r < PF_R; r++) {
            const int qr = r0 + r;
            const bool visible = qr < nq && lane < nk && kpos <= pos + q0 + qr;
            const float sc = visible ? s[r] : -INFINITY;
            const float mnew = fmaxf(m[r], warp_max(sc));
            float corr = 1.0f, p = 0.0f;
            if (mnew != -INFINITY) { /* -inf only for rows that have seen no key yet (or padding rows) */
                corr = exp2f(m[r] - mnew);
                p = exp2f(sc - mnew);
            }
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
            prow[r * PF_BK + lane] = p;
        }
        __syncwarp();
        for (int j = 0; j < nk; j++) {
            float vd[DPL];
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int d = lane + 32 * i;
                vd[i] = d < HS ? Vs[j * HS + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < PF_R; r++) {
                const float p = prow[r * PF_BK + j];
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[r][i] += p * vd[i];
            }
        }
        __syncwarp(); /* Ps is rewritten by this warp on the next tile */
    }

#pragma unroll
    for (int r = 0; r < PF_R; r++) {
        const int qr = r0 + r;
        if (qr >= nq) continue;
        const float inv = 1.0f / l[r];
        T *o = out + ((size_t)start + q0 + qr) * C + (size_t)h * HS;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            const int d = lane + 32 * i;
            if (d < HS) o[d] = from_float<T>(acc[r][i] * inv);
        }
    }
}

template <typename T, int DPL>
static cudaError_t launch_prefill(T *out, const T *qkv, const T *qkv_bias, const T *kcache, const T *vcache,
                                  const int *chunks, const int *tiles, int n_tiles, int NH, int HS, int maxT, int S,
                                  cudaStream_t stream) {
    const size_t smem = prefill_smem_bytes(HS);
    if (smem > 48 * 1024) {
        int dev = 0, optin = 0;
        cudaError_t e = cudaGetDevice(&dev);
        if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (e != cudaSuccess) return e;
        if (smem > (size_t)optin) return cudaErrorInvalidValue;
        e = cudaFuncSetAttribute((const void *)attention_prefill_kernel<T, DPL>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    const float qscale = 1.4426950408889634f / sqrtf((float)HS); /* log2(e) / sqrt(HS) */
    dim3 grid((unsigned)n_tiles, (unsigned)NH);
    attention_prefill_kernel<T, DPL><<<grid, PF_THREADS, smem, stream>>>(out, qkv, qkv_bias, kcache, vcache, chunks,
                                                                        tiles, NH, HS, maxT, S, qscale);
    return cudaGetLastError();
}

extern "C" cudaError_t attention_prefill_cuda(void *out, const void *qkv, const void *qkv_bias, const void *kcache,
                                              const void *vcache, const int *chunks, const int *tiles, int n_tiles,
                                              int NH, int HS, int maxT, int S, gpt2_dtype dtype,
                                              cudaStream_t stream) {
    if (n_tiles < 0 || NH < 1 || NH > 65535 || HS < 1 || HS > GPT2_ATTN_MAX_HS || maxT < 1 || S < 1)
        return cudaErrorInvalidValue;
    if (n_tiles == 0) return cudaSuccess;
    if (!out || !qkv || !kcache || !vcache || !chunks || !tiles) return cudaErrorInvalidValue;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        T *o = (T *)out;
        const T *q = (const T *)qkv, *qb = (const T *)qkv_bias, *kc = (const T *)kcache, *vc = (const T *)vcache;
        if (HS <= 32) return launch_prefill<T, 1>(o, q, qb, kc, vc, chunks, tiles, n_tiles, NH, HS, maxT, S, stream);
        if (HS <= 64) return launch_prefill<T, 2>(o, q, qb, kc, vc, chunks, tiles, n_tiles, NH, HS, maxT, S, stream);
        if (HS <= 128) return launch_prefill<T, 4>(o, q, qb, kc, vc, chunks, tiles, n_tiles, NH, HS, maxT, S, stream);
        return launch_prefill<T, 8>(o, q, qb, kc, vc, chunks, tiles, n_tiles, NH, HS, maxT, S, stream);
    });
}
