/* cli_tools.c: the encode, decode and logits subcommands. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "npy.h"
#include "util.h"

gpt2_engine_opts cli_engine_opts(const cli_common *c) {
    gpt2_engine_opts o = gpt2_engine_opts_default();
    o.device = c->device;
    o.dtype = c->dtype;
    o.allow_tf32 = c->allow_tf32;
    o.n_threads = c->threads;
    o.tokenizer_dir = c->tokenizer_dir;
    o.cuda_graphs = !c->no_cuda_graphs; /* GPT2_CUDA_GRAPHS=0, read by cli_common_init */
    return o;
}

enum { OPT_FILE = 2000, OPT_NO_SPECIAL, OPT_PROMPT, OPT_IDS, OPT_OUT };

typedef struct {
    const char *file, *prompt, *ids, *out;
    int no_special;
} tool_args;

static int tool_option(int opt, const char *arg, void *ctx) {
    tool_args *a = ctx;
    switch (opt) {
    case OPT_FILE: a->file = arg; return 1;
    case OPT_NO_SPECIAL: a->no_special = 1; return 1;
    case OPT_PROMPT: a->prompt = arg; return 1;
    case OPT_IDS: a->ids = arg; return 1;
    case OPT_OUT: a->out = arg; return 1;
    }
    return 0;
}

static const char ENCODE_HELP[] =
    "usage: gpt2 encode --model DIR [--file F] [--no-special]\n"
    "Writes the token ids of F (standard input if absent) as one line of space-separated integers.\n"
    "  --file F           input file (raw bytes; any bytes are accepted)\n"
    "  --no-special       encode the text <|endoftext|> as ordinary text, not as token 50256\n" CLI_COMMON_HELP;

