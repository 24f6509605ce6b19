/* test_tokenizer.c: the GPT-2 tokenizer against tiktoken (tests/data/tokenizer_golden.json, written by
 * tools/make_tokenizer_golden.py from tiktoken 0.14), plus round trips of random bytes, special
 * tokens, bad ids and loading errors. Run from the repository root. */
#include <criterion/criterion.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gpt2.h"

#define TOK_DIR "tests/data/gpt2-tokenizer"
#define GOLDEN "tests/data/tokenizer_golden.json"
#define GPT2_EOT 50256
#define GPT2_N_VOCAB 50257

/* ---------------------------------------------------------------------------------------------- */
/* Helpers                                                                                          */

static gpt2_tokenizer *load_gpt2(void) {
    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    gpt2_status st = gpt2_tokenizer_load(TOK_DIR, &t, &err);
    cr_assert_eq(st, GPT2_OK, "loading %s: %s", TOK_DIR, err.msg);
    return t;
}

static json_t *load_golden(void) {
    json_error_t jerr;
    json_t *g = json_load_file(GOLDEN, 0, &jerr);
    cr_assert_not_null(g, "%s:%d: %s (run from the repository root)", GOLDEN, jerr.line, jerr.text);
    return g;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Decodes lowercase hex into a malloc'ed buffer. */
static char *hex_decode(const char *hex, size_t *n) {
    size_t len = strlen(hex);
    cr_assert(len % 2 == 0, "odd hex length");
    char *out = malloc(len / 2 + 1);
    cr_assert_not_null(out);
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        cr_assert(hi >= 0 && lo >= 0, "bad hex digit");
        out[i] = (char)(hi * 16 + lo);
    }
    *n = len / 2;
    return out;
}

static int *encode_ok(gpt2_tokenizer *t, const char *s, size_t n, int special, size_t *n_ids) {
    int *ids = NULL;
    gpt2_error err = {0};
    gpt2_status st = gpt2_encode(t, s, n, special, &ids, n_ids, &err);
    cr_assert_eq(st, GPT2_OK, "encode of %zu bytes: %s", n, err.msg);
    cr_assert_not_null(ids);
    return ids;
}

/* decode(ids) must give back exactly s[0..n) */
static void assert_round_trip(const gpt2_tokenizer *t, const int *ids, size_t n_ids, const char *s, size_t n,
                              const char *what, size_t index) {
    char *text = NULL;
    size_t n_text = 0;
    gpt2_error err = {0};
    gpt2_status st = gpt2_decode(t, ids, n_ids, &text, &n_text, &err);
    cr_assert_eq(st, GPT2_OK, "%s %zu: decode: %s", what, index, err.msg);
    cr_assert_eq(n_text, n, "%s %zu: decoded %zu bytes, expected %zu", what, index, n_text, n);
    cr_assert(memcmp(text, s, n) == 0, "%s %zu: decoded bytes differ", what, index);
    cr_assert_eq(text[n_text], '\0', "%s %zu: decode result not NUL-terminated", what, index);
    free(text);
}

static uint64_t rng_state;
static uint64_t rng_next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static size_t rng_below(size_t n) { return (size_t)(rng_next() % n); }

static size_t put_utf8(char *out, uint32_t c) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* GPT-2's bytes_to_unicode(), written out again for the test: the character that stands for byte b in
 * vocab.json and merges.txt. */
static uint32_t byte_char(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
    return 256 + (uint32_t)n;
}

/* Spells bytes as vocab.json does, NUL-terminated into out (room for 2n + 1). */
static char *spell(char *out, const char *bytes, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += put_utf8(out + o, byte_char((unsigned char)bytes[i]));
    out[o] = '\0';
    return out;
}

/* Spells bytes as a JSON string's contents (quote and backslash escaped); out has room for 4n + 1. */
static char *json_spell(char *out, const char *bytes, size_t n) {
    char tmp[256];
    spell(tmp, bytes, n);
    size_t o = 0;
    for (const char *c = tmp; *c; c++) {
        if (*c == '"' || *c == '\\') out[o++] = '\\';
        out[o++] = *c;
    }
    out[o] = '\0';
    return out;
}

/* A temporary directory for tokenizer files; rm_tmp removes the files these tests write into it. */
static char *make_tmp(void) {
    char *dir = strdup("/tmp/gpt2_tok_test_XXXXXX");
    cr_assert_not_null(dir);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp failed");
    return dir;
}

