/* cuda_sample.c: sampling on the device, in groups of up to G requests (the scratch is sized for G).
 * The host packs each group's parameters, penalty histories and n-gram bans (the tokens
 * gpt2_ngram_banned lists, after that request's history) into pinned staging, one copy goes up,
 * the kernels of kernels/sample.cu run, and only the G token ids (and, when asked, their G
 * log-probabilities) come back. */
#include <string.h>

#include "cuda_internal.h"
#include "util.h"

gpt2_status gpt2_cuda_sample(gpt2_backend *be, const gpt2_sample_req *reqs, int n, int *out_tokens,
                             float *out_logprobs, gpt2_error *err) {
    gpt2_cuda_ctx *x = be->ctx;
    gpt2_cuda_sampler *sm = &x->smp;
    const gpt2_cuda_plan *p = &x->plan;
    const int V = be->model->cfg.vocab_size, G = p->sample_rows;
    if (n < 0 || n > x->n_rows)
        return gpt2_fail(err, GPT2_ERR_ARG, "sample: %d rows asked, the last forward made %d", n, x->n_rows);
    if (n == 0) return GPT2_OK;
    if (!reqs || !out_tokens) return gpt2_fail(err, GPT2_ERR_ARG, "sample: no requests or no output");
    for (int i = 0; i < n; i++) {
        const gpt2_sample_req *r = &reqs[i];
        if (!r->p || r->n_history < 0 || (r->n_history > 0 && !r->history) || r->n_prompt < 0 ||
            r->n_prompt > r->n_history || r->no_repeat_ngram < 0)
            return gpt2_fail(err, GPT2_ERR_ARG, "sample: request %d: bad parameters or history (%d tokens, %d of "
                                                "them prompt, no_repeat_ngram_size %d)", i, r->n_history,
                             r->n_prompt, r->no_repeat_ngram);
    }
    CUDA_CHECK(cudaSetDevice(x->device));
    for (int done = 0; done < n;) {
        int g = 0, used = 0, any_sampled = 0;
        while (done + g < n && g < G) {
            const gpt2_sample_req *r = &reqs[done + g];
            const gpt2_sampling *sp = r->p;
            const int pen = sp->repetition_penalty != 1.0f || sp->frequency_penalty != 0.0f ||
                            sp->presence_penalty != 0.0f;
            const int nh = pen ? r->n_history : 0;
            /* the ban list takes at most one id per n-gram window (gpt2_ngram_banned without marks) */
            const int ng = r->no_repeat_ngram, nb_max = ng > 0 && r->n_history >= ng ? r->n_history - ng + 1 : 0;
            const long long need = (long long)nh + nb_max; /* both <= INT_MAX: no overflow */
            if (need > p->hist_cap)
                return gpt2_fail(err, GPT2_ERR_LIMIT, "sample: request %d needs %lld staging ids (%d history tokens for "
                                                      "its penalties, up to %d banned by no_repeat_ngram_size %d); this "
                                                      "backend holds at most %d", done + g, need, nh, nb_max, ng,
                                 p->hist_cap);
            if (used + need > p->hist_cap) break; /* the next group takes it */
            gpt2_cuda_sample_params *q = &sm->params_h[g];
            q->temperature = sp->temperature;
            q->top_p = sp->top_p;
            q->repetition_penalty = sp->repetition_penalty;
            q->frequency_penalty = sp->frequency_penalty;
            q->presence_penalty = sp->presence_penalty;
            q->uniform = gpt2_sample_uniform(sp->seed, r->step);
            q->top_k = sp->top_k;
            q->greedy = sp->temperature <= 0.0f || sp->top_k == 1;
            q->row = done + g;
            q->hist_off = used;
            q->n_hist = nh;
            q->n_prompt = pen ? r->n_prompt : 0;
            if (nh > 0) memcpy(sm->hist_h + used, r->history, sizeof(int) * (size_t)nh);
            used += nh;
            q->ban_off = used;
            q->n_ban = nb_max > 0 ? gpt2_ngram_banned(r->history, r->n_history, ng, V, NULL, sm->hist_h + used) : 0;
            used += q->n_ban;
            any_sampled |= !q->greedy;
            g++;
        }
        CUDA_CHECK(cudaMemcpyAsync(sm->params_d, sm->params_h, sizeof(gpt2_cuda_sample_params) * (size_t)g,
                                   cudaMemcpyHostToDevice, x->stream));
        if (used > 0)
            CUDA_CHECK(cudaMemcpyAsync(sm->hist_d, sm->hist_h, sizeof(int) * (size_t)used, cudaMemcpyHostToDevice,
                                       x->stream));
        CUDA_CHECK(sample_cuda(sm->out_d, out_logprobs ? sm->lp_d : NULL, x->a.logits, V, p->Vp, sm->params_d,
                               sm->hist_d, g, any_sampled, &sm->scr, x->stream));
        CUDA_CHECK(cudaMemcpyAsync(sm->out_h, sm->out_d, sizeof(int) * (size_t)g, cudaMemcpyDeviceToHost,
                                   x->stream));
        if (out_logprobs)
            CUDA_CHECK(cudaMemcpyAsync(sm->lp_h, sm->lp_d, sizeof(float) * (size_t)g, cudaMemcpyDeviceToHost,
                                       x->stream));
        CUDA_CHECK(cudaStreamSynchronize(x->stream)); /* also: the pinned staging is free for the next group */
        memcpy(out_tokens + done, sm->out_h, sizeof(int) * (size_t)g);
        if (out_logprobs) memcpy(out_logprobs + done, sm->lp_h, sizeof(float) * (size_t)g);
        done += g;
    }
    return GPT2_OK;
}
