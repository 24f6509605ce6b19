/* status.c: gpt2_strerror (public). Kept apart from util.c, which the CLI also links on its own. */
#include "gpt2.h"

const char *gpt2_strerror(gpt2_status s) {
    switch (s) {
    case GPT2_OK: return "ok";
    case GPT2_ERR_ARG: return "invalid argument";
    case GPT2_ERR_IO: return "input/output error";
    case GPT2_ERR_FORMAT: return "malformed file";
    case GPT2_ERR_CONFIG: return "unsupported model configuration";
    case GPT2_ERR_NOMEM: return "out of host memory";
    case GPT2_ERR_DEVICE: return "GPU error";
    case GPT2_ERR_DEVICE_MEM: return "does not fit in GPU memory";
    case GPT2_ERR_UNSUPPORTED: return "unsupported";
    case GPT2_ERR_LIMIT: return "limit exceeded";
    case GPT2_ERR_ABORTED: return "aborted by the caller";
    }
    return "unknown status";
}
