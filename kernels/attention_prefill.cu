/* attention_prefill.cu: flash-style causal attention over a ragged batch, float accumulation.
 *
 * Two kernels. fp16/bf16 with HS <= 128 on a GPU of compute capability >= 8.0: tensor cores
 * (attention_prefill_tc_kernel below, FlashAttention-2 tiling). Otherwise (fp32 always, larger
 * heads, older GPUs): the exact float kernel that follows here.
 *
 * Exact kernel. Block = 4 warps = one tile of BQ = 32 queries of one head; each warp owns R = 8 query rows. Keys go
 * through shared memory in tiles of BK = 32, one key per lane:
 *   scores:  lane j computes q_r . k_j for its warp's 8 rows (q broadcast from shared memory; the K
 *            tile rows are padded to HS+1 floats so the 32 lanes read 32 different banks);
 *   softmax: running max m and sum l per row (warp reductions), old accumulators rescaled;
 *   P V:     lane owns output dims lane, lane+32, ... (DPL of them) and sums p_j v_j over the tile.
 * Scores are kept in log2 units (q pre-scaled by log2(e)/sqrt(HS)) so that exp2f does the softmax. */
#include "attention_layout.h"
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
    /* a tile of the host's list may be several of this kernel's: sub-tile blockIdx.z of it */
    const int ci = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1] + (int)blockIdx.z * PF_BQ;
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


/* ---------------------------------------------------------------------------------------------- */
/* Tensor cores (fp16 / bf16): FlashAttention-2 tiling on mma.sync m16n8k16, float accumulation.   */
/*
 * Block = 4 warps = one tile of BQ = 64 queries of one head, warp w owning query rows 16w .. 16w+15.
 * Q (with its bias, rounded to T) is staged once through shared memory into A fragments that stay in
 * registers. Keys go through shared memory in tiles of BK = 64: K row-major (BK, D+8), V transposed
 * (D, BK+8) so that both B operands are 32-bit shared loads of two adjacent values (the +8 padding
 * puts the 8 x 4 lanes of a fragment load on 32 different banks); K and V rows are read from the
 * cache as 16-byte vectors when HS is a multiple of 8. Per key tile and warp:
 *   S = Q K^T        (16 x BK: BK/8 n-tiles x D/16 k-steps of mma), scaled to log2 units in float,
 *                    masked (causal: key <= query position; keys past the tile; padding rows);
 *   online softmax   row max over the 4 lanes of a row (shuffles), running max m and (per-lane
 *                    partial) sum l, O rescaled by exp2(m_old - m_new);
 *   O += P V         P rounded to T straight from the S accumulators (their C layout is the A layout
 *                    of the next product), (16 x D: D/8 n-tiles x BK/16 k-steps).
 * D = HS rounded up to 32, 64 or 128; the padding dims are zero in Q, K and V and never stored.
 * Index arithmetic (fragment maps, P reuse): kernels/attention_layout.h, simulated on the CPU by
 * tools/sim_attention.c. Rounding points beyond the exact kernel: q + bias and P are rounded to T
 * before their products (the products and every sum are float). */

enum { TC_BQ = ATTN_TC_BQ, TC_BK = ATTN_TC_BK, TC_WARPS = ATTN_TC_WARPS, TC_THREADS = TC_WARPS * 32,
       TC_PAD = ATTN_TC_PAD };
static_assert(TC_BQ == 16 * TC_WARPS, "16 query rows per warp");
static_assert(TC_BQ % PF_BQ == 0, "a tensor-core tile is whole exact-kernel tiles");

static size_t tc_smem_bytes(int D) {
    /* Qs (BQ, D+PAD) + Ks (BK, D+PAD) + Vt (D, BK+PAD), 16-bit values */
    return 2 * ((size_t)TC_BQ * (D + TC_PAD) + (size_t)TC_BK * (D + TC_PAD) + (size_t)D * (TC_BK + TC_PAD));
}

template <typename T> __device__ __forceinline__ uint32_t pack2(float a, float b); /* a in the low half */
template <> __device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
    const __half2 v = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

