/* cli_generate.c: `gpt2 generate`, one prompt streamed to stdout or a JSONL batch of requests.
 *
 * Batch jobs lose nothing: every input line is parsed and checked before any work starts (duplicate
 * ids refused); records are written in input order as they become ready, each one complete line,
 * flushed; --resume skips the requests already in the output file (dropping a torn last line), but
 * only records whose fingerprint matches their request and model, and retries error records; SIGINT
 * or a failure mid-run writes every finished record, even out of order, and leaves the rest for
 * --resume. The output is never the input, and one job at a time writes it (flock). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_mpi.h"
#include "request.h"
#include "util.h"

enum {
    OPT_PROMPT = 3000, OPT_INPUT, OPT_OUTPUT, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_SEED, OPT_STOP,
    OPT_REP, OPT_FREQ, OPT_PRES, OPT_BATCH, OPT_NO_SPECIAL, OPT_TRUNCATE, OPT_RESUME, OPT_PROGRESS,
    OPT_PROGRESS_INTERVAL, OPT_BEAMS, OPT_LENPEN
};

static const char HELP[] =
    "usage: gpt2 generate --model DIR (--prompt TEXT | --input FILE.jsonl) [options]\n"
    "With --prompt the continuation streams to stdout. With --input each line is a request\n"
    "  {\"id\": ..., \"prompt\": \"...\", \"max_tokens\", \"temperature\", \"top_k\", \"top_p\", \"seed\", \"stop\",\n"
    "   \"repetition_penalty\", \"frequency_penalty\", \"presence_penalty\", \"logprobs\": k (0..20),\n"
    "   \"echo\": true, \"num_beams\", \"length_penalty\", \"early_stopping\": false|true|\"never\",\n"
    "   \"no_repeat_ngram_size\", \"n\"} (all but prompt optional)\n"
    "and each output line is {\"id\", \"prompt_tokens\", \"tokens\", \"text\", \"finish_reason\", \"fp\"}, in input\n"
    "order (fp: the request's fingerprint, which --resume checks); with logprobs also \"logprobs\":\n"
    "  {\"tokens\", \"token_ids\", \"token_logprobs\", \"top_logprobs\", \"top_ids\", \"text_offset\"} as OpenAI's\n"
    "  completions report them (from the raw logits, before temperature and top-k/top-p; text_offset in\n"
    "  bytes); echo puts the prompt's tokens first and the prompt before \"text\"; beam search adds\n"
    "  \"score\" and, with n > 1, \"beams\": [{\"tokens\", \"text\", \"finish_reason\", \"score\"}], best first;\n"
    "a bad line gets {\"id\", \"line\", \"error\"} and the exit status is 1.\n"
    "  --prompt TEXT            prompt text\n"
    "  --input FILE             JSONL requests\n"
    "  --output FILE            JSONL results (default: standard output)\n"
    "  --resume                 keep the records already in --output (refused when made from another\n"
    "                           request or model), retry its error records, append the rest\n"
    "  -n, --max-tokens N       tokens to generate per request (default 64)\n"
    "  --temperature T          0 = greedy (default 1.0)\n"
    "  --top-k K                keep the K most likely tokens (default 0 = off)\n"
    "  --top-p P                nucleus sampling, P in (0, 1] (default 1 = off)\n"
    "  --seed S                 random seed per request (default 0)\n"
    "  --stop STR               stop before STR (repeatable, up to 16)\n"
    "  --repetition-penalty R   Hugging Face style, 1 = off\n"
    "  --frequency-penalty F    OpenAI style, -2..2\n"
    "  --presence-penalty P     OpenAI style, -2..2\n"
    "  --beams N                beam search with N beams (transformers' semantics; default 1 = off)\n"
    "  --length-penalty X       beam search: score / length^X (default 1.0)\n"
    "  --batch N                sequences decoded together (default: 8 on cpu, 64 on cuda)\n"
    "  --truncate               cut prompts that do not fit in the context from the left\n"
    "  --no-special             encode <|endoftext|> in prompts as ordinary text\n"
    "  --progress               progress on stderr even when it is not a terminal: a line every\n"
    "                           --progress-interval seconds (requests done / total, tokens/s, time left)\n"
    "  --progress-interval S    seconds between those lines (default 30; implies --progress)\n"
    "Under mpirun or srun each rank runs an engine (on its own GPU) and rank 0 writes the output; see\n"
    "the README (\"Many GPUs\").\n" CLI_COMMON_HELP;

typedef struct {
    const char *prompt, *input, *output;
    gpt2_request_spec defaults;
    int batch, no_special, truncate, resume, progress;
    double progress_interval; /* seconds between progress lines when stderr is not a terminal */
    gpt2_error err;
} gen_args;

/* A sampling option's value: any finite number here; its range is gpt2_sampling_check's, the same
 * check a JSONL request's fields get, so the CLI and the input file accept exactly the same values. */
static int sampling_option(const char *opt, const char *arg, gpt2_sampling *s, float *field_f, int *field_i) {
    gpt2_sampling old = *s;
    char *end;
    errno = 0;
    if (field_i) {
        long v = strtol(arg, &end, 10);
        if (errno || end == arg || *end || v < INT_MIN || v > INT_MAX) {
            fprintf(stderr, "gpt2 generate: %s '%s': expected an integer\n", opt, arg);
            return -1;
        }
        *field_i = (int)v;
    } else {
        double d = strtod(arg, &end);
        if (errno == ERANGE) errno = 0; /* +-HUGE_VAL or a tiny number: the check words it, as for JSON */
        if (errno || end == arg || *end || isnan(d)) {
            fprintf(stderr, "gpt2 generate: %s '%s': expected a number\n", opt, arg);
            return -1;
        }
        *field_f = (float)d;
    }
    gpt2_error err = {0};
    if (gpt2_sampling_check(s, &err) != GPT2_OK) {
        fprintf(stderr, "gpt2 generate: %s '%s': %s\n", opt, arg, err.msg);
        *s = old;
        return -1;
    }
    return 1;
}

