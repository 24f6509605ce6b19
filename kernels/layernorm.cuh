/* layernorm.cuh: layer normalisation, alone or fused with the residual add before it. */
#ifndef GPT2_KERNELS_LAYERNORM_CUH
#define GPT2_KERNELS_LAYERNORM_CUH

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* out (N, C) = (inp - mean) / sqrt(var + eps) * w + b, per row; twin of layernorm_forward_cpu.
 * Statistics in float, two passes (mean, then the centred sum of squares). out must not alias inp. */
cudaError_t layernorm_forward_cuda(void *out, const void *inp, const void *w, const void *b, int N, int C, float eps,
                                   gpt2_dtype dtype, cudaStream_t stream);

/* The residual add of a sublayer fused with the layernorm that follows it, in one pass over the rows:
 *   resid (N, C) += x (N, C) + xbias (C)          (xbias: the projection's bias, may be NULL)
 *   out[out_row[n]] (C) = layernorm(resid[n]) with w, b (C)
 * resid is rounded to the storage type before its statistics are taken, so the next layer reads
 * exactly the values normalised here. out_row (N) may be NULL (row n -> row n); a negative entry skips
 * that row's output (its residual is still updated): the final layernorm uses it to gather only the
 * rows whose logits are wanted. out must not alias resid or x. Twin: residual_forward_cpu then
 * layernorm_forward_cpu. */
cudaError_t residual_layernorm_forward_cuda(void *out, void *resid, const void *x, const void *xbias,
                                            const int *out_row, const void *w, const void *b, int N, int C,
                                            float eps, gpt2_dtype dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
