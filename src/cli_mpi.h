/* cli_mpi.h: data-parallel batch jobs over MPI (`mpirun -n R gpt2 generate ...`, or srun).
 *
 * One engine per rank (each on its own GPU); rank 0 reads nothing more than the others but alone owns
 * the output file, hands out requests in input order as ranks ask for them, and writes the records
 * the ranks send back, in input order. Without MPI (built with MPI=0, or a process not started by an
 * MPI launcher) every function here acts as for a single process of rank 0, and nothing calls MPI.
 *
 * MPI is process-wide state (one MPI_Init per process), so it is kept in cli_mpi.c, not passed around. */
#ifndef GPT2_CLI_MPI_H
#define GPT2_CLI_MPI_H

#include <stddef.h>

/* Starts MPI when the process was started by an MPI launcher (mpirun, mpiexec, srun with PMI/PMIx)
 * and binds the rank to a GPU: before any CUDA call, CUDA_VISIBLE_DEVICES becomes one entry of the
 * visible devices, chosen by the rank's node-local rank modulo their number, or by $GPT2_MPI_GPUS (a
 * comma-separated list of visible-device indices, entry local_rank mod its length; "none": leave
 * CUDA_VISIBLE_DEVICES as the launcher set it). `device` is the --device value: "cpu" binds nothing.
 * 0 ok, -1 after printing (GPT2_MPI_GPUS malformed, or MPI_Init failed). */
int cli_mpi_start(const char *cmd, const char *device);
/* MPI_Finalize when cli_mpi_start started MPI. */
void cli_mpi_end(void);

int cli_mpi_rank(void); /* 0 without MPI */
int cli_mpi_size(void); /* 1 without MPI */

/* Collective: the largest of every rank's v (the exit codes 0 < 1 < 2 agree on the worst). */
int cli_mpi_max(int v);
/* Collective: rank 0's v[0..n) to every rank. 0 ok, -1 after printing. */
int cli_mpi_bcast_ints(int *v, int n);
/* Collective: every rank waits for the others (a benchmark's timed runs start together). */
void cli_mpi_barrier(void);
/* Collective: on rank 0, out[i] = sum (op 's') or max (op 'm') over ranks of v[i]; other ranks'
 * out is left as their v. */
void cli_mpi_reduce(const double *v, double *out, int n, char op);

/* One rank's engine, as the distributed job drives it. */
typedef struct {
    void *user;
    /* Queues request `req` (an index into the job's request list) on this rank's engine. 0 ok, -1
     * after printing: the rank then runs nothing more and its unfinished requests go to the others. */
    int (*submit)(void *user, int req);
    /* One engine step; *busy gets the requests queued or running after it. 0 ok, -1 after printing. */
    int (*step)(void *user, int *busy);
    /* Nonzero: stop (SIGINT/SIGTERM, or rank 0 cannot write its output). */
    int (*stop)(void *user);
    /* Rank 0: a record from another rank for request `req` (rec malloc'ed, n bytes, NUL-terminated),
     * an error record when failed; tokens it generated. Returns nonzero to stop (a failed write). */
    int (*deliver)(void *user, int req, int failed, long tokens, char *rec, size_t n);
} cli_mpi_engine;

/* Runs the n_reqs requests over every rank (collective; every rank calls it with the same n_reqs).
 * Rank 0 hands out requests in index order, at most as many as a rank asks for (2 x slots - running)
 * and, near the end, fewer (a share of what is left), so that a slow rank holds the job back little;
 * a rank whose engine fails or stops gives its unfinished requests back to the others. `ok` is 0 on
 * a rank that has no engine (its creation failed, printed): it only takes part. Returns, on rank 0:
 * 0 when every request has its record and no rank failed, else 1 (stopped, a rank failed, or no rank
 * left to run the rest); elsewhere 0: a rank that exits with another status makes mpirun end the
 * whole job, while the others can still finish it. */
int cli_mpi_run(const cli_mpi_engine *eng, int ok, int n_reqs, int slots);

/* Called for each record made on this rank, from the engine's callbacks. On a rank > 0 it sends the
 * record to rank 0 (returns nonzero if that failed); on rank 0 it notes the request done (returns 0).
 * rec: NUL-terminated, n bytes. */
int cli_mpi_record(int req, int failed, long tokens, const char *rec, size_t n);

#endif /* GPT2_CLI_MPI_H */
