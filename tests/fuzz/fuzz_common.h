/* fuzz_common.h: small helpers shared by the libFuzzer targets (header-only: each target is one
 * translation unit compiled with the library sources). */
#ifndef GPT2_FUZZ_COMMON_H
#define GPT2_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gpt2.h"

/* Aborts with a message, so that libFuzzer records the input as a crash. */
#define FUZZ_CHECK(cond, ...)                                                                         \
    do {                                                                                              \
        if (!(cond)) {                                                                                \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                                             \
            fprintf(stderr, "\n");                                                                    \
            abort();                                                                                  \
        }                                                                                             \
    } while (0)

/* An anonymous in-memory file reachable by path (/proc/self/fd/N): writing it costs no disk I/O. */
typedef struct {
    int fd;
    char path[64];
} fuzz_memfile;

static void fuzz_memfile_open(fuzz_memfile *f, const char *name) {
    f->fd = memfd_create(name, 0);
    if (f->fd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

/* Replaces the file's contents with n bytes. */
static void fuzz_memfile_set(fuzz_memfile *f, const void *data, size_t n) {
    if (ftruncate(f->fd, 0) != 0) {
        perror("ftruncate");
        abort();
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = pwrite(f->fd, (const char *)data + off, n - off, (off_t)off);
        if (w <= 0) {
            perror("pwrite");
            abort();
        }
        off += (size_t)w;
    }
}

/* Every failure must come with a status other than OK and a non-empty, NUL-terminated message. */
static void fuzz_check_error(gpt2_status s, const gpt2_error *err) {
    FUZZ_CHECK(s != GPT2_OK, "status OK on the failure path");
    FUZZ_CHECK(err->status == s, "err.status %d but returned %d", (int)err->status, (int)s);
    FUZZ_CHECK(memchr(err->msg, '\0', sizeof err->msg) != NULL, "message not NUL-terminated");
    FUZZ_CHECK(err->msg[0] != '\0', "empty error message for status %d", (int)s);
}

/* 1 when s[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as JSON encoders demand. */
static int fuzz_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
        for (size_t j = 1; j < len; j++) {
            if (((unsigned char)s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | ((unsigned char)s[i + j] & 0x3Fu);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

#endif
