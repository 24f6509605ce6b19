/* sim_sample_select.c: a design check, not a test of the kernel. A sequential C model of the
 * selection in kernels/sample.cu (radix select of the top_k / top_p / draw cuts over order-preserving
 * key images, ties in id order; block operations replaced by loops, so only the sums' order differs)
 * against src/sampler.c's sorting gpt2_sample_row, on random rows with many ties (quantised logits),
 * tiny temperatures, top_k at and past V, tiny and large top_p. Run from the repository root:
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Isrc -Iinclude tools/sim_sample_select.c src/sampler.c -lm -o /tmp/sim_sample_select && /tmp/sim_sample_select
 * It printed "checked 12300, mismatches 0" when the kernel was written (December); the kernel itself
 * is checked against sampler.c by tests/test_cuda.c on a GPU. Keep the two in step. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sampler.h"

typedef struct { unsigned ord; int id; } cut_t;
static unsigned ord_of(float f) { unsigned b; memcpy(&b, &f, 4); return (b & 0x80000000u) ? ~b : (b | 0x80000000u); }
static int in_cut(unsigned o, int i, cut_t c) { return o > c.ord || (o == c.ord && i <= c.id); }
static double prob_of(float k) { return (double)(float)exp((double)k); }

static double cut_mass(const float *k, int V, cut_t c) {
    double s = 0; for (int i = 0; i < V; i++) if (in_cut(ord_of(k[i]), i, c)) s += prob_of(k[i]); return s;
}
static cut_t cut_last(const float *k, int V, cut_t c) {
    unsigned lo = 0xffffffffu; for (int i = 0; i < V; i++) { unsigned o = ord_of(k[i]); if (in_cut(o, i, c) && o < lo) lo = o; }
    int id = -1; for (int i = 0; i < V; i++) { unsigned o = ord_of(k[i]); if (o == lo && in_cut(o, i, c) && i > id) id = i; }
    return (cut_t){lo, id};
}
static int cut_crossing(int mass, const float *k, int V, cut_t c, double target, int ge, cut_t *res) {
    unsigned prefix = 0, pmask = 0; double above = 0;
    for (int pass = 0; pass < 4; pass++) {
        int shift = 24 - 8 * pass; double hist[256] = {0}; int cnt[256] = {0};
        for (int i = 0; i < V; i++) { unsigned o = ord_of(k[i]);
            if ((o & pmask) == prefix && in_cut(o, i, c)) { int d = (o >> shift) & 255; hist[d] += mass ? prob_of(k[i]) : 1.0; cnt[d]++; } }
        double acc = above; int ch = -1, lowest = -1;
        for (int d = 255; d >= 0; d--) { if (!cnt[d]) continue; double nx = acc + hist[d];
            if (ge ? nx >= target : nx > target) { ch = d; break; } acc = nx; lowest = d; }
        if (ch < 0 && pass > 0 && lowest >= 0) { ch = lowest; acc -= hist[lowest]; }
        if (ch < 0) return 0;
        above = acc; prefix |= (unsigned)ch << shift; pmask |= 255u << shift;
    }
    double run = above;
    for (int i = 0; i < V; i++) { unsigned o = ord_of(k[i]);
        if (o == prefix && in_cut(o, i, c)) { run += mass ? prob_of(k[i]) : 1.0; if (ge ? run >= target : run > target) { *res = (cut_t){prefix, i}; return 1; } } }
    int id = -1; for (int i = 0; i < V; i++) { unsigned o = ord_of(k[i]); if (o == prefix && in_cut(o, i, c)) id = i; }
    *res = (cut_t){prefix, id}; return 1;
}
static int gpu_sample(const float *logits, int V, const gpt2_sampling *p, float uniform) {
    float *k = malloc(sizeof(float) * V), mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmaxf(mx, logits[i]);
    for (int i = 0; i < V; i++) { float v = (logits[i] - mx) / p->temperature; k[i] = v == 0.0f ? 0.0f : v; }
    cut_t cut = {0u, INT_MAX}, next;
    if (p->top_k > 0 && p->top_k < V && cut_crossing(0, k, V, cut, (double)p->top_k, 1, &next)) cut = next;
    double sum = cut_mass(k, V, cut);
    if (p->top_p < 1.0f && cut_crossing(1, k, V, cut, (double)p->top_p * sum, 1, &next)) { cut = next; sum = cut_mass(k, V, cut); }
    double u = (double)uniform * sum; cut_t pick;
    if (!cut_crossing(1, k, V, cut, u, 0, &pick)) pick = cut_last(k, V, cut);
    free(k); return pick.id;
}
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
static float rf(void) { return (float)((double)(rnd() >> 40) / 8388608.0 - 1.0); }
int main(void) {
    const int Vs[] = {3, 7, 50, 1001, 50257};
    int checked = 0, bad = 0;
    gpt2_sample_scratch s;
    for (int vi = 0; vi < 5; vi++) {
        int V = Vs[vi];
        gpt2_sample_scratch_init(&s, V);
        float *l = malloc(sizeof(float) * V), *row = malloc(sizeof(float) * V);
        int trials = V > 5000 ? 300 : 3000;
        for (int t = 0; t < trials; t++) {
            int mode = t % 4; float scale = (float)(1 + rnd() % 8);
            for (int i = 0; i < V; i++) { l[i] = scale * rf(); if (mode == 1) l[i] = roundf(l[i] * 4) / 4; if (mode == 2) l[i] = roundf(l[i]); if (mode == 3 && i % 3) l[i] = -100.0f * (1 + rf()); }
            gpt2_sampling p = gpt2_sampling_default();
            float temps[] = {0.05f, 0.5f, 1.0f, 2.0f, 1e-3f, 1e-38f};
            p.temperature = temps[rnd() % 6];
            int ks[] = {0, 1 + (int)(rnd() % 5), 40, V - 1, V + 3, 2};
            p.top_k = ks[rnd() % 6]; if (p.top_k == 1) p.top_k = 0;
            float tps[] = {1.0f, 0.9f, 0.5f, 1e-4f, 0.99f};
            p.top_p = tps[rnd() % 5];
            p.seed = rnd();
            gpt2_sample_req req = {.p = &p, .step = (uint64_t)t};
            float u = gpt2_sample_uniform(p.seed, (uint64_t)t);
            memcpy(row, l, sizeof(float) * V);
            int want = gpt2_sample_row(row, V, &req, &s);
            int got = gpu_sample(l, V, &p, u);
            checked++;
            if (got != want) { if (bad < 10) printf("V=%d trial %d T=%g k=%d p=%g mode %d: sim %d cpu %d\n", V, t, p.temperature, p.top_k, p.top_p, mode, got, want); bad++; }
        }
        free(l); free(row); gpt2_sample_scratch_free(&s);
    }
    printf("checked %d, mismatches %d\n", checked, bad);
    return bad != 0;
}
