/* fuzz_encode_decode.c: gpt2_encode on arbitrary bytes with the real GPT-2 tokenizer.
 *
 * Checks, for every input x (any bytes, invalid UTF-8 included):
 *   - encoding succeeds, every id is a token of the vocabulary, and decode(encode(x)) == x exactly,
 *     both without and with allow_special;
 *   - without allow_special the end-of-text id never appears (the text "<|endoftext|>" is ordinary);
 *   - with allow_special it appears exactly once per occurrence of "<|endoftext|>" in x, and when x
 *     holds none, both modes give the same ids (which also checks that the tokenizer's internal
 *     scratch and caches do not leak state from one call into the next).
 * The tokenizer is loaded once from tests/data/gpt2-tokenizer (run from the repository root), or from
 * $GPT2_FUZZ_TOKENIZER, or relative to the binary (build-fuzz/../tests/data/gpt2-tokenizer).
 *
 * With $GPT2_FUZZ_DUMP set to a file name, every input and its ids in both modes are appended to that
 * file as JSON lines {"hex", "ids0", "ids1"}: tests/fuzz/tiktoken_diff.py runs a corpus through this
 * and compares the ids with tiktoken's, the independent oracle that the round trip cannot be. */
#include <libgen.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"

static gpt2_tokenizer *g_tok;
static FILE *g_dump;
static const char EOT[] = "<|endoftext|>";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char from_bin[4096] = "";
    if (*argc > 0) {
        char *copy = strdup((*argv)[0]);
        if (copy) snprintf(from_bin, sizeof from_bin, "%s/../tests/data/gpt2-tokenizer", dirname(copy));
        free(copy);
    }
    const char *env = getenv("GPT2_FUZZ_TOKENIZER");
    const char *dirs[] = {env, "tests/data/gpt2-tokenizer", from_bin};
    gpt2_error err = {0};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs && !g_tok; i++) {
        if (!dirs[i] || !dirs[i][0]) continue;
        char *vocab = gpt2_path_join(dirs[i], "vocab.json");
        int there = vocab && gpt2_file_exists(vocab);
        free(vocab);
        if (there && gpt2_tokenizer_load(dirs[i], &g_tok, &err) != GPT2_OK) {
            fprintf(stderr, "fuzz_encode_decode: %s\n", err.msg);
            abort();
        }
    }
    if (!g_tok) {
        fprintf(stderr, "fuzz_encode_decode: tests/data/gpt2-tokenizer not found; run from the repository root "
                        "or set GPT2_FUZZ_TOKENIZER\n");
        abort();
    }
    const char *dump = getenv("GPT2_FUZZ_DUMP");
    if (dump && *dump && !(g_dump = fopen(dump, "a"))) {
        perror(dump);
        abort();
    }
    FUZZ_CHECK(gpt2_tokenizer_n_vocab(g_tok) == 50257 && gpt2_tokenizer_eot(g_tok) == 50256, "not GPT-2's vocab");
    return 0;
}

static size_t count_eot(const uint8_t *data, size_t size) {
    size_t count = 0, pos = 0;
    const size_t len = sizeof EOT - 1;
    while (pos < size) {
        const uint8_t *hit = memmem(data + pos, size - pos, EOT, len);
        if (!hit) break;
        count++;
        pos = (size_t)(hit - data) + len;
    }
    return count;
}

/* Encodes with allow_special, checks the ids and the round trip; returns the ids (caller frees). */
static int *encode_checked(const uint8_t *data, size_t size, int allow_special, size_t *n_ids) {
    int *ids = NULL;
    gpt2_error err = {0};
    gpt2_status s = gpt2_encode(g_tok, (const char *)data, size, allow_special, &ids, n_ids, &err);
    FUZZ_CHECK(s == GPT2_OK, "encode (allow_special %d) of %zu bytes failed: %s", allow_special, size, err.msg);
    FUZZ_CHECK(ids != NULL, "no id array");
    FUZZ_CHECK(*n_ids <= size, "%zu ids for %zu bytes", *n_ids, size);
    int eot = gpt2_tokenizer_eot(g_tok), n_vocab = gpt2_tokenizer_n_vocab(g_tok);
    size_t n_eot = 0;
    for (size_t i = 0; i < *n_ids; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d at %zu", ids[i], i);
        n_eot += ids[i] == eot;
    }
    size_t want_eot = allow_special ? count_eot(data, size) : 0;
    FUZZ_CHECK(n_eot == want_eot, "allow_special %d: %zu end-of-text ids, want %zu", allow_special, n_eot, want_eot);
    char *text = NULL;
    size_t n_text = 0;
    s = gpt2_decode(g_tok, ids, *n_ids, &text, &n_text, &err);
    FUZZ_CHECK(s == GPT2_OK, "decode failed: %s", err.msg);
    FUZZ_CHECK(text[n_text] == '\0', "decoded text not NUL-terminated");
    FUZZ_CHECK(n_text == size && (size == 0 || memcmp(text, data, size) == 0),
               "round trip differs (allow_special %d): %zu bytes in, %zu out", allow_special, size, n_text);
    free(text);
    return ids;
}

static void dump_ids(const char *key, const int *ids, size_t n) {
    fprintf(g_dump, ", \"%s\": [", key);
    for (size_t i = 0; i < n; i++) fprintf(g_dump, i ? ",%d" : "%d", ids[i]);
    fprintf(g_dump, "]");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t n0 = 0, n1 = 0;
    int *ids0 = encode_checked(data, size, 0, &n0);
    int *ids1 = encode_checked(data, size, 1, &n1);
    if (g_dump) {
        fprintf(g_dump, "{\"hex\": \"");
        for (size_t i = 0; i < size; i++) fprintf(g_dump, "%02x", data[i]);
        fprintf(g_dump, "\"");
        dump_ids("ids0", ids0, n0);
        dump_ids("ids1", ids1, n1);
        fprintf(g_dump, "}\n");
        fflush(g_dump);
    }
    if (count_eot(data, size) == 0)
        FUZZ_CHECK(n0 == n1 && (n0 == 0 || memcmp(ids0, ids1, n0 * sizeof *ids0) == 0),
                   "ids differ between allow_special 0 and 1 on text without <|endoftext|>");
    free(ids0);
    free(ids1);
    return 0;
}
