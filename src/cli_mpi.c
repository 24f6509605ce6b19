/* cli_mpi.c: data-parallel batch jobs over MPI (see cli_mpi.h).
 *
 * The protocol, plain point-to-point on MPI_COMM_WORLD, two tags:
 *   up   (rank r > 0 -> 0, bytes): WANT n (r can take n more requests), RECORD (a finished request's
 *        output line), BYE (r is done; with "failed" when its engine failed or it was interrupted:
 *        rank 0 gives its unfinished requests to the others). BYE is r's last message, sent only
 *        when no WANT of r is unanswered.
 *   down (0 -> r, ints): the answer to each WANT, [n, req_1 .. req_n]; n = 0 is STOP (no more work:
 *        finish what you have, then BYE).
 * Rank 0 never blocks on another rank: it polls (MPI_Iprobe) between its own engine steps and sends
 * with MPI_Isend; the other ranks block only in sends to rank 0, which always drains them. Waiting
 * ranks sleep between polls instead of spinning, so oversubscribed ranks leave the cores to those
 * that compute. Only rank 0 writes the output (cli_generate.c, in input order, as a single process
 * does): see the README for why that keeps --resume exact when any rank is killed. */
#include "cli_mpi.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef GPT2_HAVE_MPI
#include <dirent.h>
#include <mpi.h>
#endif

static struct {
    int active; /* MPI_Init was called by cli_mpi_start */
    int rank, size;
    /* rank 0, during cli_mpi_run: the requests' states and owners */
    signed char *state; /* (n_reqs) 0 waiting, 1 handed out, 2 done */
    int *owner;         /* (n_reqs) the rank running it */
    int n_reqs, n_done;
    int local_finished; /* records this rank made */
} g = {0, 0, 1, NULL, NULL, 0, 0, 0};

/* Started by an MPI launcher: Open MPI's mpirun, a PMIx or PMI server (srun --mpi=pmix|pmi2, MPICH's
 * hydra). A plain `gpt2 generate` never starts MPI, so it runs as it does in a build without it. */
