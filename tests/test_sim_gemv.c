/* test_sim_gemv.c: the host side of kernels/gemv.cu, which needs no GPU: the launchers' argument
 * checks (they refuse before anything touches the device) and the split-K sizing (gemv_pick_ksplit,
 * the launcher's rows per split, gemv_scratch_floats, gemv_counters) against the plan that
 * src/cuda_plan.c makes for real model shapes, simulated split by split and tile by tile on the CPU.
 * The kernels' arithmetic itself is checked on a GPU by tests/test_cuda.c. Built with CUDA only (the
 * launchers live in the .cu file); without it one test skips, saying so. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifndef GPT2_HAVE_CUDA

Test(sim_gemv, not_built) { cr_skip_test("built without CUDA (nvcc not found, or CUDA=0): no GEMV host tests"); }

#else

#include "cuda_internal.h"

#include "../kernels/gemv.cuh"

/* Fake device pointers: the launchers must refuse these calls before any launch, so nothing reads them.
 * (Before the refusal existed, the call went on to a launch: cudaSuccess on a GPU, a driver error
 * without one; either way not cudaErrorInvalidValue.) */
static _Alignas(16) unsigned char fake[1 << 16];

#define REFUSED(call, what, dt)                                                                              \
    do {                                                                                                     \
        const cudaError_t e_ = (call);                                                                       \
        cr_assert_eq(e_, cudaErrorInvalidValue, "dtype %d, %s: got %s", dt, what, cudaGetErrorName(e_));    \
    } while (0)

/* Every block of a split-K launch reads all of inp (the fused layernorm reads whole rows; each split
 * reads its K rows of every row m) while the last block of each tile writes out or resid: an output
 * overlapping the input is a race between blocks, refused rather than computed by luck. */
Test(sim_gemv, outputs_overlapping_the_input_are_refused) {
    const int M = 2, K = 64, OC = 64;
    float *scr = (float *)(fake + 8192);
    unsigned *cnt = (unsigned *)(fake + 16384);
    const size_t sn = gemv_scratch_floats(M, OC, 2), nc = gemv_counters(OC);
    const gemv_fusion into_inp = {NULL, NULL, 0.0f, fake}, into_inp_tail = {NULL, NULL, 0.0f, fake + 64};
    for (int dt = 0; dt < 3; dt++) {
        /* out == inp, out inside inp, resid == inp, resid inside inp */
        REFUSED(gemv_forward_cuda(fake, fake, fake + 32768, NULL, M, K, OC, 0, NULL, 2, scr, sn, cnt, nc,
                                       (gpt2_dtype)dt, 0),
                "out == inp", dt);
        REFUSED(gemv_forward_cuda(fake + 100, fake, fake + 32768, NULL, M, K, OC, 0, NULL, 2, scr, sn, cnt, nc,
                                       (gpt2_dtype)dt, 0),
                "out inside inp", dt);
        REFUSED(gemv_forward_cuda(NULL, fake, fake + 32768, NULL, M, K, OC, 0, &into_inp, 2, scr, sn, cnt, nc,
                                       (gpt2_dtype)dt, 0),
                "resid == inp", dt);
        REFUSED(gemv_forward_cuda(NULL, fake, fake + 32768, NULL, M, K, OC, 0, &into_inp_tail, 2, scr, sn, cnt,
                                       nc, (gpt2_dtype)dt, 0),
                "resid inside inp", dt);
        /* the lm_head twin: its float output over its input */
        REFUSED(gemv_nt_forward_cuda((float *)fake, OC, fake, fake + 32768, M, K, OC, NULL, NULL, 0.0f,
                                          (gpt2_dtype)dt, 0),
                "nt: out == inp", dt);
    }
}

/* One split-K launch of (M, K) x (K, OC) with split ks, simulated tile by tile against plan p: blocks
 * in a scrambled order each write their partials (which must be inside the scratch, once each) and
 * take their tile's ticket; the last of a tile must find every partial of its columns written, merge
 * once and reset the ticket. 0 when right, else a message in msg. */
