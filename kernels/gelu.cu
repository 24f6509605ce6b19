/* gelu.cu: out = gelu(inp + bias), rows across blocks, columns across threads (no index division). */
#include "cuda_common.cuh"
#include "gelu.cuh"

using namespace gpt2_cuda;

template <typename T> __global__ void gelu_bias_kernel(T *out, const T *inp, const T *bias, int N, int OC) {
    const float s = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const T *x = inp + (size_t)n * OC;
        T *o = out + (size_t)n * OC;
        for (int c = threadIdx.x; c < OC; c += blockDim.x) {
            float v = to_float(x[c]) + (bias ? to_float(bias[c]) : 0.0f);
            o[c] = from_float<T>(0.5f * v * (1.0f + tanhf(s * (v + 0.044715f * v * v * v))));
        }
    }
}

extern "C" cudaError_t gelu_bias_forward_cuda(void *out, const void *inp, const void *bias, int N, int OC,
                                              gpt2_dtype dtype, cudaStream_t stream) {
    if (N < 0 || OC < 1) return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    if (!out || !inp) return cudaErrorInvalidValue;
    const unsigned threads = 256;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        gelu_bias_kernel<T><<<grid_for((size_t)N * threads, threads), threads, 0, stream>>>(
            (T *)out, (const T *)inp, (const T *)bias, N, OC);
        return cudaGetLastError();
    });
}
