/* test_sim_attention.c: the attention kernels' algorithms, simulated lane by lane on the CPU
 * (tools/sim_attention.c, on kernels/attention_layout.h's index arithmetic), against naive float64
 * attention. These run everywhere (no GPU needed) and check the tiling, the masks, the online softmax,
 * the split merge with its tickets and the mma fragment bookkeeping; the CUDA kernels themselves are
 * checked against the CPU twins by tests/test_cuda.c on a GPU. */
#include <criterion/criterion.h>

#include "../tools/sim_attention.c"

#define SIM_ASSERT(st) cr_assert(!(st).fail && (st).checked > 0, "%s (%ld checked)", (st).msg, (st).checked)

/* Every head size takes a load geometry that the kernel instantiates and that covers the head. */
Test(sim_attention, decode_geometry_covers_every_head_size) {
    for (int HS = 1; HS <= 256; HS++)
        for (int es = 2; es <= 4; es += 2)
            for (int vec = 0; vec < 2; vec++) {
                if (vec && (HS * es) % 16) continue;
                const attn_dc_geom g = attn_dc_geometry(HS, es, vec);
                cr_assert(dc_geometry_instantiated(g, es), "HS %d es %d vec %d: vec %d lpk %d nch %d", HS, es, vec,
                          g.vec, g.lpk, g.nch);
                cr_assert_geq(g.vec * g.lpk * g.nch, HS, "HS %d es %d vec %d", HS, es, vec);
            }
}

/* The fragment maps cover their matrices once each, pair adjacent values in a register, and the C
 * layout of two n8 tiles is the A layout of a k16 step (the P reuse). */
Test(sim_attention, mma_fragment_maps) {
    int a[16][16] = {{0}}, b[16][8] = {{0}}, c[16][8] = {{0}};
    for (int lane = 0; lane < 32; lane++) {
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 2; j++) {
                int row, col, crow, ccol;
                attn_mma_a_rc(lane, r, j, &row, &col);
                a[row][col]++;
                for (int kk = 0; kk < 4; kk++) {
                    const int t = attn_pa_tile(kk, r), i = attn_pa_val(r) + j;
                    attn_mma_c_rc(lane, i, &crow, &ccol);
                    cr_assert_eq(crow, row, "lane %d r %d j %d", lane, r, j);
                    cr_assert_eq(8 * t + ccol, 16 * kk + col, "lane %d r %d j %d kk %d", lane, r, j, kk);
                }
            }
        for (int r = 0; r < 2; r++)
            for (int j = 0; j < 2; j++) {
                int k, n;
                attn_mma_b_kn(lane, r, j, &k, &n);
                b[k][n]++;
            }
        for (int i = 0; i < 4; i++) {
            int row, col;
            attn_mma_c_rc(lane, i, &row, &col);
            c[row][col]++;
        }
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            cr_assert_eq(a[i][j], 1, "A (%d, %d)", i, j);
            if (j < 8) cr_assert(b[i][j] == 1 && c[i][j] == 1, "B/C (%d, %d): %d %d", i, j, b[i][j], c[i][j]);
        }
}

/* Odd and power-of-two head sizes, both element sizes (each geometry), with and without append, rows
 * at and around the 128-key split boundaries, a padding row; blocks in random order. */
Test(sim_attention, decode_matches_naive) {
    sim_stats st = {0};
    const int hs[] = {1, 5, 8, 16, 63, 64, 100, 128, 200, 256};
    for (int i = 0; i < 10; i++)
        for (int es = 2; es <= 4; es += 2)
            for (int ap = 0; ap < 2; ap++) sim_check_decode(5, 2, hs[i], 520, es, ap, 100 + (uint64_t)i, &st);
    SIM_ASSERT(st);
}

/* T = 1 (maxT 1) and a gpt2-shaped head at T = 1024 (8 splits merged), several block orders. */
Test(sim_attention, decode_context_1_and_1024) {
    sim_stats st = {0};
    for (int ap = 0; ap < 2; ap++) {
        sim_check_decode(3, 4, 8, 1, 2, ap, 5, &st);
        for (uint64_t seed = 1; seed <= 3; seed++) sim_check_decode(3, 3, 64, 1024, 2, ap, seed, &st);
    }
    SIM_ASSERT(st);
}

/* Ragged batches (a chunk from 0 over several query and key tiles, T = 1 mid-way, an odd continued
 * chunk), every tensor-core D (32, 64, 128) with odd head sizes (40, 100: zero-padded dims), without
 * rounding (the algorithm alone: float tolerance) and with fp16 / bf16 rounding (16-bit tolerance). */
Test(sim_attention, prefill_matches_naive) {
    sim_stats st = {0};
    const int ch[][3] = {{1, 0, 150}, {0, 37, 1}, {2, 5, 67}};
    const int hp[] = {8, 16, 40, 64, 100, 128};
    for (int i = 0; i < 6; i++)
        for (int t = 0; t < 3; t++) sim_check_prefill(2, hp[i], 160, ch, 3, (sim_dtype)t, 7 + (uint64_t)i, &st);
    SIM_ASSERT(st);
}

/* T = 1024 from position 0 at gpt2's head size, and T = 1 at position 0. */
Test(sim_attention, prefill_t1_and_t1024) {
    sim_stats st = {0};
    const int ch1[][3] = {{0, 0, 1}}, ch2[][3] = {{0, 0, 1024}};
    sim_check_prefill(1, 64, 4, ch1, 1, SIM_F16, 3, &st);
    sim_check_prefill(1, 64, 1024, ch2, 1, SIM_F32, 4, &st);
    sim_check_prefill(1, 64, 1024, ch2, 1, SIM_BF16, 5, &st);
    SIM_ASSERT(st);
}
