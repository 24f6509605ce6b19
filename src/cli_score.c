/* cli_score.c: `gpt2 score`, the negative log-likelihood and perplexity of texts.
 *
 * Windows and token accounting are those of the Hugging Face perplexity guide for fixed-length
 * models: windows start at 0, S, 2S, ... and hold at most n_positions tokens; a token is scored once,
 * in the first window that holds it with context (so a window's first token is not scored, and the
 * text's first token never is); no token is prepended. Each window is one engine request with echo
 * and max_tokens 0: its PROMPT event carries log p(token | the window before it) for every position,
 * and the engine batches the windows of every text as it batches any requests. nll is summed in
 * double; ppl = exp(nll / tokens). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum { OPT_FILE = 4000, OPT_INPUT, OPT_STRIDE, OPT_JSON, OPT_NO_SPECIAL, OPT_BATCH };

static const char HELP[] =
    "usage: gpt2 score --model DIR (--file F | --input FILE.jsonl) [--stride S] [--json]\n"
    "The negative log-likelihood (natural log, summed in float64) and perplexity of a text, with the\n"
    "windows of the Hugging Face perplexity guide: windows start at 0, S, 2S, ... and hold at most\n"
    "n_positions tokens; each token is scored once, in the first window that holds it with context;\n"
    "a window's first token has no context and is not scored. Prints {\"tokens\": scored tokens,\n"
    "\"nll\": sum of -ln p, \"ppl\": exp(nll / tokens)} (--json) or the same as text.\n"
    "With --input each line is {\"id\": ..., \"text\": \"...\"} and each output line one such record with\n"
    "its id (a bad line gets {\"id\", \"line\", \"error\"} and the exit status is 1).\n"
    "  --file F           the text (raw bytes; standard input if \"-\")\n"
    "  --input FILE       JSONL texts, one record per line\n"
    "  --stride S         window step, 1..n_positions (default n_positions: windows do not overlap)\n"
    "  --json             print the --file result as a JSON object\n"
    "  --batch N          windows forwarded together (default: 8 on cpu, 64 on cuda)\n"
    "  --no-special       encode <|endoftext|> as ordinary text\n" CLI_COMMON_HELP;

typedef struct {
    const char *file, *input;
    long stride;
    int json, no_special, batch;
} score_args;

/* One text to score. */
typedef struct {
    int line;       /* input line (1-based), 0 for --file */
    json_t *id;     /* --input: the record's id (json null when absent) */
    char *error;    /* a bad line: why (malloc'ed) */
    int *ids;       /* token ids */
    size_t n_ids;
    double nll;     /* sum of -ln p over the scored tokens */
    long scored;
    int windows_left;
} text_job;

/* One window: the engine request's user pointer. */
typedef struct {
    text_job *t;
    size_t begin, from, to; /* window starts at begin; tokens [from, to) are scored in it */
    int done;
} window;

static int score_option(int opt, const char *arg, void *ctx) {
    score_args *a = ctx;
    long v;
    switch (opt) {
    case OPT_FILE: a->file = arg; return 1;
    case OPT_INPUT: a->input = arg; return 1;
    case OPT_JSON: a->json = 1; return 1;
    case OPT_NO_SPECIAL: a->no_special = 1; return 1;
    case OPT_STRIDE:
        if (cli_parse_int("score", "--stride", arg, 1, 1 << 30, &v)) return -1;
        a->stride = v;
        return 1;
    case OPT_BATCH:
        if (cli_parse_int("score", "--batch", arg, 1, 65536, &v)) return -1;
        a->batch = (int)v;
        return 1;
    }
    return 0;
}

static int on_event(const gpt2_event *ev) {
    window *w = ev->user;
    if (ev->kind == GPT2_EVENT_PROMPT) {
        for (size_t i = w->from; i < w->to; i++) w->t->nll -= (double)ev->logprobs[i - w->begin];
        w->t->scored += (long)(w->to - w->from);
        w->done = 1;
    } else if (ev->kind == GPT2_EVENT_FINISH && !w->done && !w->t->error) {
        const char *why = ev->error ? ev->error : gpt2_finish_name(ev->finish);
        size_t n = strlen(why) + 64;
        if ((w->t->error = malloc(n))) snprintf(w->t->error, n, "a window failed: %s", why);
    }
    return 0;
}

static void set_error(text_job *t, const char *fmt, const char *detail) {
    size_t n = strlen(fmt) + (detail ? strlen(detail) : 0) + 1;
    free(t->error);
    if ((t->error = malloc(n))) snprintf(t->error, n, fmt, detail ? detail : "");
}