int cmd_encode(int argc, char **argv) {
    static const struct option opts[] = {CLI_COMMON_OPTIONS, {"file", required_argument, 0, OPT_FILE},
                                         {"no-special", no_argument, 0, OPT_NO_SPECIAL}, {0, 0, 0, 0}};
    cli_common c;
    tool_args a = {0};
    cli_common_init(&c);
    int rc = cli_parse_args("encode", argc, argv, opts, &c, ENCODE_HELP, tool_option, &a);
    if (rc) return rc < 0 ? 0 : rc;
    gpt2_tokenizer *tok;
    if (cli_load("encode", &c, 0, NULL, &tok)) return 1;
    char *text = NULL;
    int *ids = NULL;
    size_t n_text, n_ids;
    gpt2_error err = {0};
    rc = 1;
    if (cli_read_input("encode", a.file, &text, &n_text)) goto out;
    if (gpt2_encode(tok, text, n_text, !a.no_special, &ids, &n_ids, &err) != GPT2_OK) {
        cli_report("encode", &err);
        goto out;
    }
    for (size_t i = 0; i < n_ids; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    free(text);
    free(ids);
    gpt2_tokenizer_free(tok);
    return rc;
}

static const char DECODE_HELP[] =
    "usage: gpt2 decode --model DIR [--file F]\n"
    "Reads space-separated token ids from F (standard input if absent) and writes their bytes.\n"
    "  --file F           input file\n" CLI_COMMON_HELP;

int cmd_decode(int argc, char **argv) {
    static const struct option opts[] = {CLI_COMMON_OPTIONS, {"file", required_argument, 0, OPT_FILE}, {0, 0, 0, 0}};
    cli_common c;
    tool_args a = {0};
    cli_common_init(&c);
    int rc = cli_parse_args("decode", argc, argv, opts, &c, DECODE_HELP, tool_option, &a);
    if (rc) return rc < 0 ? 0 : rc;
    gpt2_tokenizer *tok;
    if (cli_load("decode", &c, 0, NULL, &tok)) return 1;
    char *in = NULL, *text = NULL;
    int *ids = NULL;
    size_t n_in, n_ids, n_text;
    gpt2_error err = {0};
    rc = 1;
    if (cli_read_input("decode", a.file, &in, &n_in) || cli_parse_ids("decode", in, &ids, &n_ids)) goto out;
    if (gpt2_decode(tok, ids, n_ids, &text, &n_text, &err) != GPT2_OK) {
        cli_report("decode", &err);
        goto out;
    }
    rc = fwrite(text, 1, n_text, stdout) == n_text && fflush(stdout) == 0 ? 0 : 1;
out:
    free(in);
    free(ids);
    free(text);
    gpt2_tokenizer_free(tok);
    return rc;
}

static const char LOGITS_HELP[] =
    "usage: gpt2 logits --model DIR (--prompt TEXT | --ids \"1 2 3\") --out F.npy [--device D] [--dtype T]\n"
    "Writes the float32 logits of every position, shape [T, vocab], as a NumPy .npy file.\n"
    "  --prompt TEXT      text to encode (<|endoftext|> becomes token 50256 unless --no-special)\n"
    "  --ids \"...\"        token ids, space-separated\n"
    "  --out F.npy        output file\n"
    "  --no-special       encode <|endoftext|> in --prompt as ordinary text\n" CLI_COMMON_HELP;

int cmd_logits(int argc, char **argv) {
    static const struct option opts[] = {
        CLI_COMMON_OPTIONS, {"prompt", required_argument, 0, OPT_PROMPT}, {"ids", required_argument, 0, OPT_IDS},
        {"out", required_argument, 0, OPT_OUT}, {"no-special", no_argument, 0, OPT_NO_SPECIAL}, {0, 0, 0, 0}};
    cli_common c;
    tool_args a = {0};
    cli_common_init(&c);
    int rc = cli_parse_args("logits", argc, argv, opts, &c, LOGITS_HELP, tool_option, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (!c.model_dir || !a.out || !a.prompt == !a.ids) {
        fprintf(stderr, "gpt2 logits: --model, --out and one of --prompt or --ids are required\n%s", LOGITS_HELP);
        return EXIT_USAGE;
    }
    int *ids = NULL;
    size_t T = 0;
    if (a.ids && cli_parse_ids("logits", a.ids, &ids, &T)) return EXIT_USAGE;
    gpt2_model *m = NULL;
    gpt2_tokenizer *tok = NULL;
    gpt2_engine *e = NULL;
    float *logits = NULL;
    gpt2_error err = {0};
    rc = 1;
    if (cli_load("logits", &c, 1, &m, &tok)) goto out;
    if (a.prompt && gpt2_encode(tok, a.prompt, strlen(a.prompt), !a.no_special, &ids, &T, &err) != GPT2_OK) {
        cli_report("logits", &err);
        goto out;
    }
    int V = m->cfg.vocab_size;
    if (T == 0 || T > (size_t)m->cfg.n_positions) {
        fprintf(stderr, "gpt2 logits: %zu tokens: must be 1..%d (n_positions)\n", T, m->cfg.n_positions);
        goto out;
    }
    for (size_t i = 0; i < T; i++)
        if (ids[i] >= V) {
            fprintf(stderr, "gpt2 logits: token id %d (#%zu) outside the model's vocabulary 0..%d\n", ids[i], i + 1,
                    V - 1);
            goto out;
        }
    /* One sequence; prefill in pieces of at most 512 tokens so the logits buffer stays small. */
    gpt2_engine_opts o = cli_engine_opts(&c);
    o.max_slots = 1;
    o.max_seq = (int)T;
    o.max_tokens = T < 512 ? (int)T : 512;
    o.logits = 1;
    size_t bytes;
    if (gpt2_mul3_size(T, (size_t)V, sizeof(float), &bytes) || !(logits = malloc(bytes))) {
        fprintf(stderr, "gpt2 logits: cannot allocate %zu x %d logits\n", T, V);
        goto out;
    }
    if (gpt2_engine_create_from(m, tok, &o, &e, &err) != GPT2_OK ||
        gpt2_engine_logits(e, ids, (int)T, logits, &err) != GPT2_OK) {
        cli_report("logits", &err);
        goto out;
    }
    if (gpt2_npy_write(a.out, logits, T, (size_t)V, &err) != GPT2_OK) {
        cli_report("logits", &err);
        goto out;
    }
    rc = 0;
out:
    gpt2_engine_destroy(e);
    gpt2_model_free(m);
    gpt2_tokenizer_free(tok);
    free(ids);
    free(logits);
    return rc;
}
