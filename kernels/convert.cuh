/* convert.cuh: element type conversion on the device (weights at upload, tests). */
#ifndef GPT2_KERNELS_CONVERT_CUH
#define GPT2_KERNELS_CONVERT_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* out (n) of type out_t = in (n) of type in_t, rounded to nearest even; out must not overlap in.
 * No CPU twin: the tests compare against the IEEE rounding rules directly. */
cudaError_t convert_cuda(void *out, gpt2_dtype out_t, const void *in, gpt2_dtype in_t, size_t n,
                         cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
