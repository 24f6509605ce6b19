/* test_loader.c: config.json, safetensors and model directory loading.
 *
 * Fixtures are written at test time (tests/loader_util.h) into temporary folders: random weights
 * from a seeded generator, expected float32 values decoded independently here (ldexp on the bit
 * fields, hard-coded constants for the special values), and, when Python with torch and transformers
 * is there, checkpoints written by transformers' own save_pretrained compared bit for bit.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gpt2.h"
#include "loader_util.h"
#include "safetensors.h"
#include "util.h"

/* ---------------------------------------------------------------------------------------------- */
/* Helpers                                                                                          */

static char *make_tmp(void) {
    char *d = strdup("/tmp/gpt2-loader-XXXXXX");
    cr_assert_not_null(d);
    cr_assert_not_null(mkdtemp(d), "mkdtemp failed");
    return d;
}

static tl_spec tiny_spec(const char *dtype, uint64_t seed) {
    tl_spec sp = {.n_layer = 2, .n_head = 2, .n_embd = 8, .n_positions = 16, .vocab_size = 11, .dtype = dtype,
                  .seed = seed};
    return sp;
}

typedef struct {
    char *dir;
    tl_spec sp;
    tl_model m;
} fixture;

static void fx_make(fixture *f, tl_spec sp) {
    f->dir = make_tmp();
    f->sp = sp;
    cr_assert_eq(tl_model_make(&sp, &f->m), 0);
}

static void fx_write(fixture *f) { cr_assert_eq(tl_write_model_dir(f->dir, &f->sp, &f->m), 0, "writing %s", f->dir); }

static void fx_free(fixture *f) {
    tl_model_free(&f->m);
    tl_rmtree(f->dir);
    free(f->dir);
}

static void write_st(const char *dir, const char *file, const tl_tensor *ts, size_t n) {
    char *p = tl_join(dir, file);
    cr_assert_eq(tl_write_safetensors(p, ts, n), 0);
    free(p);
}

static gpt2_model *load_ok(const char *dir) {
    gpt2_model *m = NULL;
    gpt2_error err = {0};
    gpt2_status s = gpt2_model_load(dir, &m, &err);
    cr_assert_eq(s, GPT2_OK, "load %s: %s (%s)", dir, err.msg, gpt2_strerror(s));
    cr_assert_not_null(m);
    return m;
}

/* Loading dir fails with status `want` and a message holding each of the given substrings. */
static void expect_fail(const char *dir, gpt2_status want, const char *a, const char *b, const char *c) {
    gpt2_model *m = (gpt2_model *)&m; /* must be reset to NULL */
    gpt2_error err = {0};
    gpt2_status s = gpt2_model_load(dir, &m, &err);
    cr_assert_eq(s, want, "status %d (%s), want %d; message: %s", s, gpt2_strerror(s), want, err.msg);
    cr_assert_eq(err.status, want);
    cr_assert_null(m);
    const char *subs[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (subs[i]) cr_assert_not_null(strstr(err.msg, subs[i]), "message \"%s\" lacks \"%s\"", err.msg, subs[i]);
}

/* Independent decoders: the value each bit pattern stands for, from the IEEE field definitions. */
static double ref_f16(uint16_t h) {
    int e = (h >> 10) & 31, mant = h & 1023;
    double v = e == 31 ? (mant ? NAN : INFINITY) : e == 0 ? ldexp(mant, -24) : ldexp(1024 + mant, e - 25);
    return (h & 0x8000) ? -v : v;
}

static double ref_bf16(uint16_t b) {
    int e = (b >> 7) & 255, mant = b & 127;
    double v = e == 255 ? (mant ? NAN : INFINITY) : e == 0 ? ldexp(mant, -133) : ldexp(128 + mant, e - 134);
    return (b & 0x8000) ? -v : v;
}

/* Compares got (count floats) with the independent decoding of tensor t. F32 must match bit for bit;
 * F16 and BF16 by value (and sign of zero), any NaN for a NaN. */
static void check_values(const tl_tensor *t, const float *got, size_t count) {
    int f32 = strcmp(t->dtype, "F32") == 0, bf16 = strcmp(t->dtype, "BF16") == 0;
    cr_assert_eq(t->nbytes, count * (f32 ? 4 : 2), "%s: %zu bytes for %zu values", t->name, t->nbytes, count);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *p = t->data + (f32 ? 4 : 2) * i;
        int ok;
        if (f32) {
            uint32_t want = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24, have;
            memcpy(&have, &got[i], 4);
            ok = want == have;
        } else {
            uint16_t h = (uint16_t)(p[0] | p[1] << 8);
            double ref = bf16 ? ref_bf16(h) : ref_f16(h);
            ok = isnan(ref) ? isnan(got[i]) : (got[i] == (float)ref && !signbit(got[i]) == !signbit(ref));
        }
        if (!ok && bad++ == 0) first = i;
    }
    cr_assert_eq(bad, 0, "%s (%s): %zu of %zu values differ, first at %zu: got %a", t->name, t->dtype, bad, count,
                 first, (double)got[first]);
}

/* Where the loader must have put the tensor called name (the layout of gpt2_weights in gpt2.h). */
static const float *dest_of(const gpt2_model *m, const char *name, size_t *count) {
    size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size, T = (size_t)m->cfg.n_positions;
    const gpt2_weights *w = &m->w;
    if (strcmp(name, "lm_head.weight") == 0) return *count = V * C, w->lm_head;
    if (strncmp(name, "transformer.", 12) == 0) name += 12;
    if (strcmp(name, "wte.weight") == 0) return *count = V * C, w->wte;
    if (strcmp(name, "wpe.weight") == 0) return *count = T * C, w->wpe;
    if (strcmp(name, "ln_f.weight") == 0) return *count = C, w->lnfw;
    if (strcmp(name, "ln_f.bias") == 0) return *count = C, w->lnfb;
    const float *base[12] = {w->ln1w, w->ln1b, w->qkvw,    w->qkvb, w->attprojw, w->attprojb,
                             w->ln2w, w->ln2b, w->fcw,     w->fcb,  w->fcprojw,  w->fcprojb};
    int l, n = 0;
    if (sscanf(name, "h.%d.%n", &l, &n) != 1 || n == 0) return NULL;
    for (int k = 0; k < 12; k++) {
        if (strcmp(name + n, TL_LAYER_PARAMS[k].name) == 0) {
            size_t cols = (size_t)TL_LAYER_PARAMS[k].cols;
            *count = (size_t)TL_LAYER_PARAMS[k].rows * C * (cols ? cols * C : 1);
            return base[k] + (size_t)l * *count;
        }
    }
    return NULL;
}

/* The pointers follow the documented order, back to back in one allocation of the documented size. */
static void check_layout(const gpt2_model *m, int untied) {
    size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size, T = (size_t)m->cfg.n_positions;
    size_t L = (size_t)m->cfg.n_layer;
    const gpt2_weights *w = &m->w;
    const float *ptrs[17] = {w->wte,      w->wpe,  w->ln1w, w->ln1b, w->qkvw,    w->qkvb,    w->attprojw, w->attprojb,
                             w->ln2w,     w->ln2b, w->fcw,  w->fcb,  w->fcprojw, w->fcprojb, w->lnfw,     w->lnfb,
                             w->lm_head};
    size_t sizes[17] = {V * C,         T * C,     L * C,     L * C, L * C * 3 * C, L * 3 * C, L * C * C, L * C,
                        L * C,         L * C,     L * C * 4 * C, L * 4 * C, L * 4 * C * C, L * C, C, C, V * C};
    cr_assert_eq(w->wte, w->memory);
    size_t off = 0;
    for (int k = 0; k < 17 - !untied; k++) {
        cr_assert_eq(ptrs[k], w->memory + off, "pointer %d at offset %td, want %zu", k, ptrs[k] - w->memory, off);
        off += sizes[k];
    }
    cr_assert_eq(w->n_floats, off, "n_floats %zu, want %zu", w->n_floats, off);
    cr_assert_eq(w->n_floats, V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C + (untied ? V * C : 0));
    cr_assert_eq(w->tied, !untied);
    if (!untied) cr_assert_eq(w->lm_head, w->wte);
}

