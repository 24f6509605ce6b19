/* kv_append.cuh: writing the K and V of new tokens into the KV cache. */
#ifndef GPT2_KERNELS_KV_APPEND_CUH
#define GPT2_KERNELS_KV_APPEND_CUH

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* For a ragged batch of N new tokens: token n (of sequence slot[n], position pos[n]) copies its K and V
 * from qkv into that slot's cache of one layer:
 *   qkv      (N, 3C)               q | k | v, each head-major (h*HS + d), C = NH*HS
 *   qkv_bias (3C) or NULL          the QKV projection's bias, added here (the GEMM runs without it)
 *   kcache, vcache (S, NH, maxT, HS)  one layer
 *   slot, pos (N) on the device
 * A token with slot outside 0..S-1 or pos outside 0..maxT-1 is skipped: padded rows of a batch
 * (slot -1) write nothing. Twin: kv_append_cpu, called per sequence on its (NH, maxT, HS) cache. */
cudaError_t kv_append_cuda(void *kcache, void *vcache, const void *qkv, const void *qkv_bias, const int *slot,
                           const int *pos, int N, int NH, int HS, int maxT, int S, gpt2_dtype dtype,
                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
