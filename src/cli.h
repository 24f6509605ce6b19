/* cli.h: pieces shared by the `gpt2` subcommands. Only the CLI prints and exits. */
#ifndef GPT2_CLI_H
#define GPT2_CLI_H

#include <getopt.h>
#include <stdio.h>

#include "gpt2.h"

/* Exit codes: 0 success, 1 a failure of the work, 2 bad usage. */
enum { EXIT_USAGE = 2 };

/* Options every model-running command takes. */
typedef struct {
    const char *model_dir;
    const char *tokenizer_dir; /* default: model_dir */
    const char *device;        /* cpu | cuda | auto */
    gpt2_dtype dtype;
    int allow_tf32;
    int threads;
    int no_cuda_graphs; /* GPT2_CUDA_GRAPHS=0 in the environment */
} cli_common;

void cli_common_init(cli_common *c);

/* Engine options from the common ones (device, dtype, tf32, threads, tokenizer); CUDA graphs off when
 * the environment had GPT2_CUDA_GRAPHS=0 (cli_common_init reads it; the library reads no environment). */
gpt2_engine_opts cli_engine_opts(const cli_common *c);

/* Engine options (cli_engine_opts) for `want` sequences at once (a beam search counts one per beam) of
 * at most max_seq positions: `batch` slots (--batch; 0: 64 on a GPU, 8 on the CPU), no more than want
 * (at least 1) and no fewer than min_slots; a step budget of the slots plus gpu_step_tokens tokens on a
 * GPU, plus 256 on the CPU. */
gpt2_engine_opts cli_batch_opts(const cli_common *c, int batch, long want, int min_slots, int max_seq,
                                int gpu_step_tokens);

/* getopt_long codes of the common options, and their table entries. */
enum { OPT_MODEL = 'm', OPT_TOKENIZER = 1000, OPT_DEVICE, OPT_DTYPE, OPT_TF32, OPT_THREADS, OPT_HELP = 'h' };
#define CLI_COMMON_OPTIONS                                                                                     \
    {"model", required_argument, 0, OPT_MODEL}, {"tokenizer", required_argument, 0, OPT_TOKENIZER},           \
        {"device", required_argument, 0, OPT_DEVICE}, {"dtype", required_argument, 0, OPT_DTYPE},             \
        {"tf32", no_argument, 0, OPT_TF32}, {"threads", required_argument, 0, OPT_THREADS},                   \
        {"help", no_argument, 0, OPT_HELP}
#define CLI_COMMON_HELP                                                                                        \
    "  --model DIR        Hugging Face GPT-2 model directory (config.json, model.safetensors, vocab.json,\n"   \
    "                     merges.txt)\n"                                                                      \
    "  --tokenizer DIR    take vocab.json + merges.txt from DIR instead\n"                                   \
    "  --device D         cpu, cuda or auto (default auto: cuda when a GPU is present)\n"                      \
    "  --dtype T          fp32 (default, exact), fp16 or bf16 (CUDA only)\n"                                 \
    "  --tf32             allow TF32 tensor cores in fp32 GEMMs (CUDA)\n"                                     \
    "  --threads N        CPU threads (default: all cores)\n"                                                 \
    "  --help             this text\n"

/* Handles one common option: 1 handled, 0 not a common option, -1 bad value (printed). */
int cli_common_option(const char *cmd, int opt, const char *arg, cli_common *c);

/* getopt_long over a command's table (long options only). Common options are handled here, the
 * command's own through `own` (returns 1 handled, 0 unknown, -1 bad value). Returns 0 to go on, -1
 * after printing --help (exit 0), or EXIT_USAGE after printing the problem and the help. */
int cli_parse_args(const char *cmd, int argc, char **argv, const struct option *opts, cli_common *c,
                   const char *help, int (*own)(int opt, const char *arg, void *ctx), void *ctx);

/* Loads the tokenizer (always) and the model (when want_model). 0 ok, -1 after printing. */
int cli_load(const char *cmd, const cli_common *c, int want_model, gpt2_model **model, gpt2_tokenizer **tok);

/* Strict number parsing for option values: 0 ok, -1 (after printing "gpt2 CMD: --opt: ...") on error. */
int cli_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int cli_parse_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);
int cli_parse_dtype(const char *cmd, const char *s, gpt2_dtype *out);
int cli_parse_device(const char *cmd, const char *s, const char **out);

/* Prints "gpt2 CMD: message" for a library error. */
void cli_report(const char *cmd, const gpt2_error *err);

/* Parses space/newline-separated token ids. 0 ok, -1 after printing an error naming the bad item. */
int cli_parse_ids(const char *cmd, const char *text, int **ids, size_t *n);

/* Reads a whole file ("-" or NULL: standard input). 0 ok, -1 after printing an error. */
int cli_read_input(const char *cmd, const char *path, char **data, size_t *n);

int cmd_generate(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_bench(int argc, char **argv); /* cli_bench.c */
int cmd_score(int argc, char **argv); /* cli_score.c */
int cmd_serve(int argc, char **argv); /* cli_serve.c */

#endif /* GPT2_CLI_H */
