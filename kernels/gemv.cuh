/* gemv.cuh: matrix products for few rows (decode: M <= GPT2_GEMV_MAX_M), where cuBLAS's GEMM tiles
 * waste most of their work and the product is bound by reading the weights once.
 *
 * Two launchers, one per weight layout of the model:
 *   gemv_forward_cuda     out (M, OC) = act(inp (M, K) @ w (K, OC) + bias)   Conv1D layout [in, out]
 *   gemv_nt_forward_cuda  out (M, N) float = inp (M, K) @ w^T, w (N, K)     nn.Linear layout (lm_head)
 * Both read every weight exactly once with 16-byte loads (8 fp16/bf16 or 4 fp32 values per thread)
 * when the row length allows it (a multiple of 8 or 4 elements and 16-byte aligned pointers), and
 * fall back to scalar loads otherwise (odd shapes: tests), always accumulating in float. Twins:
 * matmul_forward_cpu (+ gelu_forward_cpu) and matmul_nt_forward_cpu.
 */
#ifndef GPT2_KERNELS_GEMV_CUH
#define GPT2_KERNELS_GEMV_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

#define GPT2_GEMV_MAX_M 16      /* most rows these kernels take */
#define GPT2_GEMV_MAX_KSPLIT 128 /* most K splits of gemv_forward_cuda */
#define GPT2_GEMV_KC 512         /* most K rows one block of gemv_forward_cuda covers (its shared memory) */

/* The K split for an (M <= 16, K) x (K, OC) product on a GPU of n_sm multiprocessors: enough blocks
 * for about two per SM, at least 32 rows of K per block, at most GPT2_GEMV_KC rows per block. */
int gemv_pick_ksplit(int K, int OC, gpt2_dtype dtype, int n_sm);
/* Floats of scratch gemv_forward_cuda needs for (M, OC) with that split: ksplit * M * OC (0 if 1). */
size_t gemv_scratch_floats(int M, int OC, int ksplit);
/* Counters (unsigned ints) it needs for OC output columns: one per 32-column tile at worst. */
size_t gemv_counters(int OC);

/* Optional fusions of gemv_forward_cuda, for the decode path (NULL: none):
 *   ln_w, ln_b (K): the input rows are layer-normalised first (statistics of the whole row in float,
 *      two passes, exactly as layernorm_forward_cuda, and rounded to T as it stores them), so the
 *      layernorm kernel before the product is not launched;
 *   resid (M, OC): the epilogue adds the result into the residual stream instead of writing out:
 *      resid = round(resid + (x @ w + bias)), as residual_layernorm_forward_cuda adds a projection. */
typedef struct {
    const void *ln_w, *ln_b; /* (K) each, or NULL */
    float ln_eps;
    void *resid;             /* (M, OC) or NULL; out is not written (may be NULL) when set */
} gemv_fusion;

/* out (M, OC) in T = inp (M, K) @ w (K, OC) + bias (OC, may be NULL), then GELU (tanh form, as
 * gelu_forward_cpu) when gelu != 0; M in 1..GPT2_GEMV_MAX_M.
 * Split-K: block (tile, s) covers 32 x VEC output columns and K rows s*kc .. (s+1)*kc - 1; its 8 warps
 * take 4 rows at a time, the block sums its warps, and with ksplit > 1 writes its partial sums to
 * scratch (ksplit, M, OC) floats. The last block of a tile to finish (a ticket counter per tile) adds
 * the partials in split order (so the result does not depend on which block ran first), applies the
 * epilogue and resets its counter to 0. counters (n_counters >= gemv_counters(OC)) must be all zero
 * before the first launch; every launch leaves them zero. Launches on one stream must not overlap
 * (they share the counters and scratch). No host synchronisation: CUDA-graph capturable. The output
 * (out, or resid when set) must not overlap inp: every block reads all of inp while others store
 * (refused, cudaErrorInvalidValue). */
cudaError_t gemv_forward_cuda(void *out, const void *inp, const void *w, const void *bias, int M, int K, int OC,
                              int gelu, const gemv_fusion *fuse, int ksplit, float *scratch, size_t scratch_floats,
                              unsigned *counters, size_t n_counters, gpt2_dtype dtype, cudaStream_t stream);

/* out (M, ldo) float, columns 0..N-1 = inp (M, K) @ w^T with w (N, K) in T; M in 1..GPT2_GEMV_MAX_M,
 * ldo >= N. Each warp computes 4 output columns for all M rows (every weight read once, each input
 * vector read from shared memory once per 4 columns), lanes along K. ln_w, ln_b (K) or NULL: the
 * input rows are layer-normalised first, as gemv_fusion's ln_w (the final layernorm). out must not
 * overlap inp (refused). */
cudaError_t gemv_nt_forward_cuda(float *out, int ldo, const void *inp, const void *w, int M, int K, int N,
                                 const void *ln_w, const void *ln_b, float ln_eps, gpt2_dtype dtype,
                                 cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