/* Every tensor of fixture model fm is in m with the right values. */
static void check_model(const gpt2_model *m, const tl_spec *sp, const tl_model *fm, int untied) {
    cr_assert_eq(m->cfg.n_layer, sp->n_layer);
    cr_assert_eq(m->cfg.n_head, sp->n_head);
    cr_assert_eq(m->cfg.n_embd, sp->n_embd);
    cr_assert_eq(m->cfg.n_positions, sp->n_positions);
    cr_assert_eq(m->cfg.vocab_size, sp->vocab_size);
    cr_assert_eq(m->cfg.layer_norm_epsilon, 1e-5f);
    check_layout(m, untied);
    for (size_t i = 0; i < fm->n; i++) {
        size_t count = 0;
        const float *d = dest_of(m, fm->t[i].name, &count);
        cr_assert_not_null(d, "no destination for %s", fm->t[i].name);
        check_values(&fm->t[i], d, count);
    }
}

/* Turns every NaN or Inf bit pattern of the model into a finite one (one exponent bit cleared), so
 * that the every-bit-pattern fixtures exercise the conversion of all finite values, subnormals
 * included; non-finite weights are refused at load (see loader_nonfinite below). */
static void make_finite(tl_model *m) {
    for (size_t i = 0; i < m->n; i++) {
        tl_tensor *t = &m->t[i];
        if (!strcmp(t->dtype, "F32")) {
            for (size_t k = 0; k + 4 <= t->nbytes; k += 4)
                if ((t->data[k + 3] & 0x7f) == 0x7f && (t->data[k + 2] & 0x80)) t->data[k + 3] &= 0xbf;
        } else {
            uint16_t e = !strcmp(t->dtype, "BF16") ? 0x7f80 : 0x7c00;
            for (size_t k = 0; k + 2 <= t->nbytes; k += 2) {
                uint16_t h = (uint16_t)(t->data[k] | t->data[k + 1] << 8);
                if ((h & e) == e) t->data[k + 1] &= 0xbf; /* clears bit 14, the top exponent bit */
            }
        }
    }
}

/* Loads a fixture of spec sp written as one file and checks it. */
static void roundtrip(tl_spec sp) {
    fixture f;
    fx_make(&f, sp);
    if (sp.any_bits) make_finite(&f.m);
    fx_write(&f);
    gpt2_model *m = load_ok(f.dir);
    check_model(m, &sp, &f.m, sp.lm_head == 1);
    gpt2_model_free(m);
    fx_free(&f);
}

/* ---------------------------------------------------------------------------------------------- */
/* Loading good checkpoints                                                                         */

Test(loader, f32_hub_names) { roundtrip(tiny_spec("F32", 1)); }

Test(loader, f32_every_bit_pattern) {
    tl_spec sp = tiny_spec("F32", 2);
    sp.any_bits = 1;
    roundtrip(sp);
}

Test(loader, f16_every_bit_pattern) {
    tl_spec sp = tiny_spec("F16", 3);
    sp.any_bits = 1; /* random 16-bit patterns: about 1 in 32 subnormal, 1 in 32 inf or NaN */
    roundtrip(sp);
}

Test(loader, bf16_every_bit_pattern) {
    tl_spec sp = tiny_spec("BF16", 4);
    sp.any_bits = 1;
    roundtrip(sp);
}

Test(loader, f16_ordinary_values_save_pretrained_names) {
    tl_spec sp = tiny_spec("F16", 5);
    sp.prefix = 1;
    roundtrip(sp);
}

Test(loader, bf16_save_pretrained_names) {
    tl_spec sp = tiny_spec("BF16", 6);
    sp.prefix = 1;
    roundtrip(sp);
}

/* Special values against constants written out by hand, not against a decoder. Finite ones must load
 * exactly; a NaN or an infinity must be refused, the message naming the tensor, the element and the
 * value the pattern decodes to (so the decoding of the specials is checked too). */
static void special_values(const char *dtype, const uint16_t *bits, const float *want, size_t n) {
    fixture f;
    fx_make(&f, tiny_spec(dtype, 7));
    tl_tensor *wte = tl_model_find(&f.m, "wte.weight");
    cr_assert(wte && wte->nbytes >= 2 * n);
    uint8_t *orig = malloc(wte->nbytes);
    cr_assert(orig);
    memcpy(orig, wte->data, wte->nbytes);
    for (size_t i = 0; i < n; i++) {
        if (isfinite(want[i])) {
            wte->data[2 * i] = (uint8_t)bits[i];
            wte->data[2 * i + 1] = (uint8_t)(bits[i] >> 8);
        }
    }
    fx_write(&f);
    gpt2_model *m = load_ok(f.dir);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(want[i])) continue;
        float g = m->w.wte[i];
        cr_assert(g == want[i] && !signbit(g) == !signbit(want[i]), "%s 0x%04x: got %a, want %a", dtype, bits[i],
                  (double)g, (double)want[i]);
    }
    gpt2_model_free(m);
    for (size_t i = 0; i < n; i++) {
        if (isfinite(want[i])) continue;
        memcpy(wte->data, orig, wte->nbytes);
        wte->data[2 * i] = (uint8_t)bits[i];
        wte->data[2 * i + 1] = (uint8_t)(bits[i] >> 8);
        fx_write(&f);
        char at[64];
        snprintf(at, sizeof at, "(%s) at element %zu", isnan(want[i]) ? "NaN" : want[i] > 0 ? "+Inf" : "-Inf", i);
        expect_fail(f.dir, GPT2_ERR_FORMAT, "tensor 'wte.weight' holds a non-finite value", at, NULL);
    }
    free(orig);
    fx_free(&f);
}

Test(loader, f16_special_values) {
    const uint16_t bits[] = {0x0001, 0x8001, 0x03ff, 0x0400, 0x0200, 0x3c00, 0xc000, 0x7bff,
                             0x7c00, 0xfc00, 0x7e00, 0xfe01, 0x7c01, 0x8000, 0x0000, 0x3555};
    const float want[] = {5.9604644775390625e-08f, -5.9604644775390625e-08f, 6.097555160522461e-05f,
                          6.103515625e-05f, 3.0517578125e-05f, 1.0f, -2.0f, 65504.0f, INFINITY, -INFINITY,
                          NAN, NAN, NAN, -0.0f, 0.0f, 0.333251953125f};
    special_values("F16", bits, want, sizeof bits / sizeof bits[0]);
}

Test(loader, bf16_special_values) {
    const uint16_t bits[] = {0x3f80, 0xc040, 0x0001, 0x807f, 0x0080, 0x7f7f, 0x7f80, 0xff80, 0x7fc0, 0xffff, 0x8000, 0x3eab};
    const float want[] = {1.0f,       -3.0f,  9.18354961579912e-41f, -1.1663108012064884e-38f, 1.1754943508222875e-38f,
                          3.3895313892515355e+38f, INFINITY, -INFINITY, NAN, NAN, -0.0f, 0.333984375f};
    special_values("BF16", bits, want, sizeof bits / sizeof bits[0]);
}

Test(loader, untied_lm_head) {
    tl_spec sp = tiny_spec("F32", 8);
    sp.lm_head = 1;
    roundtrip(sp);
    sp.prefix = 1;
    sp.dtype = "F16";
    roundtrip(sp);
}

Test(loader, lm_head_identical_to_wte_is_tied) {
    tl_spec sp = tiny_spec("BF16", 9);
    sp.prefix = 1;
    sp.lm_head = 2;
    roundtrip(sp);
}

