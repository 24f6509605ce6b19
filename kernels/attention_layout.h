/* attention_layout.h: the index arithmetic of the attention kernels, in plain C, shared by
 * kernels/attention_decode.cu, kernels/attention_prefill.cu and their CPU simulation
 * (tools/sim_attention.c, run by tests/test_sim_attention.c). What the simulation checks on the CPU is
 * then the very arithmetic the kernels run: which lane loads which key and dimensions, which block
 * merges, which fragment register holds which matrix element.
 *
 * Decode (split-K, one launch): a context of len keys is cut into splits of ATTN_DC_SPLIT keys, one
 * block of ATTN_DC_WARPS warps per (row, split, head); warp w takes the ATTN_DC_SPLIT / WARPS keys
 * k0 + w * KPS ... of its split. A key row of HS values is read as chunks of vec values (16 bytes:
 * 8 fp16/bf16 or 4 fp32; vec = 1 when HS is not a multiple of that): a group of lpk lanes shares a
 * key, lane gl of the group owning chunks gl, gl + lpk, ... (nch of them), so one warp load instruction
 * covers kpw = 32 / lpk whole key rows, contiguous in the cache. The last block of a row to finish
 * (a ticket per (row, head)) merges the splits' partials in split order.
 *
 * Prefill (tensor cores, fp16/bf16): mma.sync m16n8k16, fragments as in the PTX ISA ("Matrix
 * Fragments for mma.m16n8k16 with floating point type"): groupID g = lane >> 2, t = lane & 3;
 *   A (16 x 16, row major), 4 registers of 2 values: reg r holds row g + 8 (r & 1), columns
 *     2t + 8 (r >> 1) + {0, 1};
 *   B (16 x 8, "col": element (k, n)), 2 registers: reg r holds rows k = 2t + 8 r + {0, 1}, column g;
 *   C/D (16 x 8 float), 4 values: value i at row g + 8 (i >> 1), column 2t + (i & 1).
 * The C layout of two adjacent n8 tiles is the A layout of one k16 step (FlashAttention-2's register
 * reuse of P): A register r of key step kk is C tile 2 kk + (r >> 1), values 2 (r & 1) + {0, 1}. */
#ifndef GPT2_KERNELS_ATTENTION_LAYOUT_H
#define GPT2_KERNELS_ATTENTION_LAYOUT_H

#ifdef __CUDACC__
#define ATTN_FN __host__ __device__ static inline
#else
#define ATTN_FN static inline
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Decode                                                                                          */

enum {
    ATTN_DC_SPLIT = 128,                          /* keys per block */
    ATTN_DC_WARPS = 4,                            /* warps per block */
    ATTN_DC_KPS = ATTN_DC_SPLIT / ATTN_DC_WARPS,  /* keys per warp */
    ATTN_DC_UNROLL = 4,                           /* key loads in flight per lane before the first use */
};

/* The geometry of one key row's loads: chunk width vec, lanes per key lpk (a power of two), chunks
 * per lane nch, keys per warp instruction kpw. */
typedef struct {
    int vec, lpk, nch, kpw;
} attn_dc_geom;

/* For head size HS, element size es (bytes), and whether 16-byte vectors are allowed (HS * es a
 * multiple of 16 and the cache and qkv 16-byte aligned). The kernel instantiates exactly the
 * combinations this can return (see attention_decode.cu's dispatch). HS in 1..256. */
ATTN_FN attn_dc_geom attn_dc_geometry(int HS, int es, int vector_ok) {
    attn_dc_geom g;
    g.vec = vector_ok ? 16 / es : 1;
    const int chunks = (HS + g.vec - 1) / g.vec;
    if (g.vec == 1) {
        g.lpk = 32;
        g.nch = chunks <= 32 ? 1 : chunks <= 64 ? 2 : chunks <= 128 ? 4 : 8;
    } else {
        g.lpk = chunks <= 4 ? 4 : chunks <= 8 ? 8 : chunks <= 16 ? 16 : 32;
        g.nch = chunks <= 32 ? 1 : 2;
    }
    g.kpw = 32 / g.lpk;
    return g;
}

/* Splits a row at position pos (keys 0..pos) uses. */
ATTN_FN int attn_dc_nsplit_of(int pos) { return pos / ATTN_DC_SPLIT + 1; }

/* The key lane group `group` loads at unroll step u of step j0 (j0 = 0, UNROLL * kpw, ...) of warp w
 * in the split starting at k0. */
ATTN_FN int attn_dc_key(int k0, int warp, int j0, int u, int group, int kpw) {
    return k0 + warp * ATTN_DC_KPS + j0 + u * kpw + group;
}

/* The first dimension of chunk c of lane gl (of its group): dims d0 .. d0 + vec - 1. */
ATTN_FN int attn_dc_dim0(int gl, int c, attn_dc_geom g) { return (gl + g.lpk * c) * g.vec; }

/* Scratch slots of (row b, head h, split sp): partial (HS values + max + sum) index. */
ATTN_FN unsigned long long attn_dc_part(int b, int h, int sp, int NH, int nsplit) {
    return ((unsigned long long)b * (unsigned long long)NH + (unsigned long long)h) * (unsigned long long)nsplit +
           (unsigned long long)sp;
}

/* ---------------------------------------------------------------------------------------------- */
/* Prefill on tensor cores                                                                         */

enum {
    ATTN_TC_BQ = 64,     /* queries per block (tile) */
    ATTN_TC_WARPS = 4,   /* each warp: 16 query rows */
    ATTN_TC_BK = 64,     /* keys per shared-memory tile */
    ATTN_TC_PAD = 8,     /* 16-bit elements of padding per shared-memory row (16 bytes: no bank conflicts) */
};

/* A fragment (16 x 16): register r (0..3), half j (0, 1) of lane -> (row, col). */
ATTN_FN void attn_mma_a_rc(int lane, int r, int j, int *row, int *col) {
    *row = (lane >> 2) + 8 * (r & 1);
    *col = 2 * (lane & 3) + 8 * (r >> 1) + j;
}
/* B fragment (16 x 8): register r (0, 1), half j of lane -> (k, n). */
ATTN_FN void attn_mma_b_kn(int lane, int r, int j, int *k, int *n) {
    *k = 2 * (lane & 3) + 8 * r + j;
    *n = lane >> 2;
}
/* C fragment (16 x 8): value i (0..3) of lane -> (row, col). */
ATTN_FN void attn_mma_c_rc(int lane, int i, int *row, int *col) {
    *row = (lane >> 2) + 8 * (i >> 1);
    *col = 2 * (lane & 3) + (i & 1);
}
/* P reuse: A register r of key step kk comes from C tile attn_pa_tile(kk, r), values
 * attn_pa_val(r) and attn_pa_val(r) + 1. */
ATTN_FN int attn_pa_tile(int kk, int r) { return 2 * kk + (r >> 1); }
ATTN_FN int attn_pa_val(int r) { return 2 * (r & 1); }

#endif /* GPT2_KERNELS_ATTENTION_LAYOUT_H */