/* Parses one --input line into t (text encoded). A bad line sets t->error. 0, or -1 out of memory. */
static int parse_line(const char *s, size_t n, gpt2_tokenizer *tok, int no_special, text_job *t) {
    json_error_t jerr;
    json_t *root = json_loadb(s, n, JSON_REJECT_DUPLICATES, &jerr);
    t->id = json_null();
    if (!root) {
        set_error(t, "invalid JSON: %s", jerr.text);
        return t->error ? 0 : -1;
    }
    json_t *id = json_object_get(root, "id"), *text = json_object_get(root, "text");
    const char *key;
    json_t *v;
    if (!json_is_object(root)) {
        set_error(t, "%s", "a record must be a JSON object");
        goto bad;
    }
    if (id && !json_is_string(id) && !json_is_integer(id)) {
        set_error(t, "%s", "\"id\": must be a string or an integer");
        goto bad;
    }
    if (id) {
        json_decref(t->id);
        t->id = json_incref(id);
    }
    json_object_foreach(root, key, v) {
        if (strcmp(key, "id") && strcmp(key, "text")) {
            set_error(t, "unknown field \"%.64s\" (a line is {\"id\", \"text\"})", key);
            goto bad;
        }
    }
    if (!json_is_string(text)) {
        set_error(t, "%s", "\"text\": missing, or not a string");
        goto bad;
    }
    gpt2_error err = {0};
    if (gpt2_encode(tok, json_string_value(text), json_string_length(text), !no_special, &t->ids, &t->n_ids, &err) !=
        GPT2_OK)
        set_error(t, "\"text\": %s", err.msg);
    json_decref(root);
    return 0;
bad:
    json_decref(root);
    return t->error ? 0 : -1;
}

/* The result (or error) record of one text; malloc'ed JSON, NULL when out of memory. */
static char *record(const text_job *t, int with_id) {
    json_t *r = json_object();
    if (!r) return NULL;
    if (with_id) json_object_set(r, "id", t->id);
    if (with_id && json_is_null(t->id)) json_object_set_new(r, "line", json_integer(t->line));
    if (t->error) {
        json_object_set_new(r, "error", json_string(t->error));
    } else {
        json_object_set_new(r, "tokens", json_integer(t->scored));
        json_object_set_new(r, "nll", json_real(t->nll));
        json_object_set_new(r, "ppl", json_real(exp(t->nll / (double)t->scored)));
    }
    char *s = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(r);
    return s;
}