static const char *const TMP_FILES[] = {"vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "big.json"};

static void rm_tmp(char *dir) {
    char path[512];
    for (size_t i = 0; i < sizeof TMP_FILES / sizeof TMP_FILES[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, TMP_FILES[i]);
        unlink(path);
    }
    rmdir(dir);
    free(dir);
}

static void write_file(const char *dir, const char *name, const char *data, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* A growable string. */
typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* vocab.json text: the 256 byte tokens with ids 0..255 (JSON-escaped where needed), then `extra`
 * (more "key": id entries, each with a leading comma, or ""). */
static void byte_vocab(sbuf *b, const char *extra) {
    sb_str(b, "{");
    for (int i = 0; i < 256; i++) {
        char c = (char)i, sp[8], entry[32];
        snprintf(entry, sizeof entry, "%s\"%s\": %d", i ? ", " : "", json_spell(sp, &c, 1), i);
        sb_str(b, entry);
    }
    sb_str(b, extra);
    sb_str(b, "}\n");
}

/* Writes vocab.json (the byte tokens plus `extra`) and merges.txt (`merges` verbatim) into dir. */
static void write_tokenizer(const char *dir, const char *extra, const char *merges) {
    sbuf v = {0};
    byte_vocab(&v, extra);
    write_file(dir, "vocab.json", v.p, v.n);
    write_file(dir, "merges.txt", merges, strlen(merges));
    free(v.p);
}

/* Loads dir and expects failure with status st and a message containing each of the NULL-terminated
 * list of fragments. */
static void expect_load_error(const char *dir, gpt2_status st, const char *what, ...) {
    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    gpt2_status got = gpt2_tokenizer_load(dir, &t, &err);
    cr_assert_eq(got, st, "%s: status %d (%s), expected %d; message: %s", what, got, gpt2_strerror(got), st, err.msg);
    cr_assert_null(t, "%s: tokenizer returned on failure", what);
    cr_assert_eq(err.status, st, "%s: err.status not set", what);
    va_list ap;
    va_start(ap, what);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;)
        cr_assert(strstr(err.msg, frag) != NULL, "%s: message \"%s\" does not contain \"%s\"", what, err.msg, frag);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------------- */
/* Against tiktoken                                                                                 */

/* Runs the cases of a golden "cases" array through t; returns the number that differ from tiktoken. */
static size_t run_cases(gpt2_tokenizer *t, json_t *cases, const char *what, size_t *n_bytes_api, size_t *n_special) {
    size_t i, n_fail = 0;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *api = json_string_value(json_object_get(c, "api"));
        const char *hex = json_string_value(json_object_get(c, "hex"));
        json_t *want = json_object_get(c, "ids");
        cr_assert(api && hex && json_is_array(want), "%s case %zu is malformed", what, i);
        int special = !strcmp(api, "special");
        *n_special += special;
        *n_bytes_api += !strcmp(api, "bytes");
        size_t n, n_ids;
        char *s = hex_decode(hex, &n);
        int *ids = encode_ok(t, s, n, special, &n_ids);
        size_t n_want = json_array_size(want), k = 0;
        while (k < n_ids && k < n_want && ids[k] == json_integer_value(json_array_get(want, k))) k++;
        if (k != n_ids || k != n_want) {
            n_fail++;
            cr_log_error("%s case %zu (%s, %s): %zu ids, tiktoken has %zu; first difference at %zu: got %d, "
                         "expected %lld", what, i, name ? name : hex, api, n_ids, n_want, k, k < n_ids ? ids[k] : -1,
                         k < n_want ? json_integer_value(json_array_get(want, k)) : -1LL);
        }
        assert_round_trip(t, ids, n_ids, s, n, what, i);
        free(ids);
        free(s);
    }
    return n_fail;
}

Test(tokenizer, vocab_sizes) {
    gpt2_tokenizer *t = load_gpt2();
    cr_assert_eq(gpt2_tokenizer_n_vocab(t), GPT2_N_VOCAB);
    cr_assert_eq(gpt2_tokenizer_eot(t), GPT2_EOT);
    json_t *g = load_golden();
    cr_assert_eq(json_integer_value(json_object_get(g, "n_vocab")), GPT2_N_VOCAB);
    cr_assert_eq(json_integer_value(json_object_get(g, "eot")), GPT2_EOT);
    json_decref(g);
    gpt2_tokenizer_free(t);
}

/* Every golden case, token for token. api "ordinary" is tiktoken's encode_ordinary, "special" its encode
 * with <|endoftext|> allowed, "bytes" its _encode_bytes on a byte string that is not valid UTF-8. */
Test(tokenizer, golden_cases) {
    gpt2_tokenizer *t = load_gpt2();
    json_t *g = load_golden();
    json_t *cases = json_object_get(g, "cases");
    cr_assert(json_array_size(cases) > 600, "golden file has %zu cases", json_array_size(cases));
    size_t n_bytes_api = 0, n_special = 0;
    size_t n_fail = run_cases(t, cases, "golden", &n_bytes_api, &n_special);
    cr_assert_eq(n_fail, 0, "%zu of %zu golden cases differ from tiktoken (see the log)", n_fail,
                 json_array_size(cases));
    cr_assert(n_bytes_api > 100 && n_special > 40, "golden file lacks invalid-UTF-8 or special cases");
    json_decref(g);
    gpt2_tokenizer_free(t);
}

/* A vocabulary of the generator's own (tiktoken's answers for it in the golden file): a piece that is a
 * token merging cannot reach ("abcd": merging stops at a, bc, d), and the re-merge after invalid UTF-8
 * taking in the whitespace tokens before the last piece (the merge "\n" + " " exists). */
Test(tokenizer, golden_custom_vocabulary) {
    json_t *g = load_golden();
    json_t *custom = json_object_get(g, "custom");
    const char *vocab = json_string_value(json_object_get(custom, "vocab_json"));
    const char *merges = json_string_value(json_object_get(custom, "merges_txt"));
    cr_assert(vocab && merges, "golden file lacks the custom vocabulary");
    char *dir = make_tmp();
    write_file(dir, "vocab.json", vocab, strlen(vocab));
    write_file(dir, "merges.txt", merges, strlen(merges));
    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(dir, &t, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_tokenizer_eot(t), json_integer_value(json_object_get(custom, "eot")));
    json_t *cases = json_object_get(custom, "cases");
    size_t n_bytes_api = 0, n_special = 0;
    size_t n_fail = run_cases(t, cases, "custom", &n_bytes_api, &n_special);
    cr_assert_eq(n_fail, 0, "%zu of %zu custom-vocabulary cases differ from tiktoken", n_fail, json_array_size(cases));
    cr_assert(n_bytes_api > 50 && n_special > 20, "too few custom cases of each kind");
    gpt2_tokenizer_free(t);
    rm_tmp(dir);
    json_decref(g);
}

/* Must match sweep_text() in tools/make_tokenizer_golden.py. */
static void sweep_text(sbuf *b, uint32_t lo, uint32_t hi) {
    b->n = 0;
    for (uint32_t c = lo; c < hi; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        char ch[4];
        size_t k = put_utf8(ch, c);
        sb_str(b, "a");
        sb_add(b, ch, k);
        sb_str(b, " ");
        sb_add(b, ch, k);
        sb_add(b, ch, k);
        sb_str(b, "1");
        sb_add(b, ch, k);
        sb_str(b, "!");
        sb_add(b, ch, k);
        sb_str(b, "\t");
        sb_add(b, ch, k);
        sb_str(b, "  ");
        sb_add(b, ch, k);
        sb_str(b, "x\n");
    }
}

static uint64_t fnv_ids(const int *ids, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint64_t)(uint32_t)ids[i]) * 0x100000001B3ull;
    return h;
}