static int sim_split_k(const gpt2_cuda_plan *p, gpt2_dtype dt, int M, int K, int OC, int ks, char *msg, size_t n) {
    int kc = (K + ks - 1) / ks; /* the launcher's rows per split and splits (gemv_forward_cuda) */
    kc = (kc + 3) & ~3;
    const int splits = (K + kc - 1) / kc;
    if (ks < 1 || ks > GPT2_GEMV_MAX_KSPLIT || kc > GPT2_GEMV_KC || splits > ks || (splits - 1) * kc >= K ||
        splits * kc < K)
        return snprintf(msg, n, "K %d OC %d: ksplit %d, kc %d, splits %d", K, OC, ks, kc, splits), 1;
    if (splits == 1) return 0; /* no partials, no tickets */
    if (gemv_scratch_floats(M, OC, ks) > p->gemv_scratch_floats)
        return snprintf(msg, n, "M %d OC %d ksplit %d: scratch %zu > plan %zu", M, OC, ks,
                        gemv_scratch_floats(M, OC, ks), p->gemv_scratch_floats), 1;
    const int vec = dt == GPT2_DTYPE_F32 ? 4 : 8, T = OC % vec == 0 ? 32 * vec : 32, tiles = (OC + T - 1) / T;
    if ((size_t)tiles > gemv_counters(OC) || gemv_counters(OC) > p->gemv_n_counters)
        return snprintf(msg, n, "OC %d: %d tiles, %zu counters, plan %zu", OC, tiles, gemv_counters(OC),
                        p->gemv_n_counters), 1;
    unsigned char *seen = calloc(p->gemv_scratch_floats, 1);
    unsigned *tick = calloc((size_t)tiles, sizeof(unsigned));
    int *merged = calloc((size_t)tiles, sizeof(int)), bad = 0;
    cr_assert(seen && tick && merged);
    const long nb = (long)tiles * splits; /* < 7919, a prime: i * 7919 % nb is a permutation */
    for (long i = 0; i < nb && !bad; i++) {
        const long b = i * 7919 % nb;
        const int t = (int)(b % tiles), sp = (int)(b / tiles), c1 = (t + 1) * T < OC ? (t + 1) * T : OC;
        for (int m = 0; m < M && !bad; m++)
            for (int c = t * T; c < c1 && !bad; c++) {
                const size_t e = ((size_t)sp * M + m) * OC + c;
                if (e >= p->gemv_scratch_floats || seen[e]++)
                    bad = snprintf(msg, n, "partial (%d, %d, %d) at %zu: outside or written twice", sp, m, c, e);
            }
        if (bad || tick[t]++ != (unsigned)(splits - 1)) continue;
        merged[t]++;
        for (int q = 0; q < splits && !bad; q++)
            for (int m = 0; m < M && !bad; m++)
                for (int c = t * T; c < c1 && !bad; c++)
                    if (seen[((size_t)q * M + m) * OC + c] != 1)
                        bad = snprintf(msg, n, "tile %d merged before partial (%d, %d, %d)", t, q, m, c);
        tick[t] = 0;
    }
    for (int t = 0; t < tiles && !bad; t++)
        if (merged[t] != 1 || tick[t] != 0)
            bad = snprintf(msg, n, "tile %d: merged %d times, ticket left at %u", t, merged[t], tick[t]);
    free(seen);
    free(tick);
    free(merged);
    return bad != 0;
}

/* The decode products of real shapes (gpt2 to gpt2-xl, and odd fine-tune widths) on GPUs of 1 to 144
 * SMs, for every row count the plan sends to the GEMV: the split the backend picks fits the launcher,
 * covers K, and indexes only inside the plan's scratch and tickets. */
Test(sim_gemv, plan_sizes_every_split_k_launch) {
    const int widths[][2] = {{768, 12}, {1024, 16}, {1280, 20}, {1600, 25}, {100, 4}, {1000, 8}, {2052, 12}};
    const int sms[] = {1, 2, 66, 108, 132, 144};
    long launches = 0;
    char msg[256] = "";
    for (int wi = 0; wi < 7; wi++)
        for (int dt = 0; dt < 3; dt++) {
            gpt2_model m;
            memset(&m, 0, sizeof m);
            m.cfg.n_embd = widths[wi][0];
            m.cfg.n_head = widths[wi][1];
            m.cfg.n_layer = 2;
            m.cfg.vocab_size = 50257;
            m.cfg.n_positions = 1024;
            m.cfg.layer_norm_epsilon = 1e-5f;
            const gpt2_backend_opts o = {.max_slots = 4, .max_seq = 1024, .max_tokens = 64, .dtype = (gpt2_dtype)dt};
            gpt2_cuda_plan p;
            gpt2_error err = {0};
            cr_assert_eq(gpt2_cuda_make_plan(&m, &o, &p, &err), GPT2_OK, "%s", err.msg);
            const int C = m.cfg.n_embd, shapes[4][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}}; /* K, OC */
            for (int si = 0; si < 4; si++)
                for (int s = 0; s < 6; s++)
                    for (int M = 1; M <= p.gemv_max_rows; M++) {
                        const int K = shapes[si][0], OC = shapes[si][1];
                        const int ks = gemv_pick_ksplit(K, OC, (gpt2_dtype)dt, sms[s]);
                        cr_assert(!sim_split_k(&p, (gpt2_dtype)dt, M, K, OC, ks, msg, sizeof msg),
                                  "C %d %s, %d SMs, M %d: %s", C, dt == 0 ? "f32" : dt == 1 ? "f16" : "bf16", sms[s],
                                  M, msg);
                        launches++;
                    }
        }
    cr_assert_gt(launches, 100);
}

#endif
