/* cli_bench.c: `gpt2 bench`: load time, prefill and decode throughput, decode step latency and peak
 * memory for a list of batch sizes.
 *
 * Each batch size B gets its own engine (B slots of prompt-len + gen-len positions) over the one loaded
 * model, and runs B requests of prompt-len token ids (random from --seed, or read from --prompt-ids)
 * through the same scheduler as `gpt2 generate` (gpt2_engine_step), greedy, with end-of-text ignored so
 * that every sequence makes gen-len tokens, as Hugging Face's generate(max_new_tokens = min_new_tokens
 * = gen-len) does: the prefill gives the first token, then decode steps of B tokens give the rest.
 *
 * Timing: clock_gettime(CLOCK_MONOTONIC) around each engine step, which is synchronous (the sample op
 * returns token ids to the host). The prefill is timed up to the step that gives the last sequence its
 * first token; every later step is a decode step. --warmup full generations run untimed first, on the
 * same engine and prompts.
 */
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli.h"
#include "cli_mpi.h"
#include "util.h"

enum { OPT_BATCH = 4000, OPT_PROMPT_LEN, OPT_GEN_LEN, OPT_WARMUP, OPT_SEED, OPT_JSON, OPT_PROMPT_IDS, OPT_MAX_TOKENS };
enum { MAX_BATCHES = 32, MAX_BATCH = 65536, MAX_PROMPT_LEN = 1 << 20, DEFAULT_MAX_TOKENS = 8192 };

static const char HELP[] =
    "usage: gpt2 bench --model DIR [--device cuda|cpu|auto] [--dtype fp32|fp16|bf16] [--batch 1,8,64,256]\n"
    "                  [--prompt-len 128] [--gen-len 128] [--warmup N] [--seed S] [--json FILE]\n"
    "Measures, for each batch size B: prefill tokens/s (B prompts of prompt-len tokens), decode tokens/s\n"
    "and milliseconds per decode step (median, p90) over the gen-len - 1 decode steps of B sequences\n"
    "(greedy, fixed length, no early stop), end-to-end generated tokens/s (B x gen-len / total time) and\n"
    "peak memory; and once, the load time (model load + backend creation).\n"
    "  --batch LIST       comma-separated batch sizes (default 1,8,64,256)\n"
    "  --prompt-len N     prompt tokens per sequence (default 128)\n"
    "  --gen-len N        new tokens per sequence, >= 2 (default 128)\n"
    "  --warmup N         untimed generations before the timed one, per batch size (default 1)\n"
    "  --seed S           seed of the random prompt ids (default 0)\n"
    "  --prompt-ids FILE  take the prompts from FILE instead: whitespace-separated ids, prompt b of a\n"
    "                     batch is ids[b*prompt-len .. (b+1)*prompt-len); needs max(batch) x prompt-len ids\n"
    "  --max-tokens N     most tokens in one forward; longer prefills go in pieces\n"
    "                     (default min(B x prompt-len, 8192), at least B)\n"
    "  --json FILE        also write the results as JSON\n" CLI_COMMON_HELP;

typedef struct {
    int batch[MAX_BATCHES]; /* (n_batch) */
    int n_batch;
    int prompt_len, gen_len, warmup, max_tokens; /* max_tokens 0: automatic */
    uint64_t seed;
    const char *json_path, *prompt_ids_path;
} bench_args;

typedef struct {
    int batch, max_tokens;
    double create_s;          /* backend creation */
    double prefill_s;         /* B x P prompt tokens, first tokens sampled */
    double decode_s;          /* sum of the G - 1 decode steps */
    double step_ms_p50, step_ms_p90;
    double e2e_s;             /* prefill + decode, B x G new tokens */
    double peak_rss_mib;      /* process high-water mark so far (getrusage) */
    char backend[16];         /* the backend's name ("cpu", "cuda") */
    long decode_tokens;       /* tokens the decode steps made (B x (G - 1) when the prefill is one step) */
    int have_dev;             /* device memory known (CUDA) */
    double dev_plan_mib;      /* device memory the engine's backend allocated */
    int *seq0;                /* (G) tokens generated for sequence 0; malloc'ed */
} batch_result;

