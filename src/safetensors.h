/* safetensors.h: reading .safetensors files, validated as strictly as the reference reader.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data section. The
 * header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
 * to the data section) plus an optional "__metadata__" object of strings. Tensors must tile the data
 * section exactly: sorted by offset, contiguous from 0, no gaps, no overlaps, no trailing bytes.
 *
 * gpt2_st_parse works on a memory buffer and does no I/O (the fuzz harness calls it directly);
 * gpt2_st_open maps a file read-only and parses it.
 */
#ifndef GPT2_SAFETENSORS_H
#define GPT2_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "gpt2.h"

/* The reference reader's limit on the header length N. */
#define GPT2_ST_MAX_HEADER 100000000ull

typedef enum {
    GPT2_ST_BOOL,
    GPT2_ST_U8,
    GPT2_ST_I8,
    GPT2_ST_F8_E5M2,
    GPT2_ST_F8_E4M3,
    GPT2_ST_F8_E8M0,
    GPT2_ST_I16,
    GPT2_ST_U16,
    GPT2_ST_F16,
    GPT2_ST_BF16,
    GPT2_ST_I32,
    GPT2_ST_U32,
    GPT2_ST_F32,
    GPT2_ST_C64,
    GPT2_ST_F64,
    GPT2_ST_I64,
    GPT2_ST_U64,
    GPT2_ST_F4,
    GPT2_ST_F6_E2M3,
    GPT2_ST_F6_E3M2,
    GPT2_ST_N_DTYPES
} gpt2_st_dtype;

/* "F32", ...; "?" for an out-of-range value. */
const char *gpt2_st_dtype_name(gpt2_st_dtype d);

typedef struct {
    const char *name;      /* points into the parsed header */
    gpt2_st_dtype dtype;
    size_t n_dims;
    const uint64_t *shape; /* (n_dims); a scalar has n_dims 0 */
    uint64_t n_elements;   /* product of shape (1 for a scalar) */
    uint64_t begin, end;   /* byte range in the data section */
    const uint8_t *data;   /* data section + begin; not aligned in general */
} gpt2_st_tensor;

typedef struct {
    char *name;              /* the file name used in messages (owned copy) */
    const uint8_t *data;     /* the data section, (data_size) bytes */
    uint64_t data_size;
    gpt2_st_tensor *tensors; /* (n_tensors), sorted by name */
    size_t n_tensors;
    struct json_t *header;   /* parsed header; owns the tensor names */
    uint64_t *dims;          /* every tensor's shape, one after another */
    void *map;               /* the read-only mapping when opened from a file, else NULL */
    size_t map_size;
} gpt2_st_file;

/* Parses and validates the header and tensor table of a safetensors image buf (n bytes). st->data points
 * into buf, which must outlive st. `name` names the image in messages. On failure st is left empty
 * (gpt2_st_close is still safe) and err says what is wrong and where (GPT2_ERR_FORMAT, or
 * GPT2_ERR_NOMEM). */
gpt2_status gpt2_st_parse(const uint8_t *buf, size_t n, const char *name, gpt2_st_file *st, gpt2_error *err);

/* Maps `path` read-only and parses it. */
gpt2_status gpt2_st_open(const char *path, gpt2_st_file *st, gpt2_error *err);

/* The tensor called `name`, or NULL. */
const gpt2_st_tensor *gpt2_st_find(const gpt2_st_file *st, const char *name);

/* Writes a shape as "[a, b]" into buf (always NUL-terminated, truncated if needed). */
void gpt2_st_format_shape(const uint64_t *shape, size_t n_dims, char *buf, size_t n);

/* Frees everything and unmaps; safe on a zeroed or already-closed st. */
void gpt2_st_close(gpt2_st_file *st);

#endif /* GPT2_SAFETENSORS_H */
