/* encoder.cu: token + position embedding, one block per token row. */
#include "cuda_common.cuh"
#include "encoder.cuh"

using namespace gpt2_cuda;

template <typename T>
__global__ void encoder_kernel(T *out, const int *tokens, const int *pos, const T *wte, const T *wpe, int N, int C,
                               int V, int maxT) {
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        int tok = tokens[n], p = pos[n];
        bool ok = tok >= 0 && tok < V && p >= 0 && p < maxT;
        const T *te = wte + (size_t)(ok ? tok : 0) * C;
        const T *pe = wpe + (size_t)(ok ? p : 0) * C;
        T *o = out + (size_t)n * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            o[c] = from_float<T>(ok ? to_float(te[c]) + to_float(pe[c]) : 0.0f);
    }
}

extern "C" cudaError_t encoder_forward_cuda(void *out, const int *tokens, const int *pos, const void *wte,
                                            const void *wpe, int N, int C, int V, int maxT, gpt2_dtype dtype,
                                            cudaStream_t stream) {
    if (N < 0 || C < 1 || V < 1 || maxT < 1) return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    if (!out || !tokens || !pos || !wte || !wpe) return cudaErrorInvalidValue;
    const unsigned threads = 256;
    return dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        encoder_kernel<T><<<grid_for((size_t)N * threads, threads), threads, 0, stream>>>(
            (T *)out, tokens, pos, (const T *)wte, (const T *)wpe, N, C, V, maxT);
        return cudaGetLastError();
    });
}
