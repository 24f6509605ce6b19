/* cli_generate.c: `gpt2 generate`, one prompt streamed to stdout or a JSONL batch of requests.
 *
 * Batch jobs lose nothing: every input line is parsed and checked before any work starts (duplicate
 * ids refused); records are written in input order as they become ready, each one complete line,
 * flushed; --resume skips the ids already in the output file (dropping a torn last line); SIGINT or a
 * failure mid-run writes every finished record, even out of order, and leaves the rest for --resume. */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "request.h"
#include "util.h"

enum {
    OPT_PROMPT = 3000, OPT_INPUT, OPT_OUTPUT, OPT_MAXTOK, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_SEED, OPT_STOP,
    OPT_REP, OPT_FREQ, OPT_PRES, OPT_BATCH, OPT_NO_SPECIAL, OPT_TRUNCATE, OPT_RESUME, OPT_PROGRESS
};

static const char HELP[] =
    "usage: gpt2 generate --model DIR (--prompt TEXT | --input FILE.jsonl) [options]\n"
    "With --prompt the continuation streams to stdout. With --input each line is a request\n"
    "  {\"id\": ..., \"prompt\": \"...\", \"max_tokens\", \"temperature\", \"top_k\", \"top_p\", \"seed\", \"stop\",\n"
    "   \"repetition_penalty\", \"frequency_penalty\", \"presence_penalty\"} (all but prompt optional)\n"
    "and each output line is {\"id\", \"prompt_tokens\", \"tokens\", \"text\", \"finish_reason\"}, in input order;\n"
    "a bad line gets {\"id\", \"line\", \"error\"} and the exit status is 1.\n"
    "  --prompt TEXT            prompt text\n"
    "  --input FILE             JSONL requests\n"
    "  --output FILE            JSONL results (default: standard output)\n"
    "  --resume                 skip requests whose id is already in --output, append the rest\n"
    "  -n, --max-tokens N       tokens to generate per request (default 64)\n"
    "  --temperature T          0 = greedy (default 1.0)\n"
    "  --top-k K                keep the K most likely tokens (default 0 = off)\n"
    "  --top-p P                nucleus sampling, P in (0, 1] (default 1 = off)\n"
    "  --seed S                 random seed per request (default 0)\n"
    "  --stop STR               stop before STR (repeatable, up to 16)\n"
    "  --repetition-penalty R   Hugging Face style, 1 = off\n"
    "  --frequency-penalty F    OpenAI style, -2..2\n"
    "  --presence-penalty P     OpenAI style, -2..2\n"
    "  --batch N                sequences decoded together (default: 8 on cpu, 64 on cuda)\n"
    "  --truncate               cut prompts that do not fit in the context from the left\n"
    "  --no-special             encode <|endoftext|> in prompts as ordinary text\n"
    "  --progress               progress on stderr even when it is not a terminal\n" CLI_COMMON_HELP;

typedef struct {
    const char *prompt, *input, *output;
    gpt2_request_spec defaults;
    int batch, no_special, truncate, resume, progress;
    gpt2_error err;
} gen_args;

