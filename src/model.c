/* model.c: loading a Hugging Face GPT-2 directory (config.json + safetensors) into one float32
 * allocation.
 *
 * Every tensor in the checkpoint must be a GPT-2 parameter (hub names "h.0.ln_1.weight" or
 * save_pretrained names "transformer.h.0.ln_1.weight") or one of the attention-mask buffers old
 * checkpoints carry; anything else means another architecture, and is refused rather than half-loaded.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors.h"
#include "tensors.h"
#include "util.h"

#define MAX_INDEX_BYTES (64u << 20)
#define SAVE_PRETRAINED_PREFIX "transformer."

typedef struct {
    const gpt2_st_tensor *t; /* NULL until found */
    const char *file;        /* the file it came from, for messages */
} slot;

typedef struct {
    const gpt2_config *cfg;
    slot *slots;             /* (GPT2_N_TENSORS, L): slots[k * L + l]; non-layer kinds use l = 0 */
    gpt2_st_file *files;     /* (n_files) open safetensors files */
    size_t n_files, cap_files;
    const char **shard_names;/* (n_files) for a sharded checkpoint: names as the index gives them */
    json_t *index;           /* the parsed index, when sharded */
} loader;

typedef enum { NAME_PARAM, NAME_BUFFER, NAME_UNKNOWN, NAME_BAD_LAYER } name_class;

/* Sorts a tensor name into a parameter (kind, layer), an ignorable buffer, an unknown name, or a
 * layer index at or beyond n_layer (which would mean the config and checkpoint disagree). */
static name_class classify(const char *name, int n_layer, int *kind, long *layer) {
    if (strcmp(name, gpt2_tensors[GPT2_T_LMHEAD].name) == 0) {
        *kind = GPT2_T_LMHEAD;
        *layer = 0;
        return NAME_PARAM;
    }
    const char *s = name;
    if (strncmp(s, SAVE_PRETRAINED_PREFIX, strlen(SAVE_PRETRAINED_PREFIX)) == 0) s += strlen(SAVE_PRETRAINED_PREFIX);
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (!gpt2_tensors[k].per_layer && k != GPT2_T_LMHEAD && strcmp(s, gpt2_tensors[k].name) == 0) {
            *kind = k;
            *layer = 0;
            return NAME_PARAM;
        }
    }
    if (strncmp(s, "h.", 2) != 0) return NAME_UNKNOWN;
    s += 2;
    /* A decimal layer index without leading zeros, so "h.01." cannot alias "h.1.". */
    long l = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9' && p - s < 7) l = l * 10 + (*p++ - '0');
    if (p == s || *p != '.' || (p - s > 1 && s[0] == '0')) return NAME_UNKNOWN;
    const char *rest = p + 1;
    name_class found = NAME_UNKNOWN;
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (gpt2_tensors[k].per_layer && strcmp(rest, gpt2_tensors[k].name) == 0) {
            *kind = k;
            found = NAME_PARAM;
        }
    }
    /* Causal-mask buffers that older transformers saved with the weights. */
    if (strcmp(rest, "attn.bias") == 0 || strcmp(rest, "attn.masked_bias") == 0) found = NAME_BUFFER;
    if (found == NAME_UNKNOWN) return NAME_UNKNOWN;
    *layer = l;
    if (l >= n_layer) return NAME_BAD_LAYER;
    return found;
}

/* Records tensor t (from `file`) in its slot. */
static gpt2_status assign(loader *ld, const gpt2_st_tensor *t, const char *file, gpt2_error *err) {
    int kind = 0;
    long layer = 0;
    switch (classify(t->name, ld->cfg->n_layer, &kind, &layer)) {
    case NAME_BUFFER: return GPT2_OK;
    case NAME_UNKNOWN:
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: unexpected tensor '%s': not a GPT-2 parameter", file, t->name);
    case NAME_BAD_LAYER:
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' is for layer %ld, but config.json has n_layer %d",
                         file, t->name, layer, ld->cfg->n_layer);
    case NAME_PARAM: break;
    }
    slot *sl = &ld->slots[(size_t)kind * (size_t)ld->cfg->n_layer + (size_t)layer];
    if (sl->t)
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' duplicates tensor '%s' in %s", file, t->name,
                         sl->t->name, sl->file);
    sl->t = t;
    sl->file = file;
    return GPT2_OK;
}

