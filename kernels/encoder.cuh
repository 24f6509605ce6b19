/* encoder.cuh: token + position embedding. */
#ifndef GPT2_KERNELS_ENCODER_CUH
#define GPT2_KERNELS_ENCODER_CUH

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* out (N, C) = wte[tokens[n]] + wpe[pos[n]]; twin of encoder_forward_cpu.
 *   tokens, pos (N) on the device; wte (V, C), wpe (maxT, C).
 * A token outside 0..V-1 or a position outside 0..maxT-1 (never passed by the backend, which checks
 * its chunks) gives a row of zeros instead of a read out of bounds. */
cudaError_t encoder_forward_cuda(void *out, const int *tokens, const int *pos, const void *wte, const void *wpe,
                                 int N, int C, int V, int maxT, gpt2_dtype dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
