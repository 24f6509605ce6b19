/* npy.c: NumPy .npy version 1.0 files of 2-D float32 arrays. */
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char NPY_MAGIC[] = "\x93NUMPY";

gpt2_status gpt2_npy_write(const char *path, const float *data, size_t rows, size_t cols, gpt2_error *err) {
    char dict[128];
    int len = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows,
                       cols);
    /* magic(6) + version(2) + header length(2) + dict + padding + '\n' is a multiple of 64 */
    size_t total = 10 + (size_t)len + 1, pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)len + pad + 1, n;
    if (gpt2_mul_size(rows, cols, &n)) return gpt2_fail(err, GPT2_ERR_ARG, "%s: array size overflows", path);
    FILE *f = fopen(path, "wb");
    if (!f) return gpt2_fail(err, GPT2_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)len, f) == (size_t)len;
    for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(data, sizeof(float), n, f) == n;
    if (fclose(f) != 0) ok = 0;
    if (!ok) return gpt2_fail(err, GPT2_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return GPT2_OK;
}

gpt2_status gpt2_npy_read(const char *path, float **data, size_t *rows, size_t *cols, gpt2_error *err) {
    char *buf;
    size_t n;
    *data = NULL;
    gpt2_status st = gpt2_read_file(path, (size_t)1 << 34, &buf, &n, err);
    if (st != GPT2_OK) return st;
    unsigned long long r, c;
    size_t hlen = n >= 10 ? (size_t)(unsigned char)buf[8] | (size_t)(unsigned char)buf[9] << 8 : 0;
    char *shape = n >= 10 && !memcmp(buf, NPY_MAGIC, 6) && buf[6] == 1 && 10 + hlen <= n ? strstr(buf + 10, "'shape': (") : NULL;
    if (!shape || !strstr(buf + 10, "'descr': '<f4'") || !strstr(buf + 10, "'fortran_order': False") ||
        sscanf(shape, "'shape': (%llu, %llu)", &r, &c) != 2) {
        free(buf);
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: not a 2-D little-endian float32 C-order .npy v1 file", path);
    }
    size_t count, bytes;
    if (gpt2_mul_size((size_t)r, (size_t)c, &count) || gpt2_mul_size(count, 4, &bytes) || bytes != n - 10 - hlen) {
        free(buf);
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: data size does not match shape (%llu, %llu)", path, r, c);
    }
    float *out = malloc(bytes ? bytes : 1);
    if (!out) {
        free(buf);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(out, buf + 10 + hlen, bytes);
    free(buf);
    *data = out;
    *rows = (size_t)r;
    *cols = (size_t)c;
    return GPT2_OK;
}