Test(loader, untied_config_needs_lm_head) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 10));
    char *p = tl_join(f.dir, "model.safetensors");
    cr_assert_eq(tl_write_safetensors(p, f.m.t, f.m.n), 0);
    free(p);
    cr_assert_eq(tl_write_config(f.dir, &f.sp, ",\n  \"tie_word_embeddings\": false"), 0);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "missing tensor 'lm_head.weight'", "tie_word_embeddings", NULL);
    fx_free(&f);
}

Test(loader, mixed_dtypes_and_attention_buffers) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 11));
    tl_tensor *t = tl_model_find(&f.m, "h.1.mlp.c_fc.weight");
    cr_assert_not_null(t);
    /* Re-encode one tensor as F16 and another as BF16; values are decoded from the new bytes. */
    for (size_t i = 0; i < t->nbytes / 4; i++) t->data[2 * i + 1] = t->data[4 * i + 3], t->data[2 * i] = t->data[4 * i + 2];
    t->nbytes /= 2;
    strcpy(t->dtype, "BF16");
    t = tl_model_find(&f.m, "wpe.weight");
    cr_assert_not_null(t);
    for (size_t i = 0; i < t->nbytes / 4; i++) t->data[2 * i] = (uint8_t)(i * 37), t->data[2 * i + 1] = (uint8_t)(i * 11);
    t->nbytes /= 2;
    strcpy(t->dtype, "F16");
    make_finite(&f.m); /* the wpe patterns above include NaN and Inf */
    /* The causal-mask buffers of old checkpoints, any shape, dtype and values (NaN too), are skipped. */
    uint64_t rng = 12;
    cr_assert_eq(tl_model_add(&f.m, "h.0.attn.bias", "F16", 2, 16, 16, 1, &rng), 0);
    cr_assert_eq(tl_model_add(&f.m, "h.1.attn.masked_bias", "F32", 1, 1, 0, 1, &rng), 0);
    fx_write(&f);
    gpt2_model *m = load_ok(f.dir);
    f.m.n -= 2; /* not parameters */
    check_model(m, &f.sp, &f.m, 0);
    f.m.n += 2;
    gpt2_model_free(m);
    fx_free(&f);
}

static void check_positions(const char *extra, int want) {
    char *dir = make_tmp();
    char text[512];
    snprintf(text, sizeof text,
             "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 11%s}", extra);
    cr_assert_eq(tl_write_in(dir, "config.json", text), 0);
    char *p = tl_join(dir, "config.json");
    gpt2_config c;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_config_load(p, &c, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(c.n_positions, want);
    cr_assert_eq(c.layer_norm_epsilon, 1e-5f); /* the default when absent */
    cr_assert_eq(c.n_layer, 2);
    cr_assert_eq(c.n_head, 2);
    cr_assert_eq(c.n_embd, 8);
    cr_assert_eq(c.vocab_size, 11);
    cr_assert_eq(c.tie_word_embeddings, 1); /* absent: tied, as in transformers */
    free(p);
    tl_rmtree(dir);
    free(dir);
}

Test(loader, n_ctx_fallback) {
    check_positions(", \"n_ctx\": 16", 16);
    check_positions(", \"n_positions\": 32, \"n_ctx\": 16", 32); /* both: n_positions wins */
    check_positions(", \"n_positions\": 12", 12);
}

Test(loader, n_ctx_model_dir) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 13));
    char *p = tl_join(f.dir, "model.safetensors");
    cr_assert_eq(tl_write_safetensors(p, f.m.t, f.m.n), 0);
    free(p);
    cr_assert_eq(tl_write_in(f.dir, "config.json",
                             "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"n_ctx\": 16, \"vocab_size\": 11, "
                             "\"layer_norm_epsilon\": 1e-5}"),
                 0);
    gpt2_model *m = load_ok(f.dir);
    check_model(m, &f.sp, &f.m, 0);
    gpt2_model_free(m);
    fx_free(&f);
}

Test(loader, config_epsilon) {
    char *dir = make_tmp();
    cr_assert_eq(tl_write_in(dir, "config.json",
                             "{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 4, \"n_positions\": 4, \"vocab_size\": 3,"
                             " \"layer_norm_epsilon\": 0.25, \"activation_function\": \"gelu_new\", \"n_inner\": null,"
                             " \"scale_attn_weights\": true, \"tie_word_embeddings\": false}"),
                 0);
    char *p = tl_join(dir, "config.json");
    gpt2_config c;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_config_load(p, &c, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(c.layer_norm_epsilon, 0.25f);
    cr_assert_eq(c.tie_word_embeddings, 0);
    free(p);
    tl_rmtree(dir);
    free(dir);
}

/* Splits the fixture over two shards (alternating tensors) plus an index. */
static void write_sharded(fixture *f, const char *shard_a, const char *shard_b) {
    tl_tensor *a = malloc(f->m.n * sizeof *a), *b = malloc(f->m.n * sizeof *b);
    cr_assert(a && b);
    size_t na = 0, nb = 0;
    tl_str idx = {0};
    tl_str_add(&idx, "{\"metadata\": {\"total_size\": 1234}, \"weight_map\": {");
    for (size_t i = 0; i < f->m.n; i++) {
        if (i % 2) b[nb++] = f->m.t[i];
        else a[na++] = f->m.t[i];
        tl_str_add(&idx, "%s\"%s\": \"%s\"", i ? ", " : "", f->m.t[i].name, i % 2 ? shard_b : shard_a);
    }
    tl_str_add(&idx, "}}");
    cr_assert(!idx.bad);
    write_st(f->dir, "model-00001-of-00002.safetensors", a, na);
    write_st(f->dir, "model-00002-of-00002.safetensors", b, nb);
    cr_assert_eq(tl_write_in(f->dir, "model.safetensors.index.json", idx.s), 0);
    cr_assert_eq(tl_write_config(f->dir, &f->sp, ""), 0);
    free(idx.s);
    free(a);
    free(b);
}

Test(loader, sharded_two_files) {
    tl_spec sp = tiny_spec("F16", 14);
    sp.prefix = 1;
    sp.lm_head = 1;
    fixture f;
    fx_make(&f, sp);
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    gpt2_model *m = load_ok(f.dir);
    check_model(m, &sp, &f.m, 1);
    gpt2_model_free(m);
    fx_free(&f);
}

Test(loader, single_file_wins_over_index) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 15));
    fx_write(&f);
    /* An index naming a shard that is not there: never read, as model.safetensors comes first. */
    cr_assert_eq(tl_write_in(f.dir, "model.safetensors.index.json",
                             "{\"weight_map\": {\"wte.weight\": \"absent.safetensors\"}}"),
                 0);
    gpt2_model *m = load_ok(f.dir);
    check_model(m, &f.sp, &f.m, 0);
    gpt2_model_free(m);
    fx_free(&f);
}

/* Larger than the tiny fixture, with tensors big enough to take the parallel conversion path. */
Test(loader, bigger_layouts) {
    tl_spec sp = {.n_layer = 3, .n_head = 4, .n_embd = 64, .n_positions = 64, .vocab_size = 100, .dtype = "F32",
                  .lm_head = 1, .seed = 16};
    roundtrip(sp);
    sp.vocab_size = 2000; /* wte (2000, 64) = 128000 values > the 65536 parallel threshold */
    sp.dtype = "F16";
    sp.lm_head = 0;
    sp.prefix = 1;
    sp.any_bits = 1;
    roundtrip(sp);
    sp.dtype = "BF16";
    sp.n_embd = 132; /* fcw (132, 528) = 69696 values */
    sp.n_head = 4;
    sp.vocab_size = 100;
    roundtrip(sp);
}

/* ---------------------------------------------------------------------------------------------- */
/* Malformed safetensors files: each refused with its own message naming the file (and tensor)     */

typedef struct {
    const char *label;
    const char *header;
    uint64_t hlen;     /* 0: strlen(header) */
    size_t data_n;     /* bytes of data after the header */
    size_t truncate;   /* > 0: keep only this many bytes of the whole file */
    const char *sub1, *sub2;
    int ref_rejects;   /* the reference reader refuses it too (checked by reference_reader_agrees) */
    size_t header_n;   /* 0: strlen(header) */
} st_case;

