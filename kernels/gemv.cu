/* gemv.cu: few-row matrix products at the weight-bandwidth floor (see gemv.cuh).
 *
 * Why not cuBLAS at M <= 16: its GEMM tiles are 64+ rows tall, so at M = 1 it still issues the tile's
 * work, and for the narrow decode shapes (OC = 768) it launches too few blocks to have every SM
 * streaming weights. Here each thread owns VEC adjacent output columns, so a warp reads one 32 x 16
 * byte contiguous stretch of a weight row per load (fully coalesced), four rows are loaded before the
 * first is used (four 16-byte loads in flight per thread), and the inputs, tiny, sit in shared memory
 * as floats, read as float4 broadcasts (4 K rows per read). Rows past M are never loaded nor stored;
 * their accumulators are dead code for M == MT and cheap otherwise.
 *
 * Where cuBLAS wins again (larger M: the weights are reused and the tensor cores pay) is a plan
 * parameter measured by bench/bench_kernels.cu, not assumed here. */
#include "cuda_common.cuh"
#include "gemv.cuh"

using namespace gpt2_cuda;

enum { GV_THREADS = 256, GV_WARPS = GV_THREADS / 32, GV_KROWS = 4, NT_ROWS = 4, NT_KC = 512 };

/* VEC values of T at p as floats; one 16-byte load when VEC * sizeof(T) == 16 (p then aligned). */
template <typename T, int VEC> __device__ __forceinline__ void load_vec(const T *p, float (&f)[VEC]) {
    if constexpr (VEC * sizeof(T) == 16) {
        const uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
        T e[VEC];
        memcpy(e, &u, 16);
#pragma unroll
        for (int i = 0; i < VEC; i++) f[i] = to_float(e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; i++) f[i] = to_float(p[i]);
    }
}

__device__ __forceinline__ float gelu_tanh(float v) {
    const float s = 0.7978845608028654f; /* sqrt(2 / pi), as gelu.cu and gelu_forward_cpu */
    return 0.5f * v * (1.0f + tanhf(s * (v + 0.044715f * v * v * v)));
}

/* Mean and 1/std of each of the M rows of inp (M, K) into st (every block recomputes them: M x K
 * reads from L2, against K x OC / blocks of weights). Warp w takes rows w, w + 8, ...; the lanes and
 * the two passes are those of layernorm.cu, so the statistics are the same floats. */
template <typename T, int MT>
__device__ void row_stats(const T *inp, int M, int K, float eps, float (*st)[2]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int m = warp; m < M; m += GV_WARPS) {
        const T *src = inp + (size_t)m * K;
        float sum = 0.0f;
        for (int c = lane; c < K; c += 32) sum += to_float(src[c]);
        const float mean = warp_sum(sum) / (float)K;
        float ss = 0.0f;
        for (int c = lane; c < K; c += 32) {
            const float d = to_float(src[c]) - mean;
            ss += d * d;
        }
        const float var = warp_sum(ss) / (float)K;
        if (lane == 0) {
            st[m][0] = mean;
            st[m][1] = 1.0f / sqrtf(var + eps);
        }
    }
    __syncthreads();
}

/* Element k of input row m as the product reads it: raw, or layer-normalised and rounded to T. */
template <typename T>
__device__ __forceinline__ float in_at(const T *inp, int K, int m, int k, const T *ln_w, const T *ln_b,
                                       const float (*st)[2]) {
    const float v = to_float(inp[(size_t)m * K + k]);
    if (!ln_w) return v;
    return to_float(from_float<T>((v - st[m][0]) * st[m][1] * to_float(ln_w[k]) + to_float(ln_b[k])));
}

/* ---------------------------------------------------------------------------------------------- */
/* out (M, OC) = act(inp (M, K) @ w (K, OC) + bias)                                                */

