/* backend.c: choosing a backend, and the checks both backends share. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

gpt2_status gpt2_backend_check_opts(const gpt2_model *m, const gpt2_backend_opts *o, gpt2_error *err) {
    const gpt2_config *c = &m->cfg;
    if (o->max_slots < 1 || o->max_slots > 65536)
        return gpt2_fail(err, GPT2_ERR_ARG, "max_slots = %d: must be in 1..65536", o->max_slots);
    if (o->max_seq < 1 || o->max_seq > c->n_positions)
        return gpt2_fail(err, GPT2_ERR_ARG, "max_seq = %d: must be in 1..%d (n_positions)", o->max_seq,
                         c->n_positions);
    if (o->max_tokens < o->max_slots || o->max_tokens > (1 << 24))
        return gpt2_fail(err, GPT2_ERR_ARG, "max_tokens = %d: must be in max_slots (%d)..%d", o->max_tokens,
                         o->max_slots, 1 << 24);
    if (o->dtype != GPT2_DTYPE_F32 && o->dtype != GPT2_DTYPE_F16 && o->dtype != GPT2_DTYPE_BF16)
        return gpt2_fail(err, GPT2_ERR_ARG, "dtype %d: unknown", (int)o->dtype);
    return GPT2_OK;
}

gpt2_status gpt2_backend_check_chunks(const gpt2_backend_opts *o, const gpt2_chunk *chunks, int n_chunks,
                                      int all_logits, int n_vocab, gpt2_error *err) {
    if (n_chunks < 1 || n_chunks > o->max_slots)
        return gpt2_fail(err, GPT2_ERR_ARG, "forward: %d chunks, must be 1..%d", n_chunks, o->max_slots);
    if (all_logits && !o->all_logits)
        return gpt2_fail(err, GPT2_ERR_ARG, "forward: all_logits asked of a backend created without it");
    long total = 0;
    for (int i = 0; i < n_chunks; i++) {
        const gpt2_chunk *ch = &chunks[i];
        if (ch->slot < 0 || ch->slot >= o->max_slots)
            return gpt2_fail(err, GPT2_ERR_ARG, "forward: chunk %d slot %d outside 0..%d", i, ch->slot,
                             o->max_slots - 1);
        if (ch->n < 1 || ch->pos < 0 || ch->pos > o->max_seq - ch->n)
            return gpt2_fail(err, GPT2_ERR_LIMIT, "forward: chunk %d: positions %d..%d exceed the context of %d",
                             i, ch->pos, ch->pos + ch->n - 1, o->max_seq);
        for (int j = 0; j < i; j++)
            if (chunks[j].slot == ch->slot)
                return gpt2_fail(err, GPT2_ERR_ARG, "forward: slot %d appears twice", ch->slot);
        for (int t = 0; t < ch->n; t++)
            if (ch->tokens[t] < 0 || ch->tokens[t] >= n_vocab)
                return gpt2_fail(err, GPT2_ERR_ARG, "forward: token id %d outside the model's vocabulary 0..%d",
                                 ch->tokens[t], n_vocab - 1);
        total += ch->n;
    }
    if (total > o->max_tokens)
        return gpt2_fail(err, GPT2_ERR_ARG, "forward: %ld tokens, over max_tokens %d", total, o->max_tokens);
    long rows = all_logits ? total : n_chunks;
    for (int i = 0; !all_logits && i < n_chunks; i++)
        if (chunks[i].all_rows) rows += chunks[i].n - 1;
    if (rows > gpt2_backend_logit_rows(o))
        return gpt2_fail(err, GPT2_ERR_LIMIT, "forward: %ld logits rows asked, the backend holds %d", rows,
                         gpt2_backend_logit_rows(o));
    return GPT2_OK;
}

int gpt2_backend_logit_rows(const gpt2_backend_opts *o) { return o->all_logits ? o->max_tokens : o->max_slots; }

gpt2_status gpt2_backend_check_copy(const gpt2_backend_opts *o, int src, int dst, int n_pos, gpt2_error *err) {
    if (src < 0 || src >= o->max_slots || dst < 0 || dst >= o->max_slots || src == dst)
        return gpt2_fail(err, GPT2_ERR_ARG, "copy_slot: slots %d -> %d: must be distinct, in 0..%d", src, dst,
                         o->max_slots - 1);
    if (n_pos < 0 || n_pos > o->max_seq)
        return gpt2_fail(err, GPT2_ERR_ARG, "copy_slot: %d positions: must be in 0..%d (max_seq)", n_pos, o->max_seq);
    return GPT2_OK;
}

#ifndef GPT2_HAVE_CUDA
int gpt2_cuda_device_count(void) { return 0; }

gpt2_status gpt2_backend_cuda_create(const gpt2_model *m, const gpt2_backend_opts *opts, gpt2_backend **out,
                                     gpt2_error *err) {
    *out = NULL;
    return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "--device cuda: this build has no CUDA support (nvcc was not "
                                                "found when it was built)");
}

gpt2_status gpt2_cuda_mem_info(size_t *used_bytes, size_t *total_bytes, gpt2_error *err) {
    if (used_bytes) *used_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "device memory: this build has no CUDA support");
}
#endif

gpt2_status gpt2_backend_create(const char *device, const gpt2_model *m, const gpt2_backend_opts *opts,
                                gpt2_backend **out, gpt2_error *err) {
    *out = NULL;
    gpt2_status st = gpt2_backend_check_opts(m, opts, err);
    if (st != GPT2_OK) return st;
    if (!strcmp(device, "cpu")) return gpt2_backend_cpu_create(m, opts, out, err);
    if (!strcmp(device, "cuda")) return gpt2_backend_cuda_create(m, opts, out, err);
    if (!strcmp(device, "auto")) {
        if (gpt2_cuda_device_count() > 0) return gpt2_backend_cuda_create(m, opts, out, err);
        return gpt2_backend_cpu_create(m, opts, out, err);
    }
    return gpt2_fail(err, GPT2_ERR_ARG, "--device '%s': expected cpu, cuda or auto", device);
}

void gpt2_backend_free(gpt2_backend *be) {
    if (be) be->destroy(be);
}
