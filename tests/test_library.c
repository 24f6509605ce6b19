/* test_library.c: the library as a product: libgpt2.a and libgpt2.so export the public names of
 * include/gpt2.h and nothing else, and the README's example builds against the installed library
 * (`make test` installs it into $GPT2_PREFIX first) through pkg-config and runs. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

TestSuite(library, .fini = test_cleanup);

static char *slurp_file(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    char *buf = test_calloc(1 << 20, 1);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* The names declared GPT2_API in include/gpt2.h, as one string " name1 name2 ... ". */
static char *public_names(void) {
    char *h = slurp_file("include/gpt2.h");
    char *names = test_calloc(1 << 16, 1);
    size_t k = 0;
    names[k++] = ' ';
    for (char *line = h; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!strncmp(line, "GPT2_API ", 9)) {
            char *paren = strchr(line, '(');
            cr_assert(paren && (!nl || paren < nl), "GPT2_API line without a parenthesis: %.80s", line);
            char *end = paren, *start = paren;
            while (start > line && (start[-1] == '_' || (start[-1] >= 'a' && start[-1] <= 'z') ||
                                    (start[-1] >= '0' && start[-1] <= '9')))
                start--;
            cr_assert_lt(k + (size_t)(end - start) + 2, (size_t)1 << 16);
            memcpy(names + k, start, (size_t)(end - start));
            k += (size_t)(end - start);
            names[k++] = ' ';
        }
        line = nl ? nl + 1 : NULL;
    }
    cr_assert_gt(k, 100, "include/gpt2.h declares almost nothing GPT2_API");
    return names;
}

/* Checks every global defined symbol that `nm` lists; returns how many public names were seen. */
static int check_nm(const char *cmd, const char *what, const char *names) {
    char *out;
    int rc = run_capture(cmd, &out);
    test_keep(out, free);
    cr_assert_eq(rc, 0, "%s failed", cmd);
    int n_public = 0, n_lines = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char addr[64], type[8], name[512];
        if (sscanf(line, "%63s %7s %511s", addr, type, name) != 3) continue; /* archive member headers */
        n_lines++;
        char key[520];
        snprintf(key, sizeof key, " %s ", name);
        cr_expect(strncmp(name, "gpt2_", 5) == 0, "%s exports %s (type %s): not gpt2_-prefixed", what, name, type);
        cr_expect(strstr(names, key) != NULL, "%s exports %s (type %s), which include/gpt2.h does not declare",
                  what, name, type);
        n_public += strstr(names, key) != NULL;
    }
    cr_assert_gt(n_lines, 0, "%s: nm listed no symbols", what);
    return n_public;
}

Test(library, only_the_public_names_are_exported) {
    const char *dir = getenv("GPT2_LIB_DIR");
    if (!dir) cr_skip_test("GPT2_LIB_DIR is not set (make test sets it)");
    char *names = public_names();
    int n_names = 0;
    for (const char *p = names + 1; *p; p = strchr(p, ' ') + 1) n_names++;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "nm -g --defined-only %s/libgpt2.a", dir);
    int a = check_nm(cmd, "libgpt2.a", names);
    snprintf(cmd, sizeof cmd, "nm -D --defined-only %s/libgpt2.so", dir);
    int so = check_nm(cmd, "libgpt2.so", names);
    /* and every public name is there (each defined once) */
    cr_expect_eq(a, n_names, "libgpt2.a defines %d of the %d public names", a, n_names);
    cr_expect_eq(so, n_names, "libgpt2.so defines %d of the %d public names", so, n_names);
}

/* The C block after "<!-- example: examples/hello.c -->" in README.md, which must equal the file. */
static char *readme_example(void) {
    char *readme = slurp_file("README.md");
    const char *marker = "<!-- example: examples/hello.c -->";
    char *m = strstr(readme, marker);
    cr_assert(m, "README.md has no %s", marker);
    char *start = strstr(m, "```c\n");
    cr_assert(start, "no ```c block after the marker");
    start += 5;
    char *end = strstr(start, "\n```");
    cr_assert(end, "the ```c block is not closed");
    end[1] = '\0';
    return start;
}

Test(library, readme_example_builds_against_the_installed_library, .timeout = 300) {
    const char *prefix = getenv("GPT2_PREFIX");
    if (!prefix) cr_skip_test("GPT2_PREFIX is not set (make test installs the library there)");
    const char *cc = getenv("GPT2_CC") ? getenv("GPT2_CC") : "cc";
    char *ex = readme_example();
    char *file = slurp_file("examples/hello.c");
    cr_assert_str_eq(ex, file, "README.md's example differs from examples/hello.c");
    char dir[] = "/tmp/gpt2-example-XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[8192], cwd[2048], *out;
    cr_assert(getcwd(cwd, sizeof cwd));
    /* shared, through pkg-config */
    snprintf(cmd, sizeof cmd,
             "cd %s && PKG_CONFIG_PATH=%s/lib/pkgconfig %s -Wall -Wextra -Werror -o hello %s/examples/hello.c "
             "$(PKG_CONFIG_PATH=%s/lib/pkgconfig pkg-config --cflags --libs gpt2) 2>&1",
             dir, prefix, cc, cwd, prefix);
    cr_assert_eq(run_capture(cmd, &out), 0, "%s:\n%s", cmd, out);
    free(out);
    /* static: the archive and its private libraries */
    snprintf(cmd, sizeof cmd,
             "cd %s && %s -o hello_static %s/examples/hello.c -I%s/include %s/lib/libgpt2.a "
             "$(PKG_CONFIG_PATH=%s/lib/pkgconfig pkg-config --static --libs gpt2 | sed 's/-lgpt2//') 2>&1",
             dir, cc, cwd, prefix, prefix, prefix);
    cr_assert_eq(run_capture(cmd, &out), 0, "%s:\n%s", cmd, out);
    free(out);

    char *want;
    snprintf(cmd, sizeof cmd, "%s generate --model " FIXTURES "/small --temperature 0 -n 16 --prompt The", cli_bin());
    cr_assert_eq(run_capture(cmd, &want), 0, "%s", cmd);
    test_keep(want, free);
    size_t n_want = strlen(want);
    cr_assert(n_want > 1 && want[n_want - 1] == '\n');
    want[n_want - 1] = '\0'; /* the CLI ends the stream with a newline */
    static const char *const bins[] = {"hello", "hello_static"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH=%s/lib %s/%s " FIXTURES "/small The", prefix, dir, bins[i]);
        cr_assert_eq(run_capture(cmd, &out), 0, "%s", cmd);
        test_keep(out, free);
        cr_assert_str_eq(out, want, "%s printed something else than `gpt2 generate`", bins[i]);
    }
    /* the shared one really uses the installed libgpt2.so */
    snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH=%s/lib ldd %s/hello | grep -c '%s/lib/libgpt2.so'", prefix, dir, prefix);
    cr_assert_eq(run_capture(cmd, NULL), 0, "%s/hello does not load %s/lib/libgpt2.so", dir, prefix);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}