static int gen_option(int opt, const char *arg, void *ctx) {
    gen_args *a = ctx;
    long v;
    double d;
    gpt2_sampling *s = &a->defaults.sampling;
    switch (opt) {
    case OPT_PROMPT: a->prompt = arg; return 1;
    case OPT_INPUT: a->input = arg; return 1;
    case OPT_OUTPUT: a->output = arg; return 1;
    case OPT_NO_SPECIAL: a->no_special = 1; return 1;
    case OPT_TRUNCATE: a->truncate = 1; return 1;
    case OPT_RESUME: a->resume = 1; return 1;
    case OPT_PROGRESS: a->progress = 1; return 1;
    case 'n':
    case OPT_MAXTOK:
        if (cli_parse_int("generate", "--max-tokens", arg, 0, 1 << 20, &v)) return -1;
        a->defaults.max_tokens = (int)v;
        return 1;
    case OPT_TOPK:
        if (cli_parse_int("generate", "--top-k", arg, 0, 1 << 30, &v)) return -1;
        s->top_k = (int)v;
        return 1;
    case OPT_BATCH:
        if (cli_parse_int("generate", "--batch", arg, 1, 65536, &v)) return -1;
        a->batch = (int)v;
        return 1;
    case OPT_SEED: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(arg, &end, 10);
        if (errno || end == arg || *end || arg[0] == '-') {
            fprintf(stderr, "gpt2 generate: --seed '%s': expected a non-negative integer\n", arg);
            return -1;
        }
        s->seed = u;
        return 1;
    }
    case OPT_TEMP:
        if (cli_parse_float("generate", "--temperature", arg, 0, 1000, &d)) return -1;
        s->temperature = (float)d;
        return 1;
    case OPT_TOPP:
        if (cli_parse_float("generate", "--top-p", arg, 1e-9, 1, &d)) return -1;
        s->top_p = (float)d;
        return 1;
    case OPT_REP:
        if (cli_parse_float("generate", "--repetition-penalty", arg, 1e-6, 100, &d)) return -1;
        s->repetition_penalty = (float)d;
        return 1;
    case OPT_FREQ:
        if (cli_parse_float("generate", "--frequency-penalty", arg, -2, 2, &d)) return -1;
        s->frequency_penalty = (float)d;
        return 1;
    case OPT_PRES:
        if (cli_parse_float("generate", "--presence-penalty", arg, -2, 2, &d)) return -1;
        s->presence_penalty = (float)d;
        return 1;
    case OPT_STOP:
        if (gpt2_request_add_stop(&a->defaults, arg, strlen(arg), &a->err) != GPT2_OK) {
            fprintf(stderr, "gpt2 generate: --%s\n", a->err.msg);
            return -1;
        }
        return 1;
    }
    return 0;
}

/* One input line's job: a request to run, or an error record. */
typedef struct {
    int line;          /* 1-based input line */
    json_t *id;        /* echoed back; the line number when the request has none */
    char *key;         /* compact JSON of id, for duplicate and resume checks */
    gpt2_request_spec spec;
    int *ids;          /* prompt token ids */
    int n_ids;
    int prompt_tokens; /* before truncation */
    char *record;      /* the output line once ready (no newline), malloc'ed */
    int done;          /* written, or already in the output file (--resume) */
    int failed;        /* an error record */
} job;

typedef struct {
    job *jobs;
    int n_jobs, next_write, n_failed, n_finished, n_to_run;
    int *req_job; /* (requests) job index of each request */
    FILE *out;
    int write_failed;
    const char *out_name;
    int progress;
    long long tokens_out;
    struct timespec t0;
} batch;

static volatile sig_atomic_t g_cancel; /* set by SIGINT/SIGTERM; the scheduler polls it */
static void on_signal(int sig) {
    (void)sig;
    g_cancel = 1;
}