/* Every code point of planes 0-3 and 14 in a few contexts, compared with tiktoken chunk by chunk
 * (count and hash of the ids). */
Test(tokenizer, golden_unicode_sweep) {
    gpt2_tokenizer *t = load_gpt2();
    json_t *g = load_golden();
    json_t *sweep = json_object_get(g, "sweep");
    cr_assert(json_array_size(sweep) >= 64);
    sbuf b = {0};
    size_t i, n_fail = 0;
    json_t *c;
    json_array_foreach(sweep, i, c) {
        uint32_t lo = (uint32_t)json_integer_value(json_object_get(c, "lo"));
        uint32_t hi = (uint32_t)json_integer_value(json_object_get(c, "hi"));
        size_t want_n = (size_t)json_integer_value(json_object_get(c, "n_ids"));
        const char *want_h = json_string_value(json_object_get(c, "fnv"));
        sweep_text(&b, lo, hi);
        size_t n_ids;
        int *ids = encode_ok(t, b.p, b.n, 0, &n_ids);
        char h[17];
        snprintf(h, sizeof h, "%016llx", (unsigned long long)fnv_ids(ids, n_ids));
        if (n_ids != want_n || !want_h || strcmp(h, want_h) != 0) {
            n_fail++;
            cr_log_error("sweep chunk %zu (U+%04X..U+%04X): %zu ids hash %s, tiktoken %zu ids hash %s", i, lo, hi - 1,
                         n_ids, h, want_n, want_h ? want_h : "?");
        }
        assert_round_trip(t, ids, n_ids, b.p, b.n, "sweep chunk", i);
        free(ids);
    }
    cr_assert_eq(n_fail, 0, "%zu sweep chunks differ from tiktoken", n_fail);
    free(b.p);
    json_decref(g);
    gpt2_tokenizer_free(t);
}

/* The pre-tokenizer's class of every Unicode scalar value equals tiktoken's. A probe vocabulary holds the
 * 256 bytes and the merges "p x" for p in a, 1, !, \t and every byte x, so p followed by character c
 * starts with the token p + (first byte of c) exactly when the regex keeps p and c in one piece:
 * for 'a' when c is a letter, '1' a number, '!' other, '\t' whitespace. */