static int gen_option(int opt, const char *arg, void *ctx) {
    gen_args *a = ctx;
    long v;
    gpt2_sampling *s = &a->defaults.sampling;
    switch (opt) {
    case OPT_PROMPT: a->prompt = arg; return 1;
    case OPT_INPUT: a->input = arg; return 1;
    case OPT_OUTPUT: a->output = arg; return 1;
    case OPT_NO_SPECIAL: a->no_special = 1; return 1;
    case OPT_TRUNCATE: a->truncate = 1; return 1;
    case OPT_RESUME: a->resume = 1; return 1;
    case OPT_PROGRESS: a->progress = 1; return 1;
    case OPT_PROGRESS_INTERVAL: {
        double d;
        if (cli_parse_float("generate", "--progress-interval", arg, 0.001, 1e6, &d)) return -1;
        a->progress = 1;
        a->progress_interval = d;
        return 1;
    }
    case 'n':
        if (cli_parse_int("generate", "--max-tokens", arg, 0, 1 << 20, &v)) return -1;
        a->defaults.max_tokens = (int)v;
        return 1;
    case OPT_BATCH:
        if (cli_parse_int("generate", "--batch", arg, 1, 65536, &v)) return -1;
        a->batch = (int)v;
        return 1;
    case OPT_SEED: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(arg, &end, 10);
        /* the JSONL "seed" is 0..INT64_MAX; the same here */
        if (errno || end == arg || *end || arg[0] == '-' || u > (unsigned long long)INT64_MAX) {
            fprintf(stderr, "gpt2 generate: --seed '%s': expected an integer in 0..%lld\n", arg, (long long)INT64_MAX);
            return -1;
        }
        s->seed = u;
        return 1;
    }
    case OPT_TOPK: return sampling_option("--top-k", arg, s, NULL, &s->top_k);
    case OPT_TEMP: return sampling_option("--temperature", arg, s, &s->temperature, NULL);
    case OPT_TOPP: return sampling_option("--top-p", arg, s, &s->top_p, NULL);
    case OPT_REP: return sampling_option("--repetition-penalty", arg, s, &s->repetition_penalty, NULL);
    case OPT_FREQ: return sampling_option("--frequency-penalty", arg, s, &s->frequency_penalty, NULL);
    case OPT_PRES: return sampling_option("--presence-penalty", arg, s, &s->presence_penalty, NULL);
    case OPT_BEAMS:
        if (cli_parse_int("generate", "--beams", arg, 1, 64, &v)) return -1;
        a->defaults.beam.num_beams = (int)v;
        return 1;
    case OPT_LENPEN: {
        double d;
        if (cli_parse_float("generate", "--length-penalty", arg, -100, 100, &d)) return -1;
        a->defaults.beam.length_penalty = (float)d;
        return 1;
    }
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
    char fp[17];       /* fingerprint of the request and model, hex ("" for an error record) */
    /* logprobs: what the TOKEN events and the PROMPT event carried */
    int n_seen, cap_seen;  /* generated tokens seen */
    int *seen_ids;         /* (cap_seen) */
    float *seen_lp;        /* (cap_seen) */
    int *seen_top_ids;     /* (cap_seen, k) */
    float *seen_top_lp;    /* (cap_seen, k) */
    int n_echo;            /* echo: prompt tokens */
    float *echo_lp;        /* (n_echo) */
    int *echo_top_ids;     /* (n_echo, k) */
    float *echo_top_lp;    /* (n_echo, k) */
} job;

typedef struct {
    job *jobs;
    int n_jobs, next_write, n_failed, n_finished, n_to_run;
    int *req_job; /* (requests) job index of each request */
    FILE *out;
    int write_failed;
    const char *out_name;
    gpt2_tokenizer *tok;   /* token texts of the logprobs records */
    int progress;          /* 1: a live line on a terminal; 2: a plain line per interval */
    double progress_every; /* seconds, for 2 */
    double progress_next;  /* when the next line is due (seconds since t0) */
    long long tokens_out;
    struct timespec t0;
} batch;

static volatile sig_atomic_t g_cancel; /* set by SIGINT/SIGTERM; the scheduler polls it */
static void on_signal(int sig) {
    (void)sig;
    g_cancel = 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Fingerprints: --resume must only keep records made from the same request on the same model.     */

#define FNV_OFFSET 0xcbf29ce484222325ull
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}
static uint64_t fnv_u64(uint64_t h, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i)); /* byte order fixed */
    return fnv1a(h, b, 8);
}
static uint64_t fnv_f32(uint64_t h, float f) {
    f += 0.0f; /* -0 and 0 are the same setting */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return fnv_u64(h, u);
}
/* A length-prefixed byte string, so that ("ab", "c") and ("a", "bc") differ. */
static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n) { return fnv1a(fnv_u64(h, n), p, n); }

/* Hashes up to n bytes of fd from offset off (fewer at the end of the file). 0 ok, -1 read error. */
static int fnv_file_range(uint64_t *h, int fd, uint64_t off, uint64_t n) {
    char buf[65536];
    while (n > 0) {
        ssize_t got = pread(fd, buf, n < sizeof buf ? (size_t)n : sizeof buf, (off_t)off);
        if (got < 0) return -1;
        if (got == 0) break;
        *h = fnv1a(*h, buf, (size_t)got);
        off += (uint64_t)got;
        n -= (uint64_t)got;
    }
    return 0;
}

static int is_weights_file(const struct dirent *d) {
    size_t n = strlen(d->d_name);
    return (n > 12 && !strcmp(d->d_name + n - 12, ".safetensors")) ||
           (n > 23 && !strcmp(d->d_name + n - 23, ".safetensors.index.json")) || !strcmp(d->d_name, "config.json");
}

/* The model's identity, cheaply: config.json, every safetensors file and index of the directory
 * (sorted by name): name, size, whole index/config files, each safetensors header and the first and
 * last 64 KiB of its data. A re-saved or retrained checkpoint differs; reading every weight would cost
 * as much as loading them again. 0 ok, -1 after printing. */
static int model_identity(const char *dir, uint64_t *out) {
    struct dirent **names = NULL;
    int n = scandir(dir, &names, is_weights_file, alphasort), rc = 0;
    if (n < 0) {
        fprintf(stderr, "gpt2 generate: %s: cannot list: %s\n", dir, strerror(errno));
        return -1;
    }
    uint64_t h = fnv_bytes(FNV_OFFSET, "gpt2 model v1", 13);
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        char *path = gpt2_path_join(dir, name);
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            fprintf(stderr, "gpt2 generate: %s: cannot open: %s\n", path ? path : name, strerror(errno));
            rc = -1;
        } else if (S_ISREG(st.st_mode)) {
            uint64_t size = (uint64_t)st.st_size;
            h = fnv_bytes(h, name, strlen(name));
            h = fnv_u64(h, size);
            size_t len = strlen(name);
            if (len > 12 && !strcmp(name + len - 12, ".safetensors")) {
                unsigned char hl[8] = {0};
                uint64_t hlen = 0;
                if (pread(fd, hl, 8, 0) == 8)
                    for (int k = 0; k < 8; k++) hlen |= (uint64_t)hl[k] << (8 * k);
                uint64_t data = hlen <= size - 8 && size >= 8 ? 8 + hlen : size;
                uint64_t tail = size - data > 65536 ? size - 65536 : data;
                if (fnv_file_range(&h, fd, 0, data) || fnv_file_range(&h, fd, data, 65536) ||
                    fnv_file_range(&h, fd, tail, 65536))
                    rc = -1;
            } else if (fnv_file_range(&h, fd, 0, size)) {
                rc = -1;
            }
            if (rc) fprintf(stderr, "gpt2 generate: %s: read failed: %s\n", path, strerror(errno));
        }
        if (fd >= 0) close(fd);
        free(path);
        free(names[i]);
        if (rc) {
            for (int k = i + 1; k < n; k++) free(names[k]);
            break;
        }
    }
    free(names);
    *out = h;
    return rc;
}