/* Checks the tensor of kind k against the config: shape and a dtype we can convert. */
static gpt2_status check_tensor(const loader *ld, int k, const slot *sl, gpt2_error *err) {
    uint64_t want[2];
    size_t nd = gpt2_tensor_shape(ld->cfg, (gpt2_tensor_kind)k, want);
    const gpt2_st_tensor *t = sl->t;
    if (t->n_dims != nd || memcmp(t->shape, want, nd * sizeof *want) != 0) {
        char got_s[256], want_s[64];
        gpt2_st_format_shape(t->shape, t->n_dims, got_s, sizeof got_s);
        gpt2_st_format_shape(want, nd, want_s, sizeof want_s);
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", sl->file, t->name, got_s,
                         want_s);
    }
    if (t->dtype != GPT2_ST_F32 && t->dtype != GPT2_ST_F16 && t->dtype != GPT2_ST_BF16)
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' has dtype %s; parameters must be F32, F16 or BF16",
                         sl->file, t->name, gpt2_st_dtype_name(t->dtype));
    return GPT2_OK;
}

/* What a checkpoint path is, for messages that say why it cannot be read (a directory, a device, a
 * symlink loop) rather than that it is missing. Returns GPT2_OK with *present 0 when nothing is there
 * (not even a dangling link), 1 for a regular file (through links); anything else is an error. */
static gpt2_status probe_file(const char *path, int *present, gpt2_error *err) {
    struct stat ls, st;
    *present = 0;
    if (lstat(path, &ls) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) return GPT2_OK;
        return gpt2_fail(err, GPT2_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (stat(path, &st) != 0) {
        if (errno == ELOOP) return gpt2_fail(err, GPT2_ERR_IO, "%s: symbolic link loop (too many levels of links)", path);
        if (errno == ENOENT) return gpt2_fail(err, GPT2_ERR_IO, "%s: dangling symbolic link (its target does not exist)", path);
        return gpt2_fail(err, GPT2_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    const char *what = S_ISREG(st.st_mode)  ? NULL
                       : S_ISDIR(st.st_mode) ? "a directory"
                       : S_ISCHR(st.st_mode) ? "a character device"
                       : S_ISBLK(st.st_mode) ? "a block device"
                       : S_ISFIFO(st.st_mode) ? "a named pipe"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a regular file";
    if (what) return gpt2_fail(err, GPT2_ERR_IO, "%s: is %s, not a regular file", path, what);
    *present = 1;
    return GPT2_OK;
}

/* The model directory itself: missing, or a file given where the directory was meant. */
static gpt2_status check_model_dir(const char *dir, gpt2_error *err) {
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT) return gpt2_fail(err, GPT2_ERR_IO, "%s: model directory does not exist", dir);
        return gpt2_fail(err, GPT2_ERR_IO, "%s: cannot open model directory: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return gpt2_fail(err, GPT2_ERR_IO,
                         "%s: is a file, not a model directory (give the directory holding config.json and "
                         "model.safetensors)", dir);
    return GPT2_OK;
}

/* Weights must be finite after conversion: one NaN or Inf turns every logit it reaches into NaN,
 * which would otherwise surface only as garbage tokens at generation time. */
static gpt2_status check_finite(const float *x, size_t n, const slot *sl, gpt2_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (%s) at element %zu",
                             sl->file, sl->t->name, isnan(x[i]) ? "NaN" : x[i] > 0 ? "+Inf" : "-Inf", i);
    }
    return GPT2_OK;
}

