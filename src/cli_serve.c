/* cli_serve.c: `gpt2 serve`, an OpenAI-compatible HTTP server (POST /v1/completions, GET /v1/models,
 * /health, /metrics) over one engine.
 *
 * Threads: libmicrohttpd runs one thread per connection (its HTTP parser; we write none), which
 * parses the request, submits one engine request per choice (gpt2_engine_submit is thread-safe) and
 * then waits: for the whole answer (non-streaming) or, in the response's content reader, for the
 * next server-sent event. One step thread calls gpt2_engine_step in a loop: the engine's own
 * continuous-batching scheduler admits new requests into free slots at each step. The engine's
 * callbacks run on the step thread and append to the request's state under the server lock, then wake
 * the connection's thread. A waiting connection thread checks its socket for a hang-up every 50 ms,
 * and cancels its engine requests when the client has gone. SIGTERM/SIGINT (sigwait on the main
 * thread): stop accepting, let what runs finish until the drain deadline, cancel the rest, exit 0. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifndef GPT2_HAVE_MHD

int cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "gpt2 serve: not built in (libmicrohttpd was not found at build time; run `make deps` and "
                    "rebuild)\n");
    return 1;
}

#else

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "serve_req.h"
#include "util.h"

enum {
    OPT_HOST = 4000, OPT_PORT, OPT_SLOTS, OPT_API_KEY, OPT_MAX_QUEUE, OPT_MAX_BODY, OPT_DRAIN, OPT_TIMEOUT,
    OPT_MAX_CONN, OPT_STEP_DELAY, OPT_NAME, OPT_MAX_SEQ
};

static const char HELP[] =
    "usage: gpt2 serve --model DIR [options]\n"
    "An OpenAI-compatible HTTP server: POST /v1/completions (stream: server-sent events), GET /v1/models,\n"
    "GET /health, GET /metrics (Prometheus). Prints \"listening on http://HOST:PORT\" on stdout once ready.\n"
    "SIGTERM or SIGINT: stop accepting, finish the running requests (until --drain-timeout), exit 0.\n"
    "  --host ADDR           address to listen on (default 127.0.0.1: loopback only)\n"
    "  --port N              TCP port (default 8000; 0: any free port)\n"
    "  --max-slots N         sequences decoded together (default: 8 on cpu, 64 on cuda)\n"
    "  --max-seq N           positions per sequence (default: the model's context)\n"
    "  --api-key KEY         require 'Authorization: Bearer KEY' on every request (else 401)\n"
    "  --max-queue N         sequences that may wait for a slot; beyond that 429 (default 1024)\n"
    "  --max-body BYTES      largest request body; beyond that 413 (default 1048576)\n"
    "  --max-connections N   open connections at once (default 1024)\n"
    "  --timeout S           close a connection idle (or not reading) for S seconds (default 60)\n"
    "  --drain-timeout S     on SIGTERM, how long running requests may take to finish (default 30)\n"
    "  --served-model-name NAME  the model's id in the API (default: the model directory's name)\n"
    "  --step-delay-ms N     pause N ms after each engine step (testing: makes requests last long enough\n"
    "                        to watch queueing, cancelling and draining; default 0)\n" CLI_COMMON_HELP;

typedef struct {
    const char *host, *api_key, *name;
    long port, slots, max_seq, max_queue, max_body, max_conn, timeout_s, step_delay_ms;
    double drain_s;
} serve_args;

static int serve_option(int opt, const char *arg, void *ctx) {
    serve_args *a = ctx;
    switch (opt) {
    case OPT_HOST: a->host = arg; return 1;
    case OPT_API_KEY:
        if (!*arg) {
            fprintf(stderr, "gpt2 serve: --api-key must not be empty\n");
            return -1;
        }
        a->api_key = arg;
        return 1;
    case OPT_NAME:
        if (!*arg || strlen(arg) > 256) {
            fprintf(stderr, "gpt2 serve: --served-model-name must be 1..256 bytes\n");
            return -1;
        }
        a->name = arg;
        return 1;
    case OPT_PORT: return cli_parse_int("serve", "--port", arg, 0, 65535, &a->port) ? -1 : 1;
    case OPT_SLOTS: return cli_parse_int("serve", "--max-slots", arg, 1, 4096, &a->slots) ? -1 : 1;
    case OPT_MAX_SEQ: return cli_parse_int("serve", "--max-seq", arg, 2, 1 << 20, &a->max_seq) ? -1 : 1;
    case OPT_MAX_QUEUE: return cli_parse_int("serve", "--max-queue", arg, 0, 1 << 24, &a->max_queue) ? -1 : 1;
    case OPT_MAX_BODY: return cli_parse_int("serve", "--max-body", arg, 64, 1L << 30, &a->max_body) ? -1 : 1;
    case OPT_MAX_CONN: return cli_parse_int("serve", "--max-connections", arg, 1, 65536, &a->max_conn) ? -1 : 1;
    case OPT_TIMEOUT: return cli_parse_int("serve", "--timeout", arg, 1, 86400, &a->timeout_s) ? -1 : 1;
    case OPT_STEP_DELAY: return cli_parse_int("serve", "--step-delay-ms", arg, 0, 10000, &a->step_delay_ms) ? -1 : 1;
    case OPT_DRAIN: return cli_parse_float("serve", "--drain-timeout", arg, 0, 86400, &a->drain_s) ? -1 : 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* State                                                                                           */