/* Replaces invalid UTF-8 with U+FFFD so the text can be a JSON string (the token ids stay exact). */
static char *utf8_sanitize(const char *s, size_t n, size_t *out_n) {
    char *o = malloc(n * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n;
        for (int j = 1; ok && j < len; j++) ok = ((unsigned char)s[i + j] & 0xC0) == 0x80;
        if (ok && len > 1) { /* overlong forms, surrogates, > U+10FFFF */
            unsigned cp = len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
            for (int j = 1; j < len; j++) cp = cp << 6 | ((unsigned char)s[i + j] & 0x3Fu);
            ok = (len == 2 && cp >= 0x80) || (len == 3 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ||
                 (len == 4 && cp >= 0x10000 && cp <= 0x10FFFF);
        }
        if (ok) {
            memcpy(o + k, s + i, (size_t)len);
            k += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    o[k] = '\0';
    *out_n = k;
    return o;
}

static char *error_record(const job *j, const char *msg) {
    size_t n;
    char *clean = utf8_sanitize(msg, strlen(msg), &n); /* messages may quote input bytes */
    json_t *r = clean ? json_pack("{s:O, s:i, s:s}", "id", j->id, "line", j->line, "error", clean) : NULL;
    char *s = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    free(clean);
    return s;
}

/* Writes every ready record in input order; with force, also those behind an unfinished one. */
static void flush_records(batch *b, int force) {
    for (int i = b->next_write; i < b->n_jobs; i++) {
        job *j = &b->jobs[i];
        if (j->done) {
            if (i == b->next_write) b->next_write++;
            continue;
        }
        if (!j->record) {
            if (!force) break;
            continue;
        }
        if (!b->write_failed && (fprintf(b->out, "%s\n", j->record) < 0 || fflush(b->out) != 0)) {
            fprintf(stderr, "gpt2 generate: %s: write failed: %s\n", b->out_name, strerror(errno));
            b->write_failed = 1;
        }
        j->done = 1;
        free(j->record);
        j->record = NULL;
        if (i == b->next_write) b->next_write++;
    }
}

static double elapsed(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static int on_finish_batch(void *user, int req, const int *tokens, int n_tokens, const char *text, size_t n_text,
                           gpt2_finish reason) {
    batch *b = user;
    job *j = &b->jobs[b->req_job[req]];
    size_t clean_n;
    char *clean = utf8_sanitize(text, n_text, &clean_n);
    json_t *toks = json_array();
    for (int i = 0; toks && i < n_tokens; i++) json_array_append_new(toks, json_integer(tokens[i]));
    json_t *r = clean && toks ? json_pack("{s:O, s:i, s:o, s:s%, s:s}", "id", j->id, "prompt_tokens", j->prompt_tokens,
                                          "tokens", toks, "text", clean, clean_n, "finish_reason",
                                          gpt2_finish_name(reason))
                              : NULL;
    if (r && json_is_null(j->id)) json_object_set_new(r, "line", json_integer(j->line));
    if (!r) json_decref(toks);
    free(clean);
    j->record = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    if (!j->record) {
        fprintf(stderr, "gpt2 generate: out of memory building the record of line %d\n", j->line);
        return 1;
    }
    b->n_finished++;
    b->tokens_out += n_tokens;
    flush_records(b, 0);
    if (b->progress) {
        double t = elapsed(&b->t0), rate = b->tokens_out / (t > 0 ? t : 1);
        double left = b->n_finished ? t / b->n_finished * (b->n_to_run - b->n_finished) : 0;
        fprintf(stderr, "\r%d/%d done, %.1f tokens/s, %.0f s left   ", b->n_finished, b->n_to_run, rate, left);
        if (b->n_finished == b->n_to_run) fprintf(stderr, "\n");
    }
    return b->write_failed;
}

static int on_text_stream(void *user, int req, const char *bytes, size_t n) {
    (void)user;
    (void)req;
    return fwrite(bytes, 1, n, stdout) != n || fflush(stdout) != 0;
}

/* The engine's events of request `req`: text to stdout (--prompt) or a record when it finishes. */
typedef struct {
    batch *b;
    int req, stream;
    int *failed; /* shared: a write failed, stop generating */
} req_user;

static int on_event(const gpt2_event *ev) {
    req_user *u = ev->user;
    int rc = 0;
    if (ev->kind == GPT2_EVENT_TEXT && u->stream) rc = on_text_stream(u->b, u->req, ev->text, ev->n_text);
    if (ev->kind == GPT2_EVENT_FINISH && !u->stream)
        rc = on_finish_batch(u->b, u->req, ev->tokens, ev->n_tokens, ev->text, ev->n_text, ev->finish);
    *u->failed |= rc;
    return rc;
}

/* Tokenizes a prompt and fits it to the context. */
static gpt2_status prepare_prompt(job *j, gpt2_tokenizer *tok, const gpt2_model *m, const gen_args *a,
                                  gpt2_error *err) {
    size_t n;
    gpt2_status st = gpt2_encode(tok, j->spec.prompt, j->spec.n_prompt, !a->no_special, &j->ids, &n, err);
    if (st != GPT2_OK) return st;
    int ctx = m->cfg.n_positions;
    j->prompt_tokens = (int)n;
    if (n == 0) return gpt2_fail(err, GPT2_ERR_ARG, "\"prompt\": encodes to no tokens");
    for (size_t i = 0; i < n; i++)
        if (j->ids[i] >= m->cfg.vocab_size)
            return gpt2_fail(err, GPT2_ERR_ARG, "prompt token %d is outside the model's vocabulary of %d", j->ids[i],
                             m->cfg.vocab_size);
    if (n >= (size_t)ctx) {
        if (!a->truncate)
            return gpt2_fail(err, GPT2_ERR_LIMIT,
                             "prompt has %zu tokens; the context holds %d (prompt and output); pass --truncate to "
                             "keep its end",
                             n, ctx);
        /* keep room for the output where the context allows, and at least one prompt token */
        int keep = ctx - (j->spec.max_tokens < ctx ? j->spec.max_tokens : ctx - 1);
        memmove(j->ids, j->ids + (n - (size_t)keep), sizeof(int) * (size_t)keep);
        n = (size_t)keep;
    }
    j->n_ids = (int)n;
    return GPT2_OK;
}

/* The key that identifies a job's record for duplicate and --resume checks: its id as compact JSON,
 * or "line:N" for a request without an id (whose records carry "id": null and "line": N). */
static char *job_key(json_t *id, int line) {
    if (!json_is_null(id)) return json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
    char *k = malloc(32);
    if (k) snprintf(k, 32, "line:%d", line);
    return k;
}

/* Splits the input into jobs, parsing and checking every line first. */
static int load_jobs(const char *text, size_t n_text, const gen_args *a, gpt2_tokenizer *tok, const gpt2_model *m,
                     batch *b) {
    int cap = 0, line = 0;
    for (size_t pos = 0; pos < n_text;) {
        const char *s = text + pos, *nl = memchr(s, '\n', n_text - pos);
        size_t len = nl ? (size_t)(nl - s) : n_text - pos;
        pos += len + (nl ? 1 : 0);
        line++;
        size_t l = len;
        while (l > 0 && (s[l - 1] == '\r' || s[l - 1] == ' ' || s[l - 1] == '\t')) l--;
        size_t lead = 0;
        while (lead < l && (s[lead] == ' ' || s[lead] == '\t')) lead++;
        if (lead == l) continue; /* blank line */
        if (b->n_jobs == cap) {
            job *nj = realloc(b->jobs, sizeof(job) * (size_t)(cap = cap ? cap * 2 : 64));
            if (!nj) return -1;
            b->jobs = nj;
        }
        job *j = &b->jobs[b->n_jobs++];
        memset(j, 0, sizeof *j);
        j->line = line;
        gpt2_error err = {0};
        const char *msg = NULL;
        if (gpt2_request_parse(s + lead, l - lead, &a->defaults, &j->spec, &err) != GPT2_OK) msg = err.msg;
        j->id = j->spec.id ? json_incref(j->spec.id) : json_null();
        if (!(j->key = job_key(j->id, line))) return -1;
        if (!msg && prepare_prompt(j, tok, m, a, &err) != GPT2_OK) msg = err.msg;
        if (msg) {
            j->failed = 1;
            b->n_failed++;
            if (!(j->record = error_record(j, msg))) return -1;
        }
    }
    return 0;
}

static int cmp_key(const void *x, const void *y) {
    const job *const *a = x, *const *b = y;
    int c = strcmp((*a)->key, (*b)->key);
    return c ? c : (*a)->line - (*b)->line;
}

/* Duplicate ids are refused before any work starts. */
static int check_duplicates(batch *b) {
    job **v = malloc(sizeof(job *) * (size_t)(b->n_jobs ? b->n_jobs : 1));
    if (!v) return -1;
    for (int i = 0; i < b->n_jobs; i++) v[i] = &b->jobs[i];
    qsort(v, (size_t)b->n_jobs, sizeof *v, cmp_key);
    int bad = 0;
    for (int i = 1; i < b->n_jobs && bad < 10; i++)
        if (!strcmp(v[i]->key, v[i - 1]->key)) {
            fprintf(stderr, "gpt2 generate: duplicate id %s on lines %d and %d\n", v[i]->key, v[i - 1]->line,
                    v[i]->line);
            bad++;
        }
    free(v);
    return bad ? -1 : 0;
}

/* --resume: marks the jobs whose ids the output already holds, after cutting a torn last line. */
static int resume_from(batch *b, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return 0; /* nothing written yet */
    char *data;
    size_t n;
    gpt2_error err = {0};
    if (gpt2_read_file(path, (size_t)1 << 34, &data, &n, &err) != GPT2_OK) {
        cli_report("generate", &err);
        return -1;
    }
    size_t keep = n;
    while (keep > 0 && data[keep - 1] != '\n') keep--;
    if (keep < n) {
        if (truncate(path, (off_t)keep) != 0) {
            fprintf(stderr, "gpt2 generate: %s: cannot cut its incomplete last line: %s\n", path, strerror(errno));
            free(data);
            return -1;
        }
        fprintf(stderr, "gpt2 generate: %s: dropped an incomplete last line (%zu bytes)\n", path, n - keep);
    }
    int found = 0;
    for (size_t pos = 0; pos < keep;) {
        char *nl = memchr(data + pos, '\n', keep - pos);
        size_t len = (size_t)(nl - (data + pos));
        json_t *rec = json_loadb(data + pos, len, 0, NULL);
        json_t *id = rec ? json_object_get(rec, "id") : NULL;
        json_t *ln = rec ? json_object_get(rec, "line") : NULL;
        char *key = id && (!json_is_null(id) || json_is_integer(ln))
                        ? job_key(id, (int)json_integer_value(ln))
                        : NULL;
        for (int i = 0; key && i < b->n_jobs; i++)
            if (!b->jobs[i].done && !strcmp(b->jobs[i].key, key)) {
                b->jobs[i].done = 1;
                found++;
                break;
            }
        free(key);
        json_decref(rec);
        pos += len + 1;
    }
    free(data);
    fprintf(stderr, "gpt2 generate: --resume: %d of %d requests already in %s\n", found, b->n_jobs, path);
    return 0;
}

static void free_jobs(batch *b) {
    for (int i = 0; i < b->n_jobs; i++) {
        job *j = &b->jobs[i];
        json_decref(j->id);
        free(j->key);
        gpt2_request_spec_free(&j->spec);
        free(j->ids);
        free(j->record);
    }
    free(b->jobs);
    free(b->req_job);
}

/* Slots, context and step budget for these requests: no more slots than requests, no longer context
 * than the longest request needs. */
static gpt2_engine_opts plan_opts(const cli_common *c, const gen_args *a, const gpt2_model *m,
                                  const gpt2_request *reqs, int n_reqs) {
    int cuda = strcmp(c->device, "cpu") && gpt2_cuda_device_count() > 0;
    int longest = 2;
    for (int i = 0; i < n_reqs; i++) {
        long need = (long)reqs[i].n_prompt + (reqs[i].max_tokens > 0 ? reqs[i].max_tokens : 1);
        if (need > longest) longest = need > m->cfg.n_positions ? m->cfg.n_positions : (int)need;
    }
    int slots = a->batch ? a->batch : cuda ? 64 : 8;
    if (slots > n_reqs) slots = n_reqs > 0 ? n_reqs : 1;
    gpt2_engine_opts o = cli_engine_opts(c);
    o.max_slots = slots;
    o.max_seq = longest;
    o.max_tokens = slots + (cuda ? 4096 : 256);
    return o;
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        CLI_COMMON_OPTIONS,
        {"prompt", required_argument, 0, OPT_PROMPT}, {"input", required_argument, 0, OPT_INPUT},
        {"output", required_argument, 0, OPT_OUTPUT}, {"max-tokens", required_argument, 0, OPT_MAXTOK},
        {"temperature", required_argument, 0, OPT_TEMP}, {"top-k", required_argument, 0, OPT_TOPK},
        {"top-p", required_argument, 0, OPT_TOPP}, {"seed", required_argument, 0, OPT_SEED},
        {"stop", required_argument, 0, OPT_STOP}, {"repetition-penalty", required_argument, 0, OPT_REP},
        {"frequency-penalty", required_argument, 0, OPT_FREQ}, {"presence-penalty", required_argument, 0, OPT_PRES},
        {"batch", required_argument, 0, OPT_BATCH}, {"no-special", no_argument, 0, OPT_NO_SPECIAL},
        {"truncate", no_argument, 0, OPT_TRUNCATE}, {"resume", no_argument, 0, OPT_RESUME},
        {"progress", no_argument, 0, OPT_PROGRESS}, {0, 0, 0, 0}};
    cli_common c;
    gen_args a = {0};
    cli_common_init(&c);
    a.defaults.max_tokens = 64;
    a.defaults.sampling = gpt2_sampling_default();
    a.defaults.sampling.temperature = 1.0f;
    /* -n is the one short option: rewrite it to --max-tokens for the long-only parser */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-n")) argv[i] = "--max-tokens";
    int rc = cli_parse_args("generate", argc, argv, opts, &c, HELP, gen_option, &a);
    if (rc) {
        gpt2_request_spec_free(&a.defaults);
        return rc < 0 ? 0 : rc;
    }
    if (!c.model_dir || !a.prompt == !a.input || (a.resume && !a.output)) {
        fprintf(stderr, "gpt2 generate: --model and exactly one of --prompt or --input are required%s\n%s",
                a.resume && !a.output ? "; --resume needs --output" : "", HELP);
        gpt2_request_spec_free(&a.defaults);
        return EXIT_USAGE;
    }
    gpt2_model *m = NULL;
    gpt2_tokenizer *tok = NULL;
    gpt2_engine *e = NULL;
    gpt2_request *reqs = NULL;
    req_user *users = NULL;
    char *text = NULL;
    size_t n_text = 0;
    batch b = {0};
    gpt2_error err = {0};
    rc = 1;
    if (cli_load("generate", &c, 1, &m, &tok)) goto out;

    if (a.prompt) {
        b.jobs = calloc(1, sizeof(job));
        if (!b.jobs) goto out;
        b.n_jobs = 1;
        job *j = &b.jobs[0];
        j->spec = a.defaults; /* borrowed: freed once, as a.defaults */
        j->spec.prompt = (char *)a.prompt;
        j->spec.n_prompt = strlen(a.prompt);
        if (!j->spec.n_prompt || prepare_prompt(j, tok, m, &a, &err) != GPT2_OK) {
            fprintf(stderr, "gpt2 generate: --prompt: %s\n", j->spec.n_prompt ? err.msg : "must not be empty");
            memset(&j->spec, 0, sizeof j->spec);
            goto out;
        }
        memset(&j->spec, 0, sizeof j->spec);
    } else {
        if (cli_read_input("generate", a.input, &text, &n_text)) goto out;
        if (load_jobs(text, n_text, &a, tok, m, &b)) {
            fprintf(stderr, "gpt2 generate: out of memory reading %s\n", a.input);
            goto out;
        }
        if (check_duplicates(&b)) goto out;
        if (a.resume && resume_from(&b, a.output)) goto out;
    }

    /* Requests for the jobs still to run. */
    reqs = calloc((size_t)b.n_jobs + 1, sizeof *reqs);
    b.req_job = calloc((size_t)b.n_jobs + 1, sizeof(int));
    if (!reqs || !b.req_job) goto out;
    int n_reqs = 0;
    for (int i = 0; i < b.n_jobs; i++) {
        job *j = &b.jobs[i];
        if (j->done || j->failed) continue;
        const gpt2_request_spec *sp = a.prompt ? &a.defaults : &j->spec;
        reqs[n_reqs] = (gpt2_request){.prompt = j->ids, .n_prompt = j->n_ids, .max_tokens = sp->max_tokens,
                                      .sampling = sp->sampling, .stop = (const char *const *)sp->stop,
                                      .n_stop = sp->n_stop};
        b.req_job[n_reqs++] = i;
    }
    b.n_to_run = n_reqs;

    if (a.input) {
        b.out_name = a.output ? a.output : "standard output";
        b.out = a.output ? fopen(a.output, a.resume ? "a" : "w") : stdout;
        if (!b.out) {
            fprintf(stderr, "gpt2 generate: %s: cannot open for writing: %s\n", a.output, strerror(errno));
            goto out;
        }
        b.progress = a.progress || isatty(STDERR_FILENO);
        flush_records(&b, 0); /* error records at the head of the input */
    }
    if (n_reqs > 0) {
        gpt2_engine_opts o = plan_opts(&c, &a, m, reqs, n_reqs);
        if (gpt2_engine_create_from(m, tok, &o, &e, &err) != GPT2_OK) {
            cli_report("generate", &err);
            goto out;
        }
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b.t0);
        if (!(users = calloc((size_t)n_reqs, sizeof *users))) goto out;
        gpt2_status st = GPT2_OK;
        int busy = n_reqs, failed = 0;
        for (int i = 0; i < n_reqs && st == GPT2_OK; i++) {
            users[i] = (req_user){.b = &b, .req = i, .stream = a.prompt != NULL, .failed = &failed};
            reqs[i].on_event = on_event;
            reqs[i].user = &users[i];
            st = gpt2_engine_submit(e, &reqs[i], NULL, &err);
        }
        /* Step until done, interrupted (SIGINT: unfinished requests are left for --resume) or a write fails. */
        while (st == GPT2_OK && busy > 0 && !g_cancel && !failed) st = gpt2_engine_step(e, &busy, &err);
        if (st == GPT2_OK && failed) st = gpt2_fail(&err, GPT2_ERR_ABORTED, "generation aborted by the caller");
        if (a.prompt) printf("\n");
        if (st != GPT2_OK && !b.write_failed) cli_report("generate", &err);
        if (g_cancel) fprintf(stderr, "\ngpt2 generate: interrupted; finished records are written, run again "
                                      "with --resume for the rest\n");
        if (st != GPT2_OK || g_cancel || b.write_failed) {
            if (b.out) flush_records(&b, 1);
            goto out;
        }
    }
    if (b.out) flush_records(&b, 1);
    rc = b.n_failed || b.write_failed ? 1 : 0;
    if (b.n_failed) fprintf(stderr, "gpt2 generate: %d of %d requests failed (see their error records)\n",
                            b.n_failed, b.n_jobs);
out:
    if (b.out && b.out != stdout && fclose(b.out) != 0 && rc == 0) {
        fprintf(stderr, "gpt2 generate: %s: close failed: %s\n", a.output, strerror(errno));
        rc = 1;
    }
    if (rc == 0 && fflush(stdout) != 0) rc = 1;
    gpt2_engine_destroy(e);
    free(users);
    free_jobs(&b);
    free(reqs);
    free(text);
    gpt2_model_free(m);
    gpt2_tokenizer_free(tok);
    gpt2_request_spec_free(&a.defaults);
    return rc;
}