/* d (16 x 8) += a (16 x 16) b (16 x 8), float accumulators. */
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap(); /* never launched: the launcher checks the compute capability */
#endif
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

template <typename T, int D>
__global__ void __launch_bounds__(TC_THREADS)
    attention_prefill_tc_kernel(T *out, const T *qkv, const T *qkv_bias, const T *kcache, const T *vcache,
                                const int *chunks, const int *tiles, int NH, int HS, int maxT, int S, float qscale,
                                int vec) {
    constexpr int LD = D + TC_PAD, LDV = TC_BK + TC_PAD, KS = D / 16, NT = TC_BK / 8, DT = D / 8, KK = TC_BK / 16;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    T *Qs = reinterpret_cast<T *>(tc_smem); /* (BQ, LD) */
    T *Ks = Qs + TC_BQ * LD;                 /* (BK, LD) */
    T *Vt = Ks + TC_BK * LD;                 /* (D, LDV): V transposed */

    const int h = blockIdx.y;
    const int ci = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    const int slot = chunks[4 * ci], pos = chunks[4 * ci + 1], n = chunks[4 * ci + 2], start = chunks[4 * ci + 3];
    if (slot < 0 || slot >= S || pos < 0 || n < 1 || pos > maxT - n || q0 < 0 || q0 >= n || start < 0) return;

    const int C = NH * HS;
    const int nq = min(TC_BQ, n - q0), kv_end = pos + q0 + nq;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int e = tid; e < TC_BQ * D; e += TC_THREADS) {
        const int r = e / D, d = e - r * D;
        float v = 0.0f;
        if (r < nq && d < HS) {
            const size_t t = (size_t)start + q0 + r;
            v = to_float(qkv[t * 3 * C + (size_t)h * HS + d]);
            if (qkv_bias) v += to_float(qkv_bias[h * HS + d]);
        }
        Qs[r * LD + d] = from_float<T>(v);
    }
    __syncthreads();

    const int r0 = 16 * warp;
    uint32_t qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int row, col;
            attn_mma_a_rc(lane, r, 0, &row, &col);
            qa[ks][r] = *reinterpret_cast<const uint32_t *>(&Qs[(r0 + row) * LD + 16 * ks + col]);
        }

    const bool warp_active = r0 < nq;
    const int qpos_last = pos + q0 + min(r0 + 16, nq) - 1; /* last query position of this warp */
    float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[dt][i] = 0.0f;

    const size_t head = ((size_t)slot * NH + h) * (size_t)maxT * HS; /* this slot's head: (maxT, HS) */
    for (int kt = 0; kt < kv_end; kt += TC_BK) {
        __syncthreads(); /* the previous tile is consumed */
        const int nk = min(TC_BK, kv_end - kt);
        if (vec) { /* HS % 8 == 0: 16-byte rows pieces */
            for (int e = tid; e < TC_BK * (D / 8); e += TC_THREADS) {
                const int j = e / (D / 8), d0 = 8 * (e - j * (D / 8));
                uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
                if (j < nk && d0 < HS) {
                    const size_t src = head + (size_t)(kt + j) * HS + d0;
                    kv = __ldg(reinterpret_cast<const uint4 *>(kcache + src));
                    vv = __ldg(reinterpret_cast<const uint4 *>(vcache + src));
                }
                *reinterpret_cast<uint4 *>(&Ks[j * LD + d0]) = kv;
                T ve[8];
                memcpy(ve, &vv, 16);
#pragma unroll
                for (int i = 0; i < 8; i++) Vt[(d0 + i) * LDV + j] = ve[i];
            }
        } else {
            for (int e = tid; e < TC_BK * D; e += TC_THREADS) {
                const int j = e / D, d = e - j * D;
                T kv = from_float<T>(0.0f), vv = kv;
                if (j < nk && d < HS) {
                    const size_t src = head + (size_t)(kt + j) * HS + d;
                    kv = kcache[src];
                    vv = vcache[src];
                }
                Ks[j * LD + d] = kv;
                Vt[d * LDV + j] = vv;
            }
        }
        __syncthreads();
        if (!warp_active || kt > qpos_last) continue; /* warp-uniform: every key here is in the future */

        float sc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) sc[nt][i] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t bf[2];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    int k, nn;
                    attn_mma_b_kn(lane, r, 0, &k, &nn);
                    bf[r] = *reinterpret_cast<const uint32_t *>(&Ks[(8 * nt + nn) * LD + 16 * ks + k]);
                }
                mma16816<T>(sc[nt], qa[ks], bf);
            }
        }
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int row, col;
                attn_mma_c_rc(lane, i, &row, &col);
                const int qr = r0 + row, key = kt + 8 * nt + col;
                const bool visible = qr < nq && key - kt < nk && key <= pos + q0 + qr;
                sc[nt][i] = visible ? sc[nt][i] * qscale : -INFINITY;
                tmax[i >> 1] = fmaxf(tmax[i >> 1], sc[nt][i]);
            }
        float corr[2];
