/* tensors.h: the one table of GPT-2's parameter tensors, shared by the loader and every backend.
 *
 * Each kind has its Hugging Face name, whether it repeats per layer, its shape from the config and
 * its field in gpt2_weights. The loader finds, checks and converts tensors by walking this table; the
 * CUDA backend plans, uploads and points at its device copies by walking it too, so no list of the
 * 17 tensors is written out anywhere else.
 */
#ifndef GPT2_TENSORS_H
#define GPT2_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "gpt2.h"

/* In the order of gpt2_weights and of the memory layout. */
typedef enum {
    GPT2_T_WTE, GPT2_T_WPE,
    GPT2_T_LN1W, GPT2_T_LN1B, GPT2_T_QKVW, GPT2_T_QKVB, GPT2_T_ATTPROJW, GPT2_T_ATTPROJB,
    GPT2_T_LN2W, GPT2_T_LN2B, GPT2_T_FCW, GPT2_T_FCB, GPT2_T_FCPROJW, GPT2_T_FCPROJB,
    GPT2_T_LNFW, GPT2_T_LNFB, GPT2_T_LMHEAD,
    GPT2_N_TENSORS
} gpt2_tensor_kind;

typedef struct {
    const char *name;   /* Hugging Face name; after "h.{l}." for per-layer kinds */
    int per_layer;      /* 1: one tensor per layer, stored as an (L, ...) block */
    size_t field;       /* offsetof(gpt2_weights, ...) of its pointer */
} gpt2_tensor_info;

extern const gpt2_tensor_info gpt2_tensors[GPT2_N_TENSORS];

/* Shape of one tensor of kind k (one layer's for per-layer kinds) from the config; returns its
 * number of dimensions (1 or 2). */
size_t gpt2_tensor_shape(const gpt2_config *c, gpt2_tensor_kind k, uint64_t shape[2]);

/* Elements of kind k: one layer's in *per (when per is not NULL), all layers' in *total. 0 ok, -1 when
 * a product overflows size_t. */
int gpt2_tensor_numel(const gpt2_config *c, gpt2_tensor_kind k, size_t *per, size_t *total);

/* The gpt2_weights field of kind k. */
static inline float **gpt2_tensor_field(gpt2_weights *w, gpt2_tensor_kind k) {
    return (float **)(void *)((char *)w + gpt2_tensors[k].field);
}
static inline const float *gpt2_tensor_data(const gpt2_weights *w, gpt2_tensor_kind k) {
    return *(float *const *)(const void *)((const char *)w + gpt2_tensors[k].field);
}

#endif /* GPT2_TENSORS_H */