/* Parses "1,8,64" into a->batch; prints the bad item and returns -1 on error. */
static int parse_batch_list(const char *s, bench_args *a) {
    a->n_batch = 0;
    const char *p = s;
    for (int item = 1;; item++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char buf[32];
        long v = 0;
        int ok = len > 0 && len < sizeof buf;
        if (ok) {
            memcpy(buf, p, len);
            buf[len] = '\0';
            char *e;
            v = strtol(buf, &e, 10);
            ok = *e == '\0' && buf[0] != '-' && buf[0] != '+' && buf[0] != ' ' && v >= 1 && v <= MAX_BATCH;
        }
        if (!ok) {
            fprintf(stderr, "gpt2 bench: --batch '%s': item %d '%.*s': expected an integer in 1..%d\n", s, item,
                    (int)(len < 32 ? len : 32), p, MAX_BATCH);
            return -1;
        }
        if (a->n_batch == MAX_BATCHES) {
            fprintf(stderr, "gpt2 bench: --batch '%s': more than %d batch sizes\n", s, MAX_BATCHES);
            return -1;
        }
        a->batch[a->n_batch++] = (int)v;
        if (!end) return 0;
        p = end + 1;
    }
}

static int bench_option(int opt, const char *arg, void *ctx) {
    bench_args *a = ctx;
    long v;
    switch (opt) {
    case OPT_BATCH: return parse_batch_list(arg, a) ? -1 : 1;
    case OPT_PROMPT_LEN:
        if (cli_parse_int("bench", "--prompt-len", arg, 1, MAX_PROMPT_LEN, &v)) return -1;
        a->prompt_len = (int)v;
        return 1;
    case OPT_GEN_LEN:
        if (cli_parse_int("bench", "--gen-len", arg, 2, MAX_PROMPT_LEN, &v)) return -1;
        a->gen_len = (int)v;
        return 1;
    case OPT_WARMUP:
        if (cli_parse_int("bench", "--warmup", arg, 0, 1000, &v)) return -1;
        a->warmup = (int)v;
        return 1;
    case OPT_SEED:
        if (cli_parse_int("bench", "--seed", arg, 0, INT64_MAX, &v)) return -1;
        a->seed = (uint64_t)v;
        return 1;
    case OPT_MAX_TOKENS:
        if (cli_parse_int("bench", "--max-tokens", arg, 1, 1 << 24, &v)) return -1;
        a->max_tokens = (int)v;
        return 1;
    case OPT_JSON: a->json_path = arg; return 1;
    case OPT_PROMPT_IDS: a->prompt_ids_path = arg; return 1;
    }
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Peak resident memory of this process in MiB. VmHWM first: getrusage's ru_maxrss survives execve on
 * Linux, so a bench started by a large parent (a Python harness) would report the parent's peak. */
static double peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        long kib = -1;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
        fclose(f);
        if (kib >= 0) return (double)kib / 1024.0;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return -1;
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* q-quantile of sorted v (n >= 1), linear between neighbours as numpy.percentile does. */
static double quantile(const double *v, int n, double q) {
    double r = q * (n - 1);
    int i = (int)floor(r);
    if (i >= n - 1) return v[n - 1];
    return v[i] + (r - i) * (v[i + 1] - v[i]);
}

/* splitmix64, for the random prompt ids. */
static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One generation's bookkeeping, filled by the requests' callbacks. */
typedef struct {
    int B, G;
    int n_first;     /* sequences that have their first token */
    long n_tokens;   /* tokens generated so far, all sequences */
    int *seq0;       /* (G) tokens of sequence 0 */
    int n_seq0;
    int *n_gen;      /* (B) tokens of each sequence */
} gen_track;

typedef struct {
    gen_track *t;
    int seq;
} seq_user;

static int on_seq_event(const gpt2_event *ev) {
    const seq_user *u = ev->user;
    gen_track *t = u->t;
    if (ev->kind != GPT2_EVENT_TOKEN) return 0;
    if (t->n_gen[u->seq]++ == 0) t->n_first++;
    t->n_tokens++;
    if (u->seq == 0 && t->n_seq0 < t->G) t->seq0[t->n_seq0++] = ev->token;
    return 0;
}

/* One fixed-length greedy generation of B sequences through the engine's scheduler, as `generate`
 * runs it: B requests of P prompt tokens and G new tokens each, end-of-text ignored. The prefill is
 * the steps until every sequence has its first token (when B x P exceeds the step's token budget,
 * those steps also decode the sequences already started, as the scheduler does for real); every later
 * step is a decode step, timed one by one. Returns the decode tokens in *decode_tokens. */
static gpt2_status generate_engine(gpt2_engine *e, const int *prompts, int B, int P, int G, double *step_s,
                                   int *n_steps, double *prefill_s, double *total_s, long *decode_tokens,
                                   int *seq0, gpt2_error *err) {
    gen_track t = {.B = B, .G = G, .seq0 = seq0};
    seq_user *users = calloc((size_t)B, sizeof *users);
    t.n_gen = calloc((size_t)B, sizeof(int));
    if (!users || !t.n_gen) {
        free(users);
        free(t.n_gen);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "out of memory for %d requests", B);
    }
    gpt2_status st = GPT2_OK;
    for (int b = 0; b < B && st == GPT2_OK; b++) {
        users[b] = (seq_user){.t = &t, .seq = b};
        gpt2_request r = {.prompt = prompts + (size_t)b * P, .n_prompt = P, .max_tokens = G,
                          .sampling = gpt2_sampling_default(), .ignore_eot = 1, .on_event = on_seq_event,
                          .user = &users[b]};
        st = gpt2_engine_submit(e, &r, NULL, err);
    }
    double t0 = now_s(), t_prefilled = t0;
    long tokens_at_prefill = 0;
    int busy = B, steps = 0;
    while (st == GPT2_OK && busy > 0) {
        double ts = now_s();
        int prefilled = t.n_first == B;
        st = gpt2_engine_step(e, &busy, err);
        double te = now_s();
        if (prefilled) {
            if (steps < G) step_s[steps++] = te - ts;
        } else if (t.n_first == B) {
            t_prefilled = te;
            tokens_at_prefill = t.n_tokens;
        }
    }
    *prefill_s = t_prefilled - t0;
    *total_s = now_s() - t0;
    *n_steps = steps;
    *decode_tokens = t.n_tokens - tokens_at_prefill;
    free(users);
    free(t.n_gen);
    return st;
}

