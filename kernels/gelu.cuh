/* gelu.cuh: GELU (tanh approximation, GPT-2's "gelu_new") fused with the MLP bias. */
#ifndef GPT2_KERNELS_GELU_CUH
#define GPT2_KERNELS_GELU_CUH

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* out (N, OC) = gelu(inp (N, OC) + bias (OC)); bias may be NULL; out may alias inp.
 * With bias NULL this is gelu_forward_cpu over N*OC values; with a bias it is the bias add of
 * matmul_forward_cpu followed by gelu_forward_cpu (the GEMM before it runs without bias). */
cudaError_t gelu_bias_forward_cuda(void *out, const void *inp, const void *bias, int N, int OC, gpt2_dtype dtype,
                                   cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