/* Prometheus histogram with fixed buckets (seconds). */
#define N_BUCKETS 12
typedef struct {
    const double *le; /* (N_BUCKETS) upper bounds; +Inf is implicit */
    uint64_t count[N_BUCKETS + 1];
    double sum;
} histogram;
static const double TTFT_LE[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
static const double TPOT_LE[N_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

static void hist_add(histogram *h, double v) {
    int i = 0;
    while (i < N_BUCKETS && v > h->le[i]) i++;
    h->count[i]++;
    h->sum += v;
}

static const int STATUS_CODES[] = {200, 400, 401, 404, 405, 413, 429, 500, 503};
enum { N_STATUS = sizeof STATUS_CODES / sizeof STATUS_CODES[0] };

typedef struct http_req http_req;

/* One choice: one engine request. Everything here is guarded by the server lock. */
typedef struct {
    http_req *hr;
    int index, prompt_index;
    gpt2_request_id id;  /* 0 until submitted */
    int started;         /* its first token came */
    int finished;        /* its FINISH event came (or it was never submitted) */
    gpt2_finish finish;
    char *error;         /* GPT2_FINISH_ERROR's message */
    int prompt_tokens;
    char *text;          /* output bytes so far (TEXT events), then the whole output (FINISH) */
    size_t n_text, cap_text;
    int *tokens;         /* (cap_tok) generated ids (TOKEN events, then FINISH's) */
    float *lps;          /* (cap_tok) their logprobs */
    int n_tok, cap_tok, n_tok_sent; /* n_tok_sent: tokens whose logprobs a stream chunk carried */
    int *top_ids;        /* (cap_tok, n_top) the most likely tokens at each step ("logprobs": n_top > 0) */
    float *top_lps;      /* (cap_tok, n_top) */
    int n_top_have;      /* tokens whose alternatives came (TOKEN events) */
    int *p_ids;          /* echo with logprobs: (n_p) the prompt's ids (the PROMPT event) */
    float *p_lps;        /* (n_p) log p(prompt[i] | prompt[..i]); [0] NAN */
    int *p_top_ids;      /* (n_p, n_top) */
    float *p_top_lps;    /* (n_p, n_top) */
    int n_p;
    double t_last;       /* time of the last token */
} seq;

struct http_req {
    struct server *srv;
    struct MHD_Connection *conn;
    int fd;              /* the client's socket (hang-up checks while waiting) */
    int refs;            /* the connection's, the stream response's, one per unfinished submitted seq */
    pthread_cond_t cond; /* a seq changed (under the server lock) */
    int route;           /* ROUTE_* */
    int answered;        /* a response is queued */
    char *body;
    size_t n_body, cap_body;
    serve_request req;
    seq *seqs;           /* (n_seqs) prompt-major: choice index = prompt * n + j */
    int n_seqs, n_unfinished;
    int gone;            /* the client hung up (or the server gave up): cancel, answer nothing */
    char *sse;           /* stream: events not yet sent */
    size_t n_sse, cap_sse, sent;
    int sse_done;        /* the last event is in sse */
    char cmpl_id[40];
    long long created;
    double t0;
    http_req *prev, *next; /* the server's list of requests alive */
};

enum { ROUTE_NONE = 0, ROUTE_COMPLETIONS };

typedef struct server {
    gpt2_engine *engine;
    const char *model_name;
    const char *api_key;
    size_t max_body;
    unsigned timeout_s;   /* --timeout: a connection idle (or not reading) this long is closed */
    int max_queue, max_slots, max_logprobs, eot;
    long step_delay_ms;
    pthread_mutex_t lock;
    pthread_cond_t work;  /* step thread: a sequence was submitted, or quit */
    int live;             /* sequences submitted, not finished */
    int queued, active, active_peak; /* live = queued (no token yet) + active */
    int draining, quit, broken;
    http_req *reqs;       /* every request alive (the drain deadline cancels them) */
    char broken_msg[256];
    long long created;
    /* metrics */
    uint64_t status_count[N_STATUS], tokens_in, tokens_out, cancelled, requests;
    histogram ttft, tpot;
} server;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t random_u64(void) {
    uint64_t v;
    if (getrandom(&v, sizeof v, 0) == (ssize_t)sizeof v) return v;
    static uint64_t counter;
    return (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() ^ ++counter; /* no entropy: unique */
}

/* Grows *buf to hold n + more bytes. 0 ok, -1 out of memory or overflow. */
static int grow(char **buf, size_t *cap, size_t n, size_t more) {
    size_t need;
    if (gpt2_add_size(n, more, &need) || gpt2_add_size(need, 1, &need)) return -1;
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        if (gpt2_mul_size(c, 2, &c)) return -1;
    char *p = realloc(*buf, c);
    if (!p) return -1;
    *buf = p;
    *cap = c;
    return 0;
}

static void hr_unref_locked(http_req *hr) {
    if (--hr->refs > 0) return;
    if (hr->prev) hr->prev->next = hr->next;
    else hr->srv->reqs = hr->next;
    if (hr->next) hr->next->prev = hr->prev;
    for (int i = 0; i < hr->n_seqs; i++) {
        free(hr->seqs[i].text);
        free(hr->seqs[i].tokens);
        free(hr->seqs[i].lps);
        free(hr->seqs[i].error);
        free(hr->seqs[i].top_ids);
        free(hr->seqs[i].top_lps);
        free(hr->seqs[i].p_ids);
        free(hr->seqs[i].p_lps);
        free(hr->seqs[i].p_top_ids);
        free(hr->seqs[i].p_top_lps);
    }
    free(hr->seqs);
    free(hr->body);
    free(hr->sse);
    serve_request_free(&hr->req);
    pthread_cond_destroy(&hr->cond);
    free(hr);
}

/* Cancels the engine requests of hr that still run (server lock held; the engine's lock comes after
 * ours, never the other way round: its callbacks run without it). */
static void hr_cancel_locked(http_req *hr) {
    for (int i = 0; i < hr->n_seqs; i++)
        if (hr->seqs[i].id && !hr->seqs[i].finished) gpt2_engine_cancel(hr->srv->engine, hr->seqs[i].id, NULL);
}

/* 1 when the client closed its end or the socket failed (only called once the body has been read:
 * any byte still waiting is the next request, a live client). */
static int peer_gone(int fd) {
    if (fd < 0) return 0;
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* While a connection waits for the engine (in a queue, or for its next token), it is not idle: MHD's
 * timeout is off then (0), and back on (which restarts its timer) once there is something to send,
 * so that it only ever measures the client. Called on the connection's own thread. */
static void conn_waiting(http_req *hr, int waiting) {
    MHD_set_connection_option(hr->conn, MHD_CONNECTION_OPTION_TIMEOUT, waiting ? 0u : hr->srv->timeout_s);
}

static void wait_50ms(pthread_cond_t *cond, pthread_mutex_t *lock) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += 50 * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cond, lock, &t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Responses                                                                                       */

static int status_slot(int code) {
    for (int i = 0; i < N_STATUS; i++)
        if (STATUS_CODES[i] == code) return i;
    return -1;
}

static enum MHD_Result respond(server *srv, http_req *hr, struct MHD_Connection *c, int code, const char *type,
                               char *body, size_t n) {
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)code, r);
    MHD_destroy_response(r);
    pthread_mutex_lock(&srv->lock);
    int k = status_slot(code);
    if (k >= 0) srv->status_count[k]++;
    pthread_mutex_unlock(&srv->lock);
    if (hr) hr->answered = 1;
    return ok;
}

static enum MHD_Result respond_json(server *srv, http_req *hr, struct MHD_Connection *c, int code, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return respond(srv, hr, c, code, "application/json", s, s ? strlen(s) : 0);
}

static enum MHD_Result respond_error(server *srv, http_req *hr, struct MHD_Connection *c, const serve_error *e) {
    char *s = serve_error_json(e);
    return respond(srv, hr, c, e->http_status, "application/json", s, s ? strlen(s) : 0);
}

static enum MHD_Result fail(server *srv, http_req *hr, struct MHD_Connection *c, int code, const char *type,
                            const char *param, const char *err_code, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
static enum MHD_Result fail(server *srv, http_req *hr, struct MHD_Connection *c, int code, const char *type,
                            const char *param, const char *err_code, const char *fmt, ...) {
    serve_error e;
    char msg[sizeof e.msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    serve_fail(&e, code, type, param, "%s", msg);
    if (err_code) snprintf(e.code, sizeof e.code, "%s", err_code);
    return respond_error(srv, hr, c, &e);
}

/* A JSON string of raw bytes (invalid UTF-8 replaced). */
static json_t *json_bytes(const char *s, size_t n) {
    size_t k;
    char *clean = gpt2_utf8_clean(s, n, &k);
    json_t *j = clean ? json_stringn(clean, k) : NULL;
    free(clean);
    return j;
}

/* {token string: logprob} of one position's alternatives. */
static json_t *top_json(gpt2_tokenizer *tok, const int *ids, const float *lps, int k) {
    json_t *o = json_object();
    for (int i = 0; o && i < k; i++) {
        const char *b = "";
        size_t n = 0;
        gpt2_token_bytes(tok, ids[i], &b, &n, NULL);
        char *ts = serve_token_string(b, n);
        if (ts) json_object_set_new(o, ts, isfinite(lps[i]) ? json_real(lps[i]) : json_real(-9999.0));
        free(ts);
    }
    return o;
}

/* One position into OpenAI's four "logprobs" lists; *off advances by the token's code points. */
static void logprob_append(json_t *lists[4], gpt2_tokenizer *tok, int id, float lp, json_t *top, size_t *off) {
    const char *b = "";
    size_t n = 0;
    gpt2_token_bytes(tok, id, &b, &n, NULL);
    char *ts = serve_token_string(b, n);
    json_array_append_new(lists[0], ts ? json_string(ts) : json_null());
    free(ts);
    json_array_append_new(lists[1], isfinite(lp) ? json_real(lp) : json_null());
    if (lists[2]) json_array_append_new(lists[2], top ? top : json_null());
    else json_decref(top);
    json_array_append_new(lists[3], json_integer((json_int_t)*off));
    *off += serve_utf8_chars(b, n);
}

/* OpenAI's "logprobs" object for tokens [from, to) of s, after the echoed prompt's tokens when
 * with_prompt; offsets count code points from the start of the choice's text (echo included). */
static json_t *logprobs_json(server *srv, const http_req *hr, const seq *s, int from, int to, int with_prompt,
                             size_t base_chars) {
    gpt2_tokenizer *tok = gpt2_engine_tokenizer(srv->engine);
    int k = hr->req.logprobs > 0 ? hr->req.logprobs : 0;
    json_t *lists[4] = {json_array(), json_array(), k ? json_array() : NULL, json_array()};
    size_t off = 0;
    if (with_prompt)
        for (int i = 0; i < s->n_p; i++) /* the first prompt token has no context: null, as OpenAI */
            logprob_append(lists, tok, s->p_ids[i], i ? s->p_lps[i] : NAN,
                           k && i ? top_json(tok, s->p_top_ids + (size_t)i * (size_t)k,
                                             s->p_top_lps + (size_t)i * (size_t)k, k)
                                  : NULL,
                           &off);
    off = base_chars;
    for (int i = 0; i < from; i++) { /* code points of the output before token `from` */
        const char *b;
        size_t n;
        if (gpt2_token_bytes(tok, s->tokens[i], &b, &n, NULL) == GPT2_OK) off += serve_utf8_chars(b, n);
    }
    for (int i = from; i < to; i++)
        logprob_append(lists, tok, s->tokens[i], s->lps[i],
                       k ? (i < s->n_top_have ? top_json(tok, s->top_ids + (size_t)i * (size_t)k,
                                                         s->top_lps + (size_t)i * (size_t)k, k)
                                              : json_object())
                         : NULL,
                       &off);
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", lists[0], "token_logprobs", lists[1], "top_logprobs",
                     lists[2] ? lists[2] : json_null(), "text_offset", lists[3]);
}

/* The prompt text to echo for choice s: the prompt as given, or its ids decoded. malloc'ed. */
static char *echo_text(server *srv, const serve_prompt *p, size_t *n) {
    if (p->text) {
        char *t = malloc(p->n_text + 1);
        if (t) memcpy(t, p->text, p->n_text + 1);
        *n = p->n_text;
        return t;
    }
    char *t = NULL;
    if (gpt2_decode(gpt2_engine_tokenizer(srv->engine), p->ids, (size_t)p->n_ids, &t, n, NULL) != GPT2_OK) return NULL;
    return t;
}

static json_t *usage_json(const http_req *hr) {
    long long prompt = 0, completion = 0;
    for (int i = 0; i < hr->n_seqs; i++) {
        if (i % hr->req.n == 0) prompt += hr->seqs[i].prompt_tokens; /* a prompt counts once, as OpenAI */
        completion += hr->seqs[i].n_tok;
    }
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)completion, "total_tokens", (json_int_t)(prompt + completion));
}

/* The whole non-streaming answer (server lock held). */
static json_t *completion_json(server *srv, http_req *hr) {
    json_t *choices = json_array();
    for (int i = 0; i < hr->n_seqs && choices; i++) {
        seq *s = &hr->seqs[i];
        size_t n_echo = 0;
        char *echo = hr->req.echo ? echo_text(srv, &hr->req.prompts[s->prompt_index], &n_echo) : NULL;
        if (hr->req.echo && !echo) {
            json_decref(choices);
            return NULL;
        }
        size_t n_all;
        char *all = NULL;
        if (!gpt2_add_size(n_echo, s->n_text, &n_all) && (all = malloc(n_all + 1))) {
            if (n_echo) memcpy(all, echo, n_echo);
            if (s->n_text) memcpy(all + n_echo, s->text, s->n_text);
        }
        json_t *text = all ? json_bytes(all, n_all) : NULL;
        size_t base = echo ? serve_utf8_chars(echo, n_echo) : 0;
        free(all);
        free(echo);
        json_t *lp = hr->req.logprobs >= 0 ? logprobs_json(srv, hr, s, 0, s->n_tok, hr->req.echo, base) : json_null();
        json_array_append_new(choices, json_pack("{s:i, s:o, s:o, s:s}", "index", s->index, "text", text, "logprobs",
                                                 lp, "finish_reason", gpt2_finish_name(s->finish)));
    }
    return json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", hr->cmpl_id, "object", "text_completion", "created",
                     (json_int_t)hr->created, "model", srv->model_name, "choices", choices, "usage", usage_json(hr));
}

