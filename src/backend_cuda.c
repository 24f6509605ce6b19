/* backend_cuda.c: the CUDA engine's entry points: device queries, creation (plan checked against free
 * memory, one arena, weights uploaded, graphs set up) and destruction, and the vtable. C on the host
 * side (CUDA runtime and cuBLAS C APIs), kernels in kernels/ behind C launchers. The memory plan is in
 * cuda_plan.c, the forward pass and graphs in cuda_forward.c, sampling in cuda_sample.c; what they
 * share, and the state's layout, in cuda_internal.h.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "util.h"

#include "../kernels/attention_prefill.cuh"

/* ---------------------------------------------------------------------------------------------- */
/* Errors and device queries                                                                       */

gpt2_status gpt2_cuda_fail(gpt2_error *err, cudaError_t e, const char *call, const char *file, int line) {
    (void)cudaGetLastError(); /* clear a non-sticky error so that the next call starts clean */
    return gpt2_fail(err, e == cudaErrorMemoryAllocation ? GPT2_ERR_DEVICE_MEM : GPT2_ERR_DEVICE,
                     "cuda: %s failed: %s (%s) at %s:%d", call, cudaGetErrorName(e), cudaGetErrorString(e), file,
                     line);
}

gpt2_status gpt2_cublas_fail(gpt2_error *err, cublasStatus_t s, const char *call, const char *file, int line) {
    return gpt2_fail(err, GPT2_ERR_DEVICE, "cublas: %s failed: %s (%s) at %s:%d", call, cublasGetStatusName(s),
                     cublasGetStatusString(s), file, line);
}

gpt2_status gpt2_cuda_mem_info(size_t *used_bytes, size_t *total_bytes, gpt2_error *err) {
    size_t free_b = 0, total_b = 0;
    if (!used_bytes || !total_bytes) return gpt2_fail(err, GPT2_ERR_ARG, "gpt2_cuda_mem_info: NULL argument");
    *used_bytes = *total_bytes = 0;
    if (gpt2_cuda_device_count() == 0)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "device memory: no CUDA device is visible");
    CUDA_CHECK(cudaSetDevice(0)); /* the device every backend uses */
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    *used_bytes = total_b - free_b;
    *total_bytes = total_b;
    return GPT2_OK;
}

int gpt2_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Destruction and creation                                                                        */

static void ctx_free(gpt2_cuda_ctx *x) {
    if (!x) return;
    /* best effort: errors here have nowhere to go, and a failed context still frees its memory */
    (void)cudaSetDevice(x->device);
    if (x->stream) (void)cudaStreamSynchronize(x->stream);
    for (int i = 0; i < x->graphs.n_buckets; i++)
        if (x->graphs.exec[i]) (void)cudaGraphExecDestroy(x->graphs.exec[i]);
    if (x->cublas) (void)cublasDestroy(x->cublas);
    if (x->a.in_copied) (void)cudaEventDestroy(x->a.in_copied);
    if (x->stream) (void)cudaStreamDestroy(x->stream);
    if (x->arena) (void)cudaFree(x->arena);
    if (x->a.in_h) (void)cudaFreeHost(x->a.in_h);
    if (x->smp.params_h) (void)cudaFreeHost(x->smp.params_h);
    if (x->smp.hist_h) (void)cudaFreeHost(x->smp.hist_h);
    if (x->smp.out_h) (void)cudaFreeHost(x->smp.out_h);
    if (x->smp.lp_h) (void)cudaFreeHost(x->smp.lp_h);
    (void)cudaGetLastError();
    free(x);
}

static void cuda_destroy(gpt2_backend *be) {
    if (!be) return;
    ctx_free(be->ctx);
    free(be);
}

void gpt2_cuda_test_break_next_capture(gpt2_backend *be) {
    if (be && be->ctx && be->destroy == cuda_destroy) ((gpt2_cuda_ctx *)be->ctx)->graphs.break_next_capture = 1;
}

