/* convert.cu: element type conversion (float <-> half <-> bfloat16) through float. */
#include "convert.cuh"
#include "cuda_common.cuh"

using namespace gpt2_cuda;

template <typename TO, typename TI> __global__ void convert_kernel(TO *out, const TI *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_float<TO>(to_float(in[i]));
}

extern "C" cudaError_t convert_cuda(void *out, gpt2_dtype out_t, const void *in, gpt2_dtype in_t, size_t n,
                                    cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (!out || !in) return cudaErrorInvalidValue;
    const unsigned threads = 256;
    return dispatch_dtype(out_t, [&](auto o) {
        using TO = decltype(o);
        return dispatch_dtype(in_t, [&](auto i) {
            using TI = decltype(i);
            convert_kernel<TO, TI><<<grid_for(n, threads), threads, 0, stream>>>((TO *)out, (const TI *)in, n);
            return cudaGetLastError();
        });
    });
}