/* Appends one server-sent event "data: JSON\n\n" (server lock held). 0 ok, -1 out of memory. */
static int sse_event(http_req *hr, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return -1;
    size_t n = strlen(s);
    int rc = grow(&hr->sse, &hr->cap_sse, hr->n_sse, n + 8);
    if (!rc) hr->n_sse += (size_t)sprintf(hr->sse + hr->n_sse, "data: %s\n\n", s);
    free(s);
    return rc;
}

static json_t *chunk_json(server *srv, http_req *hr, json_t *choice) {
    return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", hr->cmpl_id, "object", "text_completion", "created",
                     (json_int_t)hr->created, "model", srv->model_name, "choices", choice);
}

static void sse_error(http_req *hr, int code, const char *type, const char *msg) {
    serve_error e;
    serve_fail(&e, code, type, NULL, "%s", msg);
    char *s = serve_error_json(&e);
    if (s && !grow(&hr->sse, &hr->cap_sse, hr->n_sse, strlen(s) + 8))
        hr->n_sse += (size_t)sprintf(hr->sse + hr->n_sse, "data: %s\n\n", s);
    free(s);
}

/* ---------------------------------------------------------------------------------------------- */
/* Engine events (step thread)                                                                     */

/* A stream chunk for choice s: text bytes and the logprobs of its tokens not yet sent. */
static int sse_text(server *srv, http_req *hr, seq *s, const char *text, size_t n, const char *finish) {
    json_t *lp = json_null();
    if (hr->req.logprobs >= 0 && s->n_tok > s->n_tok_sent) {
        lp = logprobs_json(srv, hr, s, s->n_tok_sent, s->n_tok, 0, 0);
        s->n_tok_sent = s->n_tok;
    }
    json_t *choice = json_pack("{s:i, s:o, s:o, s:s?}", "index", s->index, "text", json_bytes(text, n), "logprobs",
                               lp, "finish_reason", finish);
    return sse_event(hr, chunk_json(srv, hr, choice));
}

