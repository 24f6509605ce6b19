/* test_ops_cpu.c: every instruction-set variant of the fast CPU kernels (src/ops_cpu_simd.inc) that
 * this machine runs, against plain references on random data at sizes that are not multiples of the
 * vector width or the tile; and the 16-bit roundings against independent ones. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops_cpu.h"

static float *rand_floats(size_t n, uint64_t *seed) {
    float *v = malloc(sizeof(float) * (n ? n : 1));
    cr_assert(v);
    for (size_t i = 0; i < n; i++) v[i] = trand_float(seed);
    return v;
}

/* ---- independent 16-bit roundings (round to nearest even) ---- */

/* The compiler's own conversion (libgcc's __truncsfhf2 or F16C). */
static float round_f16(float x) { return (float)(_Float16)x; }

/* bf16: the two bfloat16 neighbours of x by truncation, the nearer one in double, ties to the even one. */
static float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    float flo, fhi;
    memcpy(&flo, &lo, sizeof flo);
    memcpy(&fhi, &hi, sizeof fhi);
    if ((u & 0xffffu) == 0) return x;
    double dlo = fabs((double)x - flo), dhi = fabs((double)fhi - x);
    if (dlo < dhi) return flo;
    if (dhi < dlo) return fhi;
    return (lo >> 16) & 1u ? fhi : flo;
}

static float round_to(cpu_wtype wt, float x) { return wt == CPU_W_F16 ? round_f16(x) : wt == CPU_W_BF16 ? round_bf16(x) : x; }

static const char *wt_name(cpu_wtype wt) { return wt == CPU_W_F16 ? "fp16" : wt == CPU_W_BF16 ? "bf16" : "fp32"; }

Test(ops_cpu, f16_and_bf16_rounding_match_independent_ones) {
    uint64_t seed = 3;
    const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 2.98e-8f, 6.0e-8f,
                             6.1035156e-05f, 6.09e-05f, 1.0009765625f, 1.00048828125f, 1.00146484375f, 3.14159265f,
                             1e30f, -1e-30f, INFINITY, -INFINITY};
    for (int i = 0; i < (int)(sizeof special / sizeof *special) + 200000; i++) {
        float x;
        if (i < (int)(sizeof special / sizeof *special)) {
            x = special[i];
        } else { /* random bit patterns over every exponent, NaNs skipped */
            uint32_t u = (uint32_t)trand(&seed);
            memcpy(&x, &u, sizeof x);
            if (isnan(x)) continue;
            if (i % 2) x = ldexpf(trand_float(&seed), (int)(trand(&seed) % 40) - 28); /* the half range */
        }
        float h = cpu_f16_to_f32(cpu_f32_to_f16(x)), hw = round_f16(x);
        cr_assert(h == hw && signbit(h) == signbit(hw), "fp16 of %a: %a, compiler %a", (double)x, (double)h,
                  (double)hw);
        float b = cpu_bf16_to_f32(cpu_f32_to_bf16(x)), bw = round_bf16(x);
        cr_assert(b == bw && signbit(b) == signbit(bw), "bf16 of %a: %a, independent %a", (double)x, (double)b,
                  (double)bw);
    }
    cr_assert(isnan(cpu_f16_to_f32(cpu_f32_to_f16(NAN))));
    cr_assert(isnan(cpu_bf16_to_f32(cpu_f32_to_bf16(NAN))));
}

/* ---- matmul ---- */

/* Packs w ((K, OC), or (OC, K) when transposed) as wt; data malloc'ed. */
static cpu_packed pack(const float *w, int K, int OC, int transposed, cpu_wtype wt) {
    cpu_packed p = {.K = K, .OC = OC, .wt = wt};
    size_t n = cpu_packed_elems(K, OC);
    cr_assert(n > 0);
    p.data = malloc(n * (wt == CPU_W_F32 ? 4 : 2));
    cr_assert(p.data);
    cpu_pack(&p, w, transposed, 0);
    return p;
}

/* out (N, OC) = inp (N, K) @ W + bias in double, W[k][o] = round(w at (k, o)); also |terms| summed. */
static void matmul_ref(double *out, double *mag, const float *inp, const float *w, const float *bias, int N, int K,
                       int OC, int transposed, cpu_wtype wt) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0, a = bias ? fabs(bias[o]) : 0.0;
            for (int k = 0; k < K; k++) {
                double t = (double)inp[(size_t)n * K + k] *
                           round_to(wt, transposed ? w[(size_t)o * K + k] : w[(size_t)k * OC + o]);
                s += t;
                a += fabs(t);
            }
            out[(size_t)n * OC + o] = s;
            mag[(size_t)n * OC + o] = a;
        }
}

