/* cli_common.c: option parsing and input helpers shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "util.h"

void cli_common_init(cli_common *c) {
    memset(c, 0, sizeof *c);
    c->device = "auto";
    c->dtype = GPT2_DTYPE_F32;
    const char *g = getenv("GPT2_CUDA_GRAPHS"); /* the CLI reads the environment; the library does not */
    c->no_cuda_graphs = g && !strcmp(g, "0");
}

gpt2_engine_opts cli_batch_opts(const cli_common *c, int batch, long want, int min_slots, int max_seq,
                                int gpu_step_tokens) {
    int cuda = strcmp(c->device, "cpu") && gpt2_cuda_device_count() > 0;
    int slots = batch ? batch : cuda ? 64 : 8;
    if (slots > want) slots = want > 0 ? (int)want : 1;
    if (slots < min_slots) slots = min_slots;
    gpt2_engine_opts o = cli_engine_opts(c);
    o.max_slots = slots;
    o.max_seq = max_seq;
    o.max_tokens = slots + (cuda ? gpu_step_tokens : 256);
    return o;
}

/* getopt's short-option string from the table: an entry whose code is a letter (e.g. 'n' for
 * --max-tokens) is also its short form. getopt_long then takes option values as given, so a value
 * that looks like a flag (`--prompt -n`) is still a value, and nothing rewrites argv. */
static int short_options(const struct option *opts, char *buf, size_t n) {
    size_t k = 0;
    for (const struct option *o = opts; o->name; o++) {
        if (o->flag || !((o->val >= 'a' && o->val <= 'z') || (o->val >= 'A' && o->val <= 'Z'))) continue;
        if (k + 3 > n) return -1;
        buf[k++] = (char)o->val;
        if (o->has_arg == required_argument) buf[k++] = ':';
        else if (o->has_arg == optional_argument) buf[k++] = ':', buf[k++] = ':';
    }
    buf[k] = '\0';
    return 0;
}

/* getopt_long over a command's table; common options handled here. 0 to go on, else an exit code. */
int cli_parse_args(const char *cmd, int argc, char **argv, const struct option *opts, cli_common *c,
                      const char *help, int (*own)(int opt, const char *arg, void *ctx), void *ctx) {
    int opt;
    char shorts[128];
    if (short_options(opts, shorts + 1, sizeof shorts - 1)) {
        fprintf(stderr, "gpt2 %s: internal error: too many short options\n", cmd);
        return EXIT_USAGE;
    }
    shorts[0] = ':'; /* a missing value reports ':' rather than '?' */
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        if (opt == OPT_HELP) {
            printf("%s", help);
            return -1;
        }
        int r = opt == '?' || opt == ':' ? 0 : cli_common_option(cmd, opt, optarg, c);
        if (r == 0 && opt != '?' && opt != ':') r = own(opt, optarg, ctx);
        if (r <= 0) {
            if (opt == ':') fprintf(stderr, "gpt2 %s: option '%s' needs a value\n", cmd, argv[optind - 1]);
            else if (r == 0) fprintf(stderr, "gpt2 %s: unknown option '%s'\n", cmd, argv[optind - 1]);
            fprintf(stderr, "%s", help);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gpt2 %s: unexpected argument '%s'\n%s", cmd, argv[optind], help);
        return EXIT_USAGE;
    }
    if (!c->model_dir && !c->tokenizer_dir) {
        fprintf(stderr, "gpt2 %s: --model DIR is required\n%s", cmd, help);
        return EXIT_USAGE;
    }
    return 0;
}

int cli_common_option(const char *cmd, int opt, const char *arg, cli_common *c) {
    long v;
    switch (opt) {
    case OPT_MODEL: c->model_dir = arg; return 1;
    case OPT_TOKENIZER: c->tokenizer_dir = arg; return 1;
    case OPT_DEVICE: return cli_parse_device(cmd, arg, &c->device) ? -1 : 1;
    case OPT_DTYPE: return cli_parse_dtype(cmd, arg, &c->dtype) ? -1 : 1;
    case OPT_TF32: c->allow_tf32 = 1; return 1;
    case OPT_THREADS:
        if (cli_parse_int(cmd, "--threads", arg, 1, 4096, &v)) return -1;
        c->threads = (int)v;
        return 1;
    }
    return 0;
}

/* --model / --tokenizer must name a directory: say so when it is missing or a file, rather than
 * report the first file inside it that could not be opened. */