/* Appends a generated token (and its n_top alternatives, when top_ids is not NULL). 0 ok, -1 out of memory. */
static int add_token(seq *s, int token, float lp, int n_top, const int *top_ids, const float *top_lps) {
    if (s->n_tok == s->cap_tok) {
        int c = s->cap_tok ? s->cap_tok * 2 : 64;
        size_t n_alt;
        if (c > SERVE_MAX_TOKENS * 2 || gpt2_mul_size((size_t)c, (size_t)(n_top > 0 ? n_top : 1), &n_alt)) return -1;
        int *t = realloc(s->tokens, sizeof(int) * (size_t)c);
        if (t) s->tokens = t;
        float *l = t ? realloc(s->lps, sizeof(float) * (size_t)c) : NULL;
        if (l) s->lps = l;
        if (!l) return -1;
        if (n_top > 0) {
            int *ti = realloc(s->top_ids, sizeof(int) * n_alt);
            if (ti) s->top_ids = ti;
            float *tl = ti ? realloc(s->top_lps, sizeof(float) * n_alt) : NULL;
            if (tl) s->top_lps = tl;
            if (!tl) return -1;
        }
        s->cap_tok = c;
    }
    if (n_top > 0 && top_ids && s->n_top_have == s->n_tok) {
        memcpy(s->top_ids + (size_t)s->n_tok * (size_t)n_top, top_ids, sizeof(int) * (size_t)n_top);
        memcpy(s->top_lps + (size_t)s->n_tok * (size_t)n_top, top_lps, sizeof(float) * (size_t)n_top);
        s->n_top_have++;
    }
    s->tokens[s->n_tok] = token;
    s->lps[s->n_tok++] = lp;
    return 0;
}

/* Keeps the PROMPT event's ids, logprobs and alternatives (echo with logprobs). 0 ok, -1 out of memory. */
static int keep_prompt(seq *s, const gpt2_event *ev, int k) {
    size_t n = (size_t)ev->n_tokens, nk;
    if (n == 0 || gpt2_mul_size(n, (size_t)k, &nk)) return -1;
    s->p_ids = malloc(sizeof(int) * n);
    s->p_lps = malloc(sizeof(float) * n);
    s->p_top_ids = malloc(sizeof(int) * (nk ? nk : 1));
    s->p_top_lps = malloc(sizeof(float) * (nk ? nk : 1));
    if (!s->p_ids || !s->p_lps || !s->p_top_ids || !s->p_top_lps) return -1;
    memcpy(s->p_ids, ev->tokens, sizeof(int) * n);
    memcpy(s->p_lps, ev->logprobs, sizeof(float) * n);
    if (nk && ev->n_top == k && ev->top_ids && ev->top_logprobs) {
        memcpy(s->p_top_ids, ev->top_ids, sizeof(int) * nk);
        memcpy(s->p_top_lps, ev->top_logprobs, sizeof(float) * nk);
    } else if (nk) {
        return -1;
    }
    s->n_p = (int)n;
    return 0;
}

static void seq_finished_locked(server *srv, http_req *hr, seq *s) {
    s->finished = 1;
    if (s->started) srv->active--;
    else srv->queued--;
    srv->live--;
    hr->n_unfinished--;
    if (s->finish == GPT2_FINISH_CANCELLED) srv->cancelled++;
    if (hr->req.stream && !hr->gone && !hr->sse_done) {
        if (s->finish == GPT2_FINISH_ERROR) {
            sse_error(hr, 500, "server_error", s->error ? s->error : "generation failed");
            hr->sse_done = 1;
        } else if (s->finish == GPT2_FINISH_CANCELLED) {
            sse_error(hr, 503, "server_error", "the server is shutting down");
            hr->sse_done = 1;
        } else if (sse_text(srv, hr, s, "", 0, gpt2_finish_name(s->finish))) {
            hr->sse_done = 1;
        }
        if (!hr->sse_done && hr->n_unfinished == 0) {
            if (hr->req.include_usage)
                sse_event(hr, json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", hr->cmpl_id, "object",
                                        "text_completion", "created", (json_int_t)hr->created, "model",
                                        srv->model_name, "choices", "usage", usage_json(hr)));
            hr->sse_done = 1;
        }
        if (hr->sse_done && !grow(&hr->sse, &hr->cap_sse, hr->n_sse, 16))
            hr->n_sse += (size_t)sprintf(hr->sse + hr->n_sse, "data: [DONE]\n\n");
    }
}

static int on_event(const gpt2_event *ev) {
    seq *s = ev->user;
    http_req *hr = s->hr;
    server *srv = hr->srv;
    double t = now_s();
    pthread_mutex_lock(&srv->lock);
    int oom = 0;
    if (ev->kind == GPT2_EVENT_TOKEN) {
        if (!s->started) {
            s->started = 1;
            srv->queued--;
            if (++srv->active > srv->active_peak) srv->active_peak = srv->active;
            hist_add(&srv->ttft, t - hr->t0);
        } else {
            hist_add(&srv->tpot, t - s->t_last);
        }
        s->t_last = t;
        srv->tokens_out++;
        int k = hr->req.logprobs > 0 ? hr->req.logprobs : 0;
        oom = add_token(s, ev->token, ev->logprob, k, ev->n_top == k ? ev->top_ids : NULL, ev->top_logprobs);
    } else if (ev->kind == GPT2_EVENT_PROMPT) {
        oom = keep_prompt(s, ev, hr->req.logprobs > 0 ? hr->req.logprobs : 0);
        if (!oom && hr->req.stream && !hr->gone && !hr->sse_done) { /* the echo chunk, with its logprobs */
            size_t n;
            char *et = echo_text(srv, &hr->req.prompts[s->prompt_index], &n);
            json_t *lp = logprobs_json(srv, hr, s, 0, 0, 1, 0);
            oom = !et || sse_event(hr, chunk_json(srv, hr, json_pack("{s:i, s:o, s:o, s:n}", "index", s->index, "text",
                                                                    json_bytes(et, n), "logprobs", lp,
                                                                    "finish_reason")));
            free(et);
        }
    } else if (ev->kind == GPT2_EVENT_TEXT) {
        oom = grow(&s->text, &s->cap_text, s->n_text, ev->n_text);
        if (!oom) {
            memcpy(s->text + s->n_text, ev->text, ev->n_text);
            s->n_text += ev->n_text;
            if (hr->req.stream && !hr->gone && !hr->sse_done) oom = sse_text(srv, hr, s, ev->text, ev->n_text, NULL);
        }
    } else if (ev->kind == GPT2_EVENT_FINISH) {
        s->finish = ev->finish;
        s->prompt_tokens = ev->prompt_tokens;
        srv->tokens_in += (uint64_t)ev->prompt_tokens;
        if (ev->error) s->error = strdup(ev->error);
        /* the FINISH event's output is the authoritative one: bytes still held back (the end of the
         * output) and the final token list */
        if (ev->n_text > s->n_text && !grow(&s->text, &s->cap_text, 0, ev->n_text)) {
            size_t old = s->n_text;
            memcpy(s->text, ev->text, ev->n_text);
            s->n_text = ev->n_text;
            if (hr->req.stream && !hr->gone && !hr->sse_done && s->finish != GPT2_FINISH_ERROR)
                oom = sse_text(srv, hr, s, s->text + old, s->n_text - old, NULL);
        }
        if (ev->n_tokens <= s->n_tok) s->n_tok = ev->n_tokens;
        if (s->n_top_have > s->n_tok) s->n_top_have = s->n_tok;
        for (int i = 0; i < ev->n_tokens; i++) {
            if (i < s->n_tok) {
                s->tokens[i] = ev->tokens[i];
                if (ev->logprobs) s->lps[i] = ev->logprobs[i];
            } else if (add_token(s, ev->tokens[i], ev->logprobs ? ev->logprobs[i] : NAN, 0, NULL, NULL)) {
                oom = 1;
                break;
            }
        }
        if (s->n_tok_sent > s->n_tok) s->n_tok_sent = s->n_tok;
        seq_finished_locked(srv, hr, s);
        pthread_cond_broadcast(&hr->cond);
        hr_unref_locked(hr); /* may free hr: touch nothing after */
        pthread_mutex_unlock(&srv->lock);
        return 0;
    }
    if (oom) { /* out of memory for this request's output: give it up, keep the server */
        fprintf(stderr, "gpt2 serve: out of memory for the output of %s; cancelling it\n", hr->cmpl_id);
        hr->gone = 1;
        hr_cancel_locked(hr);
    }
    pthread_cond_broadcast(&hr->cond);
    pthread_mutex_unlock(&srv->lock);
    return 0;
}