/* A job's fingerprint: everything that decides its output. The parsed request (so key order and
 * spelling in the line do not matter), with the CLI defaults it took, the prompt's token ids after
 * --no-special and --truncate (so the tokenizer counts too), the dtype and TF32 choice, and the model.
 * The device is left out: the CPU and CUDA fp32 engines compute the same tokens. */
static void job_fingerprint(job *j, uint64_t model_id, const cli_common *c, const gen_args *a) {
    const gpt2_request_spec *sp = &j->spec;
    const gpt2_sampling *p = &sp->sampling;
    uint64_t h = fnv_bytes(FNV_OFFSET, "gpt2 request v1", 15);
    h = fnv_u64(h, model_id);
    h = fnv_u64(h, (uint64_t)c->dtype);
    h = fnv_u64(h, (uint64_t)c->allow_tf32);
    h = fnv_u64(h, (uint64_t)a->no_special);
    h = fnv_u64(h, (uint64_t)a->truncate);
    h = fnv_bytes(h, sp->prompt, sp->n_prompt);
    h = fnv_u64(h, (uint64_t)j->n_ids);
    for (int i = 0; i < j->n_ids; i++) h = fnv_u64(h, (uint64_t)(uint32_t)j->ids[i]);
    h = fnv_u64(h, (uint64_t)sp->max_tokens);
    h = fnv_f32(h, p->temperature);
    h = fnv_u64(h, (uint64_t)(uint32_t)p->top_k);
    h = fnv_f32(h, p->top_p);
    h = fnv_f32(h, p->repetition_penalty);
    h = fnv_f32(h, p->frequency_penalty);
    h = fnv_f32(h, p->presence_penalty);
    h = fnv_u64(h, p->seed);
    h = fnv_u64(h, (uint64_t)sp->n_stop);
    for (int i = 0; i < sp->n_stop; i++) h = fnv_bytes(h, sp->stop[i], strlen(sp->stop[i]));
    if (sp->beam.num_beams >= 2) { /* only then, as below */
        h = fnv_bytes(h, "beams", 5);
        h = fnv_u64(h, (uint64_t)sp->beam.num_beams);
        h = fnv_f32(h, sp->beam.length_penalty);
        h = fnv_u64(h, (uint64_t)sp->beam.early_stopping);
        h = fnv_u64(h, (uint64_t)sp->beam.no_repeat_ngram_size);
        h = fnv_u64(h, (uint64_t)sp->beam.n);
    } else if (sp->beam.no_repeat_ngram_size > 0) { /* greedy or sampling with the n-gram ban: only then */
        h = fnv_bytes(h, "ngram", 5);
        h = fnv_u64(h, (uint64_t)sp->beam.no_repeat_ngram_size);
    }
    if (sp->logprobs || sp->echo) { /* only then, so that records made before these fields keep their fp */
        h = fnv_bytes(h, "logprobs", 8);
        h = fnv_u64(h, (uint64_t)sp->logprobs);
        h = fnv_u64(h, (uint64_t)sp->top_logprobs);
        h = fnv_u64(h, (uint64_t)sp->echo);
    }
    snprintf(j->fp, sizeof j->fp, "%016llx", (unsigned long long)h);
}

/* ---------------------------------------------------------------------------------------------- */
/* The output file: never the input, one writer at a time.                                          */

/* 1 when --output names the file --input reads (same device and inode: another path, a symbolic
 * or a hard link), so that writing would destroy the input. "-" is standard input. */
static int output_is_input(const char *input, const char *output) {
    struct stat si, so;
    if (stat(output, &so) != 0) return 0; /* not there yet: cannot be the input */
    if (!strcmp(input, "-") ? fstat(STDIN_FILENO, &si) != 0 : stat(input, &si) != 0) return 0;
    return si.st_dev == so.st_dev && si.st_ino == so.st_ino;
}

/* Opens --output for appending, holding an exclusive advisory lock (flock) until the process ends
 * (the kernel drops it on exit or death, so no stale lock survives a crash), and empties it unless
 * resuming. Nothing is truncated before the lock is ours, so a second job refused here has not
 * touched the first one's file. The file is re-checked after locking: if another process replaced it
 * meanwhile (a resume that dropped error records), the lock is on the old inode and we try again.
 * Only regular files are locked (and emptied); /dev/stdout or a pipe is written as it is.
 * Returns 0, or -1 after printing. */
