#include <gpt2.h>
#include <stdio.h>
#include <string.h>

static int print(const gpt2_event *ev) { /* each piece of final text, as it comes */
    if (ev->kind == GPT2_EVENT_TEXT) fwrite(ev->text, 1, ev->n_text, stdout);
    return 0;
}

int main(int argc, char **argv) { /* hello MODEL_DIR PROMPT */
    gpt2_engine_opts o = gpt2_engine_opts_default();
    gpt2_engine *e;
    gpt2_error err = {0};
    if (argc != 3) return 2;
    if (gpt2_engine_create(argv[1], &o, &e, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    gpt2_request r = {.prompt_text = argv[2], .n_prompt_text = strlen(argv[2]), .max_tokens = 16,
                      .sampling = gpt2_sampling_default(), .on_event = print}; /* greedy */
    if (gpt2_engine_submit(e, &r, NULL, &err) || gpt2_engine_run(e, &err)) fprintf(stderr, "%s\n", err.msg);
    gpt2_engine_destroy(e);
    return err.status != GPT2_OK;
}