/* The end of output (m, c) with its sum s: + bias, then GELU, into out; or into the residual. */
template <typename T>
__device__ __forceinline__ void epilogue(T *out, T *resid, const T *bias, int gelu, int m, int OC, int c, float s) {
    const float y = s + (bias ? to_float(bias[c]) : 0.0f);
    const size_t e = (size_t)m * OC + c;
    if (resid)
        resid[e] = from_float<T>(to_float(resid[e]) + y);
    else
        out[e] = from_float<T>(gelu ? gelu_tanh(y) : y);
}

template <typename T, int VEC, int MT>
__global__ void __launch_bounds__(GV_THREADS)
    gemv_nn_kernel(T *out, const T *inp, const T *w, const T *bias, int M, int K, int OC, int gelu, int kc,
                   float *part, unsigned *counters, const T *ln_w, const T *ln_b, float eps, T *resid) {
    constexpr int TILE = 32 * VEC;
    __shared__ __align__(16) float xs[MT][GPT2_GEMV_KC]; /* (MT, kc) this block's slice of inp, zero-padded */
    __shared__ float red[GV_WARPS][TILE];               /* (warps, TILE) per-warp sums of one row m */
    __shared__ float st[MT][2];                         /* (MT, 2) layernorm mean, 1/std of each row */
    __shared__ int last;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tile = blockIdx.x, ks = blockIdx.y, ksplit = gridDim.y;
    const int c0 = tile * TILE, col = c0 + lane * VEC;
    const int k0 = ks * kc, k1 = min(K, k0 + kc);
    const int kc4 = (kc + 3) & ~3;

    if (ln_w) row_stats<T, MT>(inp, M, K, eps, st);
    for (int i = tid; i < MT * kc4; i += GV_THREADS) {
        const int m = i / kc4, kk = i - m * kc4, k = k0 + kk;
        xs[m][kk] = (m < M && k < k1) ? in_at<T>(inp, K, m, k, ln_w, ln_b, st) : 0.0f;
    }
    __syncthreads();

    float acc[MT][VEC];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int v = 0; v < VEC; v++) acc[m][v] = 0.0f;

    const bool colok = col < OC; /* VEC > 1 only when OC % VEC == 0: a vector is wholly in or out */
    for (int kk = warp * GV_KROWS; kk < k1 - k0; kk += GV_WARPS * GV_KROWS) {
        float wv[GV_KROWS][VEC];
#pragma unroll
        for (int u = 0; u < GV_KROWS; u++) { /* all four loads issued before any use */
            const int k = k0 + kk + u;
            if (colok && k < k1)
                load_vec<T, VEC>(w + (size_t)k * OC + col, wv[u]);
            else
#pragma unroll
                for (int v = 0; v < VEC; v++) wv[u][v] = 0.0f;
        }
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (m >= M) break;
            const float4 x = *reinterpret_cast<const float4 *>(&xs[m][kk]); /* rows past k1 are 0 */
#pragma unroll
            for (int v = 0; v < VEC; v++)
                acc[m][v] += x.x * wv[0][v] + x.y * wv[1][v] + x.z * wv[2][v] + x.w * wv[3][v];
        }
    }

    /* the block's sum over its warps, row by row; then the epilogue or a partial */
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int mm = 0; mm < MT; mm++) /* compile-time index into acc */
            if (mm == m)
#pragma unroll
                for (int v = 0; v < VEC; v++) red[warp][lane * VEC + v] = acc[mm][v];
        __syncthreads();
        if (tid < TILE && c0 + tid < OC) {
            float s = 0.0f;
#pragma unroll
            for (int q = 0; q < GV_WARPS; q++) s += red[q][tid];
            const int c = c0 + tid;
            if (ksplit == 1) {
                epilogue<T>(out, resid, bias, gelu, m, OC, c, s);
            } else {
                part[((size_t)ks * M + m) * OC + c] = s;
            }
        }
        __syncthreads(); /* red is rewritten for the next row */
    }
    if (ksplit == 1) return;

    /* the last block of this tile to arrive sums the partials in split order */
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&counters[tile], 1u) == (unsigned)(ksplit - 1);
    __syncthreads();
    if (!last) return;
    __threadfence(); /* the other blocks' partials are visible (their fence came before their ticket) */
    for (int i = tid; i < M * TILE; i += GV_THREADS) {
        const int m = i / TILE, c = c0 + (i - m * TILE);
        if (c >= OC) continue;
        float s = 0.0f;
        for (int q = 0; q < ksplit; q++) s += __ldcg(&part[((size_t)q * M + m) * OC + c]); /* L2, not a stale L1 */
        epilogue<T>(out, resid, bias, gelu, m, OC, c, s);
    }
    if (tid == 0) counters[tile] = 0u; /* ready for the next launch */
}

