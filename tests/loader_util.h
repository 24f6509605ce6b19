/* loader_util.h: writing safetensors files and random GPT-2 model directories at test time.
 *
 * Independent of src/: the writer follows the safetensors format description (8-byte little-endian
 * header length, JSON header padded with spaces to a multiple of 8, tensors back to back), and the
 * fixtures are random from a seeded generator, so any test can build a model directory in a temporary
 * folder. Functions return 0 on success and -1 on failure; callers assert.
 */
#ifndef GPT2_TESTS_LOADER_UTIL_H
#define GPT2_TESTS_LOADER_UTIL_H

#include <limits.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------- */
/* Random numbers: splitmix64, reproducible across platforms.                                      */

static inline uint64_t tl_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float tl_rand_float(uint64_t *s) { return (float)((double)(tl_rand(s) >> 40) / (double)(1 << 23) - 1.0); }

/* ---------------------------------------------------------------------------------------------- */
/* Files                                                                                            */

static inline int tl_write_bytes(const char *path, const void *a, size_t na, const void *b, size_t nb) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = (na == 0 || fwrite(a, 1, na, f) == na) && (nb == 0 || fwrite(b, 1, nb, f) == nb);
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static inline int tl_write_text(const char *path, const char *text) {
    return tl_write_bytes(path, text, strlen(text), NULL, 0);
}

static inline char *tl_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Writes `text` to dir/name. */
static inline int tl_write_in(const char *dir, const char *name, const char *text) {
    char *p = tl_join(dir, name);
    int r = p ? tl_write_text(p, text) : -1;
    free(p);
    return r;
}

/* A safetensors image by hand: header length `hlen` (which may lie), `header` bytes, then `data`. */
static inline int tl_write_raw(const char *path, uint64_t hlen, const char *header, size_t header_n, const void *data,
                               size_t data_n) {
    size_t n = 8 + header_n;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return -1;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, header_n);
    int r = tl_write_bytes(path, buf, n, data, data_n);
    free(buf);
    return r;
}

/* Same, with the true header length and the header as a C string. */
static inline int tl_write_st_text(const char *path, const char *header, const void *data, size_t data_n) {
    return tl_write_raw(path, strlen(header), header, strlen(header), data, data_n);
}

