/* fuzz_tokenizer_load.c: gpt2_tokenizer_load_files on a fuzzed vocab.json + merges.txt.
 *
 * The input is split at the first "\n#merges#\n": the bytes before it are vocab.json, the bytes after
 * it merges.txt (no separator: all of it is vocab.json and merges.txt is empty). Both are written to
 * in-memory files. A refused pair must come with a message; an accepted tokenizer must answer
 * sensibly: every id below n_vocab either has bytes or is refused, and a fixed multi-script text
 * (plus the input's own bytes, up to 256) encodes and decodes back exactly. */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

#define SEP "\n#merges#\n"

static fuzz_memfile g_vocab, g_merges;

static const char SAMPLE[] = "Hello, world! It's 2024: don't <|endoftext|> caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac "
                             "\xf0\x9f\x99\x82  \n\n\t x\xff\xfe tail";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_memfile_open(&g_vocab, "vocab.json");
    fuzz_memfile_open(&g_merges, "merges.txt");
    return 0;
}

static void check_roundtrip(gpt2_tokenizer *t, const char *text, size_t n, int allow_special) {
    int *ids = NULL;
    size_t n_ids = 0;
    gpt2_error err = {0};
    gpt2_status s = gpt2_encode(t, text, n, allow_special, &ids, &n_ids, &err);
    /* Every byte has a token (the loader insists), so encoding cannot fail for lack of one. */
    FUZZ_CHECK(s == GPT2_OK, "encode failed: %s", err.msg);
    int n_vocab = gpt2_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n_ids; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d", ids[i]);
    char *back = NULL;
    size_t n_back = 0;
    s = gpt2_decode(t, ids, n_ids, &back, &n_back, &err);
    FUZZ_CHECK(s == GPT2_OK, "decode failed: %s", err.msg);
    FUZZ_CHECK(n_back == n && (n == 0 || memcmp(back, text, n) == 0), "round trip differs: %zu bytes in, %zu out", n,
               n_back);
    free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = memmem(data, size, SEP, sizeof SEP - 1);
    size_t n_vocab_bytes = sep ? (size_t)(sep - data) : size;
    const uint8_t *merges = sep ? sep + sizeof SEP - 1 : data + size;
    fuzz_memfile_set(&g_vocab, data, n_vocab_bytes);
    fuzz_memfile_set(&g_merges, merges, (size_t)(data + size - merges));

    gpt2_tokenizer *t = (gpt2_tokenizer *)0x1;
    gpt2_error err = {0};
    gpt2_status s = gpt2_tokenizer_load_files(g_vocab.path, g_merges.path, &t, &err);
    if (s != GPT2_OK) {
        fuzz_check_error(s, &err);
        FUZZ_CHECK(t == NULL, "*out not NULL after a failure");
        FUZZ_CHECK(strstr(err.msg, g_vocab.path) || strstr(err.msg, g_merges.path), "message names no file: %s",
                   err.msg);
        return 0;
    }
    int n_vocab = gpt2_tokenizer_n_vocab(t), eot = gpt2_tokenizer_eot(t);
    FUZZ_CHECK(n_vocab >= 256, "n_vocab %d with all 256 bytes present", n_vocab);
    FUZZ_CHECK(eot >= -1 && eot < n_vocab, "eot %d", eot);
    /* Ids: the first and last 512 (a sparse vocabulary can have 2^24 ids), and a few outside. */
    int probes[] = {-1, n_vocab, n_vocab + 1, 0x7fffffff, (int)0x80000000};
    for (size_t i = 0; i < sizeof probes / sizeof *probes; i++) {
        const char *b;
        size_t nb;
        FUZZ_CHECK(gpt2_token_bytes(t, probes[i], &b, &nb, &err) != GPT2_OK, "id %d accepted", probes[i]);
    }
    for (int id = 0; id < n_vocab; id++) {
        if (id == 512 && n_vocab > 1024) id = n_vocab - 512;
        const char *b;
        size_t nb;
        if (gpt2_token_bytes(t, id, &b, &nb, &err) == GPT2_OK) {
            FUZZ_CHECK(nb > 0, "token %d is empty", id);
            volatile char c = b[0] ^ b[nb - 1];
            (void)c;
            char *text = NULL;
            size_t n_text = 0;
            FUZZ_CHECK(gpt2_decode(t, &id, 1, &text, &n_text, &err) == GPT2_OK && n_text == nb &&
                           !memcmp(text, b, nb),
                       "decode of token %d differs from its bytes", id);
            free(text);
        }
    }
    check_roundtrip(t, SAMPLE, sizeof SAMPLE - 1, 0);
    check_roundtrip(t, SAMPLE, sizeof SAMPLE - 1, 1);
    check_roundtrip(t, (const char *)data, size < 256 ? size : 256, 0);
    gpt2_tokenizer_free(t);
    return 0;
}