#define E(dtype, shape, b, e) "{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static const st_case ST_CASES[] = {
    {"too_short", "{}", 2, 0, 5, "5 bytes, too short", NULL, 1, 0},
    {"header_past_end", "{}", 1000, 0, 0, "header length 1000 runs past the end", NULL, 1, 0},
    {"header_over_limit", "{}", 100000001, 0, 0, "header length 100000001 is over the limit", NULL, 1, 0},
    {"header_not_json", "{not json}", 0, 0, 0, "header is not valid JSON", NULL, 1, 0},
    {"header_not_object", "[1, 2, 3]", 0, 0, 0, "not a JSON object", NULL, 1, 0},
    {"header_empty", "", 0, 0, 0, "header is not valid JSON", NULL, 1, 0},
    {"header_nul", "{}\0", 0, 0, 0, "header is not valid JSON", NULL, 1, 3},
    {"metadata_not_object", "{\"__metadata__\":[\"format\"]}", 0, 0, 0, "__metadata__ is not an object", NULL, 1, 0},
    {"header_bad_utf8", "{\"w\xff\":" E("F32", "[1]", 0, 4) "}", 0, 4, 0, "header is not valid JSON", NULL, 1, 0},
    {"unknown_dtype", "{\"wte.weight\":" E("F17", "[1]", 0, 4) "}", 0, 4, 0, "unknown dtype \"F17\"", "'wte.weight'", 1, 0},
    {"negative_shape", "{\"wte.weight\":" E("F32", "[2,-1]", 0, 4) "}", 0, 4, 0, "shape entry 1 is not a non-negative",
     "'wte.weight'", 1, 0},
    {"float_shape", "{\"wpe.weight\":" E("F32", "[1.5]", 0, 4) "}", 0, 4, 0, "shape entry 0 is not a non-negative",
     "'wpe.weight'", 1, 0},
    {"offsets_past_end", "{\"ln_f.bias\":" E("F32", "[100]", 0, 400) "}", 0, 4, 0,
     "data_offsets [0, 400] run past the data section (4 bytes)", "'ln_f.bias'", 1, 0},
    {"begin_after_end", "{\"ln_f.bias\":" E("F32", "[1]", 4, 0) "}", 0, 4, 0, "begin after end", "'ln_f.bias'", 1, 0},
    {"offsets_three", "{\"ln_f.bias\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 0, 4, 0,
     "data_offsets is not an array of two", "'ln_f.bias'", 1, 0},
    {"missing_offsets", "{\"ln_f.bias\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4, 0, "missing \"data_offsets\"",
     "'ln_f.bias'", 1, 0},
    {"entry_not_object", "{\"ln_f.bias\":5}", 0, 0, 0, "header entry is not an object", "'ln_f.bias'", 1, 0},
    {"gap", "{\"a\":" E("F32", "[1]", 0, 4) ",\"b\":" E("F32", "[1]", 8, 12) "}", 0, 12, 0, "tensor 'b': gap of 4 bytes",
     NULL, 1, 0},
    {"overlap", "{\"a\":" E("F32", "[2]", 0, 8) ",\"b\":" E("F32", "[2]", 4, 12) "}", 0, 12, 0,
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a'", NULL, 1, 0},
    {"size_mismatch", "{\"ln_f.weight\":" E("F32", "[3]", 0, 8) "}", 0, 8, 0,
     "hold 8 bytes but shape [3] in F32 needs 12", "'ln_f.weight'", 1, 0},
    {"shape_overflow", "{\"wte.weight\":" E("F16", "[4294967296,4294967296,2]", 0, 8) "}", 0, 8, 0,
     "more elements than fit in 64 bits", "'wte.weight'", 1, 0},
    {"bytes_overflow", "{\"wte.weight\":" E("F64", "[4294967296,536870912]", 0, 8) "}", 0, 8, 0,
     "overflows 64 bits", "'wte.weight'", 1, 0},
    {"trailing_bytes", "{\"ln_f.bias\":" E("F32", "[1]", 0, 4) "}", 0, 8, 0, "4 trailing bytes after the last tensor",
     NULL, 1, 0},
    {"metadata_not_string", "{\"__metadata__\":{\"format\":1}}", 0, 0, 0, "__metadata__ value 'format' is not a string",
     NULL, 1, 0},
    /* The reference reader keeps the last of two equal keys; we refuse the ambiguity. */
    {"duplicate_key", "{\"a\":" E("F32", "[1]", 0, 4) ",\"a\":" E("F32", "[1]", 0, 4) "}", 0, 4, 0,
     "duplicate object key", NULL, 0, 0},
};

#define N_ST_CASES (sizeof ST_CASES / sizeof ST_CASES[0])

/* Writes case c as dir/model.safetensors. */
static void write_st_case(const char *path, const st_case *c) {
    size_t hn = c->header_n ? c->header_n : strlen(c->header);
    uint8_t data[512];
    cr_assert(c->data_n <= sizeof data);
    for (size_t i = 0; i < c->data_n; i++) data[i] = (uint8_t)(i * 7 + 1);
    cr_assert_eq(tl_write_raw(path, c->hlen ? c->hlen : hn, c->header, hn, data, c->data_n), 0);
    if (c->truncate) cr_assert_eq(truncate(path, (off_t)c->truncate), 0);
}

static void run_st_case(const char *label) {
    const st_case *c = NULL;
    for (size_t i = 0; i < N_ST_CASES; i++)
        if (strcmp(ST_CASES[i].label, label) == 0) c = &ST_CASES[i];
    cr_assert_not_null(c, "no case %s", label);
    char *dir = make_tmp();
    tl_spec sp = tiny_spec("F32", 0);
    cr_assert_eq(tl_write_config(dir, &sp, ""), 0);
    char *path = tl_join(dir, "model.safetensors");
    write_st_case(path, c);
    expect_fail(dir, GPT2_ERR_FORMAT, path, c->sub1, c->sub2);
    /* The same through the buffer parser the fuzz harness uses. */
    char *buf = NULL;
    size_t n = 0;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_read_file(path, 1u << 20, &buf, &n, &err), GPT2_OK);
    gpt2_st_file st;
    cr_assert_eq(gpt2_st_parse((const uint8_t *)buf, n, "buffer", &st, &err), GPT2_ERR_FORMAT, "%s", c->label);
    cr_assert_not_null(strstr(err.msg, c->sub1), "%s", err.msg);
    cr_assert_eq(st.n_tensors, 0);
    cr_assert_null(st.tensors);
    gpt2_st_close(&st);
    free(buf);
    free(path);
    tl_rmtree(dir);
    free(dir);
}

