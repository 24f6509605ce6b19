/* ops_cpu.c: the CPU ops (float32, OpenMP across cores, no fast-math): the reference ops, the
 * instruction-set instances of the fast kernels (ops_cpu_simd.inc) and their dispatch. */
#include "ops_cpu.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__x86_64__)
#error "the fast CPU kernels are written for x86-64 (SSE2 / AVX2 / AVX-512)"
#endif

/* The team size of an op's parallel regions: nt, or the OpenMP default (read, never set). */
static int team(int nt) { return nt > 0 ? nt : omp_get_max_threads(); }

void encoder_forward_cpu(float *out, const int *tokens, const int *pos, const float *wte, const float *wpe,
                         int N, int C, int nt) {
#pragma omp parallel for if (N > 16) num_threads(team(nt))
    for (int n = 0; n < N; n++) {
        const float *te = wte + (size_t)tokens[n] * C;
        const float *pe = wpe + (size_t)pos[n] * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}

void layernorm_forward_cpu(float *out, const float *inp, const float *w, const float *b, int N, int C,
                           float eps, int nt) {
#pragma omp parallel for if (N > 16) num_threads(team(nt))
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

/* The reference matmul (the engine uses matmul_packed_isa). Output columns go in blocks and rows in
 * groups, so that each (row group, column block) task accumulates into a small local array while
 * streaming rows of w, which are contiguous in the [in, out] layout. */
enum { MM_BLOCK = 64, MM_ROWS = 4 };

void matmul_forward_cpu(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC,
                        int nt) {
    int nblocks = (OC + MM_BLOCK - 1) / MM_BLOCK, ngroups = (N + MM_ROWS - 1) / MM_ROWS;
#pragma omp parallel for collapse(2) schedule(static) num_threads(team(nt))
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

void matmul_nt_forward_cpu(float *out, const float *inp, const float *w, int N, int C, int OC, int nt) {
#pragma omp parallel for schedule(static) num_threads(team(nt))
    for (int o = 0; o < OC; o++) {
        const float *wr = w + (size_t)o * C;
        for (int n = 0; n < N; n++) out[(size_t)n * OC + o] = dot(inp + (size_t)n * C, wr, C);
    }
}

void gelu_forward_cpu(float *out, const float *inp, size_t n, int nt) {
    const float s = 0.7978845608028654f; /* sqrt(2 / pi) */
#pragma omp parallel for if (n > 65536) num_threads(team(nt))
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(s * (x + 0.044715f * x * x * x)));
    }
}

void residual_forward_cpu(float *out, const float *a, const float *b, size_t n, int nt) {
#pragma omp parallel for if (n > 65536) num_threads(team(nt))
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

/* One query of one head against keys and values 0..len-1: scores scaled by `scale`, softmax with the
 * max subtracted (sum in double), then the weighted sum of the values.
 *   o (HS), qv (HS), kh (len, HS), vh (len, HS), att (len) scratch */
typedef void attn_query_fn(float *o, const float *qv, const float *kh, const float *vh, int len, int HS, float scale,
                           float *att);

static void attn_query_ref(float *o, const float *qv, const float *kh, const float *vh, int len, int HS, float scale,
                           float *att) {
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
    for (int d = 0; d < HS; d++) o[d] = 0.0f;
    for (int j = 0; j < len; j++) {
        float p = att[j] * inv;
        const float *vv = vh + (size_t)j * HS;
        for (int d = 0; d < HS; d++) o[d] += p * vv[d];
    }
}

/* The (head, query) loop shared by the reference and the fast attention. */
static int attention_run(attn_query_fn *query, float *out, const float *q, int q_stride, const float *kcache,
                         const float *vcache, int pos, int T, int NH, int HS, int maxT, int nt) {
    int C = NH * HS, failed = 0;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel num_threads(team(nt))
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
                /* causal: query t sees keys 0 .. pos+t */
                query(out + (size_t)t * C + (size_t)h * HS, q + (size_t)t * q_stride + (size_t)h * HS,
                      kcache + (size_t)h * maxT * HS, vcache + (size_t)h * maxT * HS, pos + t + 1, HS, scale, att);
            }
        }
        free(att);
    }
    return failed ? -1 : 0;
}