static void check_matmul(cpu_isa isa, cpu_wtype wt, int N, int K, int OC, int transposed, int with_bias,
                         uint64_t seed) {
    float *inp = rand_floats((size_t)N * K, &seed), *w = rand_floats((size_t)K * OC, &seed);
    float *bias = with_bias ? rand_floats((size_t)OC, &seed) : NULL;
    float *out = malloc(sizeof(float) * (size_t)N * OC);
    double *ref = malloc(sizeof(double) * (size_t)N * OC), *mag = malloc(sizeof(double) * (size_t)N * OC);
    cr_assert(out && ref && mag);
    for (size_t i = 0; i < (size_t)N * OC; i++) out[i] = NAN; /* every element must be written */
    cpu_packed p = pack(w, K, OC, transposed, wt);
    matmul_packed_isa(isa, out, inp, &p, bias, N, 2);
    matmul_ref(ref, mag, inp, w, bias, N, K, OC, transposed, wt);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            size_t i = (size_t)n * OC + o;
            /* float32 accumulation of K terms: a few ulps of the terms' magnitude */
            double tol = 1e-6 + 4.0 * FLT_EPSILON * mag[i] * sqrt((double)K);
            cr_assert(fabs(out[i] - ref[i]) <= tol, "%s %s N=%d K=%d OC=%d%s row %d col %d: %.7g vs %.7g",
                      cpu_isa_name(isa), wt_name(wt), N, K, OC, transposed ? " (transposed)" : "", n, o, out[i],
                      ref[i]);
        }
    /* each row on its own gives bit for bit the same row (decode rows do not depend on the batch) */
    float *one = malloc(sizeof(float) * (size_t)OC);
    cr_assert(one);
    for (int n = 0; n < N; n += N > 3 ? N / 3 : 1) {
        matmul_packed_isa(isa, one, inp + (size_t)n * K, &p, bias, 1, 1);
        cr_assert(memcmp(one, out + (size_t)n * OC, sizeof(float) * (size_t)OC) == 0,
                  "%s %s N=%d K=%d OC=%d: row %d alone differs from the batched row", cpu_isa_name(isa), wt_name(wt),
                  N, K, OC, n);
    }
    free(one);
    free(p.data);
    free(inp);
    free(w);
    free(bias);
    free(out);
    free(ref);
    free(mag);
}

Test(ops_cpu, matmul_every_isa_and_weight_type_matches_reference) {
    /* (N, K, OC): odd sizes; a partial last panel; more rows than one tile; more than one row block
     * (packed inputs); k in ranges of 256 too, the last one partial, with packed inputs and two row
     * blocks (prefill's path) */
    const int shapes[][3] = {{1, 1, 1},   {1, 37, 45},   {3, 64, 16},   {5, 67, 33},    {7, 129, 70},
                             {8, 96, 130}, {13, 131, 17}, {25, 19, 47}, {531, 130, 21}, {300, 531, 35}};
    const cpu_wtype wts[] = {CPU_W_F32, CPU_W_BF16, CPU_W_F16};
    int ran = 0;
    for (int isa = 0; isa < CPU_ISA_COUNT; isa++) {
        if (!cpu_isa_supported((cpu_isa)isa)) {
            cr_log_info("ops_cpu: %s not supported by this CPU, its kernels not tested", cpu_isa_name((cpu_isa)isa));
            continue;
        }
        ran++;
        for (int w = 0; w < 3; w++)
            for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
                for (int tr = 0; tr < 2; tr++)
                    check_matmul((cpu_isa)isa, wts[w], shapes[s][0], shapes[s][1], shapes[s][2], tr, (int)(s % 2),
                                 1000 + s * 10 + (uint64_t)w);
    }
    cr_assert(ran >= 1 && cpu_isa_supported(CPU_ISA_SSE2));
}

