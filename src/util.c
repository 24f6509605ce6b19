/* util.c: errors, files and paths shared by every module. */
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

gpt2_status gpt2_fail(gpt2_error *err, gpt2_status s, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = s;
    }
    return s;
}

gpt2_status gpt2_read_file(const char *path, size_t max_bytes, char **data, size_t *n, gpt2_error *err) {
    *data = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return gpt2_fail(err, GPT2_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return gpt2_fail(err, GPT2_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(f);
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: file is %lld bytes, over the limit of %zu", path,
                         (long long)st.st_size, max_bytes);
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, size + 1);
    }
    size_t got = size ? fread(buf, 1, size, f) : 0;
    int bad = ferror(f) || got != size;
    fclose(f);
    if (bad) {
        free(buf);
        return gpt2_fail(err, GPT2_ERR_IO, "%s: read failed", path);
    }
    buf[size] = '\0';
    *data = buf;
    *n = size;
    return GPT2_OK;
}

char *gpt2_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

int gpt2_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 when invalid (overlong, surrogate, > U+10FFFF, cut). */
int gpt2_utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || (size_t)len > n) return 0;
    if (len == 1) return 1;
    unsigned cp = len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    for (int j = 1; j < len; j++) {
        if ((s[j] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[j] & 0x3Fu);
    }
    int ok = (len == 2 && cp >= 0x80) || (len == 3 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ||
             (len == 4 && cp >= 0x10000 && cp <= 0x10FFFF);
    return ok ? len : 0;
}

char *gpt2_utf8_clean(const char *s, size_t n, size_t *out_n) {
    size_t cap;
    if (gpt2_mul_size(n, 3, &cap) || gpt2_add_size(cap, 1, &cap)) return NULL;
    char *o = malloc(cap);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int len = gpt2_utf8_seq((const unsigned char *)s + i, n - i);
        if (len) {
            memcpy(o + k, s + i, (size_t)len);
            k += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    o[k] = '\0';
    if (out_n) *out_n = k;
    return o;
}
