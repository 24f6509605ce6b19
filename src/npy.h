/* npy.h: NumPy .npy files of float32 matrices, for comparing logits with PyTorch. */
#ifndef GPT2_NPY_H
#define GPT2_NPY_H

#include <stddef.h>

#include "gpt2.h"

/* Writes data (rows, cols) as .npy version 1.0, dtype '<f4', C order. */
gpt2_status gpt2_npy_write(const char *path, const float *data, size_t rows, size_t cols, gpt2_error *err);

/* Reads a 2-D '<f4' C-order .npy file; *data is malloc'ed (rows, cols). */
gpt2_status gpt2_npy_read(const char *path, float **data, size_t *rows, size_t *cols, gpt2_error *err);

#endif /* GPT2_NPY_H */