int attention_forward_cpu(float *out, const float *q, int q_stride, const float *kcache, const float *vcache,
                          int pos, int T, int NH, int HS, int maxT, int nt) {
    return attention_run(attn_query_ref, out, q, q_stride, kcache, vcache, pos, T, NH, HS, maxT, nt);
}

/* ---- 16-bit conversions (round to nearest even; NaN stays NaN, overflow goes to infinity) ---- */

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t cpu_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float cpu_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t cpu_f32_to_f16(float x) {
    uint32_t u = f32_bits(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: infinity */
    if (a < 0x38800000u) {                                   /* below 2^-14: a half subnormal (or 0) */
        /* the value in units of 2^-24, rounded to nearest even */
        if (a < 0x33000000u) return (uint16_t)sign;           /* below 2^-25: rounds to zero */
        uint32_t m = (a & 0x7fffffu) | 0x800000u;             /* 24-bit significand */
        int shift = 126 - (int)(a >> 23);                      /* 14 .. 24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias the exponent (127 -> 15) and round 23 -> 10 fraction bits */
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float cpu_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, f = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (f << 13)); /* inf / NaN */
    if (e == 0) {                                                    /* zero or subnormal: f x 2^-24 */
        float v = (float)f * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (f << 13));
}

/* ---- instances of the fast kernels ---- */

/* k block of the matmul tiles: 256 rows of a fp32 panel are 16 KiB, half of L1. */
enum { MM_KC = 256 };
/* How far ahead of the tile loop the decode path prefetches its weight stream: 16 KiB (256 fp32 panel
 * rows). Measured on the development machine (AMD Zen 3, 1 thread, the 49 matrices of a gpt2 decode
 * step, 9 alternating rounds): batch-8 / batch-1 time 1.50 without, 1.33 at 8 KiB, 1.21 at 16 KiB,
 * 1.24 at 32 KiB (the earlier 4 KiB try gave nothing measurable). */
enum { MM_PF_BYTES = 16384 };

/* Rows of each register tile when `rows` rows go in tiles of at most mr: equal heights (8 rows with
 * mr = 6: 4 + 4, not 6 + 2), as a short tile has too few independent accumulators to hide the FMA
 * latency; the last tile may be shorter. */
static inline int mm_tile_height(int rows, int mr) {
    int tiles = (rows + mr - 1) / mr;
    return tiles > 0 ? (rows + tiles - 1) / tiles : mr;
}

#define ISA_SUFFIX sse2
#define ISA_TARGET
#define VW 4
#define MR 3
#include "ops_cpu_simd.inc"
#undef ISA_SUFFIX
#undef ISA_TARGET
#undef VW
#undef MR

#define ISA_SUFFIX avx2
#define ISA_TARGET __attribute__((target("avx2,fma,f16c")))
#define VW 8
#define MR 6
#include "ops_cpu_simd.inc"
#undef ISA_SUFFIX
#undef ISA_TARGET
#undef VW
#undef MR

#define ISA_SUFFIX avx512
#define ISA_TARGET __attribute__((target("avx512f,avx2,fma,f16c")))
#define VW 16
#define MR 12
#include "ops_cpu_simd.inc"
#undef ISA_SUFFIX
#undef ISA_TARGET
#undef VW
#undef MR

typedef struct {
    const char *name;
    void (*mm_panel)(float *out, const float *inp, const float *xp, const cpu_packed *w, const float *bias, int n0,
                     int n1, int kb0, int kb1, int p);
    attn_query_fn *attn_query;
    void (*gelu_span)(float *out, const float *inp, size_t n);
    int mr; /* rows per register tile */
} isa_kernels;

static const isa_kernels isa_table[CPU_ISA_COUNT] = {
    [CPU_ISA_SSE2] = {"sse2", mm_panel_sse2, attn_query_sse2, gelu_span_sse2, 3},
    [CPU_ISA_AVX2] = {"avx2", mm_panel_avx2, attn_query_avx2, gelu_span_avx2, 6},
    [CPU_ISA_AVX512] = {"avx512", mm_panel_avx512, attn_query_avx512, gelu_span_avx512, 12},
};

const char *cpu_isa_name(cpu_isa isa) { return (unsigned)isa < CPU_ISA_COUNT ? isa_table[isa].name : "?"; }

/* F16C from cpuid leaf 1 (clang's __builtin_cpu_supports does not know "f16c"; the AVX checks below
 * already include the operating system's support for the vector registers). */
static int have_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

int cpu_isa_supported(cpu_isa isa) {
    __builtin_cpu_init();
    switch (isa) {
    case CPU_ISA_SSE2: return 1; /* the x86-64 baseline */
    case CPU_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have_f16c();
    case CPU_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma") && have_f16c();
    default: return 0;
    }
}

cpu_isa cpu_isa_best(void) {
    for (int i = CPU_ISA_COUNT - 1; i > 0; i--)
        if (cpu_isa_supported((cpu_isa)i)) return (cpu_isa)i;
    return CPU_ISA_SSE2;
}

/* ---- packed matmul ---- */

size_t cpu_packed_elems(int K, int OC) {
    size_t panels = ((size_t)OC + PACK_NR - 1) / PACK_NR, n;
    if (K < 0 || OC < 0 || __builtin_mul_overflow(panels, (size_t)K * PACK_NR, &n)) return 0;
    return n;
}

/* Element i of p->data = v, converted to p->wt. */
static void pack_store(cpu_packed *p, size_t i, float v) {
    if (p->wt == CPU_W_F32) ((float *)p->data)[i] = v;
    else if (p->wt == CPU_W_BF16) ((uint16_t *)p->data)[i] = cpu_f32_to_bf16(v);
    else ((uint16_t *)p->data)[i] = cpu_f32_to_f16(v);
}

void cpu_pack(cpu_packed *p, const float *w, int transposed, int nt) {
    const int K = p->K, OC = p->OC, panels = (OC + PACK_NR - 1) / PACK_NR;
    /* the loops follow the source's contiguous axis: k for (OC, K), the column for (K, OC) */
#pragma omp parallel for schedule(static) num_threads(team(nt))
    for (int q = 0; q < panels; q++) {
        size_t base = (size_t)q * K * PACK_NR;
        if (transposed) {
            for (int j = 0; j < PACK_NR; j++) {
                int col = q * PACK_NR + j;
                for (int k = 0; k < K; k++)
                    pack_store(p, base + (size_t)k * PACK_NR + j, col < OC ? w[(size_t)col * K + k] : 0.0f);
            }
        } else {
            for (int k = 0; k < K; k++)
                for (int j = 0; j < PACK_NR; j++) {
                    int col = q * PACK_NR + j;
                    pack_store(p, base + (size_t)k * PACK_NR + j, col < OC ? w[(size_t)k * OC + col] : 0.0f);
                }
        }
    }
}

/* Tile by tile, rows n0..n1-1 and columns k0..k1-1 of inp (N, K) into xp: the tile starting at row r0
 * with h rows is (k1 - k0, h), k-major, at xp + (r0 - n0) (k1 - k0). Tiles go to the team's threads. */
static void mm_pack_inputs(float *xp, const float *inp, int K, int n0, int n1, int k0, int k1, int mr) {
    const int height = mm_tile_height(n1 - n0, mr), tiles = (n1 - n0 + height - 1) / height;
#pragma omp for schedule(static)
    for (int t = 0; t < tiles; t++) {
        int r0 = n0 + t * height, h = n1 - r0 < height ? n1 - r0 : height;
        float *dst = xp + (size_t)(r0 - n0) * (size_t)(k1 - k0);
        for (int r = 0; r < h; r++) {
            const float *src = inp + (size_t)(r0 + r) * K;
            for (int k = k0; k < k1; k++) dst[(size_t)(k - k0) * h + r] = src[k];
        }
    }
}

/* Rows go in blocks whose inputs stay in the per-core cache (L2, 256 KiB of them) while every panel
 * streams past them. When all the rows' inputs fit (decode), the block holds every k and a decode step
 * reads each weight once, in runs of contiguous panels. Otherwise (prefill) the k axis is cut into
 * ranges of MM_KC too, so that a block of MM_KC columns of up to 256 KiB / (4 MM_KC) rows stays in L2
 * and each weight comes from memory once per 256 rows, not once per 256 KiB / 4K rows (21 at K = 3072);
 * and each such block is first packed tile by tile (mm_pack_inputs), so that a tile's broadcasts read
 * one contiguous stream instead of MR rows K floats apart. The k ranges of a panel run in order (a
 * barrier between them), so every output element is still bias + the products in k order, whatever N
 * is. The runs of panels are handed out dynamically, about 8 per thread, so that a thread descheduled
 * on a shared machine does not hold back the others at the end of the loop. */
void matmul_packed_isa(cpu_isa isa, float *out, const float *inp, const cpu_packed *w, const float *bias, int N,
                       int nt) {
    enum { L2_FLOATS = (256 << 10) / (int)sizeof(float) };
    const isa_kernels *ki = &isa_table[isa];
    const int K = w->K, panels = (w->OC + PACK_NR - 1) / PACK_NR;
    const int big = (size_t)N * (size_t)K > L2_FLOATS && N > ki->mr; /* inputs do not fit in L2 */
    const int kb = big && K > MM_KC ? MM_KC : K;                     /* k range per pass */
    int block = L2_FLOATS / (kb > 0 ? kb : 1);
    block = block < ki->mr ? ki->mr : block - block % ki->mr;
    /* (block, kb) packed inputs of one pass; without it (allocation failed) the tiles read inp */
    float *xp = big ? malloc(sizeof(float) * (size_t)block * (size_t)kb) : NULL;
    const int threads = team(nt), run = (panels + 8 * threads - 1) / (8 * threads);
#pragma omp parallel num_threads(threads)
    for (int n0 = 0; n0 < N; n0 += block) {
        int n1 = N - n0 < block ? N : n0 + block;
        if (!big) {
#pragma omp for schedule(dynamic, run) nowait
            for (int p = 0; p < panels; p++) ki->mm_panel(out, inp, NULL, w, bias, n0, n1, 0, K, p);
        } else {
            for (int k0 = 0; k0 < K; k0 += kb) {
                int k1 = K - k0 < kb ? K : k0 + kb;
                if (xp) mm_pack_inputs(xp, inp, K, n0, n1, k0, k1, ki->mr); /* ends with a barrier */
#pragma omp for schedule(dynamic, run)
                for (int p = 0; p < panels; p++) ki->mm_panel(out, inp, xp, w, bias, n0, n1, k0, k1, p);
            }
        }
    }
    free(xp);
}

int attention_forward_isa(cpu_isa isa, float *out, const float *q, int q_stride, const float *kcache,
                          const float *vcache, int pos, int T, int NH, int HS, int maxT, int nt) {
    return attention_run(isa_table[isa].attn_query, out, q, q_stride, kcache, vcache, pos, T, NH, HS, maxT, nt);
}

void gelu_forward_isa(cpu_isa isa, float *out, const float *inp, size_t n, int nt) {
    enum { SPAN = 16384 }; /* floats per task, a multiple of every vector width */
    const isa_kernels *ki = &isa_table[isa];
    size_t spans = (n + SPAN - 1) / SPAN;
#pragma omp parallel for schedule(static) if (spans > 1) num_threads(team(nt))
    for (size_t i = 0; i < spans; i++) ki->gelu_span(out + i * SPAN, inp + i * SPAN, n - i * SPAN < SPAN ? n - i * SPAN : SPAN);
}