#pragma unroll
        for (int hr = 0; hr < 2; hr++) { /* the 4 lanes of a row: lane bits 0, 1 */
            tmax[hr] = fmaxf(tmax[hr], __shfl_xor_sync(0xffffffffu, tmax[hr], 1));
            tmax[hr] = fmaxf(tmax[hr], __shfl_xor_sync(0xffffffffu, tmax[hr], 2));
            const float mnew = fmaxf(m[hr], tmax[hr]);
            corr[hr] = mnew == -INFINITY ? 1.0f : exp2f(m[hr] - mnew);
            m[hr] = mnew;
            l[hr] *= corr[hr];
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float mm = m[i >> 1];
                const float pv = mm == -INFINITY ? 0.0f : exp2f(sc[nt][i] - mm); /* masked: exp2(-inf) = 0 */
                sc[nt][i] = pv;
                l[i >> 1] += pv;
            }
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
#pragma unroll
            for (int i = 0; i < 4; i++) o[dt][i] *= corr[i >> 1];

#pragma unroll
        for (int kk = 0; kk < KK; kk++) {
            uint32_t pa[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int t = attn_pa_tile(kk, r), v = attn_pa_val(r);
                pa[r] = pack2<T>(sc[t][v], sc[t][v + 1]);
            }
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                uint32_t bf[2];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    int k, nn;
                    attn_mma_b_kn(lane, r, 0, &k, &nn);
                    bf[r] = *reinterpret_cast<const uint32_t *>(&Vt[(8 * dt + nn) * LDV + 16 * kk + k]);
                }
                mma16816<T>(o[dt], pa, bf);
            }
        }
    }

#pragma unroll
    for (int hr = 0; hr < 2; hr++) { /* the row's sum over its 4 lanes */
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
    }
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int row, col;
            attn_mma_c_rc(lane, i, &row, &col);
            const int qr = r0 + row, d = 8 * dt + col;
            if (qr < nq && d < HS)
                out[((size_t)start + q0 + qr) * C + (size_t)h * HS + d] = from_float<T>(o[dt][i] / l[i >> 1]);
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* Launchers                                                                                       */

/* Raises a kernel's dynamic shared-memory limit when it needs more than 48 KiB. */
static cudaError_t allow_smem(const void *kernel, size_t smem) {
    if (smem <= 48 * 1024) return cudaSuccess;
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    if (smem > (size_t)optin) return cudaErrorInvalidValue;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
}

template <typename T, int DPL>
static cudaError_t launch_prefill(T *out, const T *qkv, const T *qkv_bias, const T *kcache, const T *vcache,
                                  const int *chunks, const int *tiles, int n_tiles, int NH, int HS, int maxT, int S,
                                  int tile_q, cudaStream_t stream) {
    const size_t smem = prefill_smem_bytes(HS);
    cudaError_t e = allow_smem((const void *)attention_prefill_kernel<T, DPL>, smem);
    if (e != cudaSuccess) return e;
    const float qscale = 1.4426950408889634f / sqrtf((float)HS); /* log2(e) / sqrt(HS) */
    dim3 grid((unsigned)n_tiles, (unsigned)NH, (unsigned)(tile_q / PF_BQ));
    attention_prefill_kernel<T, DPL><<<grid, PF_THREADS, smem, stream>>>(out, qkv, qkv_bias, kcache, vcache, chunks,
                                                                        tiles, NH, HS, maxT, S, qscale);
    return cudaGetLastError();
}