static void *step_thread(void *arg) {
    server *srv = arg;
    gpt2_error err = {0};
    int failures = 0;
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        while (srv->live == 0 && !srv->quit) pthread_cond_wait(&srv->work, &srv->lock);
        int quit = srv->quit;
        pthread_mutex_unlock(&srv->lock);
        if (quit) break;
        int busy = 0;
        gpt2_status st = gpt2_engine_step(srv->engine, &busy, &err);
        if (st != GPT2_OK) {
            fprintf(stderr, "gpt2 serve: engine step failed: %s\n", err.msg);
            if (++failures >= 3) { /* not a passing fault: refuse new work, fail what runs */
                pthread_mutex_lock(&srv->lock);
                srv->broken = 1;
                snprintf(srv->broken_msg, sizeof srv->broken_msg, "%.200s", err.msg);
                for (http_req *hr = srv->reqs; hr; hr = hr->next) { /* their answers: errors, now */
                    if (hr->req.stream && hr->n_unfinished > 0 && !hr->gone && !hr->sse_done) {
                        sse_error(hr, 500, "server_error", srv->broken_msg);
                        hr->sse_done = 1;
                        if (!grow(&hr->sse, &hr->cap_sse, hr->n_sse, 16))
                            hr->n_sse += (size_t)sprintf(hr->sse + hr->n_sse, "data: [DONE]\n\n");
                    }
                    pthread_cond_broadcast(&hr->cond);
                }
                pthread_mutex_unlock(&srv->lock);
                break;
            }
            usleep(100000);
            continue;
        }
        failures = 0;
        if (srv->step_delay_ms > 0) usleep((useconds_t)srv->step_delay_ms * 1000u);
        /* our count of live sequences also covers requests whose FINISH is still to come; an idle
         * engine with live > 0 can only be a cancelled request finishing at this very step */
        if (busy == 0) {
            pthread_mutex_lock(&srv->lock);
            int live = srv->live;
            pthread_mutex_unlock(&srv->lock);
            if (live > 0) usleep(1000);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* HTTP                                                                                            */

/* Constant-time comparison of the Authorization header with "Bearer KEY": the time depends on the
 * key's length only, not on how much of it a guess got right. */
static int auth_ok(const server *srv, struct MHD_Connection *c) {
    if (!srv->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    h += 7;
    size_t nh = strlen(h), nk = strlen(srv->api_key);
    volatile unsigned char d = nh != nk;
    for (size_t i = 0; i < nk; i++) d |= (unsigned char)((i < nh ? (unsigned char)h[i] : 0) ^ (unsigned char)srv->api_key[i]);
    return d == 0;
}

static enum MHD_Result get_models(server *srv, http_req *hr, struct MHD_Connection *c) {
    return respond_json(srv, hr, c, 200,
                        json_pack("{s:s, s:[{s:s, s:s, s:I, s:s}]}", "object", "list", "data", "id", srv->model_name,
                                  "object", "model", "created", (json_int_t)srv->created, "owned_by", "gpt2"));
}

static enum MHD_Result get_health(server *srv, http_req *hr, struct MHD_Connection *c) {
    pthread_mutex_lock(&srv->lock);
    int draining = srv->draining, broken = srv->broken;
    pthread_mutex_unlock(&srv->lock);
    if (broken) return fail(srv, hr, c, 503, "server_error", NULL, NULL, "the engine failed: %s", srv->broken_msg);
    if (draining) return fail(srv, hr, c, 503, "server_error", NULL, NULL, "the server is shutting down");
    return respond_json(srv, hr, c, 200, json_pack("{s:s}", "status", "ok"));
}

static int put_hist(char **b, size_t *cap, size_t *n, const char *name, const char *help, const histogram *h) {
    char line[256];
    int k = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    if (grow(b, cap, *n, (size_t)k)) return -1;
    memcpy(*b + *n, line, (size_t)k + 1);
    *n += (size_t)k;
    uint64_t cum = 0;
    for (int i = 0; i <= N_BUCKETS; i++) {
        cum += h->count[i];
        if (i < N_BUCKETS) k = snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
        else k = snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
                          (unsigned long long)cum, name, h->sum, name, (unsigned long long)cum);
        if (grow(b, cap, *n, (size_t)k)) return -1;
        memcpy(*b + *n, line, (size_t)k + 1);
        *n += (size_t)k;
    }
    return 0;
}

static enum MHD_Result get_metrics(server *srv, http_req *hr, struct MHD_Connection *c) {
    char *b = NULL, line[512];
    size_t cap = 0, n = 0;
    int bad = 0;
    pthread_mutex_lock(&srv->lock);
#define PUT(...)                                                                                                \
    do {                                                                                                        \
        int k_ = snprintf(line, sizeof line, __VA_ARGS__);                                                      \
        if (!bad && (bad = grow(&b, &cap, n, (size_t)k_)) == 0) {                                                \
            memcpy(b + n, line, (size_t)k_ + 1);                                                                \
            n += (size_t)k_;                                                                                    \
        }                                                                                                       \
    } while (0)
    PUT("# HELP gpt2_http_responses_total HTTP responses sent, by status code.\n"
        "# TYPE gpt2_http_responses_total counter\n");
    for (int i = 0; i < N_STATUS; i++)
        PUT("gpt2_http_responses_total{code=\"%d\"} %llu\n", STATUS_CODES[i], (unsigned long long)srv->status_count[i]);
    PUT("# HELP gpt2_requests_total Completion requests accepted (submitted to the engine).\n"
        "# TYPE gpt2_requests_total counter\ngpt2_requests_total %llu\n", (unsigned long long)srv->requests);
    PUT("# HELP gpt2_prompt_tokens_total Prompt tokens of finished sequences.\n"
        "# TYPE gpt2_prompt_tokens_total counter\ngpt2_prompt_tokens_total %llu\n", (unsigned long long)srv->tokens_in);
    PUT("# HELP gpt2_generation_tokens_total Tokens generated.\n"
        "# TYPE gpt2_generation_tokens_total counter\ngpt2_generation_tokens_total %llu\n",
        (unsigned long long)srv->tokens_out);
    PUT("# HELP gpt2_sequences_cancelled_total Sequences cancelled (client gone, or the drain deadline).\n"
        "# TYPE gpt2_sequences_cancelled_total counter\ngpt2_sequences_cancelled_total %llu\n",
        (unsigned long long)srv->cancelled);
    PUT("# HELP gpt2_queue_length Sequences submitted that have no token yet (waiting for a slot, or prefilling).\n"
        "# TYPE gpt2_queue_length gauge\ngpt2_queue_length %d\n", srv->queued);
    PUT("# HELP gpt2_active_slots Sequences generating now (first token seen, not finished).\n"
        "# TYPE gpt2_active_slots gauge\ngpt2_active_slots %d\n", srv->active);
    PUT("# HELP gpt2_active_slots_peak The most sequences generating at once since the start.\n"
        "# TYPE gpt2_active_slots_peak gauge\ngpt2_active_slots_peak %d\n", srv->active_peak);
    PUT("# HELP gpt2_max_slots Sequences the engine decodes together.\n"
        "# TYPE gpt2_max_slots gauge\ngpt2_max_slots %d\n", srv->max_slots);
    if (!bad) bad = put_hist(&b, &cap, &n, "gpt2_time_to_first_token_seconds",
                             "From the request's submission to its first token.", &srv->ttft);
    if (!bad) bad = put_hist(&b, &cap, &n, "gpt2_time_per_output_token_seconds",
                             "Between consecutive tokens of one sequence.", &srv->tpot);
#undef PUT
    pthread_mutex_unlock(&srv->lock);
    if (bad) {
        free(b);
        return MHD_NO;
    }
    return respond(srv, hr, c, 200, "text/plain; version=0.0.4", b, n);
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    http_req *hr = cls;
    server *srv = hr->srv;
    int waiting = 0;
    pthread_mutex_lock(&srv->lock);
    for (;;) {
        if (hr->sent < hr->n_sse) {
            size_t k = hr->n_sse - hr->sent < max ? hr->n_sse - hr->sent : max;
            memcpy(buf, hr->sse + hr->sent, k);
            hr->sent += k;
            if (hr->sent == hr->n_sse) hr->sent = hr->n_sse = 0;
            pthread_mutex_unlock(&srv->lock);
            if (waiting) conn_waiting(hr, 0);
            return (ssize_t)k;
        }
        if (hr->sse_done || hr->gone || srv->quit) break;
        if (!waiting) {
            pthread_mutex_unlock(&srv->lock);
            conn_waiting(hr, 1);
            waiting = 1;
            pthread_mutex_lock(&srv->lock);
            continue;
        }
        wait_50ms(&hr->cond, &srv->lock);
        if (hr->sent == hr->n_sse && !hr->sse_done && peer_gone(hr->fd)) {
            hr->gone = 1;
            hr_cancel_locked(hr);
        }
    }
    int ok = hr->sse_done && !hr->gone;
    pthread_mutex_unlock(&srv->lock);
    if (waiting) conn_waiting(hr, 0);
    return ok ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void sse_free(void *cls) {
    http_req *hr = cls;
    server *srv = hr->srv;
    pthread_mutex_lock(&srv->lock);
    hr_unref_locked(hr);
    pthread_mutex_unlock(&srv->lock);
}

static enum MHD_Result post_completions(server *srv, http_req *hr, struct MHD_Connection *c) {
    serve_error e;
    serve_request *q = &hr->req;
    if (serve_request_parse(hr->body ? hr->body : "", hr->n_body, srv->max_logprobs, q, &e))
        return respond_error(srv, hr, c, &e);
    if (strcmp(q->model, srv->model_name))
        return fail(srv, hr, c, 404, "invalid_request_error", "model", "model_not_found",
                    "The model '%.256s' does not exist; this server has '%s'", q->model, srv->model_name);
    int n_seqs = q->n_prompts * q->n;
    if (!(hr->seqs = calloc((size_t)n_seqs, sizeof *hr->seqs)))
        return fail(srv, hr, c, 500, "server_error", NULL, NULL, "out of memory");
    pthread_mutex_lock(&srv->lock);
    int draining = srv->draining, broken = srv->broken;
    int waiting = srv->live + n_seqs - srv->max_slots;
    int over = waiting > srv->max_queue;
    pthread_mutex_unlock(&srv->lock);
    if (broken) return fail(srv, hr, c, 503, "server_error", NULL, NULL, "the engine failed: %s", srv->broken_msg);
    if (draining) return fail(srv, hr, c, 503, "server_error", NULL, NULL, "the server is shutting down");
    if (over)
        return fail(srv, hr, c, 429, "rate_limit_error", NULL, "rate_limit_exceeded",
                    "too many requests waiting: %d sequences would wait for a slot, --max-queue is %d", waiting,
                    srv->max_queue);
    hr->n_seqs = n_seqs;
    hr->t0 = now_s();
    snprintf(hr->cmpl_id, sizeof hr->cmpl_id, "cmpl-%016llx", (unsigned long long)random_u64());
    hr->created = (long long)time(NULL);
    uint64_t base_seed = q->has_seed ? q->sampling.seed : random_u64();
    for (int i = 0; i < n_seqs; i++) {
        seq *s = &hr->seqs[i];
        s->hr = hr;
        s->index = i;
        s->prompt_index = i / q->n;
        s->finished = 1; /* until submitted */
    }
    if (q->stream && q->logprobs < 0) { /* the echoed prompts come first (with logprobs: at PROMPT events) */
        pthread_mutex_lock(&srv->lock);
        for (int i = 0; i < n_seqs && q->echo; i++) {
            size_t n;
            char *t = echo_text(srv, &q->prompts[hr->seqs[i].prompt_index], &n);
            if (t) sse_event(hr, chunk_json(srv, hr, json_pack("{s:i, s:o, s:n, s:n}", "index", i, "text",
                                                               json_bytes(t, n), "logprobs", "finish_reason")));
            free(t);
        }
        pthread_mutex_unlock(&srv->lock);
    }
    gpt2_error err = {0};
    int submitted = 0;
    gpt2_status st = GPT2_OK;
    for (int i = 0; i < n_seqs && st == GPT2_OK; i++) {
        seq *s = &hr->seqs[i];
        const serve_prompt *p = &q->prompts[s->prompt_index];
        gpt2_request r = {.max_tokens = q->max_tokens, .sampling = q->sampling,
                          .stop = (const char *const *)q->stop, .n_stop = q->n_stop, .logprobs = q->logprobs >= 0,
                          .top_logprobs = q->logprobs > 0 ? q->logprobs : 0, .echo = q->echo && q->logprobs >= 0,
                          .on_event = on_event, .user = s};
        r.sampling.seed = base_seed + (uint64_t)(i % q->n); /* choice j of every prompt: seed + j */
        if (p->is_empty) {
            r.prompt = &srv->eot;
            r.n_prompt = 1;
        } else if (p->ids) {
            r.prompt = p->ids;
            r.n_prompt = p->n_ids;
        } else {
            r.prompt_text = p->text;
            r.n_prompt_text = p->n_text;
        }
        pthread_mutex_lock(&srv->lock);
        s->finished = 0;
        hr->refs++;
        hr->n_unfinished++;
        srv->live++;
        srv->queued++;
        pthread_mutex_unlock(&srv->lock);
        gpt2_request_id id = 0;
        st = gpt2_engine_submit(srv->engine, &r, &id, &err);
        pthread_mutex_lock(&srv->lock);
        if (st == GPT2_OK) {
            s->id = id;
            submitted++;
            if (hr->gone) gpt2_engine_cancel(srv->engine, id, NULL);
            pthread_cond_signal(&srv->work);
        } else { /* never submitted: undo */
            s->finished = 1;
            hr->refs--;
            hr->n_unfinished--;
            srv->live--;
            srv->queued--;
        }
        pthread_mutex_unlock(&srv->lock);
    }
    if (st != GPT2_OK) {
        pthread_mutex_lock(&srv->lock);
        hr->gone = 1; /* what was submitted runs out cancelled, unseen */
        hr_cancel_locked(hr);
        pthread_mutex_unlock(&srv->lock);
        int limit = st == GPT2_ERR_LIMIT;
        int code = st == GPT2_ERR_ARG || limit ? 400 : 500;
        char param[32] = "";
        if (!strncmp(err.msg, "prompt", 6)) snprintf(param, sizeof param, "prompt");
        return fail(srv, hr, c, code, code == 400 ? "invalid_request_error" : "server_error", param,
                    limit ? "context_length_exceeded" : NULL, "%s%s", q->n_prompts > 1 ? "a prompt: " : "", err.msg);
    }
    pthread_mutex_lock(&srv->lock);
    srv->requests++;
    pthread_mutex_unlock(&srv->lock);
    (void)submitted;

    if (q->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_reader, hr, sse_free);
        if (!r) {
            pthread_mutex_lock(&srv->lock);
            hr->gone = 1;
            hr_cancel_locked(hr);
            pthread_mutex_unlock(&srv->lock);
            return MHD_NO;
        }
        pthread_mutex_lock(&srv->lock);
        hr->refs++; /* the response's, dropped by sse_free */
        pthread_mutex_unlock(&srv->lock);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ok = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        pthread_mutex_lock(&srv->lock);
        srv->status_count[status_slot(200)]++;
        pthread_mutex_unlock(&srv->lock);
        hr->answered = 1;
        return ok;
    }

    /* Not streaming: wait for every choice, watching the client. */
    conn_waiting(hr, 1);
    pthread_mutex_lock(&srv->lock);
    while (hr->n_unfinished > 0 && !hr->gone && !srv->quit && !srv->broken) {
        wait_50ms(&hr->cond, &srv->lock);
        if (hr->n_unfinished > 0 && peer_gone(hr->fd)) {
            hr->gone = 1;
            hr_cancel_locked(hr);
        }
    }
    if (srv->broken && hr->n_unfinished > 0 && !hr->gone) {
        pthread_mutex_unlock(&srv->lock);
        conn_waiting(hr, 0);
        return fail(srv, hr, c, 500, "server_error", NULL, NULL, "the engine failed: %s", srv->broken_msg);
    }
    if (hr->gone || hr->n_unfinished > 0) {
        pthread_mutex_unlock(&srv->lock);
        return MHD_NO; /* the client is gone (or the server is stopping): close the connection */
    }
    conn_waiting(hr, 0);
    const char *why = NULL;
    int code = 200;
    for (int i = 0; i < hr->n_seqs && !why; i++) {
        if (hr->seqs[i].finish == GPT2_FINISH_ERROR) {
            why = hr->seqs[i].error ? hr->seqs[i].error : "generation failed";
            code = 500;
        } else if (hr->seqs[i].finish == GPT2_FINISH_CANCELLED) {
            why = "the server is shutting down";
            code = 503;
        }
    }
    char whybuf[512];
    if (why) snprintf(whybuf, sizeof whybuf, "%s", why);
    json_t *o = why ? NULL : completion_json(srv, hr);
    pthread_mutex_unlock(&srv->lock);
    if (why) return fail(srv, hr, c, code, "server_error", NULL, NULL, "%s", whybuf);
    if (!o) return fail(srv, hr, c, 500, "server_error", NULL, NULL, "out of memory building the response");
    return respond_json(srv, hr, c, 200, o);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    server *srv = cls;
    http_req *hr = *con_cls;
    if (!hr) {
        if (!(hr = calloc(1, sizeof *hr))) return MHD_NO;
        if (pthread_cond_init(&hr->cond, NULL)) {
            free(hr);
            return MHD_NO;
        }
        hr->srv = srv;
        hr->conn = c;
        hr->refs = 1; /* the connection's, dropped by on_completed */
        pthread_mutex_lock(&srv->lock);
        hr->next = srv->reqs;
        if (srv->reqs) srv->reqs->prev = hr;
        srv->reqs = hr;
        pthread_mutex_unlock(&srv->lock);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        hr->fd = ci ? ci->connect_fd : -1;
        *con_cls = hr;
        int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        if (!auth_ok(srv, c))
            return fail(srv, hr, c, 401, "invalid_request_error", NULL, "invalid_api_key",
                        "missing or wrong API key: send the header 'Authorization: Bearer KEY'");
        if (!strcmp(url, "/v1/completions")) {
            if (strcmp(method, "POST"))
                return fail(srv, hr, c, 405, "invalid_request_error", NULL, NULL, "%s /v1/completions: use POST", method);
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl) {
                char *end;
                errno = 0;
                unsigned long long v = strtoull(cl, &end, 10);
                if (errno || end == cl || *end || v > srv->max_body)
                    return fail(srv, hr, c, 413, "invalid_request_error", NULL, NULL,
                                "request body of %s bytes: the limit is %zu (--max-body)", cl, srv->max_body);
            }
            hr->route = ROUTE_COMPLETIONS;
            return MHD_YES; /* the body comes next */
        }
        if (!strcmp(url, "/v1/models") || !strcmp(url, "/health") || !strcmp(url, "/metrics")) {
            if (!get) return fail(srv, hr, c, 405, "invalid_request_error", NULL, NULL, "%s %s: use GET", method, url);
            if (url[1] == 'v') return get_models(srv, hr, c);
            if (url[1] == 'h') return get_health(srv, hr, c);
            return get_metrics(srv, hr, c);
        }
        return fail(srv, hr, c, 404, "invalid_request_error", NULL, "not_found", "no such route: %s %.200s", method, url);
    }
    if (hr->answered) { /* an early answer is queued; what is left of the body is not read */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t total;
        if (gpt2_add_size(hr->n_body, *upload_size, &total) || total > srv->max_body) {
            enum MHD_Result r = fail(srv, hr, c, 413, "invalid_request_error", NULL, NULL,
                                     "request body over %zu bytes (--max-body)", srv->max_body);
            *upload_size = 0;
            return r; /* MHD_NO when a response cannot be queued mid-body: the connection closes */
        }
        if (grow(&hr->body, &hr->cap_body, hr->n_body, *upload_size)) return MHD_NO;
        memcpy(hr->body + hr->n_body, upload, *upload_size);
        hr->n_body = total;
        hr->body[total] = '\0';
        *upload_size = 0;
        return MHD_YES;
    }
    if (hr->route != ROUTE_COMPLETIONS) return MHD_NO;
    return post_completions(srv, hr, c);
}

/* The connection is done with this request (answered, or the client went away). */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    server *srv = cls;
    http_req *hr = *con_cls;
    if (!hr) return;
    *con_cls = NULL;
    pthread_mutex_lock(&srv->lock);
    hr->fd = -1; /* the socket may close and its number be reused from now on */
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || hr->n_unfinished > 0) {
        hr->gone = 1;
        hr_cancel_locked(hr);
    }
    hr_unref_locked(hr);
    pthread_mutex_unlock(&srv->lock);
}