static int launched_by_mpi(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

int cli_mpi_rank(void) { return g.rank; }
int cli_mpi_size(void) { return g.size; }

#ifndef GPT2_HAVE_MPI

/* Without MPI, several ranks would each run the whole job: refused, once (by the launcher's rank 0). */
int cli_mpi_start(const char *cmd, const char *device) {
    (void)device;
    const char *size = getenv("OMPI_COMM_WORLD_SIZE"), *rank = getenv("OMPI_COMM_WORLD_RANK");
    if (!size) size = getenv("PMI_SIZE"), rank = getenv("PMI_RANK");
    if (!launched_by_mpi() || !size || atoi(size) <= 1) return 0;
    if (!rank || atoi(rank) == 0)
        fprintf(stderr, "gpt2 %s: started as %s MPI ranks, but built without MPI (make MPI=1, with mpicc): each "
                        "would run the whole job\n", cmd, size);
    return -1;
}
void cli_mpi_end(void) {}
int cli_mpi_max(int v) { return v; }
int cli_mpi_bcast_ints(int *v, int n) {
    (void)v;
    (void)n;
    return 0;
}
void cli_mpi_barrier(void) {}
void cli_mpi_reduce(const double *v, double *out, int n, char op) {
    (void)op;
    if (out != v) memcpy(out, v, sizeof(double) * (size_t)n);
}
int cli_mpi_run(const cli_mpi_engine *eng, int ok, int n_reqs, int slots) {
    (void)eng;
    (void)ok;
    (void)n_reqs;
    (void)slots;
    return 1; /* never called: size is 1 */
}
int cli_mpi_record(int req, int failed, long tokens, const char *rec, size_t n) {
    (void)req;
    (void)failed;
    (void)tokens;
    (void)rec;
    (void)n;
    return 0;
}

#else /* GPT2_HAVE_MPI */

enum { TAG_UP = 7301, TAG_DOWN = 7302 };
enum { UP_WANT = 1, UP_RECORD = 2, UP_BYE = 3 };

/* The head of every up message; a RECORD's bytes follow it. */
typedef struct {
    int32_t type;
    int32_t req;    /* RECORD: the request; WANT: how many */
    int32_t failed; /* RECORD: an error record; BYE: the rank's engine failed or it stopped early */
    int32_t pad;
    int64_t tokens; /* RECORD: tokens generated */
} up_head;

/* The visible CUDA devices: the entries of $CUDA_VISIBLE_DEVICES, or "0".."n-1" for the n GPUs the
 * NVIDIA driver lists (counted without initialising CUDA, which would fix the device set). *out
 * malloc'ed entries; returns their number, 0 when none are known. */
static int visible_devices(char ***out) {
    *out = NULL;
    const char *env = getenv("CUDA_VISIBLE_DEVICES");
    int n = 0;
    char **v = NULL;
    if (env) {
        if (!*env) return 0;
        for (const char *p = env; p; p = strchr(p, ','), p = p ? p + 1 : NULL) n++;
        if (!(v = calloc((size_t)n, sizeof *v))) return 0;
        const char *p = env;
        for (int i = 0; i < n; i++) {
            const char *e = strchr(p, ',');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            if (!(v[i] = strndup(p, len))) n = i;
            p = e ? e + 1 : p + len;
        }
    } else {
        DIR *d = opendir("/proc/driver/nvidia/gpus");
        if (!d) return 0;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') n++;
        closedir(d);
        if (n == 0 || !(v = calloc((size_t)n, sizeof *v))) return 0;
        for (int i = 0; i < n; i++) {
            char buf[16];
            snprintf(buf, sizeof buf, "%d", i);
            if (!(v[i] = strdup(buf))) n = i;
        }
    }
    *out = v;
    return n;
}

/* $GPT2_MPI_GPUS as indices: v (cap entries), returns their number, -1 when malformed or an index is
 * not below n_visible (when that is known, > 0). */
static int parse_gpu_list(const char *spec, int n_visible, int *v, int cap) {
    int k = 0;
    for (const char *p = spec;;) {
        char *end;
        errno = 0;
        long idx = strtol(p, &end, 10);
        if (end == p || errno || idx < 0 || idx > 4095 || (*end && *end != ',') || k == cap ||
            (n_visible > 0 && idx >= n_visible) || *p == ' ' || *p == '+' || *p == '-')
            return -1;
        v[k++] = (int)idx;
        if (!*end) return k;
        p = end + 1;
    }
}

/* CUDA_VISIBLE_DEVICES for this rank (see cli_mpi.h). 0 ok, -1 after printing. */
static int bind_gpu(const char *cmd, const char *device, int local_rank) {
    const char *spec = getenv("GPT2_MPI_GPUS");
    if (!strcmp(device, "cpu") || (spec && !strcmp(spec, "none"))) return 0;
    char **vis;
    int n = visible_devices(&vis), rc = 0, pick = n > 0 ? local_rank % n : -1;
    if (spec) {
        int list[256];
        int len = parse_gpu_list(spec, n, list, 256);
        if (len <= 0) {
            fprintf(stderr, "gpt2 %s: GPT2_MPI_GPUS '%s': expected none, or up to 256 comma-separated indices into "
                            "the visible devices (%d here)\n", cmd, spec, n);
            rc = -1;
        } else pick = list[local_rank % len];
    }
    if (!rc && pick >= 0 && pick < n) {
        if (setenv("CUDA_VISIBLE_DEVICES", vis[pick], 1) != 0) {
            fprintf(stderr, "gpt2 %s: cannot set CUDA_VISIBLE_DEVICES: %s\n", cmd, strerror(errno));
            rc = -1;
        } else {
            fprintf(stderr, "gpt2 %s: rank %d of %d (node-local rank %d): CUDA_VISIBLE_DEVICES=%s\n", cmd, g.rank,
                    g.size, local_rank, vis[pick]);
        }
    }
    for (int i = 0; i < n; i++) free(vis[i]);
    free(vis);
    return rc;
}

int cli_mpi_start(const char *cmd, const char *device) {
    if (g.active || !launched_by_mpi()) return 0;
    if (MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        fprintf(stderr, "gpt2 %s: MPI_Init failed\n", cmd);
        return -1;
    }
    g.active = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size);
    /* The node-local rank: the ranks that share memory with this one, as MPI groups them (mpirun
     * and srun alike, with no launcher-specific variable). */
    MPI_Comm node;
    int local = 0;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_rank(node, &local);
        MPI_Comm_free(&node);
    }
    /* Every rank learns whether one could not bind (GPT2_MPI_GPUS wrong for its node), so that none
     * waits for the others in vain: they all end here. */
    int bad = bind_gpu(cmd, device, local) != 0, any = bad;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {
        cli_mpi_end();
        return -1;
    }
    return 0;
}