int cmd_score(int argc, char **argv) {
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"file", required_argument, 0, OPT_FILE},
                                         {"input", required_argument, 0, OPT_INPUT},
                                         {"stride", required_argument, 0, OPT_STRIDE},
                                         {"json", no_argument, 0, OPT_JSON},
                                         {"batch", required_argument, 0, OPT_BATCH},
                                         {"no-special", no_argument, 0, OPT_NO_SPECIAL},
                                         {0, 0, 0, 0}};
    cli_common c;
    score_args a = {0};
    cli_common_init(&c);
    int rc = cli_parse_args("score", argc, argv, opts, &c, HELP, score_option, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (!c.model_dir || !a.file == !a.input) {
        fprintf(stderr, "gpt2 score: --model and exactly one of --file or --input are required\n%s", HELP);
        return EXIT_USAGE;
    }
    gpt2_model *m = NULL;
    gpt2_tokenizer *tok = NULL;
    gpt2_engine *e = NULL;
    text_job *texts = NULL;
    window *wins = NULL;
    char *data = NULL;
    size_t n_data = 0, n_texts = 0, n_wins = 0;
    gpt2_error err = {0};
    rc = 1;
    if (cli_load("score", &c, 1, &m, &tok)) goto out;
    const int maxT = m->cfg.n_positions;
    if (a.stride == 0) a.stride = maxT;
    if (a.stride > maxT) {
        fprintf(stderr, "gpt2 score: --stride %ld: must be in 1..%d (n_positions)\n", a.stride, maxT);
        rc = EXIT_USAGE;
        goto out;
    }
    if (cli_read_input("score", a.file ? a.file : a.input, &data, &n_data)) goto out;

    /* The texts: the file, or one per non-blank input line. */
    size_t cap = 1;
    for (size_t i = 0; a.input && i < n_data; i++) cap += data[i] == '\n';
    if (!(texts = calloc(cap, sizeof *texts))) goto nomem;
    if (a.file) {
        texts[0].id = json_null();
        if (gpt2_encode(tok, data, n_data, !a.no_special, &texts[0].ids, &texts[0].n_ids, &err) != GPT2_OK) {
            cli_report("score", &err);
            goto out;
        }
        n_texts = 1;
    } else {
        int line = 0;
        for (size_t pos = 0; pos < n_data;) {
            const char *s = data + pos, *nl = memchr(s, '\n', n_data - pos);
            size_t len = nl ? (size_t)(nl - s) : n_data - pos, l = len;
            pos += len + (nl ? 1 : 0);
            line++;
            while (l > 0 && (s[l - 1] == '\r' || s[l - 1] == ' ' || s[l - 1] == '\t')) l--;
            size_t lead = 0;
            while (lead < l && (s[lead] == ' ' || s[lead] == '\t')) lead++;
            if (lead == l) continue;
            text_job *t = &texts[n_texts++];
            t->line = line;
            if (parse_line(s + lead, l - lead, tok, a.no_special, t)) goto nomem;
        }
    }
    /* Windows of every text. */
    for (size_t k = 0; k < n_texts; k++) {
        text_job *t = &texts[k];
        if (!t->error && t->n_ids < 2)
            set_error(t, "the text has %s: nothing to score", t->n_ids ? "one token" : "no tokens");
        for (size_t begin = 0; !t->error; begin += (size_t)a.stride) {
            n_wins++;
            if (begin + (size_t)maxT >= t->n_ids) break;
        }
    }
    if (n_wins && !(wins = calloc(n_wins, sizeof *wins))) goto nomem;
    size_t w = 0;
    for (size_t k = 0; k < n_texts; k++) {
        text_job *t = &texts[k];
        if (t->error) continue;
        for (size_t begin = 0, prev_end = 0;; begin += (size_t)a.stride) {
            size_t end = begin + (size_t)maxT < t->n_ids ? begin + (size_t)maxT : t->n_ids;
            size_t from = begin + 1 > prev_end ? begin + 1 : prev_end;
            wins[w++] = (window){.t = t, .begin = begin, .from = from, .to = end};
            t->windows_left++;
            prev_end = end;
            if (end == t->n_ids) break;
        }
    }

    if (n_wins > 0) {
        gpt2_engine_opts o = cli_batch_opts(&c, a.batch, (long)n_wins, 1, maxT, 2048);
        o.logits = 1; /* a logits row per token of the windows */
        if (gpt2_engine_create_from(m, tok, &o, &e, &err) != GPT2_OK) {
            cli_report("score", &err);
            goto out;
        }
        for (size_t i = 0; i < n_wins; i++) {
            window *wi = &wins[i];
            gpt2_request r = {.prompt = wi->t->ids + wi->begin, .n_prompt = (int)(wi->to - wi->begin),
                              .max_tokens = 0, .sampling = gpt2_sampling_default(), .echo = 1,
                              .on_event = on_event, .user = wi};
            if (gpt2_engine_submit(e, &r, NULL, &err) != GPT2_OK) {
                cli_report("score", &err);
                goto out;
            }
        }
        if (gpt2_engine_run(e, &err) != GPT2_OK) {
            cli_report("score", &err);
            goto out;
        }
    }

    int failed = 0;
    for (size_t k = 0; k < n_texts; k++) {
        text_job *t = &texts[k];
        failed |= t->error != NULL;
        if (a.file && !a.json) {
            if (t->error) fprintf(stderr, "gpt2 score: %s: %s\n", a.file, t->error);
            else
                printf("tokens %ld  nll %.17g  ppl %.17g\n", t->scored, t->nll, exp(t->nll / (double)t->scored));
            continue;
        }
        if (a.file && t->error) {
            fprintf(stderr, "gpt2 score: %s: %s\n", a.file, t->error);
            continue;
        }
        char *s = record(t, a.input != NULL);
        if (!s) goto nomem;
        printf("%s\n", s);
        free(s);
    }
    rc = fflush(stdout) == 0 && !failed ? 0 : 1;
    goto out;
nomem:
    fprintf(stderr, "gpt2 score: out of memory\n");
    rc = 1;
out:
    gpt2_engine_destroy(e);
    for (size_t k = 0; texts && k < n_texts; k++) {
        json_decref(texts[k].id);
        free(texts[k].ids);
        free(texts[k].error);
    }
    free(texts);
    free(wins);
    free(data);
    gpt2_model_free(m);
    gpt2_tokenizer_free(tok);
    return rc;
}
