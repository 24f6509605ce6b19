/* attention_prefill.cuh: causal self-attention of a ragged batch of new tokens against the KV cache. */
#ifndef GPT2_KERNELS_ATTENTION_PREFILL_CUH
#define GPT2_KERNELS_ATTENTION_PREFILL_CUH

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* Queries per tile of the exact (float) kernel; the tensor-core kernel's tiles are 2x this. Tiles
 * per chunk are at most ceil(n / GPT2_ATTN_PREFILL_BQ) whichever kernel runs (the plan's bound). */
#define GPT2_ATTN_PREFILL_BQ 32
/* Largest head size the attention kernels take. */
#define GPT2_ATTN_MAX_HS 256
/* Largest head size of the tensor-core prefill kernel (fp16/bf16); larger heads take the exact one. */
#define GPT2_ATTN_TC_MAX_HS 128

/* Queries per tile for (dtype, HS): the caller cuts each chunk into tiles of this many tokens
 * (q0 = 0, tq, 2 tq, ...). 64 for fp16/bf16 with HS <= GPT2_ATTN_TC_MAX_HS (the tensor-core kernel;
 * on a GPU without mma.sync, compute capability < 8.0, the exact kernel runs each such tile as two
 * of its own), else GPT2_ATTN_PREFILL_BQ. */
int attention_prefill_tile_queries(gpt2_dtype dtype, int HS);

/* Flash-style attention (online softmax over key tiles; no T x T matrix is ever written) for a ragged
 * batch of sequences, each with its own slot and start position. fp16/bf16 (HS <= 128, compute
 * capability >= 8.0) run on tensor cores (mma.sync m16n8k16, FlashAttention-2 tiling, float
 * accumulation; q + bias and the probabilities P are rounded to T before their products); fp32 and
 * the rest on the exact float kernel:
 *   out    (N, C)          C = NH*HS; token row t, head h at out[t*C + h*HS]
 *   qkv    (N, 3C)         q of token t, head h at qkv[t*3C + h*HS]
 *   qkv_bias (3C) or NULL  added to q here (the QKV GEMM runs without bias)
 *   kcache, vcache (S, NH, maxT, HS)  one layer; must already hold positions 0 .. pos+n-1 of each chunk
 *   chunks (n_chunks, 4)   per chunk: slot, pos, n, start (its first token's row in qkv and out)
 *   tiles  (n_tiles, 2)    per tile: chunk index, first query q0 (0, tq, 2tq, ... < n), tq =
 *                          attention_prefill_tile_queries(dtype, HS)
 * The query at position pos+i attends to keys 0 .. pos+i, scaled by 1/sqrt(HS). One block per
 * (tile, head). Twin: attention_forward_cpu, called per chunk. HS <= GPT2_ATTN_MAX_HS. */
cudaError_t attention_prefill_cuda(void *out, const void *qkv, const void *qkv_bias, const void *kcache,
                                   const void *vcache, const int *chunks, const int *tiles, int n_tiles, int NH,
                                   int HS, int maxT, int S, gpt2_dtype dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