void cli_mpi_end(void) {
    if (!g.active) return;
    MPI_Finalize();
    g.active = 0;
    g.rank = 0;
    g.size = 1;
}

/* A few bytes of bookkeeping that cannot be had: every rank ends (the others would wait for
 * this one forever). */
static void *need(void *p) {
    if (!p) {
        fprintf(stderr, "gpt2: out of memory for MPI's bookkeeping\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return p;
}

int cli_mpi_max(int v) {
    if (!g.active) return v;
    int out = v;
    MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return out;
}

int cli_mpi_bcast_ints(int *v, int n) {
    if (!g.active) return 0;
    return MPI_Bcast(v, n, MPI_INT, 0, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}

void cli_mpi_barrier(void) {
    if (g.active) MPI_Barrier(MPI_COMM_WORLD);
}

void cli_mpi_reduce(const double *v, double *out, int n, char op) {
    if (!g.active) {
        if (out != v) memcpy(out, v, sizeof(double) * (size_t)n);
        return;
    }
    double *tmp = need(malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)));
    MPI_Reduce(v, tmp, n, MPI_DOUBLE, op == 'm' ? MPI_MAX : MPI_SUM, 0, MPI_COMM_WORLD);
    if (g.rank == 0) memcpy(out, tmp, sizeof(double) * (size_t)n);
    else if (out != v) memcpy(out, v, sizeof(double) * (size_t)n);
    free(tmp);
}

static void sleep_ms(int ms) {
    struct timespec t = {0, (long)ms * 1000000L};
    nanosleep(&t, NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* Rank 0                                                                                           */

/* Sends in flight (MPI_Isend), with the buffers they read. */
typedef struct {
    MPI_Request *req;
    int **buf;
    int n, cap;
} sends;

static int sends_add(sends *s, int dest, int *buf, int n) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        MPI_Request *r = realloc(s->req, sizeof *r * (size_t)cap);
        if (r) s->req = r;
        int **b = r ? realloc(s->buf, sizeof *b * (size_t)cap) : NULL;
        if (!b) {
            free(buf);
            return -1;
        }
        s->buf = b;
        s->cap = cap;
    }
    if (MPI_Isend(buf, n, MPI_INT, dest, TAG_DOWN, MPI_COMM_WORLD, &s->req[s->n]) != MPI_SUCCESS) {
        free(buf);
        return -1;
    }
    s->buf[s->n++] = buf;
    return 0;
}

/* Frees the buffers of the sends that completed; with wait, waits for all. */
static void sends_reap(sends *s, int wait) {
    for (int i = 0; i < s->n;) {
        int done = 0;
        if (wait) MPI_Wait(&s->req[i], MPI_STATUS_IGNORE), done = 1;
        else MPI_Test(&s->req[i], &done, MPI_STATUS_IGNORE);
        if (done) {
            free(s->buf[i]);
            s->req[i] = s->req[s->n - 1];
            s->buf[i] = s->buf[s->n - 1];
            s->n--;
        } else i++;
    }
}

/* The requests not yet handed out, or given back. */
typedef struct {
    int cursor;    /* no waiting request before this index */
    int n_waiting;
} pool;

/* Up to n waiting requests, lowest index first, to rank r: out[0..k), returns k. */
static int pool_take(pool *p, int r, int n, int *out) {
    int k = 0;
    for (int i = p->cursor; i < g.n_reqs && k < n; i++)
        if (g.state[i] == 0) {
            g.state[i] = 1;
            g.owner[i] = r;
            out[k++] = i;
        }
    p->n_waiting -= k;
    while (p->cursor < g.n_reqs && g.state[p->cursor] != 0) p->cursor++;
    return k;
}

/* Rank r's requests that have no record go back to the pool. Returns how many. */
static int pool_give_back(pool *p, int r) {
    int k = 0;
    for (int i = 0; i < g.n_reqs; i++)
        if (g.state[i] == 1 && g.owner[i] == r) {
            g.state[i] = 0;
            if (i < p->cursor) p->cursor = i;
            k++;
        }
    p->n_waiting += k;
    return k;
}

/* How many of `want` to hand out: all while plenty are waiting; near the end a share of what is
 * left (guided self-scheduling), so that the last chunks are small and the ranks finish together. */
static int grant_size(const pool *p, int want) {
    int share = (p->n_waiting + 2 * g.size - 1) / (2 * g.size);
    if (share < 1) share = 1;
    return want < share ? want : share;
}

/* One message from rank r (its head h, then n bytes of record). */
static void rank0_message(const cli_mpi_engine *eng, pool *p, int r, const up_head *h, char *rec, size_t n,
                          int *want, int *open, int *n_open, int *stopping, int *given_back, int *failed_ranks) {
    if (h->type == UP_WANT) {
        want[r] = h->req > 0 ? h->req : 1;
    } else if (h->type == UP_RECORD) {
        int req = h->req;
        if (req < 0 || req >= g.n_reqs || g.state[req] != 1 || g.owner[req] != r) {
            free(rec); /* not one of r's requests: cannot happen with this protocol */
            return;
        }
        g.state[req] = 2;
        g.n_done++;
        if (eng->deliver(eng->user, req, h->failed, (long)h->tokens, rec, n)) *stopping = 1;
    } else if (h->type == UP_BYE && open[r]) {
        open[r] = 0;
        (*n_open)--;
        if (h->failed) {
            *given_back += pool_give_back(p, r);
            (*failed_ranks)++;
        }
    }
}

static int run_rank0(const cli_mpi_engine *eng, int ok, int slots) {
    int R = g.size;
    pool p = {0, g.n_reqs};
    sends s = {0};
    int *want = need(calloc((size_t)R, sizeof(int))); /* (R) requests a rank asked for, unanswered; 0 none */
    int *open = need(calloc((size_t)R, sizeof(int))); /* (R) 1 until the rank's BYE */
    int *chunk = need(malloc(sizeof(int) * (size_t)(2 * slots)));
    int n_open = R - 1, n_wanting = 0, local_ok = ok, stopping = 0, busy = 0, local_submitted = 0, given_back = 0;
    int failed_ranks = 0; /* ranks (this one included) whose engine failed or that were stopped alone */
    for (int r = 1; r < R; r++) open[r] = 1;
    while (n_open > 0 || n_wanting > 0 ||
           (local_ok && !stopping && (local_submitted > g.local_finished || p.n_waiting > 0))) {
        int active = 0;
        /* Messages from the other ranks. */
        for (;;) {
            int flag = 0, nbytes = 0;
            MPI_Status st;
            MPI_Iprobe(MPI_ANY_SOURCE, TAG_UP, MPI_COMM_WORLD, &flag, &st);
            if (!flag) break;
            active = 1;
            MPI_Get_count(&st, MPI_BYTE, &nbytes);
            char *msg = need(malloc((size_t)nbytes + 1));
            MPI_Recv(msg, nbytes, MPI_BYTE, st.MPI_SOURCE, TAG_UP, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            up_head h;
            if ((size_t)nbytes < sizeof h) {
                free(msg);
                continue;
            }
            memcpy(&h, msg, sizeof h);
            size_t n = (size_t)nbytes - sizeof h;
            char *rec = NULL;
            if (h.type == UP_RECORD) { /* the record as its own string, handed to deliver */
                rec = need(malloc(n + 1));
                memcpy(rec, msg + sizeof h, n);
                rec[n] = '\0';
            }
            free(msg);
            int had = want[st.MPI_SOURCE] > 0;
            rank0_message(eng, &p, st.MPI_SOURCE, &h, rec, n, want, open, &n_open, &stopping, &given_back,
                          &failed_ranks);
            n_wanting += (want[st.MPI_SOURCE] > 0) - had;
        }
        if (!stopping && eng->stop(eng->user)) stopping = 1;
        if (stopping && local_ok) { /* this rank's running requests are abandoned: they stay undone */
            local_ok = 0;
            pool_give_back(&p, 0);
        }
        /* Answer the ranks that asked: work; or STOP when stopping, to a rank that said BYE (it
         * failed) or once every request is done. Otherwise the answer waits: requests may come
         * back from a rank that fails. */
        for (int r = 1; r < R; r++) {
            if (!want[r]) continue;
            int most = want[r] < 2 * slots ? want[r] : 2 * slots; /* (chunk holds 2 x slots) */
            int k = stopping || !open[r] ? 0 : pool_take(&p, r, grant_size(&p, most), chunk);
            if (k == 0 && !stopping && open[r] && g.n_done < g.n_reqs) continue;
            int *buf = need(malloc(sizeof(int) * (size_t)(k + 1)));
            buf[0] = k;
            memcpy(buf + 1, chunk, sizeof(int) * (size_t)k);
            if (sends_add(&s, r, buf, k + 1)) {
                fprintf(stderr, "gpt2 generate: cannot send work to rank %d\n", r);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            want[r] = 0;
            n_wanting--;
            active = 1;
        }
        sends_reap(&s, 0);
        /* This rank's own share: keep its engine full. */
        if (local_ok && !stopping) {
            int running = local_submitted - g.local_finished;
            if (running < slots && p.n_waiting > 0) {
                int k = pool_take(&p, 0, grant_size(&p, 2 * slots - running), chunk);
                for (int i = 0; i < k && local_ok; i++) {
                    if (eng->submit(eng->user, chunk[i])) local_ok = 0;
                    else local_submitted++;
                }
                if (!local_ok) {
                    given_back += pool_give_back(&p, 0);
                    failed_ranks++;
                }
            }
            if (local_ok && local_submitted > g.local_finished) {
                active = 1;
                if (eng->step(eng->user, &busy)) {
                    local_ok = 0;
                    given_back += pool_give_back(&p, 0);
                    failed_ranks++;
                }
            }
        }
        if (!active) sleep_ms(1);
    }
    sends_reap(&s, 1);
    /* How the work spread (a slow or failed rank shows here). */
    int *per = need(calloc((size_t)R, sizeof(int)));
    for (int i = 0; i < g.n_reqs; i++)
        if (g.state[i] == 2) per[g.owner[i]]++;
    fprintf(stderr, "gpt2 generate: requests run per rank:");
    for (int r = 0; r < R; r++) fprintf(stderr, " %d", per[r]);
    fprintf(stderr, "\n");
    free(per);
    if (failed_ranks && !stopping)
        fprintf(stderr, "gpt2 generate: %d rank%s stopped early (see %s messages); %d unfinished requests went to "
                        "the other ranks\n", failed_ranks, failed_ranks > 1 ? "s" : "", failed_ranks > 1 ? "their" : "its",
                given_back);
    if (g.n_done < g.n_reqs && !stopping)
        fprintf(stderr, "gpt2 generate: %d of %d requests could not run: no rank is left to run them; run again "
                        "with --resume\n", g.n_reqs - g.n_done, g.n_reqs);
    free(s.req);
    free(s.buf);
    free(want);
    free(open);
    free(chunk);
    return g.n_done == g.n_reqs && !stopping && !failed_ranks ? 0 : 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Ranks > 0                                                                                        */

static int send_up(const up_head *h, const char *rec, size_t n) {
    size_t total = sizeof *h + n;
    if (total > (size_t)INT32_MAX) {
        fprintf(stderr, "gpt2 generate: rank %d: a record of %zu bytes is too long to send\n", g.rank, n);
        return -1;
    }
    char *buf = malloc(total);
    if (!buf) {
        fprintf(stderr, "gpt2 generate: rank %d: out of memory sending a record\n", g.rank);
        return -1;
    }
    memcpy(buf, h, sizeof *h);
    if (n) memcpy(buf + sizeof *h, rec, n);
    int rc = MPI_Send(buf, (int)total, MPI_BYTE, 0, TAG_UP, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
    free(buf);
    return rc;
}

static int run_worker(const cli_mpi_engine *eng, int ok, int slots) {
    int failed = !ok, stopped = 0, wanting = 0, submitted = 0, busy = 0, said_bye = 0;
    for (;;) {
        int active = 0;
        if (!failed && eng->stop(eng->user)) failed = 1;
        if (failed && !said_bye) { /* at once, so that rank 0 gives our requests to the others */
            up_head bye = {.type = UP_BYE, .failed = 1};
            send_up(&bye, NULL, 0);
            said_bye = 1;
        }
        int running = submitted - g.local_finished;
        if (!failed && !stopped && !wanting && running < slots) {
            up_head h = {.type = UP_WANT, .req = 2 * slots - running};
            if (send_up(&h, NULL, 0)) failed = 1;
            else wanting = 1;
        }
        /* The answer to our WANT: more work, or STOP. */
        int flag = 0, n = 0;
        MPI_Status st;
        MPI_Iprobe(0, TAG_DOWN, MPI_COMM_WORLD, &flag, &st);
        if (flag) {
            active = 1;
            MPI_Get_count(&st, MPI_INT, &n);
            int *buf = need(malloc(sizeof(int) * (size_t)(n > 0 ? n : 1)));
            MPI_Recv(buf, n, MPI_INT, 0, TAG_DOWN, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            wanting = 0;
            if (n < 1 || buf[0] == 0) stopped = 1;
            for (int i = 1; !failed && i < n; i++) { /* (failed: rank 0 takes them back at our BYE) */
                if (eng->submit(eng->user, buf[i])) failed = 1;
                else submitted++;
            }
            free(buf);
        }
        if (!failed && submitted > g.local_finished) {
            active = 1;
            if (eng->step(eng->user, &busy)) failed = 1;
        }
        if (!failed && stopped && submitted == g.local_finished) {
            up_head bye = {.type = UP_BYE};
            send_up(&bye, NULL, 0);
            break;
        }
        if (said_bye && !wanting) break; /* failed, and no answer still to come */
        if (!active) sleep_ms(1);
    }
    /* 0 even when this rank failed: rank 0's exit status says so, and a rank exiting with another
     * status makes mpirun end the whole job, which the others can still finish. */
    return 0;
}

int cli_mpi_run(const cli_mpi_engine *eng, int ok, int n_reqs, int slots) {
    if (slots < 1) slots = 1;
    g.local_finished = 0;
    g.n_done = 0;
    g.n_reqs = n_reqs;
    if (g.rank != 0) return run_worker(eng, ok, slots);
    g.state = need(calloc((size_t)n_reqs + 1, 1));
    g.owner = need(calloc((size_t)n_reqs + 1, sizeof(int)));
    int rc = run_rank0(eng, ok, slots);
    free(g.state);
    free(g.owner);
    g.state = NULL;
    g.owner = NULL;
    return rc;
}

int cli_mpi_record(int req, int failed, long tokens, const char *rec, size_t n) {
    g.local_finished++;
    if (!g.active) return 0;
    if (g.rank == 0) {
        if (g.state && req >= 0 && req < g.n_reqs && g.state[req] == 1 && g.owner[req] == 0) {
            g.state[req] = 2;
            g.n_done++;
        }
        return 0;
    }
    up_head h = {.type = UP_RECORD, .req = req, .failed = failed, .tokens = tokens};
    return send_up(&h, rec, n);
}

#endif /* GPT2_HAVE_MPI */
