/* main.c: the `gpt2` command line: dispatches to the subcommands in cli_*.c. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: gpt2 COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  generate   generate text from a prompt or a JSONL file of requests\n"
            "  logits     write the logits of every position as a .npy file\n"
            "  score      negative log-likelihood and perplexity of texts\n"
            "  encode     text -> token ids\n"
            "  decode     token ids -> text\n"
            "  bench      throughput and latency of prefill and decode\n"
            "  serve      an OpenAI-compatible HTTP server (/v1/completions)\n"
            "\n"
            "`gpt2 COMMAND --help` describes each command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    /* Each command parses argv[1..] so that its getopt sees the command name as argv[0]. */
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "logits")) return cmd_logits(argc - 1, argv + 1);
    if (!strcmp(cmd, "score")) return cmd_score(argc - 1, argv + 1);
    if (!strcmp(cmd, "encode")) return cmd_encode(argc - 1, argv + 1);
    if (!strcmp(cmd, "decode")) return cmd_decode(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "gpt2: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