Test(tokenizer, golden_char_classes, .timeout = 120) {
    static const char probes[4] = {'a', '1', '!', '\t'};
    static const char classes[4] = {'L', 'N', 'O', 'W'};
    char *dir = make_tmp();
    sbuf extra = {0}, merges = {0};
    sb_str(&merges, "#version: 0.2\n");
    int id = 256;
    for (int p = 0; p < 4; p++) {
        for (int x = 0; x < 256; x++) {
            char pair[2] = {probes[p], (char)x}, sp[16], sp1[8], sp2[8], line[64];
            snprintf(line, sizeof line, ", \"%s\": %d", json_spell(sp, pair, 2), id++);
            sb_str(&extra, line);
            snprintf(line, sizeof line, "%s %s\n", spell(sp1, pair, 1), spell(sp2, pair + 1, 1));
            sb_str(&merges, line);
        }
    }
    write_tokenizer(dir, extra.p, merges.p);
    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(dir, &t, &err), GPT2_OK, "%s", err.msg);

    json_t *g = load_golden();
    json_t *ranges = json_object_get(g, "classes");
    size_t i, n_fail = 0;
    uint32_t next = 0;
    json_t *r;
    json_array_foreach(ranges, i, r) {
        uint32_t lo = (uint32_t)json_integer_value(json_array_get(r, 0));
        uint32_t hi = (uint32_t)json_integer_value(json_array_get(r, 1));
        const char *k = json_string_value(json_array_get(r, 2));
        cr_assert(lo == next && hi >= lo && k, "class range %zu does not follow the previous one", i);
        next = hi + 1;
        for (uint32_t c = lo; c <= hi; c++) {
            if (c >= 0xD800 && c < 0xE000) continue;
            char text[8];
            for (int p = 0; p < 4; p++) {
                text[0] = probes[p];
                size_t n = 1 + put_utf8(text + 1, c), n_ids;
                int *ids = encode_ok(t, text, n, 0, &n_ids);
                int joined = ids[0] == 256 + p * 256 + (unsigned char)text[1];
                if (joined != (classes[p] == k[0]) && n_fail++ < 20)
                    cr_log_error("U+%04X: tiktoken's class is %s, but '%s' + it %s one piece", c, k,
                                 probes[p] == '\t' ? "\\t" : (char[]){probes[p], 0},
                                 joined ? "makes" : "does not make");
                free(ids);
            }
        }
    }
    cr_assert_eq(next, 0x110000, "class ranges end at U+%04X", next);
    char version[64] = "?", unicode[64] = "?";
    pcre2_config(PCRE2_CONFIG_VERSION, version);
    pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, unicode);
    cr_assert_eq(n_fail, 0, "%zu probes disagree with tiktoken's character classes (PCRE2 %s, Unicode %s; "
                 "src/tokenizer.c's letter_extra was made for PCRE2 10.42, Unicode 14)", n_fail, version, unicode);
    json_decref(g);
    gpt2_tokenizer_free(t);
    free(extra.p);
    free(merges.p);
    rm_tmp(dir);
}

/* ---------------------------------------------------------------------------------------------- */
/* Round trips, special tokens, decode                                                              */

/* Thousands of seeded random byte strings (invalid UTF-8 included) decode back to themselves. */
Test(tokenizer, round_trip_random_bytes) {
    gpt2_tokenizer *t = load_gpt2();
    static const char *const pieces[] = {"a", "the", " ", "  ", "\n", "\t", "\r\n", "'s", "'LL", "123", "!", "...",
                                         "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xe1\xa0\x8e", "\xc2\x85",
                                         "\xe3\x80\x80", "<|endoftext|>", "<|", "\xff", "\x80", "\xc3", "\xe4\xb8",
                                         "\xed\xa0\x80", "\xf0\x9f", "\xc0\xaf", "\xf5", "\x00"};
    const size_t n_pieces = sizeof pieces / sizeof pieces[0];
    rng_state = 0x9E3779B97F4A7C15ull;
    char buf[512];
    for (size_t iter = 0; iter < 6000; iter++) {
        size_t n = 0, len = rng_below(200);
        int mode = (int)(iter % 3); /* raw bytes, pieces, or both */
        while (n < len) {
            if (mode == 0 || (mode == 2 && rng_below(2))) {
                buf[n++] = (char)rng_below(256);
            } else {
                const char *p = pieces[rng_below(n_pieces)];
                size_t k = p[0] ? strlen(p) : 1; /* "\x00" is one NUL byte */
                if (n + k > sizeof buf) break;
                memcpy(buf + n, p, k);
                n += k;
            }
        }
        int special = (int)(rng_next() & 1);
        size_t n_ids;
        int *ids = encode_ok(t, buf, n, special, &n_ids);
        cr_assert(n_ids <= n, "string %zu: %zu ids for %zu bytes", iter, n_ids, n);
        for (size_t k = 0; k < n_ids; k++)
            cr_assert(ids[k] >= 0 && ids[k] < GPT2_N_VOCAB && (special || ids[k] != GPT2_EOT),
                      "string %zu: id %d at %zu", iter, ids[k], k);
        assert_round_trip(t, ids, n_ids, buf, n, "random string", iter);
        /* the same text again: no state may leak between calls */
        size_t n_ids2;
        int *ids2 = encode_ok(t, buf, n, special, &n_ids2);
        cr_assert(n_ids2 == n_ids && memcmp(ids, ids2, n_ids * sizeof *ids) == 0, "string %zu: second encode differs",
                  iter);
        free(ids);
        free(ids2);
    }
    gpt2_tokenizer_free(t);
}