template <typename T, int D>
static cudaError_t launch_prefill_tc(T *out, const T *qkv, const T *qkv_bias, const T *kcache, const T *vcache,
                                     const int *chunks, const int *tiles, int n_tiles, int NH, int HS, int maxT,
                                     int S, cudaStream_t stream) {
    const size_t smem = tc_smem_bytes(D);
    cudaError_t e = allow_smem((const void *)attention_prefill_tc_kernel<T, D>, smem);
    if (e != cudaSuccess) return e;
    const float qscale = 1.4426950408889634f / sqrtf((float)HS);
    const int vec = HS % 8 == 0 && (uintptr_t)kcache % 16 == 0 && (uintptr_t)vcache % 16 == 0;
    dim3 grid((unsigned)n_tiles, (unsigned)NH);
    attention_prefill_tc_kernel<T, D><<<grid, TC_THREADS, smem, stream>>>(out, qkv, qkv_bias, kcache, vcache, chunks,
                                                                         tiles, NH, HS, maxT, S, qscale, vec);
    return cudaGetLastError();
}

extern "C" int attention_prefill_tile_queries(gpt2_dtype dtype, int HS) {
    return dtype != GPT2_DTYPE_F32 && HS >= 1 && HS <= GPT2_ATTN_TC_MAX_HS ? (int)TC_BQ : (int)PF_BQ;
}

/* Whether the current device runs mma.sync with 16-bit inputs (compute capability >= 8.0). */
static cudaError_t device_has_mma(int *yes) {
    int dev = 0, major = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    *yes = e == cudaSuccess && major >= 8;
    return e;
}

extern "C" cudaError_t attention_prefill_cuda(void *out, const void *qkv, const void *qkv_bias, const void *kcache,
                                              const void *vcache, const int *chunks, const int *tiles, int n_tiles,
                                              int NH, int HS, int maxT, int S, gpt2_dtype dtype,
                                              cudaStream_t stream) {
    if (n_tiles < 0 || NH < 1 || NH > 65535 || HS < 1 || HS > GPT2_ATTN_MAX_HS || maxT < 1 || S < 1)
        return cudaErrorInvalidValue;
    if (n_tiles == 0) return cudaSuccess;
    if (!out || !qkv || !kcache || !vcache || !chunks || !tiles) return cudaErrorInvalidValue;
    const int tile_q = attention_prefill_tile_queries(dtype, HS);
    int mma = 0;
    if (tile_q == TC_BQ) {
        cudaError_t e = device_has_mma(&mma);
        if (e != cudaSuccess) return e;
    }
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        T *o = (T *)out;
        const T *q = (const T *)qkv, *qb = (const T *)qkv_bias, *kc = (const T *)kcache, *vc = (const T *)vcache;
#define PF_TC(D) launch_prefill_tc<T, D>(o, q, qb, kc, vc, chunks, tiles, n_tiles, NH, HS, maxT, S, stream)
#define PF_EXACT(DPL) launch_prefill<T, DPL>(o, q, qb, kc, vc, chunks, tiles, n_tiles, NH, HS, maxT, S, tile_q, stream)
        if constexpr (sizeof(T) == 2) {
            if (mma) {
                if (HS <= 32) return PF_TC(32);
                if (HS <= 64) return PF_TC(64);
                return PF_TC(128);
            }
        }
        if (HS <= 32) return PF_EXACT(1);
        if (HS <= 64) return PF_EXACT(2);
        if (HS <= 128) return PF_EXACT(4);
        return PF_EXACT(8);
#undef PF_TC
#undef PF_EXACT
    });
}
