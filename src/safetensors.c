/* safetensors.c: the safetensors header parser and file mapping (see safetensors.h). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static const struct {
    const char *name;
    unsigned bits; /* per element; F4 and F6 pack below a byte */
} DTYPES[GPT2_ST_N_DTYPES] = {
    [GPT2_ST_BOOL] = {"BOOL", 8},        [GPT2_ST_U8] = {"U8", 8},
    [GPT2_ST_I8] = {"I8", 8},            [GPT2_ST_F8_E5M2] = {"F8_E5M2", 8},
    [GPT2_ST_F8_E4M3] = {"F8_E4M3", 8},  [GPT2_ST_F8_E8M0] = {"F8_E8M0", 8},
    [GPT2_ST_I16] = {"I16", 16},         [GPT2_ST_U16] = {"U16", 16},
    [GPT2_ST_F16] = {"F16", 16},         [GPT2_ST_BF16] = {"BF16", 16},
    [GPT2_ST_I32] = {"I32", 32},         [GPT2_ST_U32] = {"U32", 32},
    [GPT2_ST_F32] = {"F32", 32},         [GPT2_ST_C64] = {"C64", 64},
    [GPT2_ST_F64] = {"F64", 64},         [GPT2_ST_I64] = {"I64", 64},
    [GPT2_ST_U64] = {"U64", 64},         [GPT2_ST_F4] = {"F4", 4},
    [GPT2_ST_F6_E2M3] = {"F6_E2M3", 6},  [GPT2_ST_F6_E3M2] = {"F6_E3M2", 6},
};

const char *gpt2_st_dtype_name(gpt2_st_dtype d) {
    return (unsigned)d < GPT2_ST_N_DTYPES ? DTYPES[d].name : "?";
}

static int dtype_from_name(const char *s, gpt2_st_dtype *out) {
    for (int i = 0; i < GPT2_ST_N_DTYPES; i++) {
        if (strcmp(s, DTYPES[i].name) == 0) {
            *out = (gpt2_st_dtype)i;
            return 1;
        }
    }
    return 0;
}

void gpt2_st_format_shape(const uint64_t *shape, size_t n_dims, char *buf, size_t n) {
    if (n == 0) return;
    size_t k = 0;
    buf[0] = '\0';
    k += (size_t)snprintf(buf, n, "[");
    for (size_t i = 0; i < n_dims && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* A non-negative JSON integer, or 0 when v is anything else. */
static int get_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* Fills t from the header entry `v` of tensor `name`; dims has room for its shape. */
static gpt2_status parse_entry(const char *file, const char *name, json_t *v, uint64_t data_size, uint64_t *dims,
                               gpt2_st_tensor *t, gpt2_error *err) {
    if (!json_is_object(v))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", file, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': missing \"%s\"", file, name,
                         !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (!json_is_string(jd))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", file, name);
    if (!dtype_from_name(json_string_value(jd), &t->dtype))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%s\"", file, name,
                         json_string_value(jd));
    if (!json_is_array(js))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': shape is not an array", file, name);

    t->name = name;
    t->n_dims = json_array_size(js);
    t->shape = dims;
    uint64_t count = 1;
    int overflow = 0;
    for (size_t i = 0; i < t->n_dims; i++) {
        if (!get_u64(json_array_get(js, i), &dims[i]))
            return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': shape entry %zu is not a non-negative integer",
                             file, name, i);
        overflow |= __builtin_mul_overflow(count, dims[i], &count);
    }
    char shape[256];
    gpt2_st_format_shape(dims, t->n_dims, shape, sizeof shape);
    if (overflow)
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': shape %s has more elements than fit in 64 bits",
                         file, name, shape);
    t->n_elements = count;

    if (!json_is_array(jo) || json_array_size(jo) != 2 || !get_u64(json_array_get(jo, 0), &t->begin) ||
        !get_u64(json_array_get(jo, 1), &t->end))
        return gpt2_fail(err, GPT2_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets is not an array of two non-negative integers", file, name);
    if (t->begin > t->end)
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] begin after end", file,
                         name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_size)
        return gpt2_fail(err, GPT2_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] run past the data section (%llu bytes)", file,
                         name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)data_size);

    uint64_t bits;
    if (__builtin_mul_overflow(count, (uint64_t)DTYPES[t->dtype].bits, &bits))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': byte size of shape %s in %s overflows 64 bits",
                         file, name, shape, DTYPES[t->dtype].name);
    if (bits % 8 != 0)
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: tensor '%s': shape %s in %s does not fill whole bytes", file,
                         name, shape, DTYPES[t->dtype].name);
    if (t->end - t->begin != bits / 8)
        return gpt2_fail(err, GPT2_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but shape %s in %s needs %llu",
                         file, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)(t->end - t->begin), shape, DTYPES[t->dtype].name,
                         (unsigned long long)(bits / 8));
    return GPT2_OK;
}

