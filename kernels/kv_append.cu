/* kv_append.cu: one block per token; threads over the C channels (coalesced reads of qkv, and writes
 * of HS contiguous values per head). */
#include "cuda_common.cuh"
#include "kv_append.cuh"

using namespace gpt2_cuda;

template <typename T>
__global__ void kv_append_kernel(T *kcache, T *vcache, const T *qkv, const T *qkv_bias, const int *slot,
                                 const int *pos, int N, int NH, int HS, int maxT, int S) {
    const int C = NH * HS;
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const int s = slot[n], p = pos[n];
        if (s < 0 || s >= S || p < 0 || p >= maxT) continue;
        const T *k = qkv + (size_t)n * 3 * C + C;
        const T *v = k + C;
        for (int e = threadIdx.x; e < C; e += blockDim.x) {
            const int h = e / HS, d = e - h * HS;
            const size_t dst = (((size_t)s * NH + h) * maxT + p) * HS + d;
            float kv = to_float(k[e]), vv = to_float(v[e]);
            if (qkv_bias) {
                kv += to_float(qkv_bias[C + e]);
                vv += to_float(qkv_bias[2 * C + e]);
            }
            kcache[dst] = from_float<T>(kv);
            vcache[dst] = from_float<T>(vv);
        }
    }
}

extern "C" cudaError_t kv_append_cuda(void *kcache, void *vcache, const void *qkv, const void *qkv_bias,
                                      const int *slot, const int *pos, int N, int NH, int HS, int maxT, int S,
                                      gpt2_dtype dtype, cudaStream_t stream) {
    if (N < 0 || NH < 1 || HS < 1 || maxT < 1 || S < 1) return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    if (!kcache || !vcache || !qkv || !slot || !pos) return cudaErrorInvalidValue;
    const unsigned threads = 256;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        kv_append_kernel<T><<<grid_for((size_t)N * threads, threads), threads, 0, stream>>>(
            (T *)kcache, (T *)vcache, (const T *)qkv, (const T *)qkv_bias, slot, pos, N, NH, HS, maxT, S);
        return cudaGetLastError();
    });
}
