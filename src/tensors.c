/* tensors.c: the parameter table (see tensors.h). */
#include "tensors.h"

#include "util.h"

#define T(kind, hf_name, layered, member) [kind] = {hf_name, layered, offsetof(gpt2_weights, member)}
const gpt2_tensor_info gpt2_tensors[GPT2_N_TENSORS] = {
    T(GPT2_T_WTE, "wte.weight", 0, wte),                  /* (V, C) */
    T(GPT2_T_WPE, "wpe.weight", 0, wpe),                  /* (maxT, C) */
    T(GPT2_T_LN1W, "ln_1.weight", 1, ln1w),               /* (L, C) */
    T(GPT2_T_LN1B, "ln_1.bias", 1, ln1b),                 /* (L, C) */
    T(GPT2_T_QKVW, "attn.c_attn.weight", 1, qkvw),        /* (L, C, 3C) */
    T(GPT2_T_QKVB, "attn.c_attn.bias", 1, qkvb),          /* (L, 3C) */
    T(GPT2_T_ATTPROJW, "attn.c_proj.weight", 1, attprojw), /* (L, C, C) */
    T(GPT2_T_ATTPROJB, "attn.c_proj.bias", 1, attprojb),   /* (L, C) */
    T(GPT2_T_LN2W, "ln_2.weight", 1, ln2w),               /* (L, C) */
    T(GPT2_T_LN2B, "ln_2.bias", 1, ln2b),                 /* (L, C) */
    T(GPT2_T_FCW, "mlp.c_fc.weight", 1, fcw),             /* (L, C, 4C) */
    T(GPT2_T_FCB, "mlp.c_fc.bias", 1, fcb),               /* (L, 4C) */
    T(GPT2_T_FCPROJW, "mlp.c_proj.weight", 1, fcprojw),   /* (L, 4C, C) */
    T(GPT2_T_FCPROJB, "mlp.c_proj.bias", 1, fcprojb),     /* (L, C) */
    T(GPT2_T_LNFW, "ln_f.weight", 0, lnfw),               /* (C) */
    T(GPT2_T_LNFB, "ln_f.bias", 0, lnfb),                 /* (C) */
    T(GPT2_T_LMHEAD, "lm_head.weight", 0, lm_head),       /* (V, C); == wte when tied */
};
#undef T

size_t gpt2_tensor_shape(const gpt2_config *c, gpt2_tensor_kind k, uint64_t shape[2]) {
    const uint64_t C = (uint64_t)c->n_embd, V = (uint64_t)c->vocab_size, maxT = (uint64_t)c->n_positions;
    switch (k) {
    case GPT2_T_WTE: case GPT2_T_LMHEAD: shape[0] = V; shape[1] = C; return 2;
    case GPT2_T_WPE: shape[0] = maxT; shape[1] = C; return 2;
    case GPT2_T_QKVW: shape[0] = C; shape[1] = 3 * C; return 2;
    case GPT2_T_QKVB: shape[0] = 3 * C; return 1;
    case GPT2_T_ATTPROJW: shape[0] = C; shape[1] = C; return 2;
    case GPT2_T_FCW: shape[0] = C; shape[1] = 4 * C; return 2;
    case GPT2_T_FCB: shape[0] = 4 * C; return 1;
    case GPT2_T_FCPROJW: shape[0] = 4 * C; shape[1] = C; return 2;
    default: shape[0] = C; return 1; /* layer norms and the C-wide biases */
    }
}

int gpt2_tensor_numel(const gpt2_config *c, gpt2_tensor_kind k, size_t *per, size_t *total) {
    uint64_t shape[2];
    size_t nd = gpt2_tensor_shape(c, k, shape), one = (size_t)shape[0];
    if (nd == 2 && gpt2_mul_size((size_t)shape[0], (size_t)shape[1], &one)) return -1;
    if (per) *per = one;
    return gpt2_mul_size(one, gpt2_tensors[k].per_layer ? (size_t)c->n_layer : 1, total) ? -1 : 0;
}