static gpt2_status add_file(loader *ld, const char *path, gpt2_st_file **out, gpt2_error *err) {
    if (ld->n_files == ld->cap_files) {
        size_t cap = ld->cap_files ? 2 * ld->cap_files : 4;
        gpt2_st_file *f = realloc(ld->files, cap * sizeof *f);
        if (!f) return gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", path);
        ld->files = f;
        const char **names = realloc(ld->shard_names, cap * sizeof *names);
        if (!names) return gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", path);
        ld->shard_names = names;
        ld->cap_files = cap;
    }
    gpt2_status s = gpt2_st_open(path, &ld->files[ld->n_files], err);
    if (s) return s;
    ld->shard_names[ld->n_files] = NULL;
    *out = &ld->files[ld->n_files++];
    return GPT2_OK;
}

static gpt2_status load_single(loader *ld, const char *path, gpt2_error *err) {
    gpt2_st_file *f;
    gpt2_status s = add_file(ld, path, &f, err);
    for (size_t i = 0; !s && i < f->n_tensors; i++) s = assign(ld, &f->tensors[i], f->name, err);
    return s;
}

/* A shard named by the index must be a plain file name inside the model directory. */
static int plain_file_name(const char *s) {
    return s[0] != '\0' && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

/* DIR/model.safetensors.index.json: {"metadata": ..., "weight_map": {tensor: shard file}}. Each tensor
 * is taken from the shard the map names; a shard's tensor the map does not send there is an error
 * (a duplicate across shards, or a stale index). */
static gpt2_status load_sharded(loader *ld, const char *dir, const char *index_path, gpt2_error *err) {
    char *text = NULL, *shard_path = NULL;
    size_t n = 0;
    gpt2_status s = gpt2_read_file(index_path, MAX_INDEX_BYTES, &text, &n, err);
    if (s) goto done;
    json_error_t je;
    ld->index = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
    if (!ld->index) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: line %d, column %d: %s", index_path, je.line, je.column, je.text);
        goto done;
    }
    json_t *map = json_is_object(ld->index) ? json_object_get(ld->index, "weight_map") : NULL;
    if (!json_is_object(map)) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
        goto done;
    }
    const char *key;
    json_t *v;
    /* Open every shard the map names, once each. */
    json_object_foreach(map, key, v) {
        if (!json_is_string(v)) {
            s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: weight_map entry for tensor '%s' is not a string", index_path, key);
            goto done;
        }
        const char *shard = json_string_value(v);
        if (!plain_file_name(shard)) {
            s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' maps to shard \"%s\", which is not a plain file name",
                          index_path, key, shard);
            goto done;
        }
        size_t i = 0;
        while (i < ld->n_files && strcmp(ld->shard_names[i], shard) != 0) i++;
        if (i < ld->n_files) continue;
        free(shard_path);
        if (!(shard_path = gpt2_path_join(dir, shard))) {
            s = gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", index_path);
            goto done;
        }
        int present = 0;
        if ((s = probe_file(shard_path, &present, err))) goto done;
        if (!present) {
            s = gpt2_fail(err, GPT2_ERR_IO, "%s: tensor '%s' maps to shard %s, which does not exist", index_path, key,
                          shard_path);
            goto done;
        }
        gpt2_st_file *f;
        if ((s = add_file(ld, shard_path, &f, err))) goto done;
        ld->shard_names[ld->n_files - 1] = shard;
    }
    /* Every mapped tensor is in its shard... */
    json_object_foreach(map, key, v) {
        size_t i = 0;
        while (strcmp(ld->shard_names[i], json_string_value(v)) != 0) i++;
        if (!gpt2_st_find(&ld->files[i], key)) {
            s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' maps to shard %s, which does not contain it",
                          index_path, key, ld->files[i].name);
            goto done;
        }
    }
    /* ...and every tensor of a shard is mapped to that shard. */
    for (size_t i = 0; i < ld->n_files; i++) {
        const gpt2_st_file *f = &ld->files[i];
        for (size_t j = 0; j < f->n_tensors; j++) {
            const gpt2_st_tensor *t = &f->tensors[j];
            json_t *where = json_object_get(map, t->name);
            int kind;
            long layer;
            if (!where && classify(t->name, ld->cfg->n_layer, &kind, &layer) == NAME_BUFFER) continue;
            if (!where) {
                s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s' is not listed in %s", f->name, t->name,
                              index_path);
                goto done;
            }
            if (strcmp(json_string_value(where), ld->shard_names[i]) != 0) {
                s = gpt2_fail(err, GPT2_ERR_FORMAT,
                              "%s: tensor '%s' is also here, but %s maps it to shard \"%s\" (duplicate across shards)",
                              f->name, t->name, index_path, json_string_value(where));
                goto done;
            }
            if ((s = assign(ld, t, f->name, err))) goto done;
        }
    }
