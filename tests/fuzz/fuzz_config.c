/* fuzz_config.c: gpt2_config_load on arbitrary bytes, written to an in-memory file per input.
 * An accepted config must satisfy every range the loader promises; a refused one must say why. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

static fuzz_memfile g_file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_memfile_open(&g_file, "config.json");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_memfile_set(&g_file, data, size);
    gpt2_config c;
    memset(&c, 0xA5, sizeof c); /* an untouched field would show */
    gpt2_config before = c;
    gpt2_error err = {0};
    gpt2_status s = gpt2_config_load(g_file.path, &c, &err);
    if (s != GPT2_OK) {
        fuzz_check_error(s, &err);
        FUZZ_CHECK(s == GPT2_ERR_FORMAT || s == GPT2_ERR_CONFIG || s == GPT2_ERR_NOMEM, "status %d: %s", (int)s,
                   err.msg);
        FUZZ_CHECK(strstr(err.msg, g_file.path) != NULL, "message does not name the file: %s", err.msg);
        FUZZ_CHECK(!memcmp(&c, &before, sizeof c), "config written on failure");
        return 0;
    }
    FUZZ_CHECK(c.n_layer >= 1 && c.n_layer <= 256, "n_layer %d", c.n_layer);
    FUZZ_CHECK(c.n_head >= 1 && c.n_head <= 256, "n_head %d", c.n_head);
    FUZZ_CHECK(c.n_embd >= 1 && c.n_embd <= 16384, "n_embd %d", c.n_embd);
    FUZZ_CHECK(c.n_embd % c.n_head == 0, "n_embd %d, n_head %d", c.n_embd, c.n_head);
    FUZZ_CHECK(c.vocab_size >= 1 && c.vocab_size <= (1 << 20), "vocab_size %d", c.vocab_size);
    FUZZ_CHECK(c.n_positions >= 1 && c.n_positions <= 65536, "n_positions %d", c.n_positions);
    FUZZ_CHECK(isfinite(c.layer_norm_epsilon) && c.layer_norm_epsilon > 0.0f && c.layer_norm_epsilon < 1.0f,
               "layer_norm_epsilon %g", (double)c.layer_norm_epsilon);
    return 0;
}