/* Runs one batch size: a fresh engine, warm-up, one timed generation. */
static gpt2_status bench_batch(const cli_common *c, const bench_args *a, const gpt2_model *m, gpt2_tokenizer *tok,
                               const int *prompts, int B, batch_result *r, gpt2_error *err) {
    const int P = a->prompt_len, G = a->gen_len;
    gpt2_engine *e = NULL;
    gpt2_status st = GPT2_OK;
    double *step_s = malloc(sizeof(double) * (size_t)G);
    memset(r, 0, sizeof *r);
    r->batch = B;
    if (!step_s || !(r->seq0 = calloc((size_t)G, sizeof(int)))) {
        free(step_s);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "batch %d: out of memory", B);
    }
    long auto_tokens = (long)B * P < DEFAULT_MAX_TOKENS ? (long)B * P : DEFAULT_MAX_TOKENS;
    r->max_tokens = a->max_tokens ? a->max_tokens : (int)(auto_tokens > B ? auto_tokens : B);
    gpt2_engine_opts o = cli_engine_opts(c);
    o.max_slots = B;
    o.max_seq = P + G;
    o.max_tokens = r->max_tokens;
    double t0 = now_s();
    gpt2_plan plan;
    double prefill_s = 0, total_s = 0;
    int n_steps = 0;
    long decode_tokens = 0;
    if ((st = gpt2_engine_create_from(m, tok, &o, &e, err)) != GPT2_OK) goto timed;
    r->create_s = now_s() - t0;
    gpt2_engine_plan(e, &plan);
    snprintf(r->backend, sizeof r->backend, "%s", plan.device);

    for (int w = 0; w < a->warmup && st == GPT2_OK; w++)
        st = generate_engine(e, prompts, B, P, G, step_s, &n_steps, &prefill_s, &total_s, &decode_tokens, r->seq0,
                             err);