static void http_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') msg[--n] = '\0';
    fprintf(stderr, "gpt2 serve: http: %s\n", msg);
}

/* ---------------------------------------------------------------------------------------------- */
/* Main                                                                                            */

/* The directory's last component: the model's id in the API. */
static const char *dir_name(const char *dir, char *buf, size_t n) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(buf, n, "%.*s", (int)(len - start), dir + start);
    return buf[0] ? buf : "gpt2";
}

/* Waits up to `seconds` for every live sequence to finish (conns: for every request to be answered
 * and done with). 1 when none is left. */
static int wait_idle(server *srv, double seconds, int conns) {
    double end = now_s() + seconds;
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        int left = conns ? srv->reqs != NULL : srv->live > 0, broken = srv->broken;
        pthread_mutex_unlock(&srv->lock);
        if (!left) return 1;
        if ((broken && !conns) || now_s() >= end) return 0;
        usleep(10000);
    }
}

int cmd_serve(int argc, char **argv) {
    static const struct option opts[] = {
        CLI_COMMON_OPTIONS,
        {"host", required_argument, 0, OPT_HOST}, {"port", required_argument, 0, OPT_PORT},
        {"max-slots", required_argument, 0, OPT_SLOTS}, {"max-seq", required_argument, 0, OPT_MAX_SEQ},
        {"api-key", required_argument, 0, OPT_API_KEY}, {"max-queue", required_argument, 0, OPT_MAX_QUEUE},
        {"max-body", required_argument, 0, OPT_MAX_BODY}, {"max-connections", required_argument, 0, OPT_MAX_CONN},
        {"timeout", required_argument, 0, OPT_TIMEOUT}, {"drain-timeout", required_argument, 0, OPT_DRAIN},
        {"served-model-name", required_argument, 0, OPT_NAME},
        {"step-delay-ms", required_argument, 0, OPT_STEP_DELAY}, {0, 0, 0, 0}};
    cli_common c;
    serve_args a = {.host = "127.0.0.1", .port = 8000, .max_queue = 1024, .max_body = 1 << 20, .max_conn = 1024,
                    .timeout_s = 60, .drain_s = 30};
    cli_common_init(&c);
    int rc = cli_parse_args("serve", argc, argv, opts, &c, HELP, serve_option, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (!c.model_dir) {
        fprintf(stderr, "gpt2 serve: --model DIR is required\n%s", HELP);
        return EXIT_USAGE;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%ld", a.port);
    int gai = getaddrinfo(a.host, port_s, &hints, &ai);
    if (gai) {
        fprintf(stderr, "gpt2 serve: --host %s: %s\n", a.host, gai_strerror(gai));
        return EXIT_USAGE;
    }

    server srv = {.api_key = a.api_key, .max_body = (size_t)a.max_body, .max_queue = (int)a.max_queue,
                  .timeout_s = (unsigned)a.timeout_s,
                  .step_delay_ms = a.step_delay_ms, .created = (long long)time(NULL)};
    srv.ttft.le = TTFT_LE;
    srv.tpot.le = TPOT_LE;
    srv.max_logprobs = SERVE_MAX_LOGPROBS; /* what gpt2_request.top_logprobs allows */
    char name_buf[300];
    srv.model_name = a.name ? a.name : dir_name(c.model_dir, name_buf, sizeof name_buf);
    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.work, NULL);

    /* SIGINT/SIGTERM go to sigwait below: blocked before any thread starts (OpenMP's in the engine,
     * the step thread, the connections'), which all inherit the mask; one that comes while the model
     * loads waits, and the server then drains at once. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    gpt2_error err = {0};
    gpt2_engine_opts eo = cli_engine_opts(&c);
    eo.max_slots = (int)a.slots;
    eo.max_seq = (int)a.max_seq;
    rc = 1;
    struct MHD_Daemon *d = NULL;
    pthread_t stepper;
    int stepper_started = 0;
    if (gpt2_engine_create(c.model_dir, &eo, &srv.engine, &err) != GPT2_OK) {
        cli_report("serve", &err);
        goto out;
    }
    gpt2_plan plan;
    gpt2_engine_plan(srv.engine, &plan);
    srv.max_slots = plan.max_slots;
    srv.eot = gpt2_tokenizer_eot(gpt2_engine_tokenizer(srv.engine));
    if (srv.eot < 0) srv.eot = 0;

    if (pthread_create(&stepper, NULL, step_thread, &srv)) {
        fprintf(stderr, "gpt2 serve: cannot start the step thread\n");
        goto out;
    }
    stepper_started = 1;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(flags, (uint16_t)a.port, NULL, NULL, on_request, &srv, MHD_OPTION_EXTERNAL_LOGGER, http_log,
                         NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, &srv,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)a.max_conn, MHD_OPTION_CONNECTION_TIMEOUT,
                         (unsigned)a.timeout_s, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "gpt2 serve: cannot listen on %s port %ld: %s\n", a.host, a.port, strerror(errno));
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening on http://%s%s%s:%u\n", ai->ai_family == AF_INET6 ? "[" : "", a.host,
           ai->ai_family == AF_INET6 ? "]" : "", di ? (unsigned)di->port : (unsigned)a.port);
    fflush(stdout);
    fprintf(stderr, "gpt2 serve: model '%s' on %s (%s), %d slots of %d positions\n", srv.model_name, plan.device,
            gpt2_dtype_name(plan.dtype), plan.max_slots, plan.max_seq);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "gpt2 serve: %s: no new connections; finishing the running requests (up to %g s)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", a.drain_s);
    int listen_fd = MHD_quiesce_daemon(d);
    if (listen_fd >= 0) close(listen_fd);
    pthread_mutex_lock(&srv.lock);
    srv.draining = 1;
    pthread_mutex_unlock(&srv.lock);
    if (!wait_idle(&srv, a.drain_s, 0)) {
        /* the deadline: cancel what still runs; its clients get a 503 (or an error event) */
        pthread_mutex_lock(&srv.lock);
        fprintf(stderr, "gpt2 serve: drain deadline: cancelling %d sequences\n", srv.live);
        for (http_req *hr = srv.reqs; hr; hr = hr->next) hr_cancel_locked(hr);
        pthread_mutex_unlock(&srv.lock);
        wait_idle(&srv, 5, 0);
    }
    wait_idle(&srv, 5, 1); /* the answers go out */
    pthread_mutex_lock(&srv.lock);
    srv.quit = 1; /* connections still waiting give up */
    pthread_cond_broadcast(&srv.work);
    pthread_mutex_unlock(&srv.lock);
    MHD_stop_daemon(d); /* closes the connections (whose requests get cancelled) and joins their threads */
    d = NULL;
    rc = 0;
out:
    if (d) MHD_stop_daemon(d);
    if (stepper_started) {
        pthread_mutex_lock(&srv.lock);
        srv.quit = 1;
        pthread_cond_broadcast(&srv.work);
        pthread_mutex_unlock(&srv.lock);
        pthread_join(stepper, NULL);
    }
    gpt2_engine_destroy(srv.engine);
    freeaddrinfo(ai);
    pthread_mutex_destroy(&srv.lock);
    pthread_cond_destroy(&srv.work);
    return rc;
}

#endif /* GPT2_HAVE_MHD */