static inline int tl_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* rm -rf dir */
static inline void tl_rmtree(const char *dir) { nftw(dir, tl_rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* ---------------------------------------------------------------------------------------------- */
/* Tensors and the safetensors writer                                                               */

typedef struct {
    char name[96];
    char dtype[16];
    size_t n_dims;
    uint64_t shape[4];
    uint8_t *data; /* owned, nbytes */
    size_t nbytes;
} tl_tensor;

/* A growable string. */
typedef struct {
    char *s;
    size_t n, cap;
    int bad;
} tl_str;

static inline void tl_str_add(tl_str *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void tl_str_add(tl_str *b, const char *fmt, ...) {
    if (b->bad) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->bad = 1;
            return;
        }
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 256) + (size_t)k;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->bad = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

/* Writes tensors ts[0..n) to path in that order, with {"format": "pt"} metadata. */
static inline int tl_write_safetensors(const char *path, const tl_tensor *ts, size_t n) {
    tl_str h = {0};
    tl_str_add(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        tl_str_add(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", ts[i].name, ts[i].dtype);
        for (size_t d = 0; d < ts[i].n_dims; d++)
            tl_str_add(&h, "%s%llu", d ? "," : "", (unsigned long long)ts[i].shape[d]);
        tl_str_add(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + ts[i].nbytes);
        off += ts[i].nbytes;
    }
    tl_str_add(&h, "}");
    while (!h.bad && h.n % 8 != 0) tl_str_add(&h, " ");
    uint8_t *data = malloc(off ? off : 1);
    int r = -1;
    if (!h.bad && data) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (ts[i].nbytes) memcpy(data + k, ts[i].data, ts[i].nbytes);
            k += ts[i].nbytes;
        }
        r = tl_write_raw(path, h.n, h.s, h.n, data, off);
    }
    free(data);
    free(h.s);
    return r;
}

/* ---------------------------------------------------------------------------------------------- */
/* Random GPT-2 models                                                                              */

typedef struct {
    int n_layer, n_head, n_embd, n_positions, vocab_size;
    const char *dtype; /* "F32", "F16" or "BF16" */
    int prefix;        /* 1: save_pretrained names ("transformer.h.0..."); 0: hub names ("h.0...") */
    int lm_head;       /* 0: none (tied); 1: a distinct random lm_head.weight; 2: a byte copy of wte */
    int any_bits;      /* 1: every bit pattern (NaN, inf, subnormals); 0: ordinary values in [-1, 1) */
    uint64_t seed;
} tl_spec;

typedef struct {
    size_t n;
    tl_tensor *t; /* (n), shuffled file order */
} tl_model;

static inline void tl_model_free(tl_model *m) {
    if (!m->t) return;
    for (size_t i = 0; i < m->n; i++) free(m->t[i].data);
    free(m->t);
    m->t = NULL;
    m->n = 0;
}

/* Appends a tensor of random contents in dtype. */
static inline int tl_model_add(tl_model *m, const char *name, const char *dtype, size_t n_dims, uint64_t d0,
                               uint64_t d1, int any_bits, uint64_t *rng) {
    tl_tensor *t = realloc(m->t, (m->n + 1) * sizeof *t);
    if (!t) return -1;
    m->t = t;
    tl_tensor *x = &m->t[m->n];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    snprintf(x->dtype, sizeof x->dtype, "%s", dtype);
    x->n_dims = n_dims;
    x->shape[0] = d0;
    x->shape[1] = d1;
    size_t count = n_dims == 2 ? (size_t)(d0 * d1) : (size_t)d0;
    size_t width = strcmp(dtype, "F32") == 0 ? 4 : 2;
    x->nbytes = count * width;
    if (!(x->data = malloc(x->nbytes ? x->nbytes : 1))) return -1;
    m->n++;
    for (size_t i = 0; i < count; i++) {
        float f = tl_rand_float(rng);
        uint32_t b;
        memcpy(&b, &f, 4);
        uint64_t r = tl_rand(rng);
        if (width == 4) {
            if (any_bits) b = (uint32_t)r;
            for (int k = 0; k < 4; k++) x->data[4 * i + k] = (uint8_t)(b >> (8 * k));
            continue;
        }
        uint16_t h;
        if (any_bits) h = (uint16_t)r;
        else if (strcmp(dtype, "BF16") == 0) h = (uint16_t)(b >> 16);
        else h = (uint16_t)((r & 0x8000u) | (uint16_t)(9 + r % 6) << 10 | ((r >> 16) & 0x3ffu)); /* 2^-6 .. 1 */
        x->data[2 * i] = (uint8_t)h;
        x->data[2 * i + 1] = (uint8_t)(h >> 8);
    }
    return 0;
}

/* Per-layer parameter names (after "h.{l}.") and shape kinds, as transformers names them. */
static const struct {
    const char *name;
    int rows, cols; /* in units of C; cols 0 for a vector */
} TL_LAYER_PARAMS[12] = {
    {"ln_1.weight", 1, 0},       {"ln_1.bias", 1, 0},       {"attn.c_attn.weight", 1, 3}, {"attn.c_attn.bias", 3, 0},
    {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 1, 0}, {"ln_2.weight", 1, 0},        {"ln_2.bias", 1, 0},
    {"mlp.c_fc.weight", 1, 4},   {"mlp.c_fc.bias", 4, 0},   {"mlp.c_proj.weight", 4, 1},  {"mlp.c_proj.bias", 1, 0},
};

/* Builds every tensor of a GPT-2 with spec sp, in a shuffled order. */
static inline int tl_model_make(const tl_spec *sp, tl_model *m) {
    memset(m, 0, sizeof *m);
    uint64_t rng = sp->seed;
    const char *pre = sp->prefix ? "transformer." : "";
    uint64_t C = (uint64_t)sp->n_embd;
    char name[96];
    int r = 0;
    snprintf(name, sizeof name, "%swte.weight", pre);
    r |= tl_model_add(m, name, sp->dtype, 2, (uint64_t)sp->vocab_size, C, sp->any_bits, &rng);
    snprintf(name, sizeof name, "%swpe.weight", pre);
    r |= tl_model_add(m, name, sp->dtype, 2, (uint64_t)sp->n_positions, C, sp->any_bits, &rng);
    for (int l = 0; l < sp->n_layer && !r; l++) {
        for (int k = 0; k < 12 && !r; k++) {
            snprintf(name, sizeof name, "%sh.%d.%s", pre, l, TL_LAYER_PARAMS[k].name);
            uint64_t d0 = (uint64_t)TL_LAYER_PARAMS[k].rows * C, d1 = (uint64_t)TL_LAYER_PARAMS[k].cols * C;
            r |= tl_model_add(m, name, sp->dtype, d1 ? 2 : 1, d0, d1, sp->any_bits, &rng);
        }
    }
    snprintf(name, sizeof name, "%sln_f.weight", pre);
    r |= tl_model_add(m, name, sp->dtype, 1, C, 0, sp->any_bits, &rng);
    snprintf(name, sizeof name, "%sln_f.bias", pre);
    r |= tl_model_add(m, name, sp->dtype, 1, C, 0, sp->any_bits, &rng);
    if (!r && sp->lm_head) {
        r |= tl_model_add(m, "lm_head.weight", sp->dtype, 2, (uint64_t)sp->vocab_size, C, sp->any_bits, &rng);
        if (!r && sp->lm_head == 2) memcpy(m->t[m->n - 1].data, m->t[0].data, m->t[0].nbytes);
    }
    if (r) {
        tl_model_free(m);
        return -1;
    }
    for (size_t i = m->n; i > 1; i--) { /* Fisher-Yates: the loader must not depend on file order */
        size_t j = (size_t)(tl_rand(&rng) % i);
        tl_tensor t = m->t[i - 1];
        m->t[i - 1] = m->t[j];
        m->t[j] = t;
    }
    return 0;
}

/* The tensor called name, or NULL. */
static inline tl_tensor *tl_model_find(tl_model *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->t[i].name, name) == 0) return &m->t[i];
    return NULL;
}

