/* util.h: small helpers shared by every module (errors, checked arithmetic, files). */
#ifndef GPT2_UTIL_H
#define GPT2_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "gpt2.h"

/* Records status s and a printf-style message in err (which may be NULL); returns s, so that
 * `return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: ...", path);` reads as one statement. */
gpt2_status gpt2_fail(gpt2_error *err, gpt2_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked size arithmetic: return 0 on success, 1 on overflow. */
static inline int gpt2_mul_size(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int gpt2_add_size(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }
/* a * b * c, checked. */
static inline int gpt2_mul3_size(size_t a, size_t b, size_t c, size_t *out) {
    size_t t;
    return __builtin_mul_overflow(a, b, &t) || __builtin_mul_overflow(t, c, out);
}

/* Reads a whole file into a malloc'ed, NUL-terminated buffer. Refuses files over max_bytes. */
gpt2_status gpt2_read_file(const char *path, size_t max_bytes, char **data, size_t *n, gpt2_error *err);

/* path_join(dir, name) into a malloc'ed string; NULL when out of memory. */
char *gpt2_path_join(const char *dir, const char *name);

/* 1 when the path names an existing regular file. */
int gpt2_file_exists(const char *path);

/* Length of the valid UTF-8 sequence at s[0..n), 0 when invalid (overlong, surrogate, > U+10FFFF, cut). */
int gpt2_utf8_seq(const unsigned char *s, size_t n);
/* s (n bytes) with each invalid byte replaced by U+FFFD, NUL-terminated, malloc'ed (NULL: out of memory
 * or overflow); *out_n (may be NULL) gets its length. */
char *gpt2_utf8_clean(const char *s, size_t n, size_t *out_n);

#endif /* GPT2_UTIL_H */
