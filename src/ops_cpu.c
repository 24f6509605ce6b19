/* ops_cpu.c: the CPU reference ops (float32, OpenMP across cores, no fast-math). */
#include "ops_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void encoder_forward_cpu(float *out, const int *tokens, const int *pos, const float *wte, const float *wpe,
                         int N, int C) {
#pragma omp parallel for if (N > 16)
    for (int n = 0; n < N; n++) {
        const float *te = wte + (size_t)tokens[n] * C;
        const float *pe = wpe + (size_t)pos[n] * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}

void layernorm_forward_cpu(float *out, const float *inp, const float *w, const float *b, int N, int C,
                           float eps) {
#pragma omp parallel for if (N > 16)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double mean = 0.0, var = 0.0;
        for (int c = 0; c < C; c++) mean += x[c];
        mean /= C;
        for (int c = 0; c < C; c++) {
            double d = x[c] - mean;
            var += d * d;
        }
        var /= C;
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * rstd * w[c] + b[c];
    }
}

/* Output columns go in blocks and rows in groups, so that each (row group, column block) task
 * accumulates into a small local array while streaming rows of w, which are contiguous in the
 * [in, out] layout; a group of rows shares each pass over w. Each output element is the same
 * sequence of float operations whatever N is, so a row's result does not depend on the batch. */
enum { MM_BLOCK = 64, MM_ROWS = 4 };

void matmul_forward_cpu(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC) {
    int nblocks = (OC + MM_BLOCK - 1) / MM_BLOCK, ngroups = (N + MM_ROWS - 1) / MM_ROWS;
#pragma omp parallel for collapse(2) schedule(static)
    for (int g = 0; g < ngroups; g++) {
        for (int blk = 0; blk < nblocks; blk++) {
            int n0 = g * MM_ROWS, rows = N - n0 < MM_ROWS ? N - n0 : MM_ROWS;
            int o0 = blk * MM_BLOCK, width = OC - o0 < MM_BLOCK ? OC - o0 : MM_BLOCK;
            float acc[MM_ROWS][MM_BLOCK];
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < width; j++) acc[r][j] = bias ? bias[o0 + j] : 0.0f;
            for (int i = 0; i < C; i++) {
                const float *wr = w + (size_t)i * OC + o0;
                for (int r = 0; r < rows; r++) {
                    float xi = inp[(size_t)(n0 + r) * C + i];
                    for (int j = 0; j < width; j++) acc[r][j] += xi * wr[j];
                }
            }
            for (int r = 0; r < rows; r++)
                memcpy(out + (size_t)(n0 + r) * OC + o0, acc[r], sizeof(float) * (size_t)width);
        }
    }
}

/* Dot product with 16 independent partial sums, which the compiler keeps in vector registers
 * (a single running sum cannot be vectorised without fast-math). */
static float dot(const float *a, const float *b, int n) {
    float part[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) part[k] += a[i + k] * b[i + k];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int k = 0; k < 16; k++) s += part[k];
    return s;
}

void matmul_nt_forward_cpu(float *out, const float *inp, const float *w, int N, int C, int OC) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < OC; o++) {
        const float *wr = w + (size_t)o * C;
        for (int n = 0; n < N; n++) out[(size_t)n * OC + o] = dot(inp + (size_t)n * C, wr, C);
    }
}

void gelu_forward_cpu(float *out, const float *inp, size_t n) {
    const float s = 0.7978845608028654f; /* sqrt(2 / pi) */
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(s * (x + 0.044715f * x * x * x)));
    }
}

void residual_forward_cpu(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void kv_append_cpu(float *kcache, float *vcache, const float *qkv, int pos, int T, int NH, int HS, int maxT) {
    int C = NH * HS;
    for (int t = 0; t < T; t++) {
        const float *k = qkv + (size_t)t * 3 * C + C;
        const float *v = k + C;
        for (int h = 0; h < NH; h++) {
            size_t dst = ((size_t)h * maxT + (size_t)(pos + t)) * HS;
            memcpy(kcache + dst, k + (size_t)h * HS, sizeof(float) * (size_t)HS);
            memcpy(vcache + dst, v + (size_t)h * HS, sizeof(float) * (size_t)HS);
        }
    }
}

int attention_forward_cpu(float *out, const float *q, int q_stride, const float *kcache, const float *vcache,
                          int pos, int T, int NH, int HS, int maxT) {
    int C = NH * HS, failed = 0;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel
    {
        float *att = malloc(sizeof(float) * (size_t)(pos + T)); /* (pos+T) scores of one query */
        if (!att) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                if (!att) continue;
                const float *qv = q + (size_t)t * q_stride + (size_t)h * HS;
                const float *kh = kcache + (size_t)h * maxT * HS;
                const float *vh = vcache + (size_t)h * maxT * HS;
                int len = pos + t + 1; /* causal: keys 0 .. pos+t */
                float mx = -INFINITY;
                for (int j = 0; j < len; j++) {
                    float s = dot(qv, kh + (size_t)j * HS, HS) * scale;
                    att[j] = s;
                    if (s > mx) mx = s;
                }
                double sum = 0.0;
                for (int j = 0; j < len; j++) {
                    att[j] = expf(att[j] - mx);
                    sum += att[j];
                }
                float inv = (float)(1.0 / sum);
                float *o = out + (size_t)t * C + (size_t)h * HS;
                for (int d = 0; d < HS; d++) o[d] = 0.0f;
                for (int j = 0; j < len; j++) {
                    float p = att[j] * inv;
                    const float *vv = vh + (size_t)j * HS;
                    for (int d = 0; d < HS; d++) o[d] += p * vv[d];
                }
            }
        }
        free(att);
    }
    return failed ? -1 : 0;
}