/* Removes the tensor called name; -1 when absent. */
static inline int tl_model_remove(tl_model *m, const char *name) {
    tl_tensor *t = tl_model_find(m, name);
    if (!t) return -1;
    free(t->data);
    *t = m->t[--m->n];
    return 0;
}

/* dir/config.json for sp, with `extra` (",\"key\": value" pairs or "") spliced in. */
static inline int tl_write_config(const char *dir, const tl_spec *sp, const char *extra) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\n  \"model_type\": \"gpt2\",\n  \"activation_function\": \"gelu_new\",\n"
             "  \"n_layer\": %d,\n  \"n_head\": %d,\n  \"n_embd\": %d,\n  \"n_positions\": %d,\n"
             "  \"vocab_size\": %d,\n  \"layer_norm_epsilon\": 1e-05%s\n}\n",
             sp->n_layer, sp->n_head, sp->n_embd, sp->n_positions, sp->vocab_size, extra ? extra : "");
    return tl_write_in(dir, "config.json", text);
}

/* A complete model directory: config.json and model.safetensors. */
static inline int tl_write_model_dir(const char *dir, const tl_spec *sp, const tl_model *m) {
    char *p = tl_join(dir, "model.safetensors");
    int r = (!p || tl_write_config(dir, sp, "") || tl_write_safetensors(p, m->t, m->n)) ? -1 : 0;
    free(p);
    return r;
}

/* A model whose weights are finite but whose forward overflows on one token: every position embedding
 * and the token embedding of " fox" (21831) are 3e38 in every channel. Other tokens give 3e38 + small
 * = 3e38 in all channels, which the layer norms turn into their bias (finite); " fox" gives
 * 3e38 + 3e38 = inf, and its layer norm inf - inf = NaN, which its keys and values carry to the rest of
 * that sequence. Untied head, so only sequences holding " fox" are hit. Links the real tokenizer
 * (tests/data/gpt2-tokenizer, relative to the repository root) into dir. 0 ok, -1 on failure. */
static inline int tl_write_overflowing_model(const char *dir) {
    tl_spec sp = {.n_layer = 1, .n_head = 2, .n_embd = 8, .n_positions = 32, .vocab_size = 50257, .dtype = "F32",
                  .lm_head = 1, .seed = 77};
    tl_model m;
    if (tl_model_make(&sp, &m)) return -1;
    tl_tensor *wte = tl_model_find(&m, "wte.weight"), *wpe = tl_model_find(&m, "wpe.weight");
    int r = -1;
    if (!wte || !wpe) goto out;
    const float big = 3e38f;
    for (int c = 0; c < 8; c++) memcpy(wte->data + 4 * ((size_t)21831 * 8 + (size_t)c), &big, 4); /* " fox" */
    for (size_t k = 0; k + 4 <= wpe->nbytes; k += 4) memcpy(wpe->data + k, &big, 4);
    if (tl_write_model_dir(dir, &sp, &m)) goto out;
    char tokdir[PATH_MAX], src[PATH_MAX + 32], dst[PATH_MAX + 32];
    if (!realpath("tests/data/gpt2-tokenizer", tokdir)) goto out;
    const char *files[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", tokdir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (symlink(src, dst)) goto out;
    }
    r = 0;
out:
    tl_model_free(&m);
    return r;
}

#endif /* GPT2_TESTS_LOADER_UTIL_H */