/* ---------------------------------------------------------------------------------------------- */
/* out (M, ldo) float = inp (M, K) @ w^T, w (N, K)                                                 */

template <typename T, int VEC, int MT>
__global__ void __launch_bounds__(GV_THREADS)
    gemv_nt_kernel(float *out, int ldo, const T *inp, const T *w, int M, int K, int N, const T *ln_w, const T *ln_b,
                   float eps) {
    __shared__ __align__(16) float xs[MT][NT_KC]; /* (MT, NT_KC) one chunk of inp's columns */
    __shared__ float st[MT][2];                   /* (MT, 2) layernorm mean, 1/std of each row */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int j0 = (blockIdx.x * GV_WARPS + warp) * NT_ROWS; /* this warp's first output column */

    float acc[NT_ROWS][MT];
#pragma unroll
    for (int r = 0; r < NT_ROWS; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;

    if (ln_w) row_stats<T, MT>(inp, M, K, eps, st);
    for (int kc0 = 0; kc0 < K; kc0 += NT_KC) {
        const int len = min(NT_KC, K - kc0);
        __syncthreads(); /* the last chunk's reads are done */
        for (int i = tid; i < MT * NT_KC; i += GV_THREADS) {
            const int m = i / NT_KC, kk = i - m * NT_KC;
            xs[m][kk] = (m < M && kk < len) ? in_at<T>(inp, K, m, kc0 + kk, ln_w, ln_b, st) : 0.0f;
        }
        __syncthreads();
        for (int kk = lane * VEC; kk < len; kk += 32 * VEC) { /* VEC > 1 only when K % VEC == 0 */
            float wv[NT_ROWS][VEC];
#pragma unroll
            for (int r = 0; r < NT_ROWS; r++) {
                const int j = j0 + r;
                if (j < N)
                    load_vec<T, VEC>(w + (size_t)j * K + kc0 + kk, wv[r]);
                else
#pragma unroll
                    for (int v = 0; v < VEC; v++) wv[r][v] = 0.0f;
            }
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m >= M) break;
                float x[VEC];
                if constexpr (VEC % 4 == 0) {
#pragma unroll
                    for (int v = 0; v < VEC; v += 4) {
                        const float4 q = *reinterpret_cast<const float4 *>(&xs[m][kk + v]);
                        x[v] = q.x, x[v + 1] = q.y, x[v + 2] = q.z, x[v + 3] = q.w;
                    }
                } else {
#pragma unroll
                    for (int v = 0; v < VEC; v++) x[v] = xs[m][kk + v];
                }
#pragma unroll
                for (int r = 0; r < NT_ROWS; r++)
#pragma unroll
                    for (int v = 0; v < VEC; v++) acc[r][m] += x[v] * wv[r][v];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NT_ROWS; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (m >= M) break;
            const float s = warp_sum(acc[r][m]);
            const int j = j0 + r;
            if (lane == ((r * MT + m) & 31) && j < N) out[(size_t)m * ldo + j] = s;
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* Launchers                                                                                       */

static int vec_of(gpt2_dtype dt) { return dt == GPT2_DTYPE_F32 ? 4 : 8; }
static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
/* Whether the byte ranges [a, a + na) and [b, b + nb) meet (NULL meets nothing). Every block reads
 * the whole input (all its rows, and whole rows for the fused layernorm) while other blocks already
 * store outputs, so an output over the input would be a race between blocks: refused. */
static bool overlap(const void *a, size_t na, const void *b, size_t nb) {
    const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return a && b && x < y + nb && y < x + na;
}

extern "C" int gemv_pick_ksplit(int K, int OC, gpt2_dtype dtype, int n_sm) {
    if (K < 1 || OC < 1) return 1;
    const int tile = 32 * vec_of(dtype);
    const long tiles = (OC + tile - 1) / tile;
    const int need = (K + GPT2_GEMV_KC - 1) / GPT2_GEMV_KC; /* shared memory holds GPT2_GEMV_KC rows */
    long want = (2L * (n_sm > 0 ? n_sm : 1) + tiles - 1) / tiles;
    const long most = K / 32 > 1 ? K / 32 : 1; /* at least 32 rows (8 warps x 4) per block */
    if (want > most) want = most;
    if (want < need) want = need;
    if (want > GPT2_GEMV_MAX_KSPLIT) want = GPT2_GEMV_MAX_KSPLIT;
    return (int)want;
}

extern "C" size_t gemv_scratch_floats(int M, int OC, int ksplit) {
    if (M < 1 || OC < 1 || ksplit <= 1) return 0;
    return (size_t)ksplit * (size_t)M * (size_t)OC;
}

extern "C" size_t gemv_counters(int OC) { return OC < 1 ? 0 : ((size_t)OC + 31) / 32; }

/* The arguments of one gemv_nn launch, typed. */
template <typename T> struct nn_args {
    T *out;
    const T *inp, *w, *bias, *ln_w, *ln_b;
    T *resid;
    float eps;
    int M, K, OC, gelu, kc, ksplit;
    float *part;
    unsigned *counters;
};

template <typename T, int VEC, int MT> static cudaError_t launch_nn(const nn_args<T> &a, cudaStream_t stream) {
    dim3 grid((unsigned)((a.OC + 32 * VEC - 1) / (32 * VEC)), (unsigned)a.ksplit);
    gemv_nn_kernel<T, VEC, MT><<<grid, GV_THREADS, 0, stream>>>(a.out, a.inp, a.w, a.bias, a.M, a.K, a.OC, a.gelu,
                                                                a.kc, a.part, a.counters, a.ln_w, a.ln_b, a.eps,
                                                                a.resid);
    return cudaGetLastError();
}

template <typename T, int VEC> static cudaError_t nn_by_rows(const nn_args<T> &a, cudaStream_t s) {
    if (a.M <= 1) return launch_nn<T, VEC, 1>(a, s);
    if (a.M <= 2) return launch_nn<T, VEC, 2>(a, s);
    if (a.M <= 4) return launch_nn<T, VEC, 4>(a, s);
    if (a.M <= 8) return launch_nn<T, VEC, 8>(a, s);
    return launch_nn<T, VEC, 16>(a, s);
}

extern "C" cudaError_t gemv_forward_cuda(void *out, const void *inp, const void *w, const void *bias, int M, int K,
                                         int OC, int gelu, const gemv_fusion *fuse, int ksplit, float *scratch,
                                         size_t scratch_floats, unsigned *counters, size_t n_counters,
                                         gpt2_dtype dtype, cudaStream_t stream) {
    const gemv_fusion none = {NULL, NULL, 0.0f, NULL}, *f = fuse ? fuse : &none;
    if (M < 1 || M > GPT2_GEMV_MAX_M || K < 1 || OC < 1 || ksplit < 1 || ksplit > GPT2_GEMV_MAX_KSPLIT)
        return cudaErrorInvalidValue;
    if ((!out && !f->resid) || !inp || !w || (!f->ln_w != !f->ln_b) || (f->resid && gelu))
        return cudaErrorInvalidValue;
    const size_t es = dtype == GPT2_DTYPE_F32 ? 4 : 2, in_b = (size_t)M * K * es, out_b = (size_t)M * OC * es;
    if (overlap(inp, in_b, f->resid ? f->resid : out, out_b)) return cudaErrorInvalidValue;
    /* rows per split: a multiple of 4 (the float4 reads of xs), at most what shared memory holds */
    int kc = (K + ksplit - 1) / ksplit;
    kc = (kc + 3) & ~3;
    if (kc > GPT2_GEMV_KC) return cudaErrorInvalidValue;
    const int splits = (K + kc - 1) / kc; /* <= ksplit: the rounding of kc can leave the last split empty */
    if (splits > 1) { /* sized for the split asked for, as the plan sizes it */
        if (!scratch || !counters || scratch_floats < gemv_scratch_floats(M, OC, ksplit) ||
            n_counters < gemv_counters(OC))
            return cudaErrorInvalidValue;
    }
    const int vec = vec_of(dtype);
    const bool wide = OC % vec == 0 && aligned16(w);
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        constexpr int V = 16 / sizeof(T);
        const nn_args<T> a = {(T *)out, (const T *)inp, (const T *)w, (const T *)bias, (const T *)f->ln_w,
                              (const T *)f->ln_b, (T *)f->resid, f->ln_eps, M, K, OC, gelu, kc, splits, scratch,
                              counters};
        if (wide) return nn_by_rows<T, V>(a, stream);
        return nn_by_rows<T, 1>(a, stream);
    });
}

template <typename T> struct nt_args {
    float *out;
    int ldo;
    const T *inp, *w, *ln_w, *ln_b;
    float eps;
    int M, K, N;
};

template <typename T, int VEC, int MT> static cudaError_t launch_nt(const nt_args<T> &a, cudaStream_t stream) {
    const size_t cols_per_block = (size_t)GV_WARPS * NT_ROWS;
    const size_t blocks = ((size_t)a.N + cols_per_block - 1) / cols_per_block;
    if (blocks > 0x7fffffffu) return cudaErrorInvalidValue;
    gemv_nt_kernel<T, VEC, MT><<<(unsigned)blocks, GV_THREADS, 0, stream>>>(a.out, a.ldo, a.inp, a.w, a.M, a.K, a.N,
                                                                            a.ln_w, a.ln_b, a.eps);
    return cudaGetLastError();
}

template <typename T, int VEC> static cudaError_t nt_by_rows(const nt_args<T> &a, cudaStream_t s) {
    if (a.M <= 1) return launch_nt<T, VEC, 1>(a, s);
    if (a.M <= 2) return launch_nt<T, VEC, 2>(a, s);
    if (a.M <= 4) return launch_nt<T, VEC, 4>(a, s);
    if (a.M <= 8) return launch_nt<T, VEC, 8>(a, s);
    return launch_nt<T, VEC, 16>(a, s);
}

extern "C" cudaError_t gemv_nt_forward_cuda(float *out, int ldo, const void *inp, const void *w, int M, int K, int N,
                                            const void *ln_w, const void *ln_b, float ln_eps, gpt2_dtype dtype,
                                            cudaStream_t stream) {
    if (M < 1 || M > GPT2_GEMV_MAX_M || K < 1 || N < 1 || ldo < N) return cudaErrorInvalidValue;
    if (!out || !inp || !w || (!ln_w != !ln_b)) return cudaErrorInvalidValue;
    const size_t es = dtype == GPT2_DTYPE_F32 ? 4 : 2;
    if (overlap(inp, (size_t)M * K * es, out, ((size_t)(M - 1) * ldo + N) * sizeof(float))) return cudaErrorInvalidValue;
    const int vec = vec_of(dtype);
    const bool wide = K % vec == 0 && aligned16(w);
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        constexpr int V = 16 / sizeof(T);
        const nt_args<T> a = {out, ldo, (const T *)inp, (const T *)w, (const T *)ln_w, (const T *)ln_b, ln_eps, M, K, N};
        if (wide) return nt_by_rows<T, V>(a, stream);
        return nt_by_rows<T, 1>(a, stream);
    });
}
