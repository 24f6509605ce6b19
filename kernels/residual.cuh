/* residual.cuh: elementwise residual add. */
#ifndef GPT2_KERNELS_RESIDUAL_CUH
#define GPT2_KERNELS_RESIDUAL_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* out (n) = a + b (out may alias a or b); twin of residual_forward_cpu. The forward pass fuses every
 * residual add into the layernorm that follows it (residual_layernorm_forward_cuda); this standalone
 * form is kept for callers that have no layernorm after the add. */
cudaError_t residual_forward_cuda(void *out, const void *a, const void *b, size_t n, gpt2_dtype dtype,
                                  cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
