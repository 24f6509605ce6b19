/* common.h: helpers for the tests that run models: fixture paths, golden files, random data. */
#ifndef GPT2_TESTS_COMMON_H
#define GPT2_TESTS_COMMON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "gpt2.h"

#define FIXTURES "tests/data/models"

/* The fixture models made by tools/make_fixtures.py with transformers (names under FIXTURES). */
extern const char *const fixture_models[];
extern const int n_fixture_models;

/* Loads FIXTURES/name/golden.json (asserts on failure). */
json_t *golden_load(const char *name);

/* json array of integers -> malloc'ed int array. */
int *json_ints(json_t *arr, int *n);

/* Loads FIXTURES/name (asserts on failure). */
gpt2_model *load_fixture(const char *name);

/* Makes a backend with all_logits on: S slots of maxT positions, N tokens per forward. */
typedef gpt2_backend *(*backend_maker)(const gpt2_model *m, int S, int maxT, int N);

/* Logits (T, V) of ids through one full forward of be (slot 0); malloc'ed. */
float *forward_all(gpt2_backend *be, const int *ids, int T);

/* Index of the largest of x[0..n), ties to the lowest. */
int argmax_row(const float *x, int n);

/* Random token ids in 0..V-1 from a seeded stream. */
void random_ids(int *ids, int n, int V, uint64_t seed);

/* Every golden case's logits through a backend from `make` against transformers' (within atol), and
 * top-1 over the whole vocabulary; returns the largest difference seen. */
double check_golden_logits(const char *name, backend_maker make, double atol, const char *label);

/* Greedy continuations of every golden case, continuously batched over 3 slots, equal transformers'. */
void check_golden_greedy(const char *name, backend_maker make, const char *label);

/* A CPU backend on model m: S slots of maxT positions, N tokens per forward, all_logits on. */
gpt2_backend *cpu_backend(const gpt2_model *m, int S, int maxT, int N);

/* Full-sequence logits (T, V) through a fresh CPU backend; malloc'ed. */
float *full_logits(const gpt2_model *m, const int *ids, int T);

/* splitmix64 stream in the tests, independent of src/. */
uint64_t trand(uint64_t *s);
float trand_float(uint64_t *s); /* uniform in [-1, 1) */

/* Per-test cleanup. A failed assertion ends a test at once, so what a test frees at its end would
 * leak (and LeakSanitizer would report it); instead a test hands its buffers, models and engines to
 * test_keep, and the suite's .fini (test_cleanup) frees them in reverse order however the test ended:
 *     TestSuite(name, .fini = test_cleanup);
 *     float *x = test_keep(malloc(n), free);
 * test_keep asserts p != NULL (an allocation failure fails the test) and returns p. */
void *test_keep_fn(void *p, void (*fn)(void *));
#define test_keep(p, fn) test_keep_fn((p), (void (*)(void *))(fn))
void test_cleanup(void);
/* calloc that asserts and is freed by test_cleanup. */
void *test_calloc(size_t n, size_t size);

/* A monotonic clock in seconds (for the tests' own time limits, never to assert on speed), and a sleep. */
double test_now_s(void);
void test_sleep_ms(int ms);

/* Path of the CLI under test ($GPT2_BIN, default build/gpt2). */
const char *cli_bin(void);

/* A whole file, NUL-terminated and malloc'ed (a missing file reads as empty); *n (when not NULL) its
 * length. test_read_file_kept: the same, freed by test_cleanup. */
char *test_read_file(const char *path, size_t *n);
char *test_read_file_kept(const char *path, size_t *n);

/* Writes data[0..n) to path, replacing it (asserts on failure). */
void test_write_file(const char *path, const char *data, size_t n);

/* Runs a shell command, capturing stdout into *out (malloc'ed); returns the exit status. */
int run_capture(const char *cmd, char **out);

/* `gpt2 generate --model model --device cpu --input F` on the JSONL lines, written to a temporary
 * file F (removed after): its stdout (with stderr too when with_stderr) into *out, freed by
 * test_cleanup; returns the exit status. */
int test_run_generate(const char *model, const char *lines, int with_stderr, char **out);

#endif