timed:
    /* Under MPI every rank runs this batch size: the timed runs start together (a collective every
     * rank reaches, failed or not), so that the aggregate measures them side by side. */
    if (cli_mpi_max(st != GPT2_OK) && st == GPT2_OK) st = gpt2_fail(err, GPT2_ERR_ABORTED, "another rank failed");
    if (st == GPT2_OK)
        st = generate_engine(e, prompts, B, P, G, step_s, &n_steps, &prefill_s, &total_s, &decode_tokens, r->seq0,
                             err);
    if (st != GPT2_OK) goto out;
    r->prefill_s = prefill_s;
    r->e2e_s = total_s;
    r->decode_tokens = decode_tokens;
    r->decode_s = 0;
    for (int t = 0; t < n_steps; t++) r->decode_s += step_s[t];
    if (n_steps > 0) {
        qsort(step_s, (size_t)n_steps, sizeof(double), cmp_double);
        r->step_ms_p50 = 1e3 * quantile(step_s, n_steps, 0.5);
        r->step_ms_p90 = 1e3 * quantile(step_s, n_steps, 0.9);
    }
    r->peak_rss_mib = peak_rss_mib();
    if (gpt2_engine_plan(e, &plan) == GPT2_OK && plan.warning[0]) /* e.g. CUDA graphs turned off */
        fprintf(stderr, "gpt2 bench: warning: %s\n", plan.warning);
    r->have_dev = plan.device_bytes > 0;
    r->dev_plan_mib = (double)plan.device_bytes / (1 << 20);
out:
    if (st != GPT2_OK) {
        /* Name the batch size in the message. */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg[0] ? err->msg : gpt2_strerror(st));
        gpt2_fail(err, st, "batch %d: %s", B, msg);
    }
    gpt2_engine_destroy(e);
    free(step_s);
    return st;
}

/* The prompts: max(batch) x P ids, from --prompt-ids or random. *out malloc'ed. 0 ok, else an exit code. */
static int make_prompts(const bench_args *a, int max_b, int V, int **out) {
    size_t need = (size_t)max_b * (size_t)a->prompt_len;
    if (a->prompt_ids_path) {
        char *text = NULL;
        int *ids = NULL;
        size_t n_text, n_ids;
        if (cli_read_input("bench", a->prompt_ids_path, &text, &n_text)) return 1;
        int bad = cli_parse_ids("bench", text, &ids, &n_ids);
        free(text);
        if (bad) return EXIT_USAGE;
        if (n_ids < need) {
            fprintf(stderr, "gpt2 bench: --prompt-ids %s: holds %zu ids; batch %d x --prompt-len %d needs %zu\n",
                    a->prompt_ids_path, n_ids, max_b, a->prompt_len, need);
            free(ids);
            return EXIT_USAGE;
        }
        for (size_t i = 0; i < need; i++)
            if (ids[i] >= V) {
                fprintf(stderr, "gpt2 bench: --prompt-ids %s: id #%zu = %d is outside the model's vocabulary 0..%d\n",
                        a->prompt_ids_path, i + 1, ids[i], V - 1);
                free(ids);
                return EXIT_USAGE;
            }
        *out = ids;
        return 0;
    }
    int *ids = malloc(sizeof(int) * need);
    if (!ids) {
        fprintf(stderr, "gpt2 bench: out of memory for %zu prompt ids\n", need);
        return 1;
    }
    uint64_t s = a->seed;
    for (size_t i = 0; i < need; i++) ids[i] = (int)(splitmix64(&s) % (uint64_t)V);
    *out = ids;
    return 0;
}

static void print_table(const cli_common *c, const bench_args *a, const gpt2_model *m, const char *be_name,
                        double load_model_s, double load_s, const batch_result *r, int n) {
    const gpt2_config *k = &m->cfg;
    printf("gpt2 bench: %s (L=%d C=%d NH=%d V=%d), device %s, %s, prompt %d, gen %d, warmup %d, %s prompts\n",
           c->model_dir, k->n_layer, k->n_embd, k->n_head, k->vocab_size, be_name, gpt2_dtype_name(c->dtype),
           a->prompt_len, a->gen_len, a->warmup, a->prompt_ids_path ? "file" : "random");
    printf("load: %.3f s (model %.3f s + backend %.3f s)\n", load_s, load_model_s, load_s - load_model_s);
    printf("%6s %14s %13s %12s %12s %12s %12s %s\n", "batch", "prefill tok/s", "decode tok/s", "step ms p50",
           "step ms p90", "e2e tok/s", "peak RSS MiB", "device MiB (engine)");
    for (int i = 0; i < n; i++) {
        const batch_result *x = &r[i];
        double pre = (double)x->batch * a->prompt_len / x->prefill_s;
        double dec = (double)x->decode_tokens / x->decode_s;
        double e2e = (double)x->batch * a->gen_len / x->e2e_s;
        printf("%6d %14.1f %13.1f %12.3f %12.3f %12.1f %12.1f", x->batch, pre, dec, x->step_ms_p50, x->step_ms_p90,
               e2e, x->peak_rss_mib);
        if (x->have_dev) printf(" %.0f\n", x->dev_plan_mib);
        else printf(" -\n");
    }
}