#define ST_CASE(label) \
    Test(loader_bad_safetensors, label) { run_st_case(#label); }
ST_CASE(too_short)
ST_CASE(header_past_end)
ST_CASE(header_over_limit)
ST_CASE(header_not_json)
ST_CASE(header_not_object)
ST_CASE(header_empty)
ST_CASE(header_nul)
ST_CASE(metadata_not_object)
ST_CASE(header_bad_utf8)
ST_CASE(unknown_dtype)
ST_CASE(negative_shape)
ST_CASE(float_shape)
ST_CASE(offsets_past_end)
ST_CASE(begin_after_end)
ST_CASE(offsets_three)
ST_CASE(missing_offsets)
ST_CASE(entry_not_object)
ST_CASE(gap)
ST_CASE(overlap)
ST_CASE(size_mismatch)
ST_CASE(shape_overflow)
ST_CASE(bytes_overflow)
ST_CASE(trailing_bytes)
ST_CASE(metadata_not_string)
ST_CASE(duplicate_key)

Test(loader_bad_safetensors, every_case_has_a_test) {
    /* Keeps the table and the ST_CASE list above in step. */
    cr_assert_eq(N_ST_CASES, 25);
}

Test(safetensors, parse_buffer) {
    /* A scalar, an empty tensor and a matrix; whitespace around the header object, as the reference
     * reader allows (its writer pads with spaces). */
    const char *h = "  {\"__metadata__\":{\"format\":\"pt\"},\"s\":" E("BF16", "[]", 0, 2) ",\"z\":" E("I64", "[0,3]", 2, 2)
                    ",\"a\":" E("F32", "[2,1]", 2, 10) "}    ";
    size_t hn = strlen(h), n = 8 + hn + 10;
    uint8_t *buf = calloc(1, n);
    cr_assert_not_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hn >> (8 * i));
    memcpy(buf + 8, h, hn);
    gpt2_st_file st;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_st_parse(buf, n, "mem", &st, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(st.n_tensors, 3);
    cr_assert_eq(st.data, buf + 8 + hn);
    cr_assert_eq(st.data_size, 10);
    const gpt2_st_tensor *s = gpt2_st_find(&st, "s"), *z = gpt2_st_find(&st, "z"), *a = gpt2_st_find(&st, "a");
    cr_assert(s && z && a);
    cr_assert_null(gpt2_st_find(&st, "__metadata__"));
    cr_assert_null(gpt2_st_find(&st, "b"));
    cr_assert_eq(s->dtype, GPT2_ST_BF16);
    cr_assert_eq(s->n_dims, 0);
    cr_assert_eq(s->n_elements, 1);
    cr_assert_eq(z->dtype, GPT2_ST_I64);
    cr_assert_eq(z->n_elements, 0);
    cr_assert_eq(a->n_dims, 2);
    cr_assert_eq(a->shape[0], 2);
    cr_assert_eq(a->shape[1], 1);
    cr_assert_eq(a->data, st.data + 2);
    cr_assert_str_eq(gpt2_st_dtype_name(a->dtype), "F32");
    gpt2_st_close(&st);
    gpt2_st_close(&st); /* twice is harmless */
    free(buf);
}

/* Parses header h (8-byte length prepended) followed by data_n zero bytes. */
static gpt2_status parse_text(const char *h, size_t data_n, gpt2_st_file *st, gpt2_error *err) {
    size_t hn = strlen(h), n = 8 + hn + data_n;
    static uint8_t buf[4096];
    cr_assert(n <= sizeof buf);
    memset(buf, 0, n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hn >> (8 * i));
    memcpy(buf + 8, h, hn);
    return gpt2_st_parse(buf, n, "mem", st, err);
}

Test(safetensors, only_scalars) {
    /* Regression (fuzzing found it): with no dimensions at all, shapes pointed at NULL + 0. */
    gpt2_st_file st;
    gpt2_error err = {0};
    cr_assert_eq(parse_text("{\"x\":" E("F32", "[]", 0, 4) "}", 4, &st, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(st.n_tensors, 1);
    cr_assert_not_null(st.tensors[0].shape);
    cr_assert_eq(st.tensors[0].n_dims, 0);
    cr_assert_eq(st.tensors[0].n_elements, 1);
    gpt2_st_close(&st);
}

Test(safetensors, empty_table) {
    gpt2_st_file st;
    gpt2_error err = {0};
    cr_assert_eq(parse_text("{}", 0, &st, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(st.n_tensors, 0);
    cr_assert_null(gpt2_st_find(&st, "x"));
    gpt2_st_close(&st);
    cr_assert_eq(parse_text("{\"__metadata__\": null}", 0, &st, &err), GPT2_OK, "%s", err.msg);
    gpt2_st_close(&st);
    cr_assert_eq(parse_text("{}", 3, &st, &err), GPT2_ERR_FORMAT);
    cr_assert_not_null(strstr(err.msg, "mem: 3 trailing bytes"), "%s", err.msg);
}

/* ---------------------------------------------------------------------------------------------- */
/* Good safetensors files that are not a GPT-2 of this config                                       */

Test(loader_bad_model, missing_tensor) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 20));
    cr_assert_eq(tl_model_remove(&f.m, "h.1.mlp.c_fc.bias"), 0);
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "model.safetensors", "missing tensor 'h.1.mlp.c_fc.bias'", NULL);
    fx_free(&f);
}

Test(loader_bad_model, wrong_shape) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 21));
    tl_tensor *t = tl_model_find(&f.m, "h.0.attn.c_attn.weight");
    cr_assert_not_null(t);
    t->shape[0] = 24; /* transposed: the nn.Linear layout instead of Conv1D */
    t->shape[1] = 8;
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "'h.0.attn.c_attn.weight' has shape [24, 8], expected [8, 24]", "model.safetensors",
                NULL);
    fx_free(&f);
}

Test(loader_bad_model, wrong_vocab) {
    fixture f;
    tl_spec sp = tiny_spec("F32", 22);
    sp.vocab_size = 12;
    fx_make(&f, sp);
    f.sp.vocab_size = 11; /* config says 11, the checkpoint holds 12 rows */
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "'wte.weight' has shape [12, 8], expected [11, 8]", NULL, NULL);
    fx_free(&f);
}

Test(loader_bad_model, duplicate_across_layouts) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 23));
    uint64_t rng = 1;
    cr_assert_eq(tl_model_add(&f.m, "transformer.wte.weight", "F32", 2, 11, 8, 0, &rng), 0);
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "duplicates tensor", "wte.weight'", NULL);
    fx_free(&f);
}

Test(loader_bad_model, unexpected_tensor) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 24));
    uint64_t rng = 1;
    cr_assert_eq(tl_model_add(&f.m, "h.0.attn.q_proj.weight", "F32", 2, 8, 8, 0, &rng), 0);
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "unexpected tensor 'h.0.attn.q_proj.weight'", "model.safetensors", NULL);
    fx_free(&f);
}

Test(loader_bad_model, other_architecture) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 25));
    uint64_t rng = 1;
    cr_assert_eq(tl_model_add(&f.m, "model.embed_tokens.weight", "F32", 2, 11, 8, 0, &rng), 0);
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "unexpected tensor 'model.embed_tokens.weight'", NULL, NULL);
    fx_free(&f);
}

Test(loader_bad_model, leading_zero_layer_index) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 26));
    uint64_t rng = 1;
    cr_assert_eq(tl_model_add(&f.m, "h.01.ln_1.weight", "F32", 1, 8, 0, 0, &rng), 0);
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "unexpected tensor 'h.01.ln_1.weight'", NULL, NULL);
    fx_free(&f);
}

Test(loader_bad_model, layer_beyond_config) {
    fixture f;
    tl_spec sp = tiny_spec("F32", 27);
    sp.n_layer = 3;
    fx_make(&f, sp);
    f.sp.n_layer = 2;
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "is for layer 2, but config.json has n_layer 2", "'h.2.", NULL);
    fx_free(&f);
}

Test(loader_bad_model, parameter_in_i32) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 28));
    tl_tensor *t = tl_model_find(&f.m, "ln_f.bias");
    cr_assert_not_null(t);
    strcpy(t->dtype, "I32");
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "'ln_f.bias' has dtype I32", "F32, F16 or BF16", NULL);
    fx_free(&f);
}

Test(loader_bad_model, parameter_in_f64) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 29));
    tl_tensor *t = tl_model_find(&f.m, "h.0.ln_2.weight");
    cr_assert_not_null(t);
    strcpy(t->dtype, "F64");
    t->shape[0] = 4; /* 4 doubles = the 32 bytes of 8 floats */
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "'h.0.ln_2.weight' has shape [4], expected [8]", NULL, NULL);
    t->shape[0] = 8;
    uint8_t *grown = realloc(t->data, 64);
    cr_assert_not_null(grown);
    memset(grown + 32, 0x3f, 32);
    t->data = grown;
    t->nbytes = 64;
    fx_write(&f);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "'h.0.ln_2.weight' has dtype F64", NULL, NULL);
    fx_free(&f);
}

