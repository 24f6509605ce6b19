/* bench_tokenizer.c: encoding speed of the tokenizer, moved here from the tests (tests do not time).
 * `make bench-tokenizer` builds build/bench_tokenizer against the public libgpt2.a; run it from the
 * repository root:  build/bench_tokenizer [TOKENIZER_DIR] [REPEATS]
 * Inputs as the test tokenizer::long_inputs_round_trip: one MiB of mixed text (xorshift64* seed 42
 * over a word list), and one MiB runs of one character class. Prints the median of REPEATS encodes
 * (default 5) after one warm-up, in seconds and MiB/s. */
#include <gpt2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 42;
static uint64_t rng_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median seconds of `reps` encodes of text[0..n); -1 on error. */
static double time_encode(gpt2_tokenizer *t, const char *text, size_t n, int reps, size_t *n_ids) {
    double v[64];
    for (int r = -1; r < reps; r++) {
        int *ids;
        gpt2_error err = {0};
        double t0 = now_s();
        if (gpt2_encode(t, text, n, 0, &ids, n_ids, &err) != GPT2_OK) {
            fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
            return -1;
        }
        double dt = now_s() - t0;
        free(ids);
        if (r >= 0) v[r] = dt;
    }
    qsort(v, (size_t)reps, sizeof *v, cmp_double);
    return v[reps / 2];
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/data/gpt2-tokenizer";
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1 || reps > 64) return fprintf(stderr, "bench_tokenizer: REPEATS must be 1..64\n"), 2;
    gpt2_tokenizer *t;
    gpt2_error err = {0};
    if (gpt2_tokenizer_load(dir, &t, &err) != GPT2_OK) return fprintf(stderr, "bench_tokenizer: %s\n", err.msg), 1;
    static const char *const words[] = {"the ", "tokenizer ", "Hello, ", "world! ", "1234 ", "3.14 ", "don't ",
                                        "\xc3\xa9t\xc3\xa9 ", "\xe4\xb8\xad\xe6\x96\x87", "\xd0\x9f\xd1\x80\xd0\xb8 ",
                                        "\n\n", "    ", "if (x) { y(); }\n", "\xf0\x9f\x98\x80 ", "qwzxjkv "};
    const size_t n = 1 << 20;
    char *text = malloc(n);
    if (!text) return 1;
    for (size_t o = 0; o < n;) {
        const char *w = words[rng_next() % (sizeof words / sizeof words[0])];
        size_t k = strlen(w);
        if (o + k > n) k = n - o;
        memcpy(text + o, w, k);
        o += k;
    }
    printf("bench_tokenizer: %s, median of %d encodes after one warm-up\n", dir, reps);
    size_t n_ids;
    double dt = time_encode(t, text, n, reps, &n_ids);
    if (dt < 0) return 1;
    printf("%-20s %8zu ids %9.4f s %9.2f MiB/s\n", "mixed text", n_ids, dt, 1.0 / dt);
    struct {
        const char *what, *unit;
    } runs[] = {{"spaces", " "}, {"newlines", "\n"}, {"letters", "a"}, {"digits", "7"}, {"CJK", "\xe4\xb8\xad"},
                {"punctuation", "!?"}, {"space-newline", " \n"}, {"invalid first byte", "ab"}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        size_t k = strlen(runs[r].unit), m = (n / k) * k;
        for (size_t i = 0; i < m; i += k) memcpy(text + i, runs[r].unit, k);
        if (!strcmp(runs[r].what, "invalid first byte")) text[0] = (char)0xFF;
        if ((dt = time_encode(t, text, m, reps, &n_ids)) < 0) return 1;
        printf("%-20s %8zu ids %9.4f s %9.2f MiB/s\n", runs[r].what, n_ids, dt, (double)m / (1 << 20) / dt);
    }
    free(text);
    gpt2_tokenizer_free(t);
    return 0;
}