static void assert_ids(gpt2_tokenizer *t, const char *s, int special, const int *want, size_t n_want) {
    size_t n_ids;
    int *ids = encode_ok(t, s, strlen(s), special, &n_ids);
    cr_assert_eq(n_ids, n_want, "\"%s\" (special %d): %zu ids, expected %zu", s, special, n_ids, n_want);
    for (size_t i = 0; i < n_want; i++)
        cr_assert_eq(ids[i], want[i], "\"%s\" (special %d): id %zu is %d, expected %d", s, special, i, ids[i], want[i]);
    free(ids);
}

/* Expected ids from tiktoken: encode_ordinary / encode(allowed_special={"<|endoftext|>"}). */
Test(tokenizer, endoftext) {
    gpt2_tokenizer *t = load_gpt2();
    assert_ids(t, "<|endoftext|>", 1, (int[]){GPT2_EOT}, 1);
    assert_ids(t, "<|endoftext|>", 0, (int[]){27, 91, 437, 1659, 5239, 91, 29}, 7);
    assert_ids(t, "a<|endoftext|>b <|endoftext|", 1, (int[]){64, GPT2_EOT, 65, 1279, 91, 437, 1659, 5239, 91}, 9);
    assert_ids(t, "<|endoftext|><|endoftext|>", 1, (int[]){GPT2_EOT, GPT2_EOT}, 2);
    assert_ids(t, "hello", 1, (int[]){31373}, 1);
    assert_ids(t, " world", 0, (int[]){995}, 1);
    assert_ids(t, "", 1, NULL, 0);
    /* with specials allowed, the text between them is encoded on its own */
    size_t n_ids;
    int *ids = encode_ok(t, "x <|endoftext|>", 15, 1, &n_ids);
    cr_assert(n_ids == 3 && ids[2] == GPT2_EOT, "\"x <|endoftext|>\": %zu ids", n_ids);
    assert_round_trip(t, ids, n_ids, "x <|endoftext|>", 15, "endoftext", 0);
    free(ids);
    const char *eb;
    size_t en;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_token_bytes(t, GPT2_EOT, &eb, &en, &err), GPT2_OK, "%s", err.msg);
    cr_assert(en == 13 && memcmp(eb, "<|endoftext|>", 13) == 0);
    gpt2_tokenizer_free(t);
}

