/* fuzz_safetensors.c: the safetensors header and tensor-table parser on arbitrary bytes.
 *
 * Each input is parsed from memory (gpt2_st_parse) and, as a second opinion, through the file path
 * (gpt2_st_open on an in-memory file): both must agree. A successful parse must describe tensors
 * that tile the data section exactly, lie inside the buffer, have the byte size their dtype and shape
 * imply, and be found by name. A failure must carry a message and leave the struct empty. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "safetensors.h"

static fuzz_memfile g_file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_memfile_open(&g_file, "fuzz.safetensors");
    return 0;
}

static unsigned dtype_bits(gpt2_st_dtype d) {
    switch (d) {
    case GPT2_ST_F4: return 4;
    case GPT2_ST_F6_E2M3: case GPT2_ST_F6_E3M2: return 6;
    case GPT2_ST_I16: case GPT2_ST_U16: case GPT2_ST_F16: case GPT2_ST_BF16: return 16;
    case GPT2_ST_I32: case GPT2_ST_U32: case GPT2_ST_F32: return 32;
    case GPT2_ST_C64: case GPT2_ST_F64: case GPT2_ST_I64: case GPT2_ST_U64: return 64;
    default: return 8;
    }
}

static void check_file(const gpt2_st_file *st, const uint8_t *buf, size_t n) {
    FUZZ_CHECK(n >= 8, "parsed a %zu-byte file", n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    FUZZ_CHECK(hlen <= n - 8, "header length %llu past the end", (unsigned long long)hlen);
    FUZZ_CHECK(st->data == buf + 8 + hlen, "data section not right after the header");
    FUZZ_CHECK(st->data_size == n - 8 - hlen, "data_size %llu", (unsigned long long)st->data_size);
    FUZZ_CHECK(st->n_tensors == 0 || st->tensors != NULL, "no tensor table");
    uint64_t total = 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const gpt2_st_tensor *t = &st->tensors[i];
        FUZZ_CHECK(t->name && strcmp(t->name, "__metadata__") != 0, "tensor %zu has a bad name", i);
        FUZZ_CHECK((unsigned)t->dtype < GPT2_ST_N_DTYPES, "dtype %d", (int)t->dtype);
        FUZZ_CHECK(strcmp(gpt2_st_dtype_name(t->dtype), "?") != 0, "dtype without a name");
        FUZZ_CHECK(t->begin <= t->end && t->end <= st->data_size, "'%s': offsets [%llu, %llu] of %llu", t->name,
                   (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)st->data_size);
        FUZZ_CHECK(t->data == st->data + t->begin, "'%s': data pointer", t->name);
        uint64_t count = 1;
        for (size_t d = 0; d < t->n_dims; d++)
            FUZZ_CHECK(!__builtin_mul_overflow(count, t->shape[d], &count), "'%s': shape overflow accepted", t->name);
        FUZZ_CHECK(count == t->n_elements, "'%s': n_elements %llu, shape says %llu", t->name,
                   (unsigned long long)t->n_elements, (unsigned long long)count);
        uint64_t bits;
        FUZZ_CHECK(!__builtin_mul_overflow(count, (uint64_t)dtype_bits(t->dtype), &bits) && bits % 8 == 0 &&
                       bits / 8 == t->end - t->begin,
                   "'%s': %llu bytes for %llu elements of %s", t->name, (unsigned long long)(t->end - t->begin),
                   (unsigned long long)count, gpt2_st_dtype_name(t->dtype));
        total += t->end - t->begin;
        if (t->end > t->begin) sink ^= t->data[0] ^ t->data[t->end - t->begin - 1]; /* ASan checks the range */
        if (i > 0) FUZZ_CHECK(strcmp(st->tensors[i - 1].name, t->name) < 0, "tensors not sorted by unique name");
        FUZZ_CHECK(gpt2_st_find(st, t->name) == t, "'%s' not found by name", t->name);
        char shape[24]; /* short on purpose: the formatter must truncate, not overflow */
        gpt2_st_format_shape(t->shape, t->n_dims, shape, sizeof shape);
        FUZZ_CHECK(memchr(shape, '\0', sizeof shape) != NULL, "shape text not terminated");
    }
    /* Tiling: sorted, contiguous, no gaps, so the sizes add up to the data section. */
    FUZZ_CHECK(total == st->data_size, "tensors cover %llu of %llu bytes", (unsigned long long)total,
               (unsigned long long)st->data_size);
    FUZZ_CHECK(gpt2_st_find(st, "__metadata__") == NULL, "metadata found as a tensor");
    (void)sink;
}

static int is_empty(const gpt2_st_file *st) {
    return !st->name && !st->data && !st->tensors && !st->n_tensors && !st->header && !st->dims && !st->map;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gpt2_st_file st, st2;
    gpt2_error err = {0}, err2 = {0};
    gpt2_status s = gpt2_st_parse(data, size, g_file.path, &st, &err);
    if (s == GPT2_OK) check_file(&st, data, size);
    else {
        fuzz_check_error(s, &err);
        FUZZ_CHECK(s == GPT2_ERR_FORMAT || s == GPT2_ERR_NOMEM, "status %d: %s", (int)s, err.msg);
        FUZZ_CHECK(is_empty(&st), "struct not left empty after: %s", err.msg);
    }

    /* The file path must reach the same verdict with the same message. */
    fuzz_memfile_set(&g_file, data, size);
    gpt2_status s2 = gpt2_st_open(g_file.path, &st2, &err2);
    FUZZ_CHECK(s2 == s, "parse says %d (%s), open says %d (%s)", (int)s, err.msg, (int)s2, err2.msg);
    if (s2 == GPT2_OK) {
        FUZZ_CHECK(st2.n_tensors == st.n_tensors && st2.data_size == st.data_size, "open and parse differ");
        for (size_t i = 0; i < st.n_tensors; i++)
            FUZZ_CHECK(!strcmp(st.tensors[i].name, st2.tensors[i].name) && st.tensors[i].begin == st2.tensors[i].begin,
                       "tensor %zu differs", i);
    } else {
        FUZZ_CHECK(!strcmp(err.msg, err2.msg), "messages differ: '%s' vs '%s'", err.msg, err2.msg);
    }
    gpt2_st_close(&st);
    gpt2_st_close(&st2);
    gpt2_st_close(&st2); /* closing twice is documented as safe */
    return 0;
}