Test(loader_bad_model, no_weights_file) {
    char *dir = make_tmp();
    tl_spec sp = tiny_spec("F32", 0);
    cr_assert_eq(tl_write_config(dir, &sp, ""), 0);
    expect_fail(dir, GPT2_ERR_IO, dir, "no model.safetensors or model.safetensors.index.json", NULL);
    tl_rmtree(dir);
    free(dir);
}

/* NaN or Inf in any tensor, whatever its dtype, is refused at load with the tensor's name: one such
 * weight turns every logit it reaches into NaN. Each case puts one bad value in a different tensor. */
Test(loader_bad_model, non_finite_weights) {
    static const struct {
        const char *dtype, *tensor;
        uint32_t bits; /* F32 pattern, or the low 16 bits for F16/BF16 */
        size_t at;
        const char *what;
    } cases[] = {
        {"F32", "h.1.mlp.c_fc.weight", 0x7fc00000u, 17, "NaN"},  {"F32", "ln_f.bias", 0x7f800000u, 3, "+Inf"},
        {"F32", "wte.weight", 0xff800000u, 0, "-Inf"},           {"F32", "wpe.weight", 0x7f800001u, 5, "NaN"},
        {"F16", "h.0.attn.c_attn.bias", 0x7c00u, 2, "+Inf"},     {"F16", "h.0.ln_1.weight", 0xfe00u, 7, "NaN"},
        {"BF16", "h.1.attn.c_proj.weight", 0xff80u, 9, "-Inf"},  {"BF16", "lm_head.weight", 0x7fc1u, 1, "NaN"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        tl_spec sp = tiny_spec(cases[c].dtype, 40 + c);
        sp.lm_head = 1; /* an untied head, so that lm_head.weight is loaded and checked too */
        fixture f;
        fx_make(&f, sp);
        tl_tensor *t = tl_model_find(&f.m, cases[c].tensor);
        cr_assert(t, "%s", cases[c].tensor);
        size_t w = strcmp(cases[c].dtype, "F32") ? 2 : 4;
        for (size_t k = 0; k < w; k++) t->data[w * cases[c].at + k] = (uint8_t)(cases[c].bits >> (8 * k));
        fx_write(&f);
        char name[128], at[64];
        snprintf(name, sizeof name, "tensor '%s' holds a non-finite value", cases[c].tensor);
        snprintf(at, sizeof at, "(%s) at element %zu", cases[c].what, cases[c].at);
        expect_fail(f.dir, GPT2_ERR_FORMAT, "model.safetensors", name, at);
        fx_free(&f);
    }
}

/* Saying what is wrong with the path, not that a file is missing. */
Test(loader_bad_model, model_path_kinds) {
    char *dir = make_tmp();
    char *missing = tl_join(dir, "nope"), *file = tl_join(dir, "config.json");
    tl_spec sp = tiny_spec("F32", 50);
    cr_assert_eq(tl_write_config(dir, &sp, ""), 0);
    expect_fail(missing, GPT2_ERR_IO, missing, "model directory does not exist", NULL);
    expect_fail(file, GPT2_ERR_IO, file, "is a file, not a model directory", NULL);
    char *st = tl_join(dir, "model.safetensors");
    cr_assert_eq(mkdir(st, 0755), 0);
    expect_fail(dir, GPT2_ERR_IO, st, "is a directory, not a regular file", NULL);
    cr_assert_eq(rmdir(st), 0);
    cr_assert_eq(symlink("model.safetensors", st), 0); /* points at itself */
    expect_fail(dir, GPT2_ERR_IO, st, "symbolic link loop", NULL);
    cr_assert_eq(unlink(st), 0);
    cr_assert_eq(symlink("/dev/null", st), 0);
    expect_fail(dir, GPT2_ERR_IO, st, "is a character device, not a regular file", NULL);
    cr_assert_eq(unlink(st), 0);
    cr_assert_eq(symlink("gone.safetensors", st), 0);
    expect_fail(dir, GPT2_ERR_IO, st, "dangling symbolic link", NULL);
    cr_assert_eq(unlink(st), 0);
    cr_assert_eq(mkfifo(st, 0644), 0); /* must not block waiting for a writer */
    expect_fail(dir, GPT2_ERR_IO, st, "is a named pipe", NULL);
    cr_assert_eq(unlink(st), 0);
    /* the same for the index of a sharded checkpoint */
    char *idx = tl_join(dir, "model.safetensors.index.json");
    cr_assert_eq(mkdir(idx, 0755), 0);
    expect_fail(dir, GPT2_ERR_IO, idx, "is a directory", NULL);
    cr_assert_eq(rmdir(idx), 0);
    free(idx);
    free(st);
    free(missing);
    free(file);
    tl_rmtree(dir);
    free(dir);
}

Test(loader_bad_model, missing_config) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 30));
    fx_write(&f);
    char *p = tl_join(f.dir, "config.json");
    cr_assert_eq(unlink(p), 0);
    expect_fail(f.dir, GPT2_ERR_IO, p, "cannot open", NULL);
    free(p);
    fx_free(&f);
}

Test(loader_bad_model, null_arguments) {
    gpt2_model *m = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_model_load(NULL, &m, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_model_load("/tmp", NULL, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_config_load(NULL, NULL, NULL), GPT2_ERR_ARG);
    gpt2_model_free(NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* Sharded checkpoints gone wrong                                                                   */

Test(loader_bad_sharded, shard_name_escapes_directory) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 40));
    write_sharded(&f, "model-00001-of-00002.safetensors", "../model-00002-of-00002.safetensors");
    expect_fail(f.dir, GPT2_ERR_FORMAT, "model.safetensors.index.json", "\"../model-00002-of-00002.safetensors\"",
                "not a plain file name");
    fx_free(&f);
}

Test(loader_bad_sharded, shard_name_with_slash) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 41));
    write_sharded(&f, "sub/model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    expect_fail(f.dir, GPT2_ERR_FORMAT, "not a plain file name", NULL, NULL);
    fx_free(&f);
}

Test(loader_bad_sharded, missing_shard) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 42));
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00003-of-00002.safetensors");
    expect_fail(f.dir, GPT2_ERR_IO, "model-00003-of-00002.safetensors, which does not exist", "model.safetensors.index.json",
                NULL);
    fx_free(&f);
}

Test(loader_bad_sharded, tensor_not_in_its_shard) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 43));
    /* Both shards written, but the index sends every tensor to the first. */
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00001-of-00002.safetensors");
    expect_fail(f.dir, GPT2_ERR_FORMAT, "which does not contain it", "model-00001-of-00002.safetensors", NULL);
    fx_free(&f);
}

Test(loader_bad_sharded, duplicate_across_shards) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 44));
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    /* Shard 1 again, now also holding ln_f.bias, which the index maps to one shard only. */
    tl_tensor *lnfb = tl_model_find(&f.m, "ln_f.bias");
    cr_assert_not_null(lnfb);
    size_t idx = (size_t)(lnfb - f.m.t);
    tl_tensor *a = malloc(f.m.n * sizeof *a);
    size_t na = 0;
    for (size_t i = 0; i < f.m.n; i++)
        if (i % 2 == 0 || i == idx) a[na++] = f.m.t[i];
    write_st(f.dir, idx % 2 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors", a, na);
    free(a);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "tensor 'ln_f.bias' is also here", "duplicate across shards", NULL);
    fx_free(&f);
}

Test(loader_bad_sharded, tensor_missing_from_index) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 45));
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    cr_assert_eq(tl_write_in(f.dir, "model.safetensors.index.json",
                             "{\"weight_map\": {\"wte.weight\": \"model-00001-of-00002.safetensors\"}}"),
                 0);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "is not listed in", "model.safetensors.index.json", NULL);
    fx_free(&f);
}

