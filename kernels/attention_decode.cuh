/* attention_decode.cuh: one new query per sequence against its cache, split over long contexts, one launch. */
#ifndef GPT2_KERNELS_ATTENTION_DECODE_CUH
#define GPT2_KERNELS_ATTENTION_DECODE_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* Keys per block; a context of len keys is cut into ceil(len / SPLIT) splits (ATTN_DC_SPLIT of
 * kernels/attention_layout.h). */
#define GPT2_ATTN_DECODE_SPLIT 128

/* Floats of scratch attention_decode_cuda needs for B rows: per (row, head, split) HS partial sums,
 * a running max and a sum. 0 for bad sizes. */
size_t attention_decode_scratch_floats(int B, int NH, int HS, int maxT);
/* Tickets (unsigned ints) it needs for B rows: one per (row, head). */
size_t attention_decode_counters(int B, int NH);

/* Decode attention for B sequences, one new token each, in ONE launch:
 *   out    (B, C)          C = NH*HS
 *   qkv    (B, 3C)         q of row b, head h at qkv[b*3C + h*HS]
 *   qkv_bias (3C) or NULL  added to q here
 *   kcache, vcache (S, NH, maxT, HS)  one layer; must already hold positions 0 .. pos[b] - 1 of slot[b],
 *                   and position pos[b] too unless append
 *   append   1: first write row b's own k and v (qkv's k, v parts + qkv_bias) at position pos[b] of
 *            slot[b], as kv_append_cuda would (the fused decode path: no separate launch); 0: the
 *            cache already holds them
 *   slot, pos (B) on the device: row b is at position pos[b] and attends to keys 0 .. pos[b]
 *   scratch  (B, NH, nsplit, HS + 2) floats, scratch_floats >= attention_decode_scratch_floats(...)
 *   counters (B, NH) tickets, n_counters >= attention_decode_counters(B, NH): all zero before the
 *            first launch (the backend's arena is cleared once); every launch leaves them zero
 * One block per (row, split of SPLIT keys, head) computes its split's max score, exp-sum and
 * unnormalised P V (K and V read as 16-byte vectors where HS allows); a row of one split writes its
 * output at once, otherwise each block stores its partial and takes a ticket, and the last block of
 * the row to arrive merges the partials in split order (so the result does not depend on which block
 * ran last) and resets the ticket. The grid covers every split that maxT allows and splits past a
 * row's length exit at once, so the launch shape depends only on B (what a CUDA graph needs: the
 * positions live in device memory). A row with slot outside 0..S-1 or pos outside 0..maxT-1
 * (padding) gets zeros and writes nothing else. Launches sharing scratch and counters must not
 * overlap. Twin: kv_append_cpu (when append) then attention_forward_cpu with T = 1. HS <= 256. */
cudaError_t attention_decode_cuda(void *out, const void *qkv, const void *qkv_bias, void *kcache, void *vcache,
                                  const int *slot, const int *pos, int B, int NH, int HS, int maxT, int S, int append,
                                  float *scratch, size_t scratch_floats, unsigned *counters, size_t n_counters,
                                  gpt2_dtype dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