/* Under MPI, per batch size: every rank's prefill, decode and end-to-end tokens over the slowest
 * rank's time, out (3 x n): the job's throughput (the timed runs start together). Collective. */
static void mpi_aggregate(const bench_args *a, const batch_result *r, int n, double *out) {
    double tok[3 * MAX_BATCHES], sec[3 * MAX_BATCHES];
    for (int i = 0; i < n; i++) {
        tok[3 * i] = (double)r[i].batch * a->prompt_len;
        tok[3 * i + 1] = (double)r[i].decode_tokens;
        tok[3 * i + 2] = (double)r[i].batch * a->gen_len;
        sec[3 * i] = r[i].prefill_s;
        sec[3 * i + 1] = r[i].decode_s;
        sec[3 * i + 2] = r[i].e2e_s;
    }
    cli_mpi_reduce(tok, tok, 3 * n, 's');
    cli_mpi_reduce(sec, sec, 3 * n, 'm');
    for (int i = 0; i < 3 * n; i++) out[i] = tok[i] / sec[i];
}

static void print_aggregate(const bench_args *a, const batch_result *r, int n, const double *agg) {
    (void)a;
    printf("aggregate over %d ranks (every rank's tokens / the slowest rank's time):\n", cli_mpi_size());
    printf("%6s %14s %13s %12s\n", "batch", "prefill tok/s", "decode tok/s", "e2e tok/s");
    for (int i = 0; i < n; i++)
        printf("%6d %14.1f %13.1f %12.1f\n", r[i].batch, agg[3 * i], agg[3 * i + 1], agg[3 * i + 2]);
}

static void add_aggregate_json(json_t *root, const batch_result *r, int n, const double *agg) {
    json_t *res = json_object_get(root, "results");
    json_object_set_new(root, "ranks", json_integer(cli_mpi_size()));
    for (int i = 0; i < n; i++) {
        json_t *o = json_array_get(res, (size_t)i), *x = json_object();
        if (!o || !x || r[i].batch != json_integer_value(json_object_get(o, "batch"))) {
            json_decref(x);
            continue;
        }
        json_object_set_new(x, "prefill_tok_s", json_real(agg[3 * i]));
        json_object_set_new(x, "decode_tok_s", json_real(agg[3 * i + 1]));
        json_object_set_new(x, "e2e_tok_s", json_real(agg[3 * i + 2]));
        json_object_set_new(o, "aggregate", x);
    }
}

