/* sim_attention.c: CPU simulations of the two attention kernels' algorithms, lane by lane.
 *
 * No GPU here (nor in CI), so what the CUDA tests cannot check on this machine is checked in plain C:
 * the index arithmetic of kernels/attention_layout.h (the very functions the kernels call), the
 * order of the phases, the masks, the online softmax and the split merge, on random inputs, against a
 * naive float64 attention. CUDA syntax, the hardware's fragment layout (taken from the PTX ISA, see
 * attention_layout.h), memory ordering between blocks and speed are NOT checked here: those need a
 * GPU (tests/test_cuda.c, bench/bench_kernels.c).
 *
 *   sim_decode    kernels/attention_decode.cu: blocks (row, split, head) run one after another in a
 *                 random order (so any block may be the last of its row); in a block, warps and lanes
 *                 are loops, a shuffle is a read of another lane's value of the previous step. The
 *                 last block of a row merges (tickets as in the kernel); with append, the cache
 *                 position being appended holds NaN until the appending block writes it, so a block
 *                 that read it too early would poison its row.
 *   sim_prefill   kernels/attention_prefill.cu's tensor-core kernel: every mma.sync m16n8k16 is
 *                 emulated by gathering the 32 lanes' registers into the A (16 x 16) and B (16 x 8)
 *                 matrices through the layout maps (each element must come from exactly one lane
 *                 register) and scattering the float product back through the C map; 16-bit rounding
 *                 (fp16 through _Float16, bf16 to nearest even on the bits, or none) where the kernel
 *                 rounds: q + bias, K, V and P.
 * Each counts, in *stats, the elements it checked. tests/test_sim_attention.c runs both under
 * Criterion (make test); built alone with -DSIM_ATTENTION_MAIN it prints a summary:
 *   cc -O2 -std=c11 -D_GNU_SOURCE -DSIM_ATTENTION_MAIN tools/sim_attention.c -lm -o /tmp/sim_attention */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/attention_layout.h"

/* ---------------------------------------------------------------------------------------------- */
/* Helpers                                                                                         */

typedef enum { SIM_F32, SIM_F16, SIM_BF16 } sim_dtype;

static float sim_round(float x, sim_dtype t) {
    if (t == SIM_F16) return (float)(_Float16)x;
    if (t == SIM_BF16) {
        uint32_t u;
        memcpy(&u, &x, 4);
        if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        memcpy(&x, &u, 4);
        return x;
    }
    return x;
}