done:
    free(shard_path);
    free(text);
    return s;
}

static inline float bits_to_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* IEEE half to float, exact for every input: subnormals are renormalized, inf and NaN (with payload)
 * carried over. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | mant << 13);
    if (exp != 0) return bits_to_float(sign | (exp + 112) << 23 | mant << 13); /* rebias 15 -> 127 */
    if (mant == 0) return bits_to_float(sign);
    uint32_t e = 113; /* exponent of 2^-14, the subnormal scale, as a float32 field */
    while (!(mant & 0x400u)) {
        mant <<= 1;
        e--;
    }
    return bits_to_float(sign | e << 23 | (mant & 0x3ffu) << 13);
}

/* Little-endian loads from unaligned data. */
static inline uint16_t load16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* dst (n_elements) = tensor t in float32. */
static void convert(float *dst, const gpt2_st_tensor *t) {
    const uint8_t *src = t->data;
    size_t n = (size_t)t->n_elements;
    /* Big tensors (wte, the MLP weights) in parallel: page faults on the mapping dominate. */
    switch (t->dtype) {
    case GPT2_ST_F32:
#pragma omp parallel for schedule(static) if (n > (1u << 16))
        for (size_t i = 0; i < n; i++) dst[i] = bits_to_float(load32(src + 4 * i));
        break;
    case GPT2_ST_F16:
#pragma omp parallel for schedule(static) if (n > (1u << 16))
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(load16(src + 2 * i));
        break;
    case GPT2_ST_BF16:
#pragma omp parallel for schedule(static) if (n > (1u << 16))
        for (size_t i = 0; i < n; i++) dst[i] = bits_to_float((uint32_t)load16(src + 2 * i) << 16);
        break;
    default: break; /* refused by check_tensor */
    }
}