static int cmp_offsets(const void *a, const void *b) {
    const gpt2_st_tensor *x = *(const gpt2_st_tensor *const *)a, *y = *(const gpt2_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(((const gpt2_st_tensor *)a)->name, ((const gpt2_st_tensor *)b)->name);
}

/* The tensors must tile [0, data_size) exactly, as the reference reader demands. */
static gpt2_status check_tiling(const char *file, gpt2_st_tensor *ts, size_t n, uint64_t data_size, gpt2_error *err) {
    gpt2_status s = GPT2_OK;
    const gpt2_st_tensor **order = NULL;
    if (n > 0 && !(order = malloc(n * sizeof *order)))
        return gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory sorting %zu tensors", file, n);
    for (size_t i = 0; i < n; i++) order[i] = &ts[i];
    if (n > 1) qsort(order, n, sizeof *order, cmp_offsets);
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        const gpt2_st_tensor *t = order[i];
        if (t->begin > pos) {
            s = gpt2_fail(err, GPT2_ERR_FORMAT,
                          "%s: tensor '%s': gap of %llu bytes before data_offsets [%llu, %llu] (previous data ends at %llu)",
                          file, t->name, (unsigned long long)(t->begin - pos), (unsigned long long)t->begin,
                          (unsigned long long)t->end, (unsigned long long)pos);
            goto done;
        }
        if (t->begin < pos) {
            s = gpt2_fail(err, GPT2_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s', which ends at %llu", file,
                          t->name, (unsigned long long)t->begin, (unsigned long long)t->end, order[i - 1]->name,
                          (unsigned long long)pos);
            goto done;
        }
        pos = t->end;
    }
    if (pos != data_size)
        s = gpt2_fail(err, GPT2_ERR_FORMAT,
                      "%s: %llu trailing bytes after the last tensor (tensors end at %llu, data section is %llu bytes)",
                      file, (unsigned long long)(data_size - pos), (unsigned long long)pos,
                      (unsigned long long)data_size);
done:
    free(order);
    return s;
}