/* The engine's matmul against the reference matmul the CUDA kernels are checked against. */
Test(ops_cpu, matmul_best_isa_matches_reference_matmul) {
    uint64_t seed = 77;
    const int N = 9, K = 100, OC = 75;
    float *inp = rand_floats((size_t)N * K, &seed), *w = rand_floats((size_t)K * OC, &seed);
    float *bias = rand_floats(OC, &seed), *got = malloc(sizeof(float) * N * OC), *want = malloc(sizeof(float) * N * OC);
    cpu_packed p = pack(w, K, OC, 0, CPU_W_F32);
    matmul_packed_isa(cpu_isa_best(), got, inp, &p, bias, N, 0);
    matmul_forward_cpu(want, inp, w, bias, N, K, OC, 0);
    for (int i = 0; i < N * OC; i++) cr_assert(fabsf(got[i] - want[i]) <= 1e-5f, "%d: %g vs %g", i, got[i], want[i]);
    matmul_nt_forward_cpu(want, inp, w, N, K, OC, 0); /* w read as (OC, K) */
    cpu_packed pt = pack(w, K, OC, 1, CPU_W_F32);
    matmul_packed_isa(cpu_isa_best(), got, inp, &pt, NULL, N, 0);
    for (int i = 0; i < N * OC; i++) cr_assert(fabsf(got[i] - want[i]) <= 1e-5f, "nt %d: %g vs %g", i, got[i], want[i]);
    free(p.data);
    free(pt.data);
    free(inp);
    free(w);
    free(bias);
    free(got);
    free(want);
}

/* ---- attention ---- */

Test(ops_cpu, attention_every_isa_matches_reference) {
    /* (NH, HS, pos, T): head sizes below, at and past the vector widths, none a multiple of 16 but one */
    const int cases[][4] = {{1, 1, 0, 1}, {3, 13, 5, 7}, {2, 37, 0, 9}, {4, 64, 11, 1}, {2, 71, 3, 20}};
    int maxT = 40;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int NH = cases[c][0], HS = cases[c][1], pos = cases[c][2], T = cases[c][3], C = NH * HS;
        uint64_t seed = 500 + c;
        float *q = rand_floats((size_t)T * 3 * C, &seed);
        float *kc = rand_floats((size_t)NH * maxT * HS, &seed), *vc = rand_floats((size_t)NH * maxT * HS, &seed);
        float *want = malloc(sizeof(float) * (size_t)T * C), *got = malloc(sizeof(float) * (size_t)T * C);
        cr_assert_eq(attention_forward_cpu(want, q, 3 * C, kc, vc, pos, T, NH, HS, maxT, 0), 0);
        for (int isa = 0; isa < CPU_ISA_COUNT; isa++) {
            if (!cpu_isa_supported((cpu_isa)isa)) continue;
            for (int i = 0; i < T * C; i++) got[i] = NAN;
            cr_assert_eq(attention_forward_isa((cpu_isa)isa, got, q, 3 * C, kc, vc, pos, T, NH, HS, maxT, 2), 0);
            for (int i = 0; i < T * C; i++)
                cr_assert(fabsf(got[i] - want[i]) <= 1e-5f + 1e-5f * fabsf(want[i]),
                          "%s NH=%d HS=%d pos=%d T=%d element %d: %.7g vs %.7g", cpu_isa_name((cpu_isa)isa), NH, HS,
                          pos, T, i, got[i], want[i]);
        }
        free(q);
        free(kc);
        free(vc);
        free(want);
        free(got);
    }
}

/* ---- GELU ---- */

Test(ops_cpu, gelu_every_isa_matches_reference) {
    uint64_t seed = 21;
    const size_t n = 16384 * 2 + 37; /* two full spans and an odd tail */
    float *x = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    cr_assert(x && want && got);
    for (size_t i = 0; i < n; i++) x[i] = 8.0f * trand_float(&seed); /* both tails of tanh */
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 30.0f;
    x[3] = -30.0f;
    gelu_forward_cpu(want, x, n, 0);
    for (int isa = 0; isa < CPU_ISA_COUNT; isa++) {
        if (!cpu_isa_supported((cpu_isa)isa)) continue;
        for (size_t i = 0; i < n; i++) got[i] = NAN;
        gelu_forward_isa((cpu_isa)isa, got, x, n, 2);
        for (size_t i = 0; i < n; i++) {
            /* gelu in double, to judge both: the reference's 1 + tanh loses digits for x < -3 */
            double xd = x[i], exact = 0.5 * xd * (1.0 + tanh(0.7978845608028654 * (xd + 0.044715 * xd * xd * xd)));
            double tol = 4.0 * FLT_EPSILON * fabs(exact) + 1e-7 * fmax(1.0, fabs(xd));
            cr_assert(fabs(got[i] - exact) <= tol, "%s gelu(%.9g) = %.9g, exact %.9g", cpu_isa_name((cpu_isa)isa),
                      x[i], got[i], exact);
            cr_assert(fabs(got[i] - want[i]) <= 2 * tol, "%s gelu(%.9g) = %.9g, reference %.9g",
                      cpu_isa_name((cpu_isa)isa), x[i], got[i], want[i]);
        }
    }
    free(x);
    free(want);
    free(got);
}
