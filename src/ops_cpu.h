/* ops_cpu.h: the CPU reference ops. Each CUDA kernel has its twin here, and the kernel tests compare
 * the two on random data. Float32, no fast-math. Row-major throughout. */
#ifndef GPT2_OPS_CPU_H
#define GPT2_OPS_CPU_H

#include <stddef.h>

/* out (N, C) = wte[tokens[n]] + wpe[pos[n]] */
void encoder_forward_cpu(float *out, const int *tokens, const int *pos, const float *wte, const float *wpe,
                         int N, int C);

/* out (N, C) = (inp - mean) / sqrt(var + eps) * w + b, statistics per row, in double. */
void layernorm_forward_cpu(float *out, const float *inp, const float *w, const float *b, int N, int C,
                           float eps);

/* out (N, OC) = inp (N, C) @ w + bias, with w (C, OC) (Conv1D layout, [in, out]); bias may be NULL. */
void matmul_forward_cpu(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC);

/* out (N, OC) = inp (N, C) @ w^T, with w (OC, C) (nn.Linear layout; the tied unembedding). */
void matmul_nt_forward_cpu(float *out, const float *inp, const float *w, int N, int C, int OC);

/* out[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the "gelu_new" of GPT-2. */
void gelu_forward_cpu(float *out, const float *inp, size_t n);

/* out[i] = a[i] + b[i] (out may alias a or b). */
void residual_forward_cpu(float *out, const float *a, const float *b, size_t n);

/* Causal self-attention of T new queries at positions pos .. pos+T-1 of one sequence, against that
 * sequence's cache, which already holds K and V for positions 0 .. pos+T-1.
 *   out    (T, C)            C = NH * HS
 *   q      (T, q_stride)     head h of token t at q[t*q_stride + h*HS]
 *   kcache (NH, maxT, HS)    this sequence, this layer
 *   vcache (NH, maxT, HS)
 * Scale 1/sqrt(HS); softmax with the max subtracted, sums in double. Returns 0, or -1 when its
 * per-thread scratch cannot be allocated. */
int attention_forward_cpu(float *out, const float *q, int q_stride, const float *kcache, const float *vcache,
                          int pos, int T, int NH, int HS, int maxT);

/* Copies K and V of T new tokens into a sequence's cache at positions pos .. pos+T-1.
 *   qkv    (T, 3C)  q | k | v, each head-major (h*HS + d)
 *   kcache, vcache (NH, maxT, HS) */
void kv_append_cpu(float *kcache, float *vcache, const float *qkv, int pos, int T, int NH, int HS, int maxT);

#endif /* GPT2_OPS_CPU_H */