static json_t *results_json(const cli_common *c, const bench_args *a, const gpt2_model *m, const char *be_name,
                            double load_model_s, double load_s, const batch_result *r, int n,
                            const char *failure) {
    const gpt2_config *k = &m->cfg;
    json_t *root = json_object(), *res = json_array(), *cfg = json_object();
    if (!root || !res || !cfg) goto fail;
    json_object_set_new(cfg, "n_layer", json_integer(k->n_layer));
    json_object_set_new(cfg, "n_embd", json_integer(k->n_embd));
    json_object_set_new(cfg, "n_head", json_integer(k->n_head));
    json_object_set_new(cfg, "n_positions", json_integer(k->n_positions));
    json_object_set_new(cfg, "vocab_size", json_integer(k->vocab_size));
    json_object_set_new(root, "model", json_string(c->model_dir));
    json_object_set_new(root, "config", cfg);
    cfg = NULL;
    json_object_set_new(root, "device", json_string(be_name));
    json_object_set_new(root, "dtype", json_string(gpt2_dtype_name(c->dtype)));
    json_object_set_new(root, "tf32", json_boolean(c->allow_tf32));
    json_object_set_new(root, "threads", json_integer(c->threads ? c->threads : omp_get_max_threads()));
    json_object_set_new(root, "prompt_len", json_integer(a->prompt_len));
    json_object_set_new(root, "gen_len", json_integer(a->gen_len));
    json_object_set_new(root, "decode_steps", json_integer(a->gen_len - 1));
    json_object_set_new(root, "warmup", json_integer(a->warmup));
    json_object_set_new(root, "seed", json_integer((json_int_t)a->seed));
    json_object_set_new(root, "prompts", json_string(a->prompt_ids_path ? a->prompt_ids_path : "random"));
    json_object_set_new(root, "load_model_s", json_real(load_model_s));
    json_object_set_new(root, "load_s", json_real(load_s));
    for (int i = 0; i < n; i++) {
        const batch_result *x = &r[i];
        json_t *o = json_object(), *seq0 = json_array();
        if (!o || !seq0) {
            json_decref(o);
            json_decref(seq0);
            goto fail;
        }
        double B = x->batch;
        json_object_set_new(o, "batch", json_integer(x->batch));
        json_object_set_new(o, "max_tokens", json_integer(x->max_tokens));
        json_object_set_new(o, "backend_create_s", json_real(x->create_s));
        json_object_set_new(o, "prefill_s", json_real(x->prefill_s));
        json_object_set_new(o, "prefill_tok_s", json_real(B * a->prompt_len / x->prefill_s));
        json_object_set_new(o, "decode_s", json_real(x->decode_s));
        json_object_set_new(o, "decode_tokens", json_integer(x->decode_tokens));
        json_object_set_new(o, "decode_tok_s", json_real((double)x->decode_tokens / x->decode_s));
        json_object_set_new(o, "decode_step_ms_median", json_real(x->step_ms_p50));
        json_object_set_new(o, "decode_step_ms_p90", json_real(x->step_ms_p90));
        json_object_set_new(o, "e2e_s", json_real(x->e2e_s));
        json_object_set_new(o, "e2e_tok_s", json_real(B * a->gen_len / x->e2e_s));
        json_object_set_new(o, "peak_rss_mib", json_real(x->peak_rss_mib));
        json_object_set_new(o, "device_mem_mib", x->have_dev ? json_real(x->dev_plan_mib) : json_null());
        for (int t = 0; t < a->gen_len; t++) json_array_append_new(seq0, json_integer(x->seq0[t]));
        json_object_set_new(o, "seq0_tokens", seq0);
        json_array_append_new(res, o);
    }
    json_object_set_new(root, "results", res);
    json_object_set_new(root, "error", failure ? json_string(failure) : json_null());
    return root;
fail:
    json_decref(root);
    json_decref(res);
    json_decref(cfg);
    return NULL;
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"batch", required_argument, 0, OPT_BATCH},
                                         {"prompt-len", required_argument, 0, OPT_PROMPT_LEN},
                                         {"gen-len", required_argument, 0, OPT_GEN_LEN},
                                         {"warmup", required_argument, 0, OPT_WARMUP},
                                         {"seed", required_argument, 0, OPT_SEED},
                                         {"json", required_argument, 0, OPT_JSON},
                                         {"prompt-ids", required_argument, 0, OPT_PROMPT_IDS},
                                         {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
                                         {0, 0, 0, 0}};
    cli_common c;
    bench_args a = {.batch = {1, 8, 64, 256}, .n_batch = 4, .prompt_len = 128, .gen_len = 128, .warmup = 1};
    cli_common_init(&c);
    int rc = cli_parse_args("bench", argc, argv, opts, &c, HELP, bench_option, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (!c.model_dir) {
        fprintf(stderr, "gpt2 bench: --model DIR is required\n%s", HELP);
        return EXIT_USAGE;
    }
    int max_b = 0;
    for (int i = 0; i < a.n_batch; i++) max_b = a.batch[i] > max_b ? a.batch[i] : max_b;
    if (a.max_tokens && a.max_tokens < max_b) {
        fprintf(stderr, "gpt2 bench: --max-tokens %d: must be at least the largest batch size (%d), since a decode "
                        "step forwards one token of every sequence\n", a.max_tokens, max_b);
        return EXIT_USAGE;
    }

    /* The context check needs only config.json; do it before the (slow) weight load. */
    gpt2_error err = {0};
    gpt2_config cfg;
    char *cfg_path = gpt2_path_join(c.model_dir, "config.json");
    if (!cfg_path) {
        fprintf(stderr, "gpt2 bench: out of memory\n");
        return 1;
    }
    gpt2_status st = gpt2_config_load(cfg_path, &cfg, &err);
    free(cfg_path);
    if (st != GPT2_OK) {
        cli_report("bench", &err);
        return 1;
    }
    if ((long)a.prompt_len + a.gen_len > cfg.n_positions) {
        fprintf(stderr, "gpt2 bench: --prompt-len %d + --gen-len %d = %ld exceeds the model's context of %d positions "
                        "(n_positions in %s/config.json)\n",
                a.prompt_len, a.gen_len, (long)a.prompt_len + a.gen_len, cfg.n_positions, c.model_dir);
        return EXIT_USAGE;
    }

    int *prompts = NULL;
    if ((rc = make_prompts(&a, max_b, cfg.vocab_size, &prompts))) return rc;
    /* Under mpirun/srun: every rank runs the same benchmark on its own GPU; rank 0 reports them all. */
    if (cli_mpi_start("bench", c.device)) {
        free(prompts);
        return 1;
    }

    FILE *jf = NULL;
    gpt2_model *m = NULL;
    gpt2_tokenizer *tok = NULL;
    batch_result *res = calloc((size_t)a.n_batch, sizeof *res);
    json_t *root = NULL;
    const char *failure = NULL; /* the message of a batch size that failed */
    rc = 1;
    int bad = 0; /* under MPI every rank learns of a failure here, so that none waits in vain */
    if (!res) {
        fprintf(stderr, "gpt2 bench: out of memory\n");
        bad = 1;
    }
    /* Open the JSON file first so that a bad path fails before minutes of benchmarking. */
    if (!bad && a.json_path && cli_mpi_rank() == 0 && !(jf = fopen(a.json_path, "w"))) {
        fprintf(stderr, "gpt2 bench: --json %s: cannot open for writing\n", a.json_path);
        bad = 1;
    }

    double t0 = now_s();
    if (!bad && (gpt2_model_load(c.model_dir, &m, &err) != GPT2_OK ||
                 gpt2_tokenizer_load(c.tokenizer_dir ? c.tokenizer_dir : c.model_dir, &tok, &err) != GPT2_OK)) {
        cli_report("bench", &err);
        bad = 1;
    }
    if (cli_mpi_max(bad)) goto out;
    double load_model_s = now_s() - t0;
    /* A failing batch size (out of memory, say) ends the run; the sizes before it are still reported. */
    int n_done = 0;
    for (; n_done < a.n_batch; n_done++) {
        st = bench_batch(&c, &a, m, tok, prompts, a.batch[n_done], &res[n_done], &err);
        if (cli_mpi_max(st != GPT2_OK) && st == GPT2_OK) /* every rank stops at the same batch size */
            st = gpt2_fail(&err, GPT2_ERR_ABORTED, "batch %d: another rank failed", a.batch[n_done]);
        if (st != GPT2_OK) {
            cli_report("bench", &err);
            failure = err.msg;
            break;
        }
    }
    double agg[3 * MAX_BATCHES];
    mpi_aggregate(&a, res, n_done, agg);
    if (cli_mpi_rank() > 0) { /* rank 0 reports for all */
        rc = failure ? 1 : 0;
        goto out;
    }
    const char *be_name = n_done > 0 ? res[0].backend : c.device;
    double load_s = load_model_s + (n_done > 0 ? res[0].create_s : 0);
    if (n_done > 0) print_table(&c, &a, m, be_name, load_model_s, load_s, res, n_done);
    if (n_done > 0 && cli_mpi_size() > 1) print_aggregate(&a, res, n_done, agg);
    if (fflush(stdout)) goto out;
    if (jf) {
        root = results_json(&c, &a, m, be_name, load_model_s, load_s, res, n_done, failure);
        if (root && cli_mpi_size() > 1) add_aggregate_json(root, res, n_done, agg);
        if (!root || json_dumpf(root, jf, JSON_INDENT(2)) || fputc('\n', jf) == EOF) {
            fprintf(stderr, "gpt2 bench: --json %s: write failed\n", a.json_path);
            goto out;
        }
    }
    if (failure) goto out;
    rc = 0;
out:
    if (jf && fclose(jf) && rc == 0) {
        fprintf(stderr, "gpt2 bench: --json %s: write failed\n", a.json_path);
        rc = 1;
    }
    /* No results, or a failed write: leave no empty or torn file behind. */
    if (jf && (!root || (rc && !failure))) remove(a.json_path);
    json_decref(root);
    if (res)
        for (int i = 0; i < a.n_batch; i++) free(res[i].seq0);
    free(res);
    free(prompts);
    gpt2_model_free(m);
    gpt2_tokenizer_free(tok);
    cli_mpi_end();
    return rc;
}