static int open_output_locked(const char *path, int resume, FILE **out) {
    for (int tries = 0; tries < 10; tries++) {
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        struct stat st, now;
        if (fd < 0 || fstat(fd, &st) != 0) {
            fprintf(stderr, "gpt2 generate: %s: cannot open for writing: %s\n", path, strerror(errno));
            if (fd >= 0) close(fd);
            return -1;
        }
        if (S_ISREG(st.st_mode)) {
            if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                if (errno == EWOULDBLOCK)
                    fprintf(stderr, "gpt2 generate: %s: another process is writing this file (it holds its lock); "
                                    "refusing to write it at the same time\n", path);
                else fprintf(stderr, "gpt2 generate: %s: cannot lock: %s\n", path, strerror(errno));
                close(fd);
                return -1;
            }
            if (stat(path, &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
                close(fd); /* replaced while we waited for it: lock the new one */
                continue;
            }
            if (!resume && ftruncate(fd, 0) != 0) {
                fprintf(stderr, "gpt2 generate: %s: cannot empty: %s\n", path, strerror(errno));
                close(fd);
                return -1;
            }
        }
        if (!(*out = fdopen(fd, "a"))) {
            fprintf(stderr, "gpt2 generate: %s: %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        return 0;
    }
    fprintf(stderr, "gpt2 generate: %s: keeps being replaced by another process\n", path);
    return -1;
}

/* Replaces `path` by `keep` bytes (the lines --resume keeps) through a locked temporary file renamed
 * over it: a crash leaves the old file or the new one, never a half-written one, and the lock moves
 * with the content. *out becomes the new file. 0 ok, -1 after printing. */
static int rewrite_output(const char *given, const char *keep, size_t n, FILE **out) {
    char *path = realpath(given, NULL); /* through a symbolic link: replace its target, not the link */
    size_t len = path ? strlen(path) : 0;
    char *tmp = path ? malloc(len + 16) : NULL;
    if (!tmp) {
        fprintf(stderr, "gpt2 generate: %s: %s\n", given, path ? "out of memory" : strerror(errno));
        free(path);
        return -1;
    }
    snprintf(tmp, len + 16, "%s.tmp-XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    FILE *f = NULL;
    int ok = fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0;
    for (size_t off = 0; ok && off < n;) {
        ssize_t w = write(fd, keep + off, n - off);
        ok = w > 0;
        off += ok ? (size_t)w : 0;
    }
    struct stat st;
    ok = ok && fsync(fd) == 0 && (stat(path, &st) != 0 || fchmod(fd, st.st_mode & 07777) == 0) &&
         rename(tmp, path) == 0 && (f = fdopen(fd, "a")) != NULL;
    if (!ok) {
        fprintf(stderr, "gpt2 generate: %s: cannot rewrite it through %s: %s\n", path, tmp, strerror(errno));
        if (fd >= 0) {
            unlink(tmp);
            close(fd);
        }
        free(tmp);
        free(path);
        return -1;
    }
    free(tmp);
    free(path);
    fclose(*out); /* the old file's lock goes with it */
    *out = f;
    return 0;
}

static char *error_record(const job *j, const char *msg) {
    size_t n;
    char *clean = gpt2_utf8_clean(msg, strlen(msg), &n); /* messages may quote input bytes */
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

/* Progress on stderr: on a terminal one line rewritten in place (at most 5 times a second); else
 * (--progress) a plain line every progress_every seconds and one at the end. */
static void show_progress(batch *b, int final) {
    double t = elapsed(&b->t0);
    if (!b->progress || (!final && t < b->progress_next)) return;
    b->progress_next = t + (b->progress == 1 ? 0.2 : b->progress_every);
    double rate = b->tokens_out / (t > 0 ? t : 1);
    double left = b->n_finished ? t / b->n_finished * (b->n_to_run - b->n_finished) : 0;
    if (b->progress == 1)
        fprintf(stderr, "\r%d/%d done, %.1f tokens/s, %.0f s left   %s", b->n_finished, b->n_to_run, rate, left,
                final ? "\n" : "");
    else
        fprintf(stderr, "gpt2 generate: progress: %d/%d requests done, %.1f tokens/s, %.0f s left\n", b->n_finished,
                b->n_to_run, rate, left);
}

/* A request's record is ready (j->record; failed: an error record): written in input order, or, on
 * an MPI rank > 0, sent to rank 0, which writes it. Returns nonzero to stop (a failed write). */
static int record_in(batch *b, int req, int failed, long tokens) {
    job *j = &b->jobs[b->req_job[req]];
    if (failed) {
        j->failed = 1;
        b->n_failed++;
    }
    b->n_finished++;
    b->tokens_out += tokens;
    flush_records(b, 0);
    show_progress(b, b->n_finished == b->n_to_run);
    return b->write_failed;
}

static int record_ready(batch *b, int req, int failed, long tokens) {
    job *j = &b->jobs[b->req_job[req]];
    if (cli_mpi_rank() > 0) {
        int rc = cli_mpi_record(req, failed, tokens, j->record, strlen(j->record));
        free(j->record);
        j->record = NULL;
        j->done = 1;
        return rc;
    }
    cli_mpi_record(req, failed, tokens, j->record, strlen(j->record)); /* rank 0: noted done */
    return record_in(b, req, failed, tokens);
}

/* A token's text for the logprobs record (its bytes made valid UTF-8); NULL when out of memory. */
static json_t *token_text(gpt2_tokenizer *tok, int id) {
    const char *bytes = "";
    size_t n = 0, clean_n;
    if (gpt2_token_bytes(tok, id, &bytes, &n, NULL) != GPT2_OK) n = 0;
    char *clean = gpt2_utf8_clean(bytes, n, &clean_n);
    json_t *t = clean ? json_stringn(clean, clean_n) : NULL;
    free(clean);
    return t;
}

/* One position's alternatives: {text: logprob} (OpenAI's shape; a text that two ids share keeps the
 * likelier) into tops, and the ids in order into ids. */
static int add_alternatives(gpt2_tokenizer *tok, json_t *tops, json_t *ids, const int *top_ids, const float *top_lp,
                            int k) {
    json_t *d = json_object(), *v = json_array();
    int bad = !d || !v;
    for (int i = 0; !bad && i < k; i++) {
        json_t *t = token_text(tok, top_ids[i]);
        bad = !t;
        if (!bad && !json_object_get(d, json_string_value(t)))
            bad = json_object_set_new(d, json_string_value(t), json_real(top_lp[i]));
        json_decref(t);
        if (!bad) bad = json_array_append_new(v, json_integer(top_ids[i]));
    }
    if (bad) {
        json_decref(d);
        json_decref(v);
        return -1;
    }
    return json_array_append_new(tops, d) | json_array_append_new(ids, v);
}

/* The record's "logprobs" object from the events the job saw; echo's prompt first. *offset_end gets
 * the byte length of the text it indexes. NULL when out of memory. */
static json_t *logprobs_record(batch *b, const job *j, int n_tokens) {
    const int k = j->spec.top_logprobs;
    json_t *o = json_object(), *toks = json_array(), *ids = json_array(), *lps = json_array(), *tops = json_array(),
           *top_ids = json_array(), *offs = json_array();
    int bad = !o || !toks || !ids || !lps || !tops || !top_ids || !offs;
    size_t off = 0;
    int n_echo = j->spec.echo && j->n_echo <= j->n_ids ? j->n_echo : 0;
    for (int i = 0; !bad && i < n_echo + n_tokens; i++) {
        int p = i < n_echo, g = i - n_echo;
        int id = p ? j->ids[i] : j->seen_ids[g];
        float lp = p ? j->echo_lp[i] : j->seen_lp[g];
        const int *ti = p ? j->echo_top_ids + (size_t)i * k : j->seen_top_ids + (size_t)g * k;
        const float *tl = p ? j->echo_top_lp + (size_t)i * k : j->seen_top_lp + (size_t)g * k;
        const char *bytes;
        size_t nb = 0;
        if (gpt2_token_bytes(b->tok, id, &bytes, &nb, NULL) != GPT2_OK) nb = 0;
        json_t *t = token_text(b->tok, id);
        bad = !t || json_array_append_new(toks, t) || json_array_append_new(ids, json_integer(id)) ||
              json_array_append_new(lps, isfinite(lp) ? json_real(lp) : json_null()) ||
              json_array_append_new(offs, json_integer((json_int_t)off));
        if (!bad && p && i == 0) /* no context: null, as OpenAI */
            bad = json_array_append_new(tops, json_null()) | json_array_append_new(top_ids, json_null());
        else if (!bad)
            bad = add_alternatives(b->tok, tops, top_ids, ti, tl, k) != 0;
        off += nb;
    }
    if (!bad)
        bad = json_object_set_new(o, "tokens", toks) | json_object_set_new(o, "token_ids", ids) |
              json_object_set_new(o, "token_logprobs", lps) | json_object_set_new(o, "top_logprobs", tops) |
              json_object_set_new(o, "top_ids", top_ids) | json_object_set_new(o, "text_offset", offs);
    else {
        json_decref(toks);
        json_decref(ids);
        json_decref(lps);
        json_decref(tops);
        json_decref(top_ids);
        json_decref(offs);
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The prompt's text (its decoded ids) followed by the output, for echo; malloc'ed. */
static char *echo_text(gpt2_tokenizer *tok, const job *j, const char *text, size_t n_text, size_t *n_out) {
    char *p = NULL, *all = NULL;
    size_t n_p = 0;
    if (gpt2_decode(tok, j->ids, (size_t)j->n_ids, &p, &n_p, NULL) != GPT2_OK) return NULL;
    if ((all = malloc(n_p + n_text + 1))) {
        memcpy(all, p, n_p);
        memcpy(all + n_p, text, n_text);
        all[n_p + n_text] = '\0';
        *n_out = n_p + n_text;
    }
    free(p);
    return all;
}

/* The beam search part of a record: "score", and "beams" when more than one hypothesis was asked. */
static int beams_record(json_t *r, const gpt2_event *ev) {
    if (ev->n_hyps < 1) return 0;
    if (json_object_set_new(r, "score", json_real(ev->hyps[0].score))) return -1;
    if (ev->n_hyps < 2) return 0;
    json_t *arr = json_array();
    if (!arr || json_object_set_new(r, "beams", arr)) return -1;
    for (int h = 0; h < ev->n_hyps; h++) {
        const gpt2_hypothesis *y = &ev->hyps[h];
        size_t n;
        char *clean = gpt2_utf8_clean(y->text, y->n_text, &n);
        json_t *toks = json_array();
        for (int i = 0; toks && i < y->n_tokens; i++) json_array_append_new(toks, json_integer(y->tokens[i]));
        json_t *o = clean && toks ? json_pack("{s:o, s:s%, s:s, s:f}", "tokens", toks, "text", clean, n,
                                              "finish_reason", gpt2_finish_name(y->finish), "score", (double)y->score)
                                  : NULL;
        if (!o) json_decref(toks);
        free(clean);
        if (!o || json_array_append_new(arr, o)) return -1;
    }
    return 0;
}

static int on_finish_batch(void *user, int req, const int *tokens, int n_tokens, const char *text, size_t n_text,
                           gpt2_finish reason, const gpt2_event *ev) {
    batch *b = user;
    job *j = &b->jobs[b->req_job[req]];
    size_t clean_n, n_all = n_text;
    char *all = j->spec.echo ? echo_text(b->tok, j, text, n_text, &n_all) : NULL;
    char *clean = j->spec.echo && !all ? NULL : gpt2_utf8_clean(all ? all : text, n_all, &clean_n);
    free(all);
    json_t *toks = json_array();
    for (int i = 0; toks && i < n_tokens; i++) json_array_append_new(toks, json_integer(tokens[i]));
    json_t *r = clean && toks ? json_pack("{s:O, s:i, s:o, s:s%, s:s}", "id", j->id, "prompt_tokens", j->prompt_tokens,
                                          "tokens", toks, "text", clean, clean_n, "finish_reason",
                                          gpt2_finish_name(reason))
                              : NULL;
    if (r) toks = NULL; /* r holds it now */
    if (r && json_is_null(j->id)) json_object_set_new(r, "line", json_integer(j->line));
    if (r && (j->spec.logprobs || j->spec.echo)) {
        /* the TOKEN events carried exactly the tokens of FINISH */
        json_t *lp = n_tokens <= j->n_seen ? logprobs_record(b, j, n_tokens) : NULL;
        if (!lp || json_object_set_new(r, "logprobs", lp)) {
            json_decref(r);
            r = NULL;
        }
    }
    if (r && beams_record(r, ev)) {
        json_decref(r);
        r = NULL;
    }
    if (r && j->fp[0]) json_object_set_new(r, "fp", json_string(j->fp));
    json_decref(toks);
    free(clean);
    j->record = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    if (!j->record) {
        fprintf(stderr, "gpt2 generate: out of memory building the record of line %d\n", j->line);
        return 1;
    }
    return record_ready(b, req, 0, n_tokens);
}

/* A request that failed while running (non-finite logits): an error record in its place, retried by
 * --resume like any error record; the exit status will be 1. */
static int on_error_batch(void *user, int req, const char *msg) {
    batch *b = user;
    job *j = &b->jobs[b->req_job[req]];
    if (!(j->record = error_record(j, msg))) {
        fprintf(stderr, "gpt2 generate: out of memory building the record of line %d\n", j->line);
        return 1;
    }
    return record_ready(b, req, 1, 0);
}

static int on_error_stream(void *user, int req, const char *msg) {
    batch *b = user;
    (void)req;
    fprintf(stderr, "\ngpt2 generate: --prompt: %s\n", msg);
    b->n_failed++;
    return 0;
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

/* Keeps what a TOKEN or PROMPT event says about logprobs, for the job's record. 0 ok, -1 out of memory. */
static int keep_logprobs(batch *b, int req, const gpt2_event *ev) {
    job *j = &b->jobs[b->req_job[req]];
    const size_t k = (size_t)j->spec.top_logprobs;
    if (!j->spec.logprobs && !j->spec.echo) return 0;
    if (ev->kind == GPT2_EVENT_PROMPT) {
        size_t n = (size_t)ev->n_tokens;
        free(j->echo_lp);
        free(j->echo_top_ids);
        free(j->echo_top_lp);
        j->echo_lp = malloc(sizeof(float) * (n ? n : 1));
        j->echo_top_ids = calloc(n * k + 1, sizeof(int));
        j->echo_top_lp = calloc(n * k + 1, sizeof(float));
        if (!j->echo_lp || !j->echo_top_ids || !j->echo_top_lp || (size_t)ev->n_top != k) return -1;
        memcpy(j->echo_lp, ev->logprobs, sizeof(float) * n);
        if (k) {
            memcpy(j->echo_top_ids, ev->top_ids, sizeof(int) * n * k);
            memcpy(j->echo_top_lp, ev->top_logprobs, sizeof(float) * n * k);
        }
        j->n_echo = ev->n_tokens;
        return 0;
    }
    if (j->n_seen == j->cap_seen) {
        int cap = j->cap_seen ? 2 * j->cap_seen : 64;
        int *ids = realloc(j->seen_ids, sizeof(int) * (size_t)cap);
        if (ids) j->seen_ids = ids;
        float *lp = realloc(j->seen_lp, sizeof(float) * (size_t)cap);
        if (lp) j->seen_lp = lp;
        int *ti = realloc(j->seen_top_ids, sizeof(int) * ((size_t)cap * k + 1));
        if (ti) j->seen_top_ids = ti;
        float *tl = realloc(j->seen_top_lp, sizeof(float) * ((size_t)cap * k + 1));
        if (tl) j->seen_top_lp = tl;
        if (!ids || !lp || !ti || !tl) return -1;
        j->cap_seen = cap;
    }
    j->seen_ids[j->n_seen] = ev->token;
    j->seen_lp[j->n_seen] = ev->logprob;
    if (k && (size_t)ev->n_top == k) {
        memcpy(j->seen_top_ids + (size_t)j->n_seen * k, ev->top_ids, sizeof(int) * k);
        memcpy(j->seen_top_lp + (size_t)j->n_seen * k, ev->top_logprobs, sizeof(float) * k);
    }
    j->n_seen++;
    return 0;
}

static int on_event(const gpt2_event *ev) {
    req_user *u = ev->user;
    int rc = 0;
    if ((ev->kind == GPT2_EVENT_TOKEN || ev->kind == GPT2_EVENT_PROMPT) && !u->stream &&
        keep_logprobs(u->b, u->req, ev)) {
        fprintf(stderr, "gpt2 generate: out of memory keeping the logprobs of request %d\n", u->req);
        rc = 1;
    }
    if (ev->kind == GPT2_EVENT_TEXT && u->stream) rc = on_text_stream(u->b, u->req, ev->text, ev->n_text);
    if (ev->kind == GPT2_EVENT_FINISH && ev->finish == GPT2_FINISH_ERROR)
        rc = u->stream ? on_error_stream(u->b, u->req, ev->error) : on_error_batch(u->b, u->req, ev->error);
    else if (ev->kind == GPT2_EVENT_FINISH && !u->stream)
        rc = on_finish_batch(u->b, u->req, ev->tokens, ev->n_tokens, ev->text, ev->n_text, ev->finish, ev);
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
    size_t start = n_text >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0; /* a UTF-8 byte-order mark */
    for (size_t pos = start; pos < n_text;) {
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
            if (cli_mpi_rank() == 0) /* every rank checks the input; one says so */
                fprintf(stderr, "gpt2 generate: duplicate id %s on lines %d and %d\n", v[i]->key, v[i - 1]->line,
                    v[i]->line);
            bad++;
        }
    free(v);
    return bad ? -1 : 0;
}

/* The job whose key is `key`, or NULL. */
static job *find_job(batch *b, const char *key) {
    for (int i = 0; i < b->n_jobs; i++)
        if (!strcmp(b->jobs[i].key, key)) return &b->jobs[i];
    return NULL;
}

/* --resume, with the output locked: cuts a torn last line, then goes through the records.
 *   - a record of this job with the same fingerprint: done, kept;
 *   - a record of this job with another fingerprint (or none): made from another input, other
 *     settings or another model; the whole run is refused (EXIT_USAGE), naming the line;
 *   - an error record of this job: dropped from the file (rewritten atomically), retried;
 *   - anything else (not a record, an id not in the input, a second record of an id): reported with
 *     its line number and left as it is.
 * Returns 0, 1 (I/O error, printed) or EXIT_USAGE (printed). */
static int resume_from(batch *b, const char *path, FILE **out) {
    char *data;
    size_t n;
    gpt2_error err = {0};
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        fprintf(stderr, "gpt2 generate: --resume: %s is not a regular file\n", path);
        return EXIT_USAGE;
    }
    if (gpt2_read_file(path, (size_t)1 << 34, &data, &n, &err) != GPT2_OK) {
        cli_report("generate", &err);
        return 1;
    }
    size_t keep = n;
    while (keep > 0 && data[keep - 1] != '\n') keep--;
    if (keep < n) {
        if (ftruncate(fileno(*out), (off_t)keep) != 0) {
            fprintf(stderr, "gpt2 generate: %s: cannot cut its incomplete last line: %s\n", path, strerror(errno));
            free(data);
            return 1;
        }
        fprintf(stderr, "gpt2 generate: %s: dropped an incomplete last line (%zu bytes)\n", path, n - keep);
    }
    int *first_line = calloc((size_t)b->n_jobs + 1, sizeof(int)); /* output line of each job's record */
    char *kept = malloc(keep + 1);                                  /* the lines that stay */
    size_t n_kept = 0;
    int rc = 0, found = 0, retried = 0, foreign = 0, line = 0;
    if (!first_line || !kept) {
        fprintf(stderr, "gpt2 generate: out of memory reading %s\n", path);
        rc = 1;
    }
    for (size_t pos = 0; !rc && pos < keep;) {
        char *nl = memchr(data + pos, '\n', keep - pos);
        size_t len = (size_t)(nl - (data + pos));
        line++;
        json_t *rec = json_loadb(data + pos, len, 0, NULL);
        json_t *id = json_is_object(rec) ? json_object_get(rec, "id") : NULL;
        json_t *ln = rec ? json_object_get(rec, "line") : NULL;
        char *key = id && (!json_is_null(id) || json_is_integer(ln)) ? job_key(id, (int)json_integer_value(ln))
                                                                     : NULL;
        job *j = key ? find_job(b, key) : NULL;
        int drop = 0;
        if (!j) {
            int blank = 1;
            for (size_t k = 0; k < len && blank; k++) blank = data[pos + k] == ' ' || data[pos + k] == '\r';
            if (!blank) {
                if (foreign++ < 10)
                    fprintf(stderr, "gpt2 generate: --resume: %s line %d: %s; left as it is\n", path, line,
                            !key ? "not a record of this program" : "its id is not in the input");
            }
        } else if (first_line[j - b->jobs]) {
            if (foreign++ < 10)
                fprintf(stderr, "gpt2 generate: --resume: %s line %d: a second record for id %s (the first is on "
                                "line %d); left as it is\n", path, line, key, first_line[j - b->jobs]);
        } else if (json_object_get(rec, "error")) {
            drop = 1; /* an error is not a result: run it again */
            retried++;
        } else {
            const char *fp = json_string_value(json_object_get(rec, "fp"));
            if (!fp || strcmp(fp, j->fp)) {
                fprintf(stderr,
                        "gpt2 generate: --resume: %s line %d: the record for id %s was made from %s (fingerprint %s, "
                        "this input line %d gives %s); refusing to mix outputs: use another --output, or drop "
                        "--resume to start over\n",
                        path, line, key, fp ? "another request or model" : "an unknown request (no \"fp\")",
                        fp ? fp : "none", j->line, j->fp[0] ? j->fp : "an error");
                rc = EXIT_USAGE;
            } else {
                first_line[j - b->jobs] = line;
                j->done = 1;
                found++;
            }
        }
        if (!drop) {
            memcpy(kept + n_kept, data + pos, len + 1);
            n_kept += len + 1;
        }
        free(key);
        json_decref(rec);
        pos += len + 1;
    }
    if (foreign > 10) fprintf(stderr, "gpt2 generate: --resume: %s: %d lines in all that are not records of this "
                                      "job\n", path, foreign);
    if (!rc && retried) {
        if (rewrite_output(path, kept, n_kept, out)) rc = 1;
        else fprintf(stderr, "gpt2 generate: --resume: %d error records dropped from %s, to run again\n", retried,
                     path);
    }
    if (!rc) fprintf(stderr, "gpt2 generate: --resume: %d of %d requests already in %s\n", found, b->n_jobs, path);
    free(first_line);
    free(kept);
    free(data);
    return rc;
}

static void free_jobs(batch *b) {
    for (int i = 0; i < b->n_jobs; i++) {
        job *j = &b->jobs[i];
        json_decref(j->id);
        free(j->key);
        gpt2_request_spec_free(&j->spec);
        free(j->ids);
        free(j->seen_ids);
        free(j->seen_lp);
        free(j->seen_top_ids);
        free(j->seen_top_lp);
        free(j->echo_lp);
        free(j->echo_top_ids);
        free(j->echo_top_lp);
        free(j->record);
    }
    free(b->jobs);
    free(b->req_job);
}

/* Slots, context and step budget for these requests: no more slots than requests, no longer context
 * than the longest request needs. */
static gpt2_engine_opts plan_opts(const cli_common *c, const gen_args *a, const gpt2_model *m,
                                  const gpt2_request *reqs, int n_reqs) {
    int longest = 2;
    for (int i = 0; i < n_reqs; i++) {
        long need = (long)reqs[i].n_prompt + (reqs[i].max_tokens > 0 ? reqs[i].max_tokens : 1);
        if (need > longest) longest = need > m->cfg.n_positions ? m->cfg.n_positions : (int)need;
    }
    long want = 0; /* slots the requests could use at once: a beam search takes one per beam */
    int most_beams = 1;
    for (int i = 0; i < n_reqs; i++) {
        int k = reqs[i].beam.num_beams > 1 ? reqs[i].beam.num_beams : 1;
        want += k;
        if (k > most_beams) most_beams = k;
    }
    return cli_batch_opts(c, a->batch, want, most_beams, longest, 4096);
}

/* ---------------------------------------------------------------------------------------------- */
/* Under MPI (see cli_mpi.h)                                                                        */

/* A library error, naming the rank under MPI (each rank reports its own engine's). */
static void mpi_report(const gpt2_error *err) {
    if (cli_mpi_size() > 1)
        fprintf(stderr, "gpt2 generate: rank %d: %s\n", cli_mpi_rank(), err->msg[0] ? err->msg : gpt2_strerror(err->status));
    else cli_report("generate", err);
}

static void print_plan_warning(const gpt2_engine *e) {
    gpt2_plan plan; /* the library never prints: a problem it worked around (graphs off) is shown here */
    if (gpt2_engine_plan(e, &plan) == GPT2_OK && plan.warning[0])
        fprintf(stderr, "gpt2 generate: warning: %s\n", plan.warning);
}

/* Every rank read the input itself: the same file, or the job is refused (a rank on a node that
 * sees another file would run other requests under the same ids). Then rank 0 says which requests
 * its output already holds (--resume). 0 ok, else the exit code, on every rank alike. */
static int mpi_share_jobs(batch *b, const char *text, size_t n_text) {
    uint64_t h = fnv1a(FNV_OFFSET, text, n_text);
    int mine[3] = {b->n_jobs, 0, 0}, head[3];
    memcpy(&mine[1], &h, sizeof h);
    memcpy(head, mine, sizeof head);
    if (cli_mpi_bcast_ints(head, 3)) return 1;
    int bad = memcmp(head, mine, sizeof head) != 0;
    if (bad)
        fprintf(stderr, "gpt2 generate: rank %d: its --input (%d requests) is not the file rank 0 read (%d requests): "
                        "every rank must read the same file\n", cli_mpi_rank(), b->n_jobs, head[0]);
    int *done = bad ? NULL : calloc((size_t)b->n_jobs + 1, sizeof(int));
    if (!bad && !done) fprintf(stderr, "gpt2 generate: rank %d: out of memory\n", cli_mpi_rank());
    if (cli_mpi_max(!done)) {
        free(done);
        return 1;
    }
    for (int i = 0; i < b->n_jobs; i++) done[i] = b->jobs[i].done;
    int rc = cli_mpi_bcast_ints(done, b->n_jobs) ? 1 : 0;
    for (int i = 0; i < b->n_jobs; i++) b->jobs[i].done = done[i];
    free(done);
    return rc;
}

/* This rank's engine, as cli_mpi_run drives it. */
typedef struct {
    gpt2_engine *e;
    gpt2_request *reqs; /* (n_reqs) */
    int *failed;        /* a callback failed (a write, or a send to rank 0) */
    batch *b;
} mpi_run;

static int mpi_submit(void *user, int req) {
    mpi_run *x = user;
    gpt2_error err = {0};
    if (gpt2_engine_submit(x->e, &x->reqs[req], NULL, &err) == GPT2_OK) return 0;
    mpi_report(&err);
    return -1;
}

static int mpi_step(void *user, int *busy) {
    mpi_run *x = user;
    gpt2_error err = {0};
    if (gpt2_engine_step(x->e, busy, &err) != GPT2_OK) {
        mpi_report(&err);
        return -1;
    }
    return *x->failed ? -1 : 0;
}

static int mpi_stop(void *user) {
    const mpi_run *x = user;
    return g_cancel || x->b->write_failed;
}

static int mpi_deliver(void *user, int req, int failed, long tokens, char *rec, size_t n) {
    mpi_run *x = user;
    (void)n;
    x->b->jobs[x->b->req_job[req]].record = rec;
    return record_in(x->b, req, failed, tokens);
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        CLI_COMMON_OPTIONS,
        {"prompt", required_argument, 0, OPT_PROMPT}, {"input", required_argument, 0, OPT_INPUT},
        {"output", required_argument, 0, OPT_OUTPUT}, {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, OPT_TEMP}, {"top-k", required_argument, 0, OPT_TOPK},
        {"top-p", required_argument, 0, OPT_TOPP}, {"seed", required_argument, 0, OPT_SEED},
        {"stop", required_argument, 0, OPT_STOP}, {"repetition-penalty", required_argument, 0, OPT_REP},
        {"frequency-penalty", required_argument, 0, OPT_FREQ}, {"presence-penalty", required_argument, 0, OPT_PRES},
        {"batch", required_argument, 0, OPT_BATCH}, {"no-special", no_argument, 0, OPT_NO_SPECIAL},
        {"truncate", no_argument, 0, OPT_TRUNCATE}, {"resume", no_argument, 0, OPT_RESUME},
        {"progress", no_argument, 0, OPT_PROGRESS}, {"progress-interval", required_argument, 0, OPT_PROGRESS_INTERVAL},
        {"beams", required_argument, 0, OPT_BEAMS}, {"length-penalty", required_argument, 0, OPT_LENPEN},
        {0, 0, 0, 0}};
    cli_common c;
    gen_args a = {0};
    cli_common_init(&c);
    a.defaults.max_tokens = 64;
    a.defaults.sampling = gpt2_sampling_default();
    a.defaults.sampling.temperature = 1.0f;
    a.progress_interval = 30;
    a.defaults.beam = gpt2_beam_default();
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
    if (a.input && a.output && output_is_input(a.input, a.output)) {
        fprintf(stderr, "gpt2 generate: --output %s is the same file as --input %s; writing it would destroy the "
                        "input\n", a.output, a.input);
        gpt2_request_spec_free(&a.defaults);
        return EXIT_USAGE;
    }
    /* Under mpirun/srun: MPI, and this rank's GPU, before anything touches CUDA. */
    if (cli_mpi_start("generate", c.device)) {
        gpt2_request_spec_free(&a.defaults);
        return 1;
    }
    int mpi = cli_mpi_size() > 1, rank = cli_mpi_rank(), synced = 0;
    if (mpi && (a.prompt || !strcmp(a.input, "-"))) { /* mpirun gives standard input to rank 0 alone */
        if (rank == 0) fprintf(stderr, "gpt2 generate: under mpirun or srun every rank reads the requests: give "
                                       "--input FILE (not --prompt, not standard input)\n");
        cli_mpi_end();
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
        uint64_t model_id;
        if (model_identity(c.model_dir, &model_id)) goto out;
        for (int i = 0; i < b.n_jobs; i++)
            if (!b.jobs[i].failed) job_fingerprint(&b.jobs[i], model_id, &c, &a);
        b.out_name = a.output ? a.output : "standard output";
        b.tok = tok;
        if (rank == 0) { /* only rank 0 writes the output (see cli_mpi.h) */
            if (a.output && open_output_locked(a.output, a.resume, &b.out)) goto out;
            if (!a.output) b.out = stdout;
            if (a.resume && (rc = resume_from(&b, a.output, &b.out)) != 0) goto out;
        }
        rc = 1;
    }
    /* Every rank has read the same input; rank 0 says which requests the output already holds. */
    if (mpi) {
        synced = 1;
        if ((rc = cli_mpi_max(0)) != 0 || (rc = mpi_share_jobs(&b, text, n_text)) != 0) goto out;
        rc = 1;
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
                                      .n_stop = sp->n_stop, .logprobs = sp->logprobs,
                                      .top_logprobs = sp->top_logprobs, .echo = sp->echo, .beam = sp->beam};
        b.req_job[n_reqs++] = i;
    }
    b.n_to_run = n_reqs;

    if (a.input && rank == 0) {
        b.progress = isatty(STDERR_FILENO) ? 1 : a.progress ? 2 : 0;
        b.progress_every = a.progress_interval;
        b.progress_next = b.progress == 2 ? b.progress_every : 0;
        flush_records(&b, 0); /* error records at the head of the input */
    }
    if (n_reqs > 0) {
        gpt2_engine_opts o = plan_opts(&c, &a, m, reqs, n_reqs);
        int have_engine = gpt2_engine_create_from(m, tok, &o, &e, &err) == GPT2_OK;
        if (!have_engine) {
            mpi_report(&err);
            if (!mpi) goto out; /* under MPI this rank still takes part; the others run its share */
        }
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b.t0);
        if (!(users = calloc((size_t)n_reqs, sizeof *users))) {
            fprintf(stderr, "gpt2 generate: out of memory for %d requests\n", n_reqs);
            if (!mpi) goto out;
            have_engine = 0;
        }
        gpt2_status st = GPT2_OK;
        int busy = n_reqs, failed = 0;
        for (int i = 0; users && i < n_reqs; i++) {
            users[i] = (req_user){.b = &b, .req = i, .stream = a.prompt != NULL, .failed = &failed};
            reqs[i].on_event = on_event;
            reqs[i].user = &users[i];
        }
        if (mpi) {
            /* Rank 0 hands out the requests and writes the records; every rank runs some. */
            mpi_run x = {.e = e, .reqs = reqs, .failed = &failed, .b = &b};
            cli_mpi_engine eng = {.user = &x, .submit = mpi_submit, .step = mpi_step, .stop = mpi_stop,
                                  .deliver = mpi_deliver};
            int r = cli_mpi_run(&eng, have_engine, n_reqs, o.max_slots);
            if (e) print_plan_warning(e);
            if (g_cancel && rank == 0)
                fprintf(stderr, "\ngpt2 generate: interrupted; the records finished in input order are written, run "
                                "again with --resume for the rest\n");
            else if (g_cancel) fprintf(stderr, "gpt2 generate: rank %d: interrupted\n", rank);
            if (rank > 0) {
                rc = r;
                goto out;
            }
            if (b.out) flush_records(&b, 0); /* in input order only: the file stays a prefix of the job's */
            if (r || b.write_failed) goto out;
        } else {
            for (int i = 0; i < n_reqs && st == GPT2_OK; i++) st = gpt2_engine_submit(e, &reqs[i], NULL, &err);
            /* Step until done, interrupted (SIGINT: unfinished requests are left for --resume) or a write fails. */
            while (st == GPT2_OK && busy > 0 && !g_cancel && !failed) st = gpt2_engine_step(e, &busy, &err);
            print_plan_warning(e);
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
    }
    if (rank > 0) { /* nothing to run: rank 0 reports */
        rc = 0;
        goto out;
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
    if (mpi && !synced) rc = cli_mpi_max(rc ? rc : 1); /* failed before the others heard: tell them */
    cli_mpi_end();
    return rc;
}