gpt2_status gpt2_model_load(const char *dir, gpt2_model **out, gpt2_error *err) {
    if (!dir || !out) return gpt2_fail(err, GPT2_ERR_ARG, "gpt2_model_load: NULL argument");
    *out = NULL;
    gpt2_status s = check_model_dir(dir, err);
    if (s) return s;
    gpt2_model *m = NULL;
    loader ld;
    memset(&ld, 0, sizeof ld);
    char *cfg_path = gpt2_path_join(dir, "config.json");
    char *st_path = gpt2_path_join(dir, "model.safetensors");
    char *idx_path = gpt2_path_join(dir, "model.safetensors.index.json");
    if (!cfg_path || !st_path || !idx_path || !(m = calloc(1, sizeof *m))) {
        s = gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if ((s = gpt2_config_load(cfg_path, &m->cfg, err))) goto fail;
    const gpt2_config *c = &m->cfg;
    ld.cfg = c;
    const size_t L = (size_t)c->n_layer;
    if (!(ld.slots = calloc(GPT2_N_TENSORS * L, sizeof *ld.slots))) {
        s = gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }

    /* model.safetensors wins when both it and an index are there, as in transformers. */
    const char *source;
    int have_st = 0, have_idx = 0;
    if ((s = probe_file(st_path, &have_st, err))) goto fail;
    if (!have_st && (s = probe_file(idx_path, &have_idx, err))) goto fail;
    if (have_st) {
        source = st_path;
        if ((s = load_single(&ld, st_path, err))) goto fail;
    } else if (have_idx) {
        source = idx_path;
        if ((s = load_sharded(&ld, dir, idx_path, err))) goto fail;
    } else {
        s = gpt2_fail(err, GPT2_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json in the directory", dir);
        goto fail;
    }

    /* Every parameter present, with its shape and a dtype we convert. */
    for (int k = 0; k < GPT2_T_LMHEAD; k++) {
        for (size_t l = 0; l < (gpt2_tensors[k].per_layer ? L : 1); l++) {
            const slot *sl = &ld.slots[(size_t)k * L + l];
            if (!sl->t) {
                char name[64];
                if (gpt2_tensors[k].per_layer) snprintf(name, sizeof name, "h.%zu.%s", l, gpt2_tensors[k].name);
                else snprintf(name, sizeof name, "%s", gpt2_tensors[k].name);
                s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: missing tensor '%s' (or '" SAVE_PRETRAINED_PREFIX "%s')",
                              source, name, name);
                goto fail;
            }
            if ((s = check_tensor(&ld, k, sl, err))) goto fail;
        }
    }
    /* lm_head: the checkpoint's own when it differs from wte, else tied (as transformers does). */
    const slot *wte = &ld.slots[(size_t)GPT2_T_WTE * L], *head = &ld.slots[(size_t)GPT2_T_LMHEAD * L];
    int tied = 1;
    if (head->t) {
        if ((s = check_tensor(&ld, GPT2_T_LMHEAD, head, err))) goto fail;
        tied = head->t->dtype == wte->t->dtype &&
               memcmp(head->t->data, wte->t->data, (size_t)(wte->t->end - wte->t->begin)) == 0;
    } else if (!m->cfg.tie_word_embeddings) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: missing tensor 'lm_head.weight' (config.json sets tie_word_embeddings false)",
                      source);
        goto fail;
    }

    /* Layout: the kinds in order, per-layer kinds as (L, ...) blocks; lm_head only when untied. */
    size_t per[GPT2_N_TENSORS], offset[GPT2_N_TENSORS], total = 0;
    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        size_t block = 0;
        if (gpt2_tensor_numel(c, (gpt2_tensor_kind)k, &per[k], &block)) {
            s = gpt2_fail(err, GPT2_ERR_CONFIG, "%s: parameter count overflows", cfg_path);
            goto fail;
        }
        if (k == GPT2_T_LMHEAD && tied) block = 0;
        offset[k] = total;
        if (gpt2_add_size(total, block, &total)) {
            s = gpt2_fail(err, GPT2_ERR_CONFIG, "%s: parameter count overflows", cfg_path);
            goto fail;
        }
    }
    size_t bytes;
    if (gpt2_mul_size(total, sizeof(float), &bytes) || !(m->w.memory = malloc(bytes))) {
        s = gpt2_fail(err, GPT2_ERR_NOMEM, "%s: cannot allocate %zu floats for the parameters", dir, total);
        goto fail;
    }
    m->w.n_floats = total;
    for (int k = 0; k < GPT2_N_TENSORS; k++) *gpt2_tensor_field(&m->w, (gpt2_tensor_kind)k) = m->w.memory + offset[k];
    m->w.tied = tied;
    if (tied) m->w.lm_head = m->w.wte;

    for (int k = 0; k < GPT2_N_TENSORS; k++) {
        if (k == GPT2_T_LMHEAD && tied) continue;
        for (size_t l = 0; l < (gpt2_tensors[k].per_layer ? L : 1); l++) {
            const slot *sl = &ld.slots[(size_t)k * L + l];
            convert(m->w.memory + offset[k] + l * per[k], sl->t);
            if ((s = check_finite(m->w.memory + offset[k] + l * per[k], per[k], sl, err))) goto fail;
        }
    }
    *out = m;
    m = NULL;
fail:
    for (size_t i = 0; i < ld.n_files; i++) gpt2_st_close(&ld.files[i]);
    free(ld.files);
    free(ld.shard_names);
    json_decref(ld.index);
    free(ld.slots);
    gpt2_model_free(m);
    free(cfg_path);
    free(st_path);
    free(idx_path);
    return s;
}

void gpt2_model_free(gpt2_model *m) {
    if (!m) return;
    free(m->w.memory);
    free(m);
}
