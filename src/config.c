/* config.c: config.json of a Hugging Face GPT-2 model, parsed and range-checked. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* config.json of the largest released GPT-2 is under 1 KB; anything near this is not a config. */
#define CONFIG_MAX_BYTES (16u << 20)

/* Reads the integer field `key` into *out. Absent: *present = 0 (when present is given) or an error.
 * Refuses non-integers (floats, strings, booleans) and values outside [1, max]. */
static gpt2_status get_int(const char *path, json_t *root, const char *key, long long max, int *out,
                           int *present, gpt2_error *err) {
    json_t *v = json_object_get(root, key);
    if (present) *present = v != NULL;
    if (!v) {
        if (present) return GPT2_OK;
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: missing field '%s'", path, key);
    }
    if (!json_is_integer(v))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: field '%s' must be an integer", path, key);
    long long x = json_integer_value(v);
    if (x < 1 || x > max)
        return gpt2_fail(err, GPT2_ERR_CONFIG, "%s: field '%s' is %lld, outside 1..%lld", path, key, x, max);
    *out = (int)x;
    return GPT2_OK;
}

/* A boolean field that must have the value `want` when present: these flags change the arithmetic of
 * the model, and this engine implements only GPT-2's. */
static gpt2_status check_bool(const char *path, json_t *root, const char *key, int want, gpt2_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return GPT2_OK;
    if (!json_is_boolean(v))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: field '%s' must be true or false", path, key);
    if (json_is_true(v) != want)
        return gpt2_fail(err, GPT2_ERR_CONFIG, "%s: field '%s' = %s is not supported (only %s)", path, key,
                         want ? "false" : "true", want ? "true" : "false");
    return GPT2_OK;
}

static gpt2_status parse_config(const char *path, json_t *root, gpt2_config *c, gpt2_error *err) {
    gpt2_status s;
    if (!json_is_object(root)) return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: not a JSON object", path);

    json_t *mt = json_object_get(root, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt2") != 0))
        return gpt2_fail(err, GPT2_ERR_CONFIG, "%s: field 'model_type' is %s%s%s, not \"gpt2\"", path,
                         json_is_string(mt) ? "\"" : "", json_is_string(mt) ? json_string_value(mt) : "not a string",
                         json_is_string(mt) ? "\"" : "");

    if ((s = get_int(path, root, "n_layer", 256, &c->n_layer, NULL, err))) return s;
    if ((s = get_int(path, root, "n_head", 256, &c->n_head, NULL, err))) return s;
    if ((s = get_int(path, root, "n_embd", 16384, &c->n_embd, NULL, err))) return s;
    if ((s = get_int(path, root, "vocab_size", 1 << 20, &c->vocab_size, NULL, err))) return s;
    /* n_ctx is the name in the oldest configs; n_positions wins when both are there. */
    int has_pos = 0, has_ctx = 0, n_ctx = 0;
    if ((s = get_int(path, root, "n_positions", 65536, &c->n_positions, &has_pos, err))) return s;
    if (!has_pos) {
        if ((s = get_int(path, root, "n_ctx", 65536, &n_ctx, &has_ctx, err))) return s;
        if (!has_ctx) return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: missing field 'n_positions' (or 'n_ctx')", path);
        c->n_positions = n_ctx;
    }
    if (c->n_embd % c->n_head != 0)
        return gpt2_fail(err, GPT2_ERR_CONFIG, "%s: field 'n_embd' (%d) is not divisible by 'n_head' (%d)", path,
                         c->n_embd, c->n_head);

    c->layer_norm_epsilon = 1e-5f;
    json_t *eps = json_object_get(root, "layer_norm_epsilon");
    if (eps) {
        if (!json_is_number(eps))
            return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: field 'layer_norm_epsilon' must be a number", path);
        double e = json_number_value(eps);
        /* (float)e > 0 also refuses values that underflow to zero in float32. */
        if (!isfinite(e) || !(e > 0.0 && e < 1.0) || !((float)e > 0.0f))
            return gpt2_fail(err, GPT2_ERR_CONFIG, "%s: field 'layer_norm_epsilon' is %g, outside (0, 1)", path, e);
        c->layer_norm_epsilon = (float)e;
    }

    json_t *act = json_object_get(root, "activation_function");
    if (act) {
        if (!json_is_string(act))
            return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: field 'activation_function' must be a string", path);
        if (strcmp(json_string_value(act), "gelu_new") != 0)
            return gpt2_fail(err, GPT2_ERR_CONFIG,
                             "%s: field 'activation_function' is \"%s\"; only \"gelu_new\" is supported", path,
                             json_string_value(act));
    }

    /* The MLP width is fixed at 4C (n_inner null or absent means 4C in transformers). */
    json_t *inner = json_object_get(root, "n_inner");
    if (inner && !json_is_null(inner)) {
        if (!json_is_integer(inner))
            return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: field 'n_inner' must be an integer or null", path);
        if (json_integer_value(inner) != 4LL * c->n_embd)
            return gpt2_fail(err, GPT2_ERR_CONFIG, "%s: field 'n_inner' is %lld; only 4 * n_embd (%lld) is supported",
                             path, (long long)json_integer_value(inner), 4LL * c->n_embd);
    }
    if ((s = check_bool(path, root, "scale_attn_weights", 1, err))) return s;
    if ((s = check_bool(path, root, "scale_attn_by_inverse_layer_idx", 0, err))) return s;
    /* Either value is fine; the model loader needs lm_head.weight in the checkpoint when it is false. */
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        return gpt2_fail(err, GPT2_ERR_FORMAT, "%s: field 'tie_word_embeddings' must be true or false", path);
    c->tie_word_embeddings = !tie || json_is_true(tie);
    return GPT2_OK;
}

gpt2_status gpt2_config_load(const char *path, gpt2_config *out, gpt2_error *err) {
    if (!path || !out) return gpt2_fail(err, GPT2_ERR_ARG, "gpt2_config_load: NULL argument");
    char *text = NULL;
    size_t n = 0;
    json_t *root = NULL;
    gpt2_status s = gpt2_read_file(path, CONFIG_MAX_BYTES, &text, &n, err);
    if (s) goto done;
    json_error_t je;
    root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        s = gpt2_fail(err, GPT2_ERR_FORMAT, "%s: line %d, column %d: %s", path, je.line, je.column, je.text);
        goto done;
    }
    gpt2_config c;
    memset(&c, 0, sizeof c);
    if ((s = parse_config(path, root, &c, err))) goto done;
    *out = c;
done:
    json_decref(root);
    free(text);
    return s;
}
