/* ops_cpu.h: the CPU ops. Each CUDA kernel has its twin here, and the kernel tests compare the two on
 * random data. Float32, no fast-math. Row-major throughout.
 *
 * Two kinds of op:
 *   - the reference ops (plain C, the twins of the CUDA kernels and the oracles of the SIMD tests);
 *   - the fast ops of the CPU engine, suffixed _isa: one body in ops_cpu_simd.inc compiled for each
 *     instruction set in cpu_isa, chosen by the caller (the backend picks cpu_isa_best() once).
 * Every op that runs across cores takes nt, the size of its OpenMP teams (0: the OpenMP default); the
 * ops use num_threads clauses and never change the process's OpenMP settings. */
#ifndef GPT2_OPS_CPU_H
#define GPT2_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

/* Instruction sets the fast ops are compiled for. SSE2 is the x86-64 baseline; AVX2 also means FMA
 * and F16C; AVX-512 means AVX512F with FMA and F16C (compiled always; run only where the CPU has it,
 * which the development machine does not). With FMA a multiply-add rounds once
 * instead of twice, so the AVX variants differ from SSE2 and from the reference in the last bits
 * (well inside the fp32 tolerance; the build keeps -fno-fast-math and no contraction elsewhere). */
typedef enum { CPU_ISA_SSE2 = 0, CPU_ISA_AVX2, CPU_ISA_AVX512, CPU_ISA_COUNT } cpu_isa;

const char *cpu_isa_name(cpu_isa isa);
int cpu_isa_supported(cpu_isa isa); /* 1 when this CPU runs it */
cpu_isa cpu_isa_best(void);         /* the widest supported */

/* Element type of a packed weight matrix: float32, IEEE half or bfloat16 (rounded to nearest even
 * when packed; converted back to float32 in the inner loop, accumulation in float32). */
typedef enum { CPU_W_F32 = 0, CPU_W_F16, CPU_W_BF16 } cpu_wtype;

/* A weight matrix of K inputs and OC outputs packed for the fast matmul: panels of PACK_NR output
 * columns, each panel (K, PACK_NR) contiguous, the last one zero-padded. A tile of output rows then
 * streams one contiguous panel, and a decode step reads every weight once for all its rows. */
enum { PACK_NR = 16 };
typedef struct {
    void *data; /* (ceil(OC / PACK_NR), K, PACK_NR) elements of type wt; owned by the caller */
    int K, OC;
    cpu_wtype wt;
} cpu_packed;

/* Elements of the packed form of a (K, OC) matrix, 0 on overflow. */
size_t cpu_packed_elems(int K, int OC);
/* Fills p->data (cpu_packed_elems(K, OC) elements of p->wt, allocated by the caller) from w, which is
 * (K, OC) ([in, out], Conv1D) when transposed is 0, or (OC, K) (nn.Linear, e.g. the lm_head) when 1. */
void cpu_pack(cpu_packed *p, const float *w, int transposed, int nt);

/* out (N, OC) = inp (N, K) @ W + bias, W packed; bias (OC) may be NULL. Each output element is the
 * same sequence of float operations whatever N is, so a row's result does not depend on the batch. */
void matmul_packed_isa(cpu_isa isa, float *out, const float *inp, const cpu_packed *w, const float *bias, int N,
                       int nt);

/* attention_forward_cpu (below) with vector dot products and updates; same arguments. */
int attention_forward_isa(cpu_isa isa, float *out, const float *q, int q_stride, const float *kcache,
                          const float *vcache, int pos, int T, int NH, int HS, int maxT, int nt);

/* gelu_forward_cpu (below) as x / (1 + e^(-2u)) with a vector e^x (about 1 ulp); same arguments.
 * Agrees with the reference to a few ulps, and better than it where 1 + tanh cancels (x < -3). */
void gelu_forward_isa(cpu_isa isa, float *out, const float *inp, size_t n, int nt);

/* Round-to-nearest-even conversions used by cpu_pack (exposed for the tests). */
uint16_t cpu_f32_to_f16(float x);
uint16_t cpu_f32_to_bf16(float x);
float cpu_f16_to_f32(uint16_t h);
float cpu_bf16_to_f32(uint16_t h);

/* out (N, C) = wte[tokens[n]] + wpe[pos[n]] */
void encoder_forward_cpu(float *out, const int *tokens, const int *pos, const float *wte, const float *wpe,
                         int N, int C, int nt);

/* out (N, C) = (inp - mean) / sqrt(var + eps) * w + b, statistics per row, in double. */
void layernorm_forward_cpu(float *out, const float *inp, const float *w, const float *b, int N, int C,
                           float eps, int nt);

/* out (N, OC) = inp (N, C) @ w + bias, with w (C, OC) (Conv1D layout, [in, out]); bias may be NULL. */
void matmul_forward_cpu(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC,
                        int nt);

/* out (N, OC) = inp (N, C) @ w^T, with w (OC, C) (nn.Linear layout; the tied unembedding). */
void matmul_nt_forward_cpu(float *out, const float *inp, const float *w, int N, int C, int OC, int nt);

/* out[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the "gelu_new" of GPT-2. */
void gelu_forward_cpu(float *out, const float *inp, size_t n, int nt);

/* out[i] = a[i] + b[i] (out may alias a or b). */
void residual_forward_cpu(float *out, const float *a, const float *b, size_t n, int nt);

/* Causal self-attention of T new queries at positions pos .. pos+T-1 of one sequence, against that
 * sequence's cache, which already holds K and V for positions 0 .. pos+T-1.
 *   out    (T, C)            C = NH * HS
 *   q      (T, q_stride)     head h of token t at q[t*q_stride + h*HS]
 *   kcache (NH, maxT, HS)    this sequence, this layer
 *   vcache (NH, maxT, HS)
 * Scale 1/sqrt(HS); softmax with the max subtracted, sums in double. Returns 0, or -1 when its
 * per-thread scratch cannot be allocated. */
int attention_forward_cpu(float *out, const float *q, int q_stride, const float *kcache, const float *vcache,
                          int pos, int T, int NH, int HS, int maxT, int nt);

/* Copies K and V of T new tokens into a sequence's cache at positions pos .. pos+T-1.
 *   qkv    (T, 3C)  q | k | v, each head-major (h*HS + d)
 *   kcache, vcache (NH, maxT, HS) */
void kv_append_cpu(float *kcache, float *vcache, const float *qkv, int pos, int T, int NH, int HS, int maxT);

#endif /* GPT2_OPS_CPU_H */