/* Slot src's first n_pos positions of K and V onto slot dst, device to device on the backend's stream
 * (ordered after the forwards that wrote them and before the next one). Within a layer the cache is
 * (S, NH, maxS, HS): one 2D copy per layer and tensor, NH runs of n_pos x HS elements. */
static gpt2_status cuda_copy_slot(gpt2_backend *be, int src, int dst, int n_pos, gpt2_error *err) {
    gpt2_cuda_ctx *x = be->ctx;
    const gpt2_config *c = &be->model->cfg;
    gpt2_status st = gpt2_backend_check_copy(&be->opts, src, dst, n_pos, err);
    if (st != GPT2_OK || n_pos == 0) return st;
    CUDA_CHECK(cudaSetDevice(x->device));
    const size_t es = gpt2_cuda_dtype_size(be->opts.dtype), HS = (size_t)(c->n_embd / c->n_head);
    const size_t NH = (size_t)c->n_head, maxS = (size_t)be->opts.max_seq, S = (size_t)be->opts.max_slots;
    const size_t pitch = maxS * HS * es, width = (size_t)n_pos * HS * es, slot_bytes = NH * pitch;
    for (int l = 0; l < c->n_layer; l++) {
        const size_t layer = (size_t)l * S * slot_bytes;
        char *k = (char *)x->kv.k + layer, *v = (char *)x->kv.v + layer;
        CUDA_CHECK(cudaMemcpy2DAsync(k + (size_t)dst * slot_bytes, pitch, k + (size_t)src * slot_bytes, pitch, width,
                                     NH, cudaMemcpyDeviceToDevice, x->stream));
        CUDA_CHECK(cudaMemcpy2DAsync(v + (size_t)dst * slot_bytes, pitch, v + (size_t)src * slot_bytes, pitch, width,
                                     NH, cudaMemcpyDeviceToDevice, x->stream));
    }
    return GPT2_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Creation                                                                                        */

gpt2_status gpt2_backend_cuda_create(const gpt2_model *m, const gpt2_backend_opts *opts, gpt2_backend **out,
                                     gpt2_error *err) {
    *out = NULL;
    gpt2_status st = gpt2_backend_check_opts(m, opts, err);
    if (st != GPT2_OK) return st;
    const gpt2_config *c = &m->cfg;
    if (c->n_head < 1 || c->n_embd % c->n_head != 0 || c->n_embd / c->n_head > GPT2_ATTN_MAX_HS)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "cuda: head size %d/%d: the attention kernels take head sizes "
                                                    "up to %d", c->n_embd, c->n_head, GPT2_ATTN_MAX_HS);
    if (gpt2_cuda_device_count() == 0)
        return gpt2_fail(err, GPT2_ERR_UNSUPPORTED, "cuda: no CUDA device is visible (cudaGetDeviceCount found none)");

    gpt2_backend *be = calloc(1, sizeof *be);
    gpt2_cuda_ctx *x = calloc(1, sizeof *x);
    if (!be || !x) {
        free(be);
        free(x);
        return gpt2_fail(err, GPT2_ERR_NOMEM, "cuda: out of host memory");
    }
    struct cudaDeviceProp prop;
    x->device = 0;
    CUDA_TRY(cudaSetDevice(x->device));
    CUDA_TRY(cudaGetDeviceProperties(&prop, x->device));
    x->n_sm = prop.multiProcessorCount;
    CUDA_TRY(cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&x->cublas));
    CUBLAS_TRY(cublasSetStream(x->cublas, x->stream)); /* before cublasSetWorkspace, which it would reset */
    switch (opts->dtype) {
    case GPT2_DTYPE_F32:
        x->dt_cuda = CUDA_R_32F;
        x->compute = opts->allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        CUBLAS_TRY(cublasSetMathMode(x->cublas, opts->allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
        break;
    case GPT2_DTYPE_F16:
    case GPT2_DTYPE_BF16:
        x->dt_cuda = opts->dtype == GPT2_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
        x->compute = CUBLAS_COMPUTE_32F;
        CUBLAS_TRY(cublasSetMathMode(x->cublas, CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
        break;
    }

    /* the plan, checked against free memory before anything large is allocated */
    if ((st = gpt2_cuda_make_plan(m, opts, &x->plan, err))) goto fail;
    const gpt2_cuda_plan *p = &x->plan;
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    const size_t need = gpt2_cuda_plan_need(p);
    if (need > free_b) {
        int s_fit = gpt2_cuda_largest_fitting_slots(m, opts, free_b);
        char fit[160];
        if (s_fit > 0)
            snprintf(fit, sizeof fit, "the largest max_slots that fits is %d", s_fit);
        else
            snprintf(fit, sizeof fit, "no max_slots fits: lower max_tokens%s or max_seq, or use a 16-bit dtype",
                     opts->all_logits ? " (all_logits keeps max_tokens x vocab logits)" : "");
        st = gpt2_fail(err, GPT2_ERR_DEVICE_MEM,
                       "cuda: the plan needs %.1f MiB of device memory (weights %.1f, KV cache %.1f for %d slots x %d "
                       "positions, activations and scratch %.1f, headroom %.1f) but %s has %.1f MiB free of %.1f; %s",
                       MIB(need), MIB(p->weight_bytes), MIB(p->kv_bytes), opts->max_slots, opts->max_seq,
                       MIB(p->total - p->weight_bytes - p->kv_bytes + p->staging_bytes), MIB(HEADROOM_BYTES), prop.name,
                       MIB(free_b), MIB(total_b), fit);
        goto fail;
    }

    CUDA_TRY(cudaMalloc((void **)&x->arena, p->total));
    CUDA_TRY(cudaMemsetAsync(x->arena, 0, p->total, x->stream)); /* no read of uninitialised memory, ever */
    gpt2_cuda_point(x, m);
    CUBLAS_TRY(cublasSetWorkspace(x->cublas, x->arena + p->cublas_ws, CUBLAS_WORKSPACE_BYTES));

    CUDA_TRY(cudaMallocHost((void **)&x->a.in_h, p->n_inputs * sizeof(int)));
    CUDA_TRY(cudaMallocHost((void **)&x->smp.params_h, (size_t)p->sample_rows * sizeof(gpt2_cuda_sample_params)));
    CUDA_TRY(cudaMallocHost((void **)&x->smp.hist_h, (size_t)p->hist_cap * sizeof(int)));
    CUDA_TRY(cudaMallocHost((void **)&x->smp.out_h, (size_t)p->sample_rows * sizeof(int)));
    CUDA_TRY(cudaMallocHost((void **)&x->smp.lp_h, (size_t)p->sample_rows * sizeof(float)));
    CUDA_TRY(cudaEventCreateWithFlags(&x->a.in_copied, cudaEventDisableTiming));

    if ((st = gpt2_cuda_upload_weights(x, m, opts->dtype, err))) goto fail;

    gpt2_cuda_graphs *gr = &x->graphs;
    gr->use = !opts->no_cuda_graphs;
    for (int b = 1; b < opts->max_slots && gr->n_buckets < MAX_BUCKETS - 1; b *= 2)
        gr->bucket_size[gr->n_buckets++] = b;
    gr->bucket_size[gr->n_buckets++] = opts->max_slots;

    CUDA_TRY(cudaStreamSynchronize(x->stream));
    be->name = "cuda";
    be->warning[0] = '\0';
    snprintf(be->device_name, sizeof be->device_name, "%s", prop.name);
    be->device_bytes = p->total;
    be->opts = *opts;
    be->model = m;
    be->ctx = x;
    be->forward = gpt2_cuda_forward;
    be->read_logits = gpt2_cuda_read_logits;
    be->sample = gpt2_cuda_sample;
    be->copy_slot = cuda_copy_slot;
    be->destroy = cuda_destroy;
    *out = be;
    return GPT2_OK;
fail:
    ctx_free(x);
    free(be);
    return st;
}