Test(tokenizer, decode_bad_ids) {
    gpt2_tokenizer *t = load_gpt2();
    static const int bad[] = {-1, GPT2_N_VOCAB, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int ids[3] = {31373, bad[i], 995};
        char *text = (char *)1;
        size_t n_text = 7;
        gpt2_error err = {0};
        gpt2_status st = gpt2_decode(t, ids, 3, &text, &n_text, &err);
        cr_assert_eq(st, GPT2_ERR_ARG, "id %d: status %d", bad[i], st);
        cr_assert(text == NULL && n_text == 0, "id %d: outputs not cleared", bad[i]);
        char num[32];
        snprintf(num, sizeof num, "id %d", bad[i]);
        cr_assert(strstr(err.msg, num) != NULL, "message \"%s\" does not name %s", err.msg, num);
        const char *b;
        size_t n;
        cr_assert_eq(gpt2_token_bytes(t, bad[i], &b, &n, &err), GPT2_ERR_ARG);
        cr_assert(strstr(err.msg, num) != NULL, "message \"%s\" does not name %s", err.msg, num);
    }
    char *text;
    size_t n_text;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_decode(t, NULL, 0, &text, &n_text, &err), GPT2_OK);
    cr_assert(n_text == 0 && text && text[0] == '\0');
    free(text);
    cr_assert_eq(gpt2_decode(t, NULL, 2, &text, &n_text, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_decode(NULL, (int[]){1}, 1, &text, &n_text, &err), GPT2_ERR_ARG);
    int *ids;
    size_t n_ids;
    cr_assert_eq(gpt2_encode(t, NULL, 3, 0, &ids, &n_ids, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_encode(NULL, "a", 1, 0, &ids, &n_ids, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_encode(t, "a", 1, 0, NULL, &n_ids, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_encode(t, NULL, 0, 0, &ids, &n_ids, NULL), GPT2_OK);
    cr_assert(n_ids == 0 && ids != NULL);
    free(ids);
    gpt2_tokenizer_free(t);
    gpt2_tokenizer_free(NULL);
}

Test(tokenizer, token_bytes) {
    gpt2_tokenizer *t = load_gpt2();
    gpt2_error err = {0};
    const char *b;
    size_t n;
    cr_assert_eq(gpt2_token_bytes(t, 31373, &b, &n, &err), GPT2_OK, "%s", err.msg);
    cr_assert(n == 5 && memcmp(b, "hello", 5) == 0);
    cr_assert_eq(gpt2_token_bytes(t, 220, &b, &n, &err), GPT2_OK);
    cr_assert(n == 1 && b[0] == ' ');
    cr_assert_eq(gpt2_token_bytes(t, 198, &b, &n, &err), GPT2_OK);
    cr_assert(n == 1 && b[0] == '\n');
    /* every byte alone is one token whose bytes are that byte */
    for (int x = 0; x < 256; x++) {
        char c = (char)x;
        size_t n_ids;
        int *ids = encode_ok(t, &c, 1, 0, &n_ids);
        cr_assert_eq(n_ids, 1, "byte 0x%02X: %zu ids", x, n_ids);
        cr_assert_eq(gpt2_token_bytes(t, ids[0], &b, &n, &err), GPT2_OK);
        cr_assert(n == 1 && (unsigned char)b[0] == x, "byte 0x%02X: token %d has other bytes", x, ids[0]);
        free(ids);
    }
    /* every id has bytes, and decode of all ids is their concatenation */
    size_t total = 0;
    for (int id = 0; id < GPT2_N_VOCAB; id++) {
        cr_assert_eq(gpt2_token_bytes(t, id, &b, &n, &err), GPT2_OK, "id %d: %s", id, err.msg);
        cr_assert(n >= 1 && n <= 128, "id %d: %zu bytes", id, n);
        total += n;
    }
    int *all = malloc(GPT2_N_VOCAB * sizeof *all);
    for (int id = 0; id < GPT2_N_VOCAB; id++) all[id] = id;
    char *text;
    size_t n_text;
    cr_assert_eq(gpt2_decode(t, all, GPT2_N_VOCAB, &text, &n_text, &err), GPT2_OK);
    cr_assert_eq(n_text, total);
    size_t off = 0;
    for (int id = 0; id < GPT2_N_VOCAB; id++) {
        gpt2_token_bytes(t, id, &b, &n, &err);
        cr_assert(memcmp(text + off, b, n) == 0, "id %d decodes differently", id);
        off += n;
    }
    free(text);
    free(all);
    gpt2_tokenizer_free(t);
}

/* One megabyte of mixed text, and long runs of one class (each one piece, or one piece after an
 * invalid first byte), round-trip. Their speed is measured by bench/bench_tokenizer.c, not here (the
 * .timeout only catches a quadratic blow-up). */
Test(tokenizer, long_inputs_round_trip, .timeout = 120) {
    gpt2_tokenizer *t = load_gpt2();
    static const char *const words[] = {"the ", "tokenizer ", "Hello, ", "world! ", "1234 ", "3.14 ", "don't ",
                                        "\xc3\xa9t\xc3\xa9 ", "\xe4\xb8\xad\xe6\x96\x87", "\xd0\x9f\xd1\x80\xd0\xb8 ",
                                        "\n\n", "    ", "if (x) { y(); }\n", "\xf0\x9f\x98\x80 ", "qwzxjkv "};
    const size_t n = 1 << 20;
    char *text = malloc(n);
    cr_assert_not_null(text);
    rng_state = 42;
    size_t o = 0;
    while (o < n) {
        const char *w = words[rng_below(sizeof words / sizeof words[0])];
        size_t k = strlen(w);
        if (o + k > n) k = n - o; /* may cut a character: the tail is then invalid UTF-8 */
        memcpy(text + o, w, k);
        o += k;
    }
    size_t n_ids;
    int *ids = encode_ok(t, text, n, 0, &n_ids);
    assert_round_trip(t, ids, n_ids, text, n, "mixed MiB", 0);
    free(ids);

    struct {
        const char *what, *unit;
    } runs[] = {{"spaces", " "}, {"newlines", "\n"}, {"letters", "a"}, {"digits", "7"}, {"CJK", "\xe4\xb8\xad"},
                {"punctuation", "!?"}, {"space-newline", " \n"}, {"invalid first byte", "ab"}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        size_t k = strlen(runs[r].unit), m = (n / k) * k;
        for (size_t i = 0; i < m; i += k) memcpy(text + i, runs[r].unit, k);
        if (!strcmp(runs[r].what, "invalid first byte")) text[0] = (char)0xFF;
        ids = encode_ok(t, text, m, 0, &n_ids);
        assert_round_trip(t, ids, n_ids, text, m, runs[r].what, r);
        free(ids);
    }
    free(text);
    gpt2_tokenizer_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Loading                                                                                          */

/* encoder.json + vocab.bpe (OpenAI's names) load like vocab.json + merges.txt; vocab.json wins when a
 * directory has both. */
Test(tokenizer, openai_file_names) {
    char *dir = make_tmp();
    char cwd[4096], src[4096 + 64], dst[512];
    cr_assert_not_null(getcwd(cwd, sizeof cwd));
    snprintf(src, sizeof src, "%s/" TOK_DIR "/vocab.json", cwd);
    snprintf(dst, sizeof dst, "%s/encoder.json", dir);
    cr_assert_eq(symlink(src, dst), 0);
    snprintf(src, sizeof src, "%s/" TOK_DIR "/merges.txt", cwd);
    snprintf(dst, sizeof dst, "%s/vocab.bpe", dir);
    cr_assert_eq(symlink(src, dst), 0);

    gpt2_tokenizer *a = NULL, *b = load_gpt2();
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(dir, &a, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_tokenizer_n_vocab(a), GPT2_N_VOCAB);
    cr_assert_eq(gpt2_tokenizer_eot(a), GPT2_EOT);
    const char *s = "OpenAI's encoder.json and vocab.bpe, 2019. \xe4\xb8\xad\xe6\x96\x87";
    size_t na, nb;
    int *ia = encode_ok(a, s, strlen(s), 0, &na), *ib = encode_ok(b, s, strlen(s), 0, &nb);
    cr_assert(na == nb && memcmp(ia, ib, na * sizeof *ia) == 0);
    free(ia);
    free(ib);
    gpt2_tokenizer_free(a);
    gpt2_tokenizer_free(b);

    /* a small vocab.json + merges.txt next to them is preferred */
    write_tokenizer(dir, "", "#version: 0.2\n");
    cr_assert_eq(gpt2_tokenizer_load(dir, &a, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_tokenizer_n_vocab(a), 256);
    cr_assert_eq(gpt2_tokenizer_eot(a), -1);
    gpt2_tokenizer_free(a);
    rm_tmp(dir);
}

/* A vocabulary with merges of its own: no header line, CRLF line ends, ids with a gap. */
Test(tokenizer, small_vocabulary) {
    char *dir = make_tmp();
    /* ids 256: "ab", 257: "abc", 300: "<|endoftext|>"; "cab" would need a merge and is never made */
    write_tokenizer(dir, ", \"ab\": 256, \"abc\": 257, \"<|endoftext|>\": 300, \"cab\": 258", "a b\r\nab c\r\n\r\n");
    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(dir, &t, &err), GPT2_OK, "%s", err.msg);
    cr_assert_eq(gpt2_tokenizer_n_vocab(t), 301);
    cr_assert_eq(gpt2_tokenizer_eot(t), 300);
    assert_ids(t, "abcab", 0, (int[]){257, 256}, 2);
    assert_ids(t, "cab", 0, (int[]){'c', 256}, 2); /* a vocabulary entry no merge creates is not used */
    assert_ids(t, "ab<|endoftext|>", 1, (int[]){256, 300}, 2);
    const char *b;
    size_t n;
    cr_assert_eq(gpt2_token_bytes(t, 280, &b, &n, &err), GPT2_ERR_ARG); /* the gap */
    cr_assert(strstr(err.msg, "id 280") != NULL, "%s", err.msg);
    char *text;
    size_t n_text;
    cr_assert_eq(gpt2_decode(t, (int[]){257, 259}, 2, &text, &n_text, &err), GPT2_ERR_ARG);
    cr_assert(strstr(err.msg, "id 259") != NULL, "%s", err.msg);
    gpt2_tokenizer_free(t);

    /* "abc" is created twice, by line 3 and line 5: its rank is line 3's, so it merges before "c d" */
    write_tokenizer(dir, ", \"ab\": 256, \"bc\": 257, \"abc\": 258, \"cd\": 259", "a b\nb c\na bc\nc d\nab c\n");
    cr_assert_eq(gpt2_tokenizer_load(dir, &t, &err), GPT2_OK, "%s", err.msg);
    assert_ids(t, "abcd", 0, (int[]){258, 'd'}, 2);
    gpt2_tokenizer_free(t);
    rm_tmp(dir);
}

Test(tokenizer, load_errors_files) {
    expect_load_error("/nonexistent/gpt2-dir", GPT2_ERR_IO, "missing dir", "/nonexistent/gpt2-dir", NULL);
    char *dir = make_tmp();
    expect_load_error(dir, GPT2_ERR_IO, "empty dir", dir, "vocab.json", "encoder.json", NULL);

    sbuf v = {0};
    byte_vocab(&v, "");
    write_file(dir, "vocab.json", v.p, v.n);
    expect_load_error(dir, GPT2_ERR_IO, "no merges.txt", "merges.txt", NULL);

    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load_files("/nonexistent/v.json", "/nonexistent/m.txt", &t, &err), GPT2_ERR_IO);
    cr_assert(strstr(err.msg, "/nonexistent/v.json") != NULL, "%s", err.msg);
    cr_assert_null(t);
    cr_assert_eq(gpt2_tokenizer_load_files(NULL, "m", &t, &err), GPT2_ERR_ARG);
    cr_assert_eq(gpt2_tokenizer_load(NULL, &t, &err), GPT2_ERR_ARG);

    /* a vocab.json over the 64 MB limit (sparse, so cheap) */
    char path[512];
    snprintf(path, sizeof path, "%s/big.json", dir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(ftruncate(fileno(f), (off_t)65 << 20), 0);
    fclose(f);
    char mpath[512];
    snprintf(mpath, sizeof mpath, "%s/merges.txt", dir);
    write_file(dir, "merges.txt", "", 0);
    cr_assert_eq(gpt2_tokenizer_load_files(path, mpath, &t, &err), GPT2_ERR_FORMAT);
    cr_assert(strstr(err.msg, "big.json") && strstr(err.msg, "limit"), "%s", err.msg);
    free(v.p);
    rm_tmp(dir);
}

Test(tokenizer, load_errors_vocab_json) {
    char *dir = make_tmp();
    struct {
        const char *what, *json; /* whole vocab.json text, or NULL to use the byte tokens + extra */
        const char *extra;
        const char *frag1, *frag2;
    } cases[] = {
        {"truncated JSON", "{\"a\": 1,\n \"b\": ", NULL, "vocab.json:2:", "invalid JSON"},
        {"not an object", "[1, 2, 3]", NULL, "vocab.json", "object"},
        {"empty object", "{}", NULL, "vocab.json", "no tokens"},
        {"duplicate key", NULL, ", \"ab\": 256, \"ab\": 257", "vocab.json", "duplicate"},
        {"string id", NULL, ", \"ab\": \"256\"", "vocab.json", "\"ab\""},
        {"real id", NULL, ", \"ab\": 256.5", "\"ab\"", "not an integer"},
        {"negative id", NULL, ", \"ab\": -3", "\"ab\"", "-3"},
        {"huge id", NULL, ", \"ab\": 1099511627776", "\"ab\"", "out of range"},
        {"duplicate id", NULL, ", \"ab\": 256, \"cd\": 256", "id 256", "\"cd\""},
        {"space in key", NULL, ", \"a b\": 256", "\"a b\"", "U+0020"},
        {"euro sign in key", NULL, ", \"x\xe2\x82\xac\": 256", "x\xe2\x82\xac", "U+20AC"},
        {"newline in key", NULL, ", \"x\\ny\": 256", "\"x\\x0Ay\"", "U+000A"},
        {"empty key", NULL, ", \"\": 256", "vocab.json", "empty token"},
        {"missing byte token", "{\"a\": 0, \"b\": 1}", NULL, "no token for byte 0x00", "\xc4\x80"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].json) {
            write_file(dir, "vocab.json", cases[i].json, strlen(cases[i].json));
            write_file(dir, "merges.txt", "", 0);
        } else {
            write_tokenizer(dir, cases[i].extra, "#version: 0.2\n");
        }
        expect_load_error(dir, GPT2_ERR_FORMAT, cases[i].what, cases[i].frag1, cases[i].frag2, NULL);
    }
    rm_tmp(dir);
}

Test(tokenizer, load_errors_merges) {
    char *dir = make_tmp();
    const char *extra = ", \"ab\": 256, \"cd\": 257, \"abc\": 258";
    struct {
        const char *what, *merges, *frag1, *frag2;
    } cases[] = {
        {"one token", "#version: 0.2\na b\nab\n", "merges.txt:3:", "two tokens"},
        {"three tokens", "#version: 0.2\na b\nab c d\n", "merges.txt:3:", "\"ab c d\""},
        {"leading space", "#version: 0.2\n\n a b\n", "merges.txt:3:", "two tokens"},
        {"two spaces", "a b\nab  c\n", "merges.txt:2:", "two tokens"},
        {"trailing space", "a b \n", "merges.txt:1:", "two tokens"},
        {"tab separator", "a\tb\n", "merges.txt:1:", "two tokens"},
        {"unknown token", "#version: 0.2\na b\nab zz\n", "merges.txt:3:", "\"zz\" is not in"},
        {"merge result not in vocab", "#version: 0.2\nc d\nab cd\n", "merges.txt:3:", "\"abcd\" is not in"},
        {"invalid UTF-8", "#version: 0.2\na \xff\n", "merges.txt:2:", "not valid UTF-8"},
        {"char outside the byte map", "#version: 0.2\na \xe2\x82\xac\n", "merges.txt:2:", "U+20AC"},
        {"header not on line 1", "a b\n#version: 0.2\n", "merges.txt:2:", "\"#version:\" is not in"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_tokenizer(dir, extra, cases[i].merges);
        expect_load_error(dir, GPT2_ERR_FORMAT, cases[i].what, cases[i].frag1, cases[i].frag2, NULL);
    }
    /* the same files with good merges load */
    write_tokenizer(dir, extra, "#version: 0.2\na b\nc d\nab c\n");
    gpt2_tokenizer *t = NULL;
    gpt2_error err = {0};
    cr_assert_eq(gpt2_tokenizer_load(dir, &t, &err), GPT2_OK, "%s", err.msg);
    assert_ids(t, "abcd", 0, (int[]){256, 257}, 2); /* "c d" (line 2) merges before "ab c" (line 3) */
    assert_ids(t, "abce", 0, (int[]){258, 'e'}, 2);
    assert_ids(t, "abc", 0, (int[]){258}, 1);
    gpt2_tokenizer_free(t);
    rm_tmp(dir);
}