gpt2_status gpt2_st_parse(const uint8_t *buf, size_t n, const char *name, gpt2_st_file *st, gpt2_error *err) {
    if (!st) return gpt2_fail(err, GPT2_ERR_ARG, "gpt2_st_parse: NULL argument");
    memset(st, 0, sizeof *st);
    if (!name) name = "(buffer)";
    if (!buf && n > 0) return gpt2_fail(err, GPT2_ERR_ARG, "%s: NULL buffer", name);
    gpt2_status s = GPT2_OK;
    gpt2_st_file f;
    memset(&f, 0, sizeof f);
    if (!(f.name = strdup(name))) return gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", name);

    if (n < 8) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length", name, n);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > GPT2_ST_MAX_HEADER) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: header length %llu is over the limit of %llu bytes", name,
                      (unsigned long long)hlen, GPT2_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > n - 8) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", name,
                      (unsigned long long)hlen, n);
        goto fail;
    }
    /* Duplicate keys are refused, where the reference reader keeps the last: a tensor named twice is
     * ambiguous. Whitespace around the object is allowed, as there. */
    json_error_t je;
    f.header = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!f.header) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: header is not valid JSON: line %d, column %d: %s", name, je.line,
                      je.column, je.text);
        goto fail;
    }
    if (!json_is_object(f.header)) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: header is not a JSON object", name);
        goto fail;
    }
    f.data = buf + 8 + hlen;
    f.data_size = (uint64_t)(n - 8 - hlen);

    /* Count tensors and their dimensions, and check the metadata. */
    size_t n_dims_total = 0;
    const char *key;
    json_t *v;
    json_object_foreach(f.header, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (json_is_null(v)) continue; /* the reference reader reads null as no metadata */
            if (!json_is_object(v)) {
                s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: __metadata__ is not an object", name);
                goto fail;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string", name, mk);
                    goto fail;
                }
            }
            continue;
        }
        f.n_tensors++;
        json_t *shape = json_is_object(v) ? json_object_get(v, "shape") : NULL;
        if (json_is_array(shape) && gpt2_add_size(n_dims_total, json_array_size(shape), &n_dims_total)) {
            s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: too many dimensions", name);
            goto fail;
        }
    }
    if (f.n_tensors > 0 && !(f.tensors = calloc(f.n_tensors, sizeof *f.tensors))) {
        s = gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory for %zu tensors", name, f.n_tensors);
        goto fail;
    }
    /* One spare slot, so that a table of scalars still has a non-NULL shape pointer. */
    if (f.n_tensors > 0 && !(f.dims = calloc(n_dims_total + 1, sizeof *f.dims))) {
        s = gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory for %zu dimensions", name, n_dims_total);
        goto fail;
    }

    size_t k = 0, d = 0;
    json_object_foreach(f.header, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        if ((s = parse_entry(name, key, v, f.data_size, f.dims + d, &f.tensors[k], err))) goto fail;
        d += f.tensors[k].n_dims;
        f.tensors[k].data = f.data + f.tensors[k].begin;
        k++;
    }
    if ((s = check_tiling(name, f.tensors, f.n_tensors, f.data_size, err))) goto fail;
    if (f.n_tensors > 1) qsort(f.tensors, f.n_tensors, sizeof *f.tensors, cmp_names);
    *st = f;
    return GPT2_OK;
fail:
    gpt2_st_close(&f);
    return s;
}

gpt2_status gpt2_st_open(const char *path, gpt2_st_file *st, gpt2_error *err) {
    if (!path || !st) return gpt2_fail(err, GPT2_ERR_ARG, "gpt2_st_open: NULL argument");
    memset(st, 0, sizeof *st);
    gpt2_status s = GPT2_OK;
    void *map = NULL;
    size_t size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return gpt2_fail(err, GPT2_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        s = gpt2_fail(err, GPT2_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        s = gpt2_fail(err, GPT2_ERR_IO, "%s: file too large to map", path);
        goto done;
    }
    size = (size_t)sb.st_size;
    if (size < 8) { /* mmap refuses empty files; the parser words the error */
        uint8_t small[8];
        ssize_t got = pread(fd, small, size, 0);
        if (got < 0 || (size_t)got != size) {
            s = gpt2_fail(err, GPT2_ERR_IO, "%s: read failed", path);
            goto done;
        }
        s = gpt2_st_parse(small, size, path, st, err);
        goto done;
    }
    map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        map = NULL;
        s = gpt2_fail(err, GPT2_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        goto done;
    }
    if ((s = gpt2_st_parse(map, size, path, st, err))) goto done;
    st->map = map;
    st->map_size = size;
    map = NULL;
done:
    if (map) munmap(map, size);
    close(fd);
    return s;
}

const gpt2_st_tensor *gpt2_st_find(const gpt2_st_file *st, const char *name) {
    if (!st || !name || st->n_tensors == 0) return NULL;
    gpt2_st_tensor key;
    memset(&key, 0, sizeof key);
    key.name = name;
    return bsearch(&key, st->tensors, st->n_tensors, sizeof key, cmp_names);
}

void gpt2_st_close(gpt2_st_file *st) {
    if (!st) return;
    if (st->map) munmap(st->map, st->map_size);
    json_decref(st->header);
    free(st->tensors);
    free(st->dims);
    free(st->name);
    memset(st, 0, sizeof *st);
}