static uint64_t sim_rng(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}
static float sim_uniform(uint64_t *s) { return (float)((double)(sim_rng(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* Naive attention of one query (q, HS) against keys 0..len-1 of a (maxT, HS) cache, in float64. */
static void naive_attention(double *out, const float *q, const float *k, const float *v, int len, int HS) {
    double *s = malloc(sizeof(double) * (size_t)len), mx = -INFINITY, sum = 0;
    for (int j = 0; j < len; j++) {
        double d = 0;
        for (int e = 0; e < HS; e++) d += (double)q[e] * k[(size_t)j * HS + e];
        s[j] = d / sqrt((double)HS);
        if (s[j] > mx) mx = s[j];
    }
    for (int j = 0; j < len; j++) sum += (s[j] = exp(s[j] - mx));
    for (int e = 0; e < HS; e++) {
        double a = 0;
        for (int j = 0; j < len; j++) a += s[j] * v[(size_t)j * HS + e];
        out[e] = a / sum;
    }
    free(s);
}

typedef struct {
    long checked;   /* output elements compared */
    double max_err; /* largest |got - ref| / (atol + rtol |ref|) seen: <= 1 passes */
    int fail;       /* first failure: message in msg */
    char msg[256];
} sim_stats;

static void sim_fail(sim_stats *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sim_fail(sim_stats *st, const char *fmt, ...) {
    if (st->fail) return;
    st->fail = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->msg, sizeof st->msg, fmt, ap);
    va_end(ap);
}

static void sim_compare(sim_stats *st, float got, double ref, double atol, double rtol, const char *what, int i) {
    const double diff = fabs((double)got - ref), tol = atol + rtol * fabs(ref);
    st->checked++;
    if (!(diff <= tol)) sim_fail(st, "%s: element %d: got %.8g, want %.8g", what, i, got, ref);
    else if (tol > 0 && diff / tol > st->max_err) st->max_err = diff / tol;
}

/* ---------------------------------------------------------------------------------------------- */
/* Decode                                                                                          */

typedef struct {
    int B, NH, HS, maxT, S, append;
    int es, vector_ok; /* element size of the storage type (2, 4) and whether 16-byte chunks are allowed */
    const int *slot, *pos; /* (B) */
    const float *qkv;      /* (B, 3C) */
    const float *bias;     /* (3C) or NULL */
    float *kc, *vc;        /* (S, NH, maxT, HS) */
} sim_dc_problem;

/* Whether the kernel's dispatch instantiates geometry g (attention_decode.cu, DC_LAUNCH lines). */
static int dc_geometry_instantiated(attn_dc_geom g, int es) {
    if (g.kpw * g.lpk != 32) return 0;
    if (g.vec == 1) return g.lpk == 32 && (g.nch == 1 || g.nch == 2 || g.nch == 4 || g.nch == 8);
    if (g.vec != 16 / es) return 0;
    if (g.nch == 2) return g.lpk == 32;
    return g.nch == 1 && (g.lpk == 4 || g.lpk == 8 || g.lpk == 16 || g.lpk == 32);
}

/* One block (b, sp, h) of attention_decode_kernel. out (B, C). */
static void dc_block(const sim_dc_problem *P, attn_dc_geom G, int b, int sp, int h, int nsplit, float *out,
                     float *part_acc, float *part_ml, unsigned *counters, sim_stats *st) {
    enum { W = ATTN_DC_WARPS, SPLIT = ATTN_DC_SPLIT, U = ATTN_DC_UNROLL };
    const int NH = P->NH, HS = P->HS, C = NH * HS, LPK = G.lpk, KPW = G.kpw, VEC = G.vec, NCH = G.nch;
    float *o = out + (size_t)b * C + (size_t)h * HS;
    const int s = P->slot[b], p = P->pos[b];
    if (s < 0 || s >= P->S || p < 0 || p >= P->maxT) {
        if (sp == 0)
            for (int d = 0; d < HS; d++) o[d] = 0.0f;
        return;
    }
    const int len = p + 1, k0 = sp * SPLIT;
    if (k0 >= len) return;
    const int k1 = k0 + SPLIT < len ? k0 + SPLIT : len, nk = k1 - k0, ns = attn_dc_nsplit_of(p);
    const float qscale = 1.4426950408889634f / sqrtf((float)HS);

    /* per (warp, lane): q chunks */
    static float q[W][32][8][8], acc[W][32][8][8];
    for (int w = 0; w < W; w++)
        for (int lane = 0; lane < 32; lane++) {
            const int gl = lane % LPK;
            for (int c = 0; c < NCH; c++)
                for (int v = 0; v < VEC; v++) {
                    const int d = attn_dc_dim0(gl, c, G) + v;
                    q[w][lane][c][v] = d < HS ? (P->qkv[(size_t)b * 3 * C + (size_t)h * HS + d] +
                                                 (P->bias ? P->bias[h * HS + d] : 0.0f)) * qscale
                                              : 0.0f;
                }
        }
    const size_t head = ((size_t)s * NH + h) * (size_t)P->maxT * HS;
    if (P->append && k1 == len)
        for (int d = 0; d < HS; d++) {
            float kv = P->qkv[(size_t)b * 3 * C + C + (size_t)h * HS + d];
            float vv = P->qkv[(size_t)b * 3 * C + 2 * C + (size_t)h * HS + d];
            if (P->bias) kv += P->bias[C + h * HS + d], vv += P->bias[2 * C + h * HS + d];
            P->kc[head + (size_t)p * HS + d] = kv;
            P->vc[head + (size_t)p * HS + d] = vv;
        }
    const float *kh = P->kc + head, *vh = P->vc + head;

    /* which dims a chunk load reads: the kernel's load_chunk condition */
#define CHUNK_OK(key, d0) ((key) < k1 && (d0) < HS)
    float sc[SPLIT];
    int written[SPLIT];
    for (int i = 0; i < SPLIT; i++) sc[i] = NAN, written[i] = 0;
    for (int w = 0; w < W; w++)
        for (int j0 = 0; j0 < ATTN_DC_KPS; j0 += U * KPW)
            for (int u = 0; u < U; u++) {
                float dot[32], nxt[32];
                for (int lane = 0; lane < 32; lane++) {
                    const int group = lane / LPK, gl = lane % LPK;
                    const int key = attn_dc_key(k0, w, j0, u, group, KPW);
                    dot[lane] = 0.0f;
                    for (int c = 0; c < NCH; c++) {
                        const int d0 = attn_dc_dim0(gl, c, G);
                        for (int v = 0; v < VEC; v++) {
                            if (VEC > 1 && d0 < HS && d0 + VEC > HS)
                                sim_fail(st, "decode: a 16-byte chunk straddles HS");
                            const float kv = CHUNK_OK(key, d0) ? kh[(size_t)key * HS + d0 + v] : 0.0f;
                            dot[lane] += q[w][lane][c][v] * kv;
                        }
                    }
                }
                for (int off = LPK / 2; off > 0; off >>= 1) { /* __shfl_xor_sync: every lane at once */
                    for (int lane = 0; lane < 32; lane++) nxt[lane] = dot[lane] + dot[lane ^ off];
                    memcpy(dot, nxt, sizeof dot);
                }
                for (int lane = 0; lane < 32; lane++) {
                    const int group = lane / LPK, gl = lane % LPK;
                    const int key = attn_dc_key(k0, w, j0, u, group, KPW);
                    if (gl == 0 && key < k1) {
                        if (key < k0) sim_fail(st, "decode: key %d below the split start %d", key, k0);
                        sc[key - k0] = dot[lane];
                        written[key - k0]++;
                    }
                }
            }
    for (int i = 0; i < nk; i++)
        if (written[i] != 1) sim_fail(st, "decode: score of key %d written %d times", k0 + i, written[i]);

    /* softmax: thread i owns key k0 + i */
    float m = -INFINITY, l = 0.0f;
    for (int i = 0; i < nk; i++) m = fmaxf(m, sc[i]);
    for (int i = 0; i < SPLIT; i++) {
        const float pr = i < nk ? exp2f(sc[i] - m) : 0.0f;
        sc[i] = pr;
        l += pr;
    }

    /* P V */
    for (int w = 0; w < W; w++)
        for (int lane = 0; lane < 32; lane++)
            for (int c = 0; c < NCH; c++)
                for (int v = 0; v < VEC; v++) acc[w][lane][c][v] = 0.0f;
    for (int w = 0; w < W; w++)
        for (int j0 = 0; j0 < ATTN_DC_KPS; j0 += U * KPW)
            for (int u = 0; u < U; u++)
                for (int lane = 0; lane < 32; lane++) {
                    const int group = lane / LPK, gl = lane % LPK;
                    const int key = attn_dc_key(k0, w, j0, u, group, KPW);
                    const float pk = key < k1 ? sc[key - k0] : 0.0f;
                    for (int c = 0; c < NCH; c++) {
                        const int d0 = attn_dc_dim0(gl, c, G);
                        for (int v = 0; v < VEC; v++)
                            acc[w][lane][c][v] += pk * (CHUNK_OK(key, d0) ? vh[(size_t)key * HS + d0 + v] : 0.0f);
                    }
                }
#undef CHUNK_OK
    static float wacc[W][256];
    int wdone[W][256];
    memset(wdone, 0, sizeof wdone);
    for (int w = 0; w < W; w++) {
        for (int off = LPK; off < 32; off <<= 1) {
            static float nxt[32][8][8];
            for (int lane = 0; lane < 32; lane++)
                for (int c = 0; c < NCH; c++)
                    for (int v = 0; v < VEC; v++) nxt[lane][c][v] = acc[w][lane][c][v] + acc[w][lane ^ off][c][v];
            for (int lane = 0; lane < 32; lane++)
                for (int c = 0; c < NCH; c++)
                    for (int v = 0; v < VEC; v++) acc[w][lane][c][v] = nxt[lane][c][v];
        }
        for (int lane = 0; lane < LPK; lane++) /* group 0 */
            for (int c = 0; c < NCH; c++)
                for (int v = 0; v < VEC; v++) {
                    const int d = attn_dc_dim0(lane, c, G) + v;
                    if (d < HS) wacc[w][d] = acc[w][lane][c][v], wdone[w][d]++;
                }
        for (int d = 0; d < HS; d++)
            if (wdone[w][d] != 1) sim_fail(st, "decode: warp %d wrote dim %d %d times", w, d, wdone[w][d]);
    }

    if (ns == 1) {
        for (int d = 0; d < HS; d++) {
            float a = 0.0f;
            for (int w = 0; w < W; w++) a += wacc[w][d];
            o[d] = a / l;
        }
        return;
    }
    const unsigned long long part = attn_dc_part(b, h, sp, NH, nsplit);
    for (int d = 0; d < HS; d++) {
        float a = 0.0f;
        for (int w = 0; w < W; w++) a += wacc[w][d];
        part_acc[part * HS + d] = a;
    }
    part_ml[2 * part] = m;
    part_ml[2 * part + 1] = l;
    unsigned *ticket = &counters[(size_t)b * NH + h];
    const int last = (*ticket)++ == (unsigned)(ns - 1);
    if (!last) return;
    const unsigned long long part0 = attn_dc_part(b, h, 0, NH, nsplit);
    float M = -INFINITY, L = 0.0f;
    for (int k = 0; k < ns; k++) M = fmaxf(M, part_ml[2 * (part0 + k)]);
    for (int k = 0; k < ns; k++) L += part_ml[2 * (part0 + k) + 1] * exp2f(part_ml[2 * (part0 + k)] - M);
    for (int d = 0; d < HS; d++) {
        float a = 0.0f;
        for (int k = 0; k < ns; k++) a += part_acc[(part0 + k) * HS + d] * exp2f(part_ml[2 * (part0 + k)] - M);
        o[d] = a / L;
    }
    *ticket = 0u;
}

/* Runs the decode kernel's grid over P in a random block order (seed), out (B, C) float. */
static void sim_decode(const sim_dc_problem *P, float *out, uint64_t seed, sim_stats *st) {
    const attn_dc_geom G = attn_dc_geometry(P->HS, P->es, P->vector_ok);
    if (!dc_geometry_instantiated(G, P->es)) {
        sim_fail(st, "decode: geometry vec %d lpk %d nch %d (HS %d) has no kernel", G.vec, G.lpk, G.nch, P->HS);
        return;
    }
    if (G.vec * G.lpk * G.nch < P->HS)
        sim_fail(st, "decode: geometry covers %d < HS %d dims", G.vec * G.lpk * G.nch, P->HS);
    const int nsplit = (P->maxT + ATTN_DC_SPLIT - 1) / ATTN_DC_SPLIT, NH = P->NH;
    const size_t nparts = (size_t)P->B * NH * nsplit, nblocks = nparts;
    float *part_acc = malloc(sizeof(float) * nparts * P->HS), *part_ml = malloc(sizeof(float) * nparts * 2);
    unsigned *counters = calloc((size_t)P->B * NH, sizeof(unsigned));
    size_t *order = malloc(sizeof(size_t) * nblocks);
    for (size_t i = 0; i < nparts * P->HS; i++) part_acc[i] = NAN; /* poisoned, as the tests do */
    for (size_t i = 0; i < nparts * 2; i++) part_ml[i] = NAN;
    for (size_t i = 0; i < nblocks; i++) order[i] = i;
    for (size_t i = nblocks; i > 1; i--) { /* Fisher-Yates */
        const size_t j = sim_rng(&seed) % i, t = order[i - 1];
        order[i - 1] = order[j], order[j] = t;
    }
    for (size_t i = 0; i < nblocks; i++) { /* block (x, y) = (b * nsplit + sp, h) */
        const int x = (int)(order[i] / NH), h = (int)(order[i] % NH), b = x / nsplit, sp = x - b * nsplit;
        dc_block(P, G, b, sp, h, nsplit, out, part_acc, part_ml, counters, st);
    }
    for (int i = 0; i < P->B * NH; i++)
        if (counters[i] != 0) sim_fail(st, "decode: ticket %d left at %u", i, counters[i]);
    free(part_acc);
    free(part_ml);
    free(counters);
    free(order);
}

/* A random decode problem checked against naive attention: B rows (row 1 padding when B > 2), positions
 * drawn around the split boundaries, float storage (the kernel's arithmetic is float for every T). */
static void sim_check_decode(int B, int NH, int HS, int maxT, int es, int append, uint64_t seed, sim_stats *st) {
    const int C = NH * HS, S = B + 2;
    const size_t cache_n = (size_t)S * NH * maxT * HS;
    int *slot = malloc(sizeof(int) * B), *pos = malloc(sizeof(int) * B);
    float *qkv = malloc(sizeof(float) * (size_t)B * 3 * C), *bias = malloc(sizeof(float) * 3 * (size_t)C);
    float *kc = malloc(sizeof(float) * cache_n), *vc = malloc(sizeof(float) * cache_n);
    float *out = malloc(sizeof(float) * (size_t)B * C);
    double *ref = malloc(sizeof(double) * HS);
    for (size_t i = 0; i < cache_n; i++) kc[i] = 1.5f * sim_uniform(&seed), vc[i] = sim_uniform(&seed);
    for (size_t i = 0; i < (size_t)B * 3 * C; i++) qkv[i] = 1.5f * sim_uniform(&seed);
    for (int i = 0; i < 3 * C; i++) bias[i] = 0.5f * sim_uniform(&seed);
    for (size_t i = 0; i < (size_t)B * C; i++) out[i] = NAN;
    const int near[] = {0, 1, 126, 127, 128, 129, 255, 256, 383, 384, 511, 512};
    for (int b = 0; b < B; b++) {
        slot[b] = (b * 7 + 3) % S; /* distinct: 7 and S coprime unless S % 7 == 0 */
        const int r = (int)(sim_rng(&seed) % 3);
        pos[b] = r == 0 ? maxT - 1 : r == 1 ? near[sim_rng(&seed) % 12] % maxT : (int)(sim_rng(&seed) % maxT);
    }
    if (S % 7 == 0)
        for (int b = 0; b < B; b++) slot[b] = b;
    if (B > 2) slot[1] = -1; /* padding */
    if (append) /* the appended position holds NaN until the kernel writes it */
        for (int b = 0; b < B; b++)
            if (slot[b] >= 0)
                for (int h = 0; h < NH; h++)
                    for (int d = 0; d < HS; d++) {
                        const size_t e = (((size_t)slot[b] * NH + h) * maxT + pos[b]) * HS + d;
                        kc[e] = vc[e] = NAN;
                    }
    sim_dc_problem P = {B, NH, HS, maxT, S, append, es, (HS * es) % 16 == 0, slot, pos, qkv, bias, kc, vc};
    sim_decode(&P, out, seed, st);
    if (es == 2) { /* also the scalar path, on the same inputs (the cache now holds the appended rows) */
        float *out2 = malloc(sizeof(float) * (size_t)B * C);
        for (size_t i = 0; i < (size_t)B * C; i++) out2[i] = NAN;
        P.vector_ok = 0;
        sim_decode(&P, out2, seed + 1, st);
        for (size_t i = 0; i < (size_t)B * C; i++)
            sim_compare(st, out2[i], out[i], 1e-5, 1e-4, "decode scalar vs vector path", (int)i);
        free(out2);
    }
    char what[96];
    snprintf(what, sizeof what, "decode B=%d NH=%d HS=%d maxT=%d es=%d append=%d", B, NH, HS, maxT, es, append);
    float *q = malloc(sizeof(float) * HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *o = out + (size_t)b * C + (size_t)h * HS;
            if (slot[b] < 0) {
                for (int d = 0; d < HS; d++) sim_compare(st, o[d], 0.0, 0, 0, what, b * C + h * HS + d);
                continue;
            }
            for (int d = 0; d < HS; d++) q[d] = qkv[(size_t)b * 3 * C + (size_t)h * HS + d] + bias[h * HS + d];
            const size_t off = ((size_t)slot[b] * NH + h) * maxT * HS;
            if (append) /* the reference appends too */
                for (int d = 0; d < HS; d++) {
                    const float ek = qkv[(size_t)b * 3 * C + C + (size_t)h * HS + d] + bias[C + h * HS + d];
                    const float ev = qkv[(size_t)b * 3 * C + 2 * C + (size_t)h * HS + d] + bias[2 * C + h * HS + d];
                    if (kc[off + (size_t)pos[b] * HS + d] != ek || vc[off + (size_t)pos[b] * HS + d] != ev)
                        sim_fail(st, "%s: row %d: appended K/V wrong at dim %d", what, b, d);
                }
            naive_attention(ref, q, kc + off, vc + off, pos[b] + 1, HS);
            for (int d = 0; d < HS; d++) sim_compare(st, o[d], ref[d], 2e-5, 1e-4, what, b * C + h * HS + d);
        }
    free(q);
    free(slot);
    free(pos);
    free(qkv);
    free(bias);
    free(kc);
    free(vc);
    free(out);
    free(ref);
}

/* ---------------------------------------------------------------------------------------------- */
/* Prefill on tensor cores                                                                         */

/* One mma.sync m16n8k16 of the warp: d[lane][4] += A B, with a[lane][4][2] and b[lane][2][2] the 16-bit
 * values each lane's registers hold (low half first), placed by the layout maps. Every element of A
 * and B must come from exactly one (lane, register, half). */
static void emu_mma(float d[32][4], const float a[32][4][2], const float b[32][2][2], sim_stats *st) {
    float A[16][16], Bm[16][8];
    int na[16][16] = {{0}}, nb[16][8] = {{0}};
    for (int lane = 0; lane < 32; lane++) {
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 2; j++) {
                int row, col;
                attn_mma_a_rc(lane, r, j, &row, &col);
                A[row][col] = a[lane][r][j];
                na[row][col]++;
            }
        for (int r = 0; r < 2; r++)
            for (int j = 0; j < 2; j++) {
                int k, n;
                attn_mma_b_kn(lane, r, j, &k, &n);
                Bm[k][n] = b[lane][r][j];
                nb[k][n]++;
            }
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            if (na[i][j] != 1 || (j < 8 && nb[i][j] != 1))
                sim_fail(st, "mma: fragment element (%d, %d) held %d/%d times", i, j, na[i][j], j < 8 ? nb[i][j] : 1);
    int nc[16][8] = {{0}};
    for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < 4; i++) {
            int row, col;
            attn_mma_c_rc(lane, i, &row, &col);
            float s = d[lane][i];
            for (int k = 0; k < 16; k++) s += A[row][k] * Bm[k][col];
            d[lane][i] = s;
            nc[row][col]++;
        }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++)
            if (nc[i][j] != 1) sim_fail(st, "mma: accumulator (%d, %d) held %d times", i, j, nc[i][j]);
}

typedef struct {
    int NH, HS, maxT, S, n_chunks;
    sim_dtype t;
    const int *chunks; /* (n_chunks, 4) slot, pos, n, start */
    const float *qkv;  /* (N, 3C), values of T */
    const float *bias; /* (3C) or NULL */
    const float *kc, *vc; /* (S, NH, maxT, HS), values of T */
} sim_pf_problem;

/* One block (tile: chunk ci, first query q0; head h) of attention_prefill_tc_kernel with head dim D. */
static void pf_block(const sim_pf_problem *P, int D, int ci, int q0, int h, float *out, sim_stats *st) {
    enum { BQ = ATTN_TC_BQ, BK = ATTN_TC_BK, WARPS = ATTN_TC_WARPS };
    const int NH = P->NH, HS = P->HS, C = NH * HS, KS = D / 16, NT = BK / 8, DT = D / 8, KK = BK / 16;
    const int slot = P->chunks[4 * ci], pos = P->chunks[4 * ci + 1], n = P->chunks[4 * ci + 2],
              start = P->chunks[4 * ci + 3];
    const int nq = BQ < n - q0 ? BQ : n - q0, kv_end = pos + q0 + nq;
    const float qscale = 1.4426950408889634f / sqrtf((float)HS);
    static float Qs[BQ][128], Ks[BK][128], Vt[128][BK];
    for (int r = 0; r < BQ; r++)
        for (int d = 0; d < D; d++) {
            float v = 0.0f;
            if (r < nq && d < HS) {
                const size_t t = (size_t)start + q0 + r;
                v = P->qkv[t * 3 * C + (size_t)h * HS + d] + (P->bias ? P->bias[h * HS + d] : 0.0f);
            }
            Qs[r][d] = sim_round(v, P->t);
        }
    static float qa[WARPS][32][8][4][2], o[WARPS][32][16][4], m[WARPS][32][2], l[WARPS][32][2];
    for (int w = 0; w < WARPS; w++)
        for (int lane = 0; lane < 32; lane++) {
            for (int ks = 0; ks < KS; ks++)
                for (int r = 0; r < 4; r++) {
                    int row, col, row1, col1;
                    attn_mma_a_rc(lane, r, 0, &row, &col);
                    attn_mma_a_rc(lane, r, 1, &row1, &col1); /* the kernel loads both halves as one 32-bit word */
                    if (row1 != row || col1 != col + 1 || col % 2)
                        sim_fail(st, "prefill: A register not 2 adjacent values");
                    qa[w][lane][ks][r][0] = Qs[16 * w + row][16 * ks + col];
                    qa[w][lane][ks][r][1] = Qs[16 * w + row][16 * ks + col + 1];
                }
            for (int dt = 0; dt < DT; dt++)
                for (int i = 0; i < 4; i++) o[w][lane][dt][i] = 0.0f;
            m[w][lane][0] = m[w][lane][1] = -INFINITY;
            l[w][lane][0] = l[w][lane][1] = 0.0f;
        }
    const size_t head = ((size_t)slot * NH + h) * (size_t)P->maxT * HS;
    for (int kt = 0; kt < kv_end; kt += BK) {
        const int nk = BK < kv_end - kt ? BK : kv_end - kt;
        for (int j = 0; j < BK; j++)
            for (int d = 0; d < D; d++) {
                const int ok = j < nk && d < HS;
                Ks[j][d] = ok ? P->kc[head + (size_t)(kt + j) * HS + d] : 0.0f;
                Vt[d][j] = ok ? P->vc[head + (size_t)(kt + j) * HS + d] : 0.0f;
            }
        for (int w = 0; w < WARPS; w++) {
            const int r0 = 16 * w;
            const int last = nq < r0 + 16 ? nq : r0 + 16;
            if (!(r0 < nq) || kt > pos + q0 + last - 1) continue;
            static float sc[32][8][4];
            for (int nt = 0; nt < NT; nt++) {
                float d4[32][4];
                for (int lane = 0; lane < 32; lane++)
                    for (int i = 0; i < 4; i++) d4[lane][i] = 0.0f;
                for (int ks = 0; ks < KS; ks++) {
                    float bf[32][2][2];
                    for (int lane = 0; lane < 32; lane++)
                        for (int r = 0; r < 2; r++) {
                            int k, nn, k1, n1;
                            attn_mma_b_kn(lane, r, 0, &k, &nn);
                            attn_mma_b_kn(lane, r, 1, &k1, &n1);
                            if (n1 != nn || k1 != k + 1 || k % 2)
                                sim_fail(st, "prefill: B register not 2 adjacent values");
                            bf[lane][r][0] = Ks[8 * nt + nn][16 * ks + k];
                            bf[lane][r][1] = Ks[8 * nt + nn][16 * ks + k + 1];
                        }
                    float a4[32][4][2];
                    for (int lane = 0; lane < 32; lane++)
                        for (int r = 0; r < 4; r++)
                            a4[lane][r][0] = qa[w][lane][ks][r][0], a4[lane][r][1] = qa[w][lane][ks][r][1];
                    emu_mma(d4, (const float(*)[4][2])a4, bf, st);
                }
                for (int lane = 0; lane < 32; lane++)
                    for (int i = 0; i < 4; i++) sc[lane][nt][i] = d4[lane][i];
            }
            /* the kernel's mask, scale, online softmax, per lane */
            float tmax[32][2];
            for (int lane = 0; lane < 32; lane++) {
                tmax[lane][0] = tmax[lane][1] = -INFINITY;
                for (int nt = 0; nt < NT; nt++)
                    for (int i = 0; i < 4; i++) {
                        int row, col;
                        attn_mma_c_rc(lane, i, &row, &col);
                        const int qr = r0 + row, key = kt + 8 * nt + col;
                        const int visible = qr < nq && key - kt < nk && key <= pos + q0 + qr;
                        sc[lane][nt][i] = visible ? sc[lane][nt][i] * qscale : -INFINITY;
                        tmax[lane][i >> 1] = fmaxf(tmax[lane][i >> 1], sc[lane][nt][i]);
                    }
            }
            for (int off = 1; off <= 2; off <<= 1) {
                float nx[32][2];
                for (int lane = 0; lane < 32; lane++)
                    for (int hr = 0; hr < 2; hr++) nx[lane][hr] = fmaxf(tmax[lane][hr], tmax[lane ^ off][hr]);
                memcpy(tmax, nx, sizeof nx);
            }
            for (int lane = 0; lane < 32; lane++) {
                float corr[2];
                for (int hr = 0; hr < 2; hr++) {
                    const float mnew = fmaxf(m[w][lane][hr], tmax[lane][hr]);
                    corr[hr] = mnew == -INFINITY ? 1.0f : exp2f(m[w][lane][hr] - mnew);
                    m[w][lane][hr] = mnew;
                    l[w][lane][hr] *= corr[hr];
                }
                for (int nt = 0; nt < NT; nt++)
                    for (int i = 0; i < 4; i++) {
                        const float mm = m[w][lane][i >> 1];
                        const float pv = mm == -INFINITY ? 0.0f : exp2f(sc[lane][nt][i] - mm);
                        sc[lane][nt][i] = pv;
                        l[w][lane][i >> 1] += pv;
                    }
                for (int dt = 0; dt < DT; dt++)
                    for (int i = 0; i < 4; i++) o[w][lane][dt][i] *= corr[i >> 1];
            }
            for (int kk = 0; kk < KK; kk++) {
                float pa[32][4][2];
                for (int lane = 0; lane < 32; lane++)
                    for (int r = 0; r < 4; r++) {
                        const int t = attn_pa_tile(kk, r), v = attn_pa_val(r);
                        pa[lane][r][0] = sim_round(sc[lane][t][v], P->t);
                        pa[lane][r][1] = sim_round(sc[lane][t][v + 1], P->t);
                    }
                for (int dt = 0; dt < DT; dt++) {
                    float bf[32][2][2], d4[32][4];
                    for (int lane = 0; lane < 32; lane++) {
                        for (int r = 0; r < 2; r++) {
                            int k, nn;
                            attn_mma_b_kn(lane, r, 0, &k, &nn);
                            bf[lane][r][0] = Vt[8 * dt + nn][16 * kk + k];
                            bf[lane][r][1] = Vt[8 * dt + nn][16 * kk + k + 1];
                        }
                        for (int i = 0; i < 4; i++) d4[lane][i] = o[w][lane][dt][i];
                    }
                    emu_mma(d4, (const float(*)[4][2])pa, bf, st);
                    for (int lane = 0; lane < 32; lane++)
                        for (int i = 0; i < 4; i++) o[w][lane][dt][i] = d4[lane][i];
                }
            }
        }
    }
    for (int w = 0; w < WARPS; w++) {
        float lt[32][2];
        for (int lane = 0; lane < 32; lane++)
            for (int hr = 0; hr < 2; hr++) lt[lane][hr] = l[w][lane][hr];
        for (int off = 1; off <= 2; off <<= 1) {
            float nx[32][2];
            for (int lane = 0; lane < 32; lane++)
                for (int hr = 0; hr < 2; hr++) nx[lane][hr] = lt[lane][hr] + lt[lane ^ off][hr];
            memcpy(lt, nx, sizeof nx);
        }
        for (int lane = 0; lane < 32; lane++)
            for (int dt = 0; dt < DT; dt++)
                for (int i = 0; i < 4; i++) {
                    int row, col;
                    attn_mma_c_rc(lane, i, &row, &col);
                    const int qr = 16 * w + row, d = 8 * dt + col;
                    if (qr < nq && d < HS) {
                        float *dst = &out[((size_t)start + q0 + qr) * C + (size_t)h * HS + d];
                        if (!isnan(*dst)) sim_fail(st, "prefill: output (%d, %d) written twice", start + q0 + qr, d);
                        *dst = sim_round(o[w][lane][dt][i] / lt[lane][i >> 1], P->t);
                    }
                }
    }
}

/* The head dimension the kernel is instantiated with for HS (attention_prefill.cu's dispatch). */
static int pf_dim(int HS) { return HS <= 32 ? 32 : HS <= 64 ? 64 : 128; }

/* Runs every (tile, head) block of the launch; out (N, C) poisoned with NaN by the caller. */
static void sim_prefill(const sim_pf_problem *P, float *out, sim_stats *st) {
    const int D = pf_dim(P->HS);
    for (int ci = 0; ci < P->n_chunks; ci++)
        for (int q0 = 0; q0 < P->chunks[4 * ci + 2]; q0 += ATTN_TC_BQ)
            for (int h = 0; h < P->NH; h++) pf_block(P, D, ci, q0, h, out, st);
}

/* A random ragged batch (chunks given as (slot, pos, n) triples, n_chunks of them) checked against naive
 * attention on the same rounded q (q + bias rounded to T, as the kernel feeds the tensor cores). */
static void sim_check_prefill(int NH, int HS, int maxT, const int (*ch)[3], int n_chunks, sim_dtype t, uint64_t seed,
                              sim_stats *st) {
    const int C = NH * HS;
    int S = 0, N = 0;
    for (int i = 0; i < n_chunks; i++) {
        if (ch[i][0] + 1 > S) S = ch[i][0] + 1;
        N += ch[i][2];
    }
    const size_t cache_n = (size_t)S * NH * maxT * HS;
    int *cd = malloc(sizeof(int) * 4 * (size_t)n_chunks);
    float *qkv = malloc(sizeof(float) * (size_t)N * 3 * C), *bias = malloc(sizeof(float) * 3 * (size_t)C);
    float *kc = malloc(sizeof(float) * cache_n), *vc = malloc(sizeof(float) * cache_n);
    float *out = malloc(sizeof(float) * (size_t)N * C), *q = malloc(sizeof(float) * HS);
    double *ref = malloc(sizeof(double) * HS);
    for (int i = 0, s0 = 0; i < n_chunks; s0 += ch[i][2], i++)
        cd[4 * i] = ch[i][0], cd[4 * i + 1] = ch[i][1], cd[4 * i + 2] = ch[i][2], cd[4 * i + 3] = s0;
    for (size_t i = 0; i < cache_n; i++)
        kc[i] = sim_round(1.5f * sim_uniform(&seed), t), vc[i] = sim_round(sim_uniform(&seed), t);
    for (size_t i = 0; i < (size_t)N * 3 * C; i++) qkv[i] = sim_round(1.5f * sim_uniform(&seed), t);
    for (int i = 0; i < 3 * C; i++) bias[i] = sim_round(0.5f * sim_uniform(&seed), t);
    for (size_t i = 0; i < (size_t)N * C; i++) out[i] = NAN;
    sim_pf_problem P = {NH, HS, maxT, S, n_chunks, t, cd, qkv, bias, kc, vc};
    sim_prefill(&P, out, st);
    /* 16-bit: the P rounding (2^-9 relative for bf16, |V| <= 1) and the output's; none: float sums only */
    const double atol = t == SIM_BF16 ? 1.6e-2 : t == SIM_F16 ? 2e-3 : 2e-5;
    const double rtol = t == SIM_BF16 ? 1e-2 : t == SIM_F16 ? 2e-3 : 1e-4;
    char what[96];
    snprintf(what, sizeof what, "prefill NH=%d HS=%d maxT=%d %s", NH, HS, maxT,
             t == SIM_F16 ? "fp16" : t == SIM_BF16 ? "bf16" : "no rounding");
    for (int i = 0; i < n_chunks; i++)
        for (int j = 0; j < ch[i][2]; j++)
            for (int h = 0; h < NH; h++) {
                const size_t row = (size_t)cd[4 * i + 3] + j;
                for (int d = 0; d < HS; d++)
                    q[d] = sim_round(qkv[row * 3 * C + (size_t)h * HS + d] + bias[h * HS + d], t);
                const size_t off = ((size_t)ch[i][0] * NH + h) * maxT * HS;
                naive_attention(ref, q, kc + off, vc + off, ch[i][1] + j + 1, HS);
                for (int d = 0; d < HS; d++)
                    sim_compare(st, out[row * C + (size_t)h * HS + d], ref[d], atol, rtol, what,
                                (int)(row * C + (size_t)h * HS + d));
            }
    free(cd);
    free(qkv);
    free(bias);
    free(kc);
    free(vc);
    free(out);
    free(q);
    free(ref);
}

#ifdef SIM_ATTENTION_MAIN
int main(void) {
    sim_stats st = {0};
    const int hs[] = {1, 5, 8, 16, 63, 64, 100, 128, 200, 256};
    for (int i = 0; i < 10; i++)
        for (int es = 2; es <= 4; es += 2)
            for (int ap = 0; ap < 2; ap++) sim_check_decode(5, 2, hs[i], 520, es, ap, 100 + i, &st);
    const int ch[][3] = {{1, 0, 150}, {0, 37, 1}, {2, 5, 67}};
    const int hp[] = {8, 40, 64, 100, 128};
    for (int i = 0; i < 5; i++)
        for (int t = 0; t < 3; t++) sim_check_prefill(2, hp[i], 160, ch, 3, (sim_dtype)t, 7 + i, &st);
    printf("sim_attention: %ld elements checked, worst error %.3f of the tolerance: %s\n", st.checked, st.max_err,
           st.fail ? st.msg : "all pass");
    return st.fail;
}
#endif
