/* residual.cu: out = a + b, a grid-stride loop. */
#include "cuda_common.cuh"
#include "residual.cuh"

using namespace gpt2_cuda;

template <typename T> __global__ void residual_kernel(T *out, const T *a, const T *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}

extern "C" cudaError_t residual_forward_cuda(void *out, const void *a, const void *b, size_t n, gpt2_dtype dtype,
                                             cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (!out || !a || !b) return cudaErrorInvalidValue;
    const unsigned threads = 256;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        residual_kernel<T><<<grid_for(n, threads), threads, 0, stream>>>((T *)out, (const T *)a, (const T *)b, n);
        return cudaGetLastError();
    });
}
