/* cuda_common.cuh: device helpers shared by the kernel files (included by .cu files only, never by C).
 *
 * Every kernel is written once as a template over the storage type T (float, __half, __nv_bfloat16);
 * values are loaded with to_float, all arithmetic is float, and results are rounded once on the
 * store with from_float<T> (round to nearest even). dispatch_dtype turns the run-time gpt2_dtype of a
 * launcher into the template argument. */
#ifndef GPT2_CUDA_COMMON_CUH
#define GPT2_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "backend.h" /* gpt2_dtype */
}

namespace gpt2_cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Calls f(T()) with T the storage type of dt; unknown dtypes are refused. */
template <typename F> static cudaError_t dispatch_dtype(gpt2_dtype dt, F &&f) {
    switch (dt) {
    case GPT2_DTYPE_F32: return f(float());
    case GPT2_DTYPE_F16: return f(__half());
    case GPT2_DTYPE_BF16: return f(__nv_bfloat16());
    }
    return cudaErrorInvalidValue;
}

/* Blocks for a grid-stride loop over n items: enough to fill the GPU, never 0 (n > 0 is checked by
 * the caller), never more than the x-dimension limit. */
static inline unsigned grid_for(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    const size_t cap = (size_t)1 << 20;
    if (b > cap) b = cap;
    return (unsigned)(b ? b : 1);
}

} /* namespace gpt2_cuda */

#endif /* GPT2_CUDA_COMMON_CUH */