static int check_dir_option(const char *cmd, const char *opt, const char *dir) {
    struct stat st;
    if (!dir) return 0;
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT) fprintf(stderr, "gpt2 %s: %s %s: no such directory\n", cmd, opt, dir);
        else fprintf(stderr, "gpt2 %s: %s %s: %s\n", cmd, opt, dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "gpt2 %s: %s %s: is a file, not a directory (give the model directory)\n", cmd, opt, dir);
        return -1;
    }
    return 0;
}

int cli_load(const char *cmd, const cli_common *c, int want_model, gpt2_model **model, gpt2_tokenizer **tok) {
    gpt2_error err = {0};
    *tok = NULL;
    if (model) *model = NULL;
    if (check_dir_option(cmd, "--model", c->model_dir) || check_dir_option(cmd, "--tokenizer", c->tokenizer_dir))
        return -1;
    const char *tdir = c->tokenizer_dir ? c->tokenizer_dir : c->model_dir;
    if (gpt2_tokenizer_load(tdir, tok, &err) != GPT2_OK) {
        cli_report(cmd, &err);
        return -1;
    }
    if (want_model && gpt2_model_load(c->model_dir, model, &err) != GPT2_OK) {
        cli_report(cmd, &err);
        gpt2_tokenizer_free(*tok);
        *tok = NULL;
        return -1;
    }
    return 0;
}

int cli_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "gpt2 %s: %s '%s': expected an integer in %ld..%ld\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "gpt2 %s: %s '%s': expected a number in %g..%g\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_dtype(const char *cmd, const char *s, gpt2_dtype *out) {
    if (!strcmp(s, "fp32") || !strcmp(s, "float32")) *out = GPT2_DTYPE_F32;
    else if (!strcmp(s, "fp16") || !strcmp(s, "float16")) *out = GPT2_DTYPE_F16;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = GPT2_DTYPE_BF16;
    else {
        fprintf(stderr, "gpt2 %s: --dtype '%s': expected fp32, fp16 or bf16\n", cmd, s);
        return -1;
    }
    return 0;
}

int cli_parse_device(const char *cmd, const char *s, const char **out) {
    if (strcmp(s, "cpu") && strcmp(s, "cuda") && strcmp(s, "auto")) {
        fprintf(stderr, "gpt2 %s: --device '%s': expected cpu, cuda or auto\n", cmd, s);
        return -1;
    }
    *out = s;
    return 0;
}

void cli_report(const char *cmd, const gpt2_error *err) {
    fprintf(stderr, "gpt2 %s: %s\n", cmd, err->msg[0] ? err->msg : gpt2_strerror(err->status));
}

int cli_parse_ids(const char *cmd, const char *text, int **ids, size_t *n) {
    size_t cap = 64, k = 0;
    int *v = malloc(sizeof(int) * cap);
    if (!v) goto nomem;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long id = strtol(p, &end, 10);
        if (end == p || errno || id < 0 || id > 0x7fffffff ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r' && *end != ',')) {
            int len = 0;
            while (p[len] && p[len] != ' ' && p[len] != '\n' && len < 32) len++;
            fprintf(stderr, "gpt2 %s: token id #%zu '%.*s': expected a non-negative integer\n", cmd, k + 1, len, p);
            free(v);
            return -1;
        }
        if (k == cap) {
            int *nv = realloc(v, sizeof(int) * (cap *= 2));
            if (!nv) goto nomem;
            v = nv;
        }
        v[k++] = (int)id;
        p = end;
    }
    *ids = v;
    *n = k;
    return 0;
nomem:
    free(v);
    fprintf(stderr, "gpt2 %s: out of memory\n", cmd);
    return -1;
}

int cli_read_input(const char *cmd, const char *path, char **data, size_t *n) {
    if (path && strcmp(path, "-")) {
        gpt2_error err = {0};
        if (gpt2_read_file(path, (size_t)1 << 32, data, n, &err) != GPT2_OK) {
            cli_report(cmd, &err);
            return -1;
        }
        return 0;
    }
    size_t cap = 1 << 16, k = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        k += fread(buf + k, 1, cap - k, stdin);
        if (k < cap) break;
        char *nb = realloc(buf, (cap *= 2) + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
        } else buf = nb;
    }
    if (!buf || ferror(stdin)) {
        free(buf);
        fprintf(stderr, "gpt2 %s: cannot read standard input\n", cmd);
        return -1;
    }
    buf[k] = '\0';
    *data = buf;
    *n = k;
    return 0;
}