Test(loader_bad_sharded, index_without_weight_map) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 46));
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    cr_assert_eq(tl_write_in(f.dir, "model.safetensors.index.json", "{\"metadata\": {}}"), 0);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "model.safetensors.index.json: no \"weight_map\"", NULL, NULL);
    cr_assert_eq(tl_write_in(f.dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 1, \"a\": 2}}"), 0);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "model.safetensors.index.json", "duplicate object key", NULL);
    fx_free(&f);
}

Test(loader_bad_sharded, bad_shard_file) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 47));
    write_sharded(&f, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    char *p = tl_join(f.dir, "model-00002-of-00002.safetensors");
    cr_assert_eq(truncate(p, 100), 0);
    expect_fail(f.dir, GPT2_ERR_FORMAT, p, NULL, NULL);
    free(p);
    fx_free(&f);
}

/* ---------------------------------------------------------------------------------------------- */
/* config.json                                                                                      */

/* gpt2_config_load on a config.json holding `text` fails with `want`, naming the file and `sub`. */
static void config_fails(const char *text, gpt2_status want, const char *sub, const char *sub2) {
    char *dir = make_tmp();
    cr_assert_eq(tl_write_in(dir, "config.json", text), 0);
    char *p = tl_join(dir, "config.json");
    gpt2_config c;
    gpt2_error err = {0};
    gpt2_status s = gpt2_config_load(p, &c, &err);
    cr_assert_eq(s, want, "%s -> %d (%s), want %d", text, s, err.msg, want);
    cr_assert_not_null(strstr(err.msg, p), "message \"%s\" does not name %s", err.msg, p);
    cr_assert_not_null(strstr(err.msg, sub), "message \"%s\" lacks \"%s\"", err.msg, sub);
    if (sub2) cr_assert_not_null(strstr(err.msg, sub2), "message \"%s\" lacks \"%s\"", err.msg, sub2);
    free(p);
    tl_rmtree(dir);
    free(dir);
}

#define CFG_BASE "\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11"

Test(loader_bad_config, missing_field) {
    config_fails("{\"n_layer\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11}", GPT2_ERR_FORMAT,
                 "missing field 'n_head'", NULL);
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 11}", GPT2_ERR_FORMAT,
                 "missing field 'n_positions' (or 'n_ctx')", NULL);
}

Test(loader_bad_config, not_divisible) {
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 9, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_embd' (9) is not divisible by 'n_head' (2)", NULL);
}

Test(loader_bad_config, negative_or_zero) {
    config_fails("{\"n_layer\": -1, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_layer' is -1", NULL);
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 0, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_positions' is 0", NULL);
}

Test(loader_bad_config, out_of_bounds) {
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 1048577}",
                 GPT2_ERR_CONFIG, "'vocab_size' is 1048577, outside 1..1048576", NULL);
    config_fails("{\"n_layer\": 257, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_layer' is 257", NULL);
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16386, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_embd' is 16386", NULL);
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"n_ctx\": 65537, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_ctx' is 65537", NULL);
    config_fails("{\"n_layer\": 4294967298, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_CONFIG, "'n_layer' is 4294967298", NULL);
    config_fails("{\"n_layer\": 99999999999999999999, \"n_head\": 2}", GPT2_ERR_FORMAT, "too big integer", NULL);
}

Test(loader_bad_config, not_integers) {
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8.0, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_FORMAT, "field 'n_embd' must be an integer", NULL);
    config_fails("{\"n_layer\": \"2\", \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_FORMAT, "field 'n_layer' must be an integer", NULL);
    config_fails("{\"n_layer\": 2, \"n_head\": true, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 11}",
                 GPT2_ERR_FORMAT, "field 'n_head' must be an integer", NULL);
    config_fails("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"n_positions\": 16, \"vocab_size\": 1e30}",
                 GPT2_ERR_FORMAT, "field 'vocab_size' must be an integer", NULL);
}

Test(loader_bad_config, unsupported_activation) {
    config_fails("{" CFG_BASE ", \"activation_function\": \"relu\"}", GPT2_ERR_CONFIG,
                 "field 'activation_function' is \"relu\"", NULL);
    config_fails("{" CFG_BASE ", \"activation_function\": \"gelu\"}", GPT2_ERR_CONFIG,
                 "field 'activation_function' is \"gelu\"", NULL);
    config_fails("{" CFG_BASE ", \"activation_function\": 3}", GPT2_ERR_FORMAT,
                 "field 'activation_function' must be a string", NULL);
}

Test(loader_bad_config, duplicate_key) {
    config_fails("{" CFG_BASE ", \"n_layer\": 3}", GPT2_ERR_FORMAT, "duplicate object key", NULL);
}

Test(loader_bad_config, epsilon) {
    config_fails("{" CFG_BASE ", \"layer_norm_epsilon\": 0}", GPT2_ERR_CONFIG, "'layer_norm_epsilon' is 0", NULL);
    config_fails("{" CFG_BASE ", \"layer_norm_epsilon\": 1.5}", GPT2_ERR_CONFIG, "'layer_norm_epsilon' is 1.5", NULL);
    config_fails("{" CFG_BASE ", \"layer_norm_epsilon\": -1e-5}", GPT2_ERR_CONFIG, "'layer_norm_epsilon'", NULL);
    config_fails("{" CFG_BASE ", \"layer_norm_epsilon\": 1e-60}", GPT2_ERR_CONFIG, "'layer_norm_epsilon'", NULL);
    config_fails("{" CFG_BASE ", \"layer_norm_epsilon\": \"1e-5\"}", GPT2_ERR_FORMAT,
                 "'layer_norm_epsilon' must be a number", NULL);
}

Test(loader_bad_config, other_architectures_and_variants) {
    config_fails("{" CFG_BASE ", \"model_type\": \"gpt_bigcode\"}", GPT2_ERR_CONFIG, "'model_type'", "gpt_bigcode");
    config_fails("{" CFG_BASE ", \"n_inner\": 24}", GPT2_ERR_CONFIG, "'n_inner' is 24", "4 * n_embd (32)");
    config_fails("{" CFG_BASE ", \"scale_attn_by_inverse_layer_idx\": true}", GPT2_ERR_CONFIG,
                 "'scale_attn_by_inverse_layer_idx' = true", NULL);
    config_fails("{" CFG_BASE ", \"scale_attn_weights\": false}", GPT2_ERR_CONFIG, "'scale_attn_weights' = false", NULL);
    config_fails("{" CFG_BASE ", \"tie_word_embeddings\": 1}", GPT2_ERR_FORMAT, "'tie_word_embeddings'", NULL);
}

Test(loader_bad_config, not_json_or_not_object) {
    config_fails("{\"n_layer\": 2,", GPT2_ERR_FORMAT, "line 1", NULL);
    config_fails("[1, 2]", GPT2_ERR_FORMAT, "not a JSON object", NULL);
    config_fails("", GPT2_ERR_FORMAT, "line", NULL);
}

Test(loader_bad_config, through_model_load) {
    fixture f;
    fx_make(&f, tiny_spec("F32", 50));
    fx_write(&f);
    cr_assert_eq(tl_write_config(f.dir, &f.sp, ",\n  \"activation_function\": \"relu\""), 0);
    expect_fail(f.dir, GPT2_ERR_FORMAT, "config.json", "duplicate object key", NULL);
    cr_assert_eq(tl_write_in(f.dir, "config.json", "{" CFG_BASE ", \"activation_function\": \"relu\"}"), 0);
    expect_fail(f.dir, GPT2_ERR_CONFIG, "config.json", "'activation_function' is \"relu\"", NULL);
    fx_free(&f);
}

/* ---------------------------------------------------------------------------------------------- */
/* Against the reference implementations (Python safetensors, torch, transformers) when present    */

static int python_has(const char *modules) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "python3 -c 'import %s' >/dev/null 2>&1", modules);
    int r = system(cmd);
    return r != -1 && WIFEXITED(r) && WEXITSTATUS(r) == 0;
}

/* The reference safetensors reader agrees on which files are malformed (and reads our writer's). */
Test(loader_reference, reference_reader_agrees) {
    if (!python_has("safetensors, numpy")) cr_skip_test("python3 with safetensors and numpy not found");
    char *dir = make_tmp();
    tl_str list = {0};
    for (size_t i = 0; i < N_ST_CASES; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s/%s.safetensors", dir, ST_CASES[i].label);
        write_st_case(name, &ST_CASES[i]);
        tl_str_add(&list, "%s %d\n", name, ST_CASES[i].ref_rejects);
    }
    fixture f;
    tl_spec sp = tiny_spec("BF16", 60);
    sp.any_bits = 1;
    fx_make(&f, sp);
    char *good = tl_join(dir, "good.safetensors");
    cr_assert_eq(tl_write_safetensors(good, f.m.t, f.m.n), 0);
    tl_str_add(&list, "%s 0\n", good);
    char *listp = tl_join(dir, "list.txt"), *script = tl_join(dir, "check.py");
    cr_assert_eq(tl_write_text(listp, list.s), 0);
    cr_assert_eq(tl_write_text(script,
                               "import sys\n"
                               "from safetensors import safe_open\n"
                               "bad = 0\n"
                               "for line in open(sys.argv[1]):\n"
                               "    path, want = line.rsplit(' ', 1)\n"
                               "    try:\n"
                               "        with safe_open(path, 'numpy') as f: list(f.keys())\n"
                               "        got = 0\n"
                               "    except Exception as e:\n"
                               "        got = 1\n"
                               "    if got != int(want):\n"
                               "        print('disagree', path, 'reference rejects' if got else 'reference accepts')\n"
                               "        bad += 1\n"
                               "sys.exit(1 if bad else 0)\n"),
                 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 %s %s", script, listp);
    int r = system(cmd);
    cr_assert(r != -1 && WIFEXITED(r) && WEXITSTATUS(r) == 0, "the reference reader disagrees (see above)");
    /* And we refuse every malformed one and accept the good one. */
    for (size_t i = 0; i < N_ST_CASES; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s/%s.safetensors", dir, ST_CASES[i].label);
        gpt2_st_file st;
        gpt2_error err = {0};
        cr_assert_eq(gpt2_st_open(name, &st, &err), GPT2_ERR_FORMAT, "%s accepted", name);
        cr_assert_not_null(strstr(err.msg, name), "%s", err.msg);
    }
    gpt2_st_file st;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_st_open(good, &st, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(st.n_tensors, f.m.n);
    gpt2_st_close(&st);
    free(list.s);
    free(listp);
    free(script);
    free(good);
    fx_free(&f);
    tl_rmtree(dir);
    free(dir);
}

/* Checkpoints written by transformers' save_pretrained (F32 tied, F16 untied and sharded, BF16 with
 * special values) load to exactly the float32 values torch gives, in the documented layout. */
Test(loader_reference, transformers_save_pretrained) {
    if (!python_has("torch, transformers, numpy")) cr_skip_test("python3 with torch and transformers not found");
    char *dir = make_tmp();
    char *script = tl_join(dir, "make.py");
    cr_assert_eq(
        tl_write_text(
            script,
            "import os, sys, warnings\n"
            "os.environ['TQDM_DISABLE'] = '1'\n"
            "os.environ['HF_HUB_DISABLE_PROGRESS_BARS'] = '1'\n"
            "warnings.filterwarnings('ignore')\n"
            "import numpy as np, torch\n"
            "from transformers import GPT2Config, GPT2LMHeadModel\n"
            "from transformers.utils import logging\n"
            "logging.set_verbosity_error()\n"
            "logging.disable_progress_bar()\n"
            "root = sys.argv[1]\n"
            "K = ['ln_1.weight','ln_1.bias','attn.c_attn.weight','attn.c_attn.bias','attn.c_proj.weight',\n"
            "     'attn.c_proj.bias','ln_2.weight','ln_2.bias','mlp.c_fc.weight','mlp.c_fc.bias','mlp.c_proj.weight',\n"
            "     'mlp.c_proj.bias']\n"
            "def make(name, dtype, tie, shard):\n"
            "    torch.manual_seed(len(name))\n"
            "    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=11,\n"
            "                     tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0)\n"
            "    m = GPT2LMHeadModel(cfg).eval()\n"
            "    with torch.no_grad():\n"
            "        for p in m.parameters(): p.normal_(0, 0.5)\n"
            "        m.transformer.wte.weight[0, :5] = torch.tensor([65504.0, -65504.0, -0.0, 3e-7, -2e-6])\n"
            "        if name == 'nan': m.transformer.h[1].mlp.c_proj.bias[3] = float('nan')\n"
            "    m = m.to(dtype)\n"
            "    d = os.path.join(root, name)\n"
            "    m.save_pretrained(d, safe_serialization=True, **({'max_shard_size': '1KB'} if shard else {}))\n"
            "    sd = {k: v.float() for k, v in m.state_dict().items()}\n"
            "    t = 'transformer.'\n"
            "    parts = [sd[t + 'wte.weight'], sd[t + 'wpe.weight']]\n"
            "    for k in K: parts += [sd[t + 'h.%d.%s' % (l, k)] for l in range(2)]\n"
            "    parts += [sd[t + 'ln_f.weight'], sd[t + 'ln_f.bias']]\n"
            "    if not tie: parts.append(sd['lm_head.weight'])\n"
            "    np.concatenate([p.numpy().ravel() for p in parts]).astype('<f4').tofile(os.path.join(d, 'expected.f32'))\n"
            "make('f32', torch.float32, True, False)\n"
            "make('f16', torch.float16, False, True)\n"
            "make('bf16', torch.bfloat16, True, False)\n"
            "make('nan', torch.float16, True, False)\n"),
        0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 %s %s", script, dir);
    int r = system(cmd);
    cr_assert(r != -1 && WIFEXITED(r) && WEXITSTATUS(r) == 0, "%s failed", script);
    const char *names[3] = {"f32", "f16", "bf16"};
    for (int i = 0; i < 3; i++) {
        char *sub = tl_join(dir, names[i]);
        char *exp = tl_join(sub, "expected.f32");
        char *want = NULL;
        size_t n = 0;
        gpt2_error err = {0};
        cr_assert_eq(gpt2_read_file(exp, 1u << 24, &want, &n, &err), GPT2_OK, "%s", err.msg);
        if (i == 1) {
            char *idx = tl_join(sub, "model.safetensors.index.json");
            cr_assert(gpt2_file_exists(idx), "transformers did not shard %s", sub);
            free(idx);
        }
        gpt2_model *m = load_ok(sub);
        check_layout(m, i == 1);
        cr_assert_eq(n, m->w.n_floats * sizeof(float), "%s: %zu bytes expected, model has %zu floats", sub, n,
                     m->w.n_floats);
        size_t bad = 0, first = 0;
        for (size_t k = 0; k < m->w.n_floats; k++) {
            float w;
            memcpy(&w, want + 4 * k, 4);
            int ok = isnan(w) ? isnan(m->w.memory[k]) : memcmp(&w, &m->w.memory[k], 4) == 0;
            if (!ok && bad++ == 0) first = k;
        }
        cr_assert_eq(bad, 0, "%s: %zu of %zu floats differ from torch, first at %zu", sub, bad, m->w.n_floats, first);
        gpt2_model_free(m);
        free(want);
        free(exp);
        free(sub);
    }
    /* A checkpoint transformers saved with a NaN in it: refused, naming the tensor. */
    char *nan_dir = tl_join(dir, "nan");
    expect_fail(nan_dir, GPT2_ERR_FORMAT, "tensor 'transformer.h.1.mlp.c_proj.bias' holds a non-finite value",
                "(NaN) at element 3", NULL);
    free(nan_dir);
    free(script);
    tl_rmtree(dir);
    free(dir);
}
