#!/usr/bin/env python3
"""Write a randomly initialised GPT-2 model directory in the real Hugging Face layout.

    make_random_model.py --config gpt2-medium OUT [--seed S] [--dtype float32|float16|bfloat16]
                         [--tokenizer DIR] [--n-layer N --n-embd C --n-head H --n-positions T
                          --vocab-size V] [--no-transformers]

OUT gets config.json, the weights, and vocab.json + merges.txt copied from --tokenizer (default
tests/data/gpt2-tokenizer). The shapes are those of the named OpenAI checkpoint (gpt2 124M,
gpt2-medium 355M, gpt2-large 774M, gpt2-xl 1.5B, distilgpt2 82M) unless overridden. Useful for
speed and memory tests of full-size models where no real checkpoint can be downloaded; the text it
generates is noise.

Two ways to write the weights:
  * with transformers importable (default): GPT2LMHeadModel(config) initialised by transformers
    after torch.manual_seed(S), converted to --dtype and written by save_pretrained
    ("transformer."-prefixed names, lm_head dropped when tied, shards past --max-shard-size);
  * with --no-transformers, or when transformers is not importable: numpy draws the weights
    (normal(0, 0.02), residual projections scaled by 1/sqrt(2 L) as GPT-2 does, layernorms 1/0,
    biases 0) and they are streamed tensor by tensor into one model.safetensors in the hub's
    layout (names without the "transformer." prefix, tied, plus the h.N.attn.bias causal-mask
    buffers the hub files carry unless --no-attn-bias), with an old-style config.json. This path
    needs only numpy, and never holds more than one tensor in memory.
Both paths are deterministic for a given --seed.
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The released OpenAI GPT-2 shapes. All use vocab 50257, context 1024, gelu_new, eps 1e-5.
CONFIGS = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
}

DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}


def hub_config(cfg):
    """config.json as the hub's gpt2 repos write it."""
    out = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": cfg["n_positions"],
        "n_embd": cfg["n_embd"],
        "n_head": cfg["n_head"],
        "n_layer": cfg["n_layer"],
        "n_positions": cfg["n_positions"],
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": cfg["vocab_size"],
    }
    if cfg["vocab_size"] <= 50256:
        out["bos_token_id"] = out["eos_token_id"] = cfg["vocab_size"] - 1
    return out


def hub_tensors(cfg, attn_bias):
    """[(name, shape, kind)] in the hub layout; kind tells how to initialise it."""
    C, L, V, T = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    out = [("wte.weight", (V, C), "w"), ("wpe.weight", (T, C), "wpe")]
    for i in range(L):
        p = "h.%d." % i
        if attn_bias:
            out.append((p + "attn.bias", (1, 1, T, T), "mask"))
        out += [
            (p + "ln_1.weight", (C,), "one"), (p + "ln_1.bias", (C,), "zero"),
            (p + "attn.c_attn.weight", (C, 3 * C), "w"), (p + "attn.c_attn.bias", (3 * C,), "zero"),
            (p + "attn.c_proj.weight", (C, C), "wres"), (p + "attn.c_proj.bias", (C,), "zero"),
            (p + "ln_2.weight", (C,), "one"), (p + "ln_2.bias", (C,), "zero"),
            (p + "mlp.c_fc.weight", (C, 4 * C), "w"), (p + "mlp.c_fc.bias", (4 * C,), "zero"),
            (p + "mlp.c_proj.weight", (4 * C, C), "wres"), (p + "mlp.c_proj.bias", (C,), "zero"),
        ]
    out += [("ln_f.weight", (C,), "one"), ("ln_f.bias", (C,), "zero")]
    return out


def to_bytes(x, dtype):
    """float32 array -> little-endian bytes of dtype (bfloat16 rounded to nearest even)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.astype("<f4").tobytes()
    if dtype == "float16":
        return x.astype("<f2").tobytes()
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def write_numpy(out_dir, cfg, dtype, seed, attn_bias):
    """Streams a hub-layout model.safetensors and config.json; needs only numpy."""
    st_dtype, size = DTYPES[dtype]
    tensors = hub_tensors(cfg, attn_bias)
    # Same order as the safetensors library: by dtype alignment (all equal here), then by name.
    tensors.sort(key=lambda t: t[0])
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tname, shape, _ in tensors:
        n = int(np.prod(shape)) * size
        header[tname] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    rng = np.random.default_rng(seed)
    std = 0.02
    res_std = std / np.sqrt(2 * cfg["n_layer"])
    path = os.path.join(out_dir, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for tname, shape, kind in tensors:
            if kind == "w":
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            elif kind == "wpe":
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
            elif kind == "wres":
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(res_std)
            elif kind == "one":
                x = np.ones(shape, np.float32)
            elif kind == "zero":
                x = np.zeros(shape, np.float32)
            else:
                t = shape[-1]
                x = np.tril(np.ones((t, t), np.float32)).reshape(shape)
            f.write(to_bytes(x, dtype))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hub_config(cfg), f, indent=2, sort_keys=True)
        f.write("\n")


def write_transformers(out_dir, cfg, dtype, seed, max_shard_size):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    special = cfg["vocab_size"] - 1 if cfg["vocab_size"] <= 50256 else 50256
    config = GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["n_positions"],
                        n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                        bos_token_id=special, eos_token_id=special)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.to({"float32": torch.float32, "float16": torch.float16,
              "bfloat16": torch.bfloat16}[dtype])
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    for f in os.listdir(out_dir):
        os.chmod(os.path.join(out_dir, f), 0o644)


def have_transformers():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("out", metavar="OUT", help="output directory (created; must be empty if it exists)")
    ap.add_argument("--config", required=True, choices=sorted(CONFIGS),
                    help="which OpenAI checkpoint's shape to use")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                    help="stored dtype (default float32)")
    ap.add_argument("--tokenizer", default=os.path.join(REPO_ROOT, "tests", "data", "gpt2-tokenizer"),
                    help="folder with vocab.json and merges.txt to copy (default tests/data/gpt2-tokenizer)")
    ap.add_argument("--n-layer", type=int, help="override the number of layers")
    ap.add_argument("--n-embd", type=int, help="override the width")
    ap.add_argument("--n-head", type=int, help="override the number of heads")
    ap.add_argument("--n-positions", type=int, help="override the context length (default 1024)")
    ap.add_argument("--vocab-size", type=int, help="override the vocabulary size (default 50257)")
    ap.add_argument("--no-transformers", action="store_true",
                    help="write with numpy in the hub layout even when transformers is importable")
    ap.add_argument("--no-attn-bias", action="store_true",
                    help="numpy path: leave out the h.N.attn.bias mask buffers")
    ap.add_argument("--max-shard-size", default="50GB",
                    help="transformers path: save_pretrained's max_shard_size (default 50GB, one file)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it is not empty")
    args = ap.parse_args()

    cfg = dict(CONFIGS[args.config], n_positions=1024, vocab_size=50257)
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    for key, v in cfg.items():
        if v <= 0:
            ap.error("%s must be positive, got %d" % (key.replace("_", "-"), v))
    if cfg["n_embd"] % cfg["n_head"]:
        ap.error("n-embd %d is not a multiple of n-head %d" % (cfg["n_embd"], cfg["n_head"]))
    for f in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(args.tokenizer, f)):
            print("error: tokenizer folder %s has no %s" % (args.tokenizer, f), file=sys.stderr)
            return 1
    if os.path.exists(args.out) and os.listdir(args.out):
        if not args.force:
            print("error: %s exists and is not empty (use --force to replace it)" % args.out,
                  file=sys.stderr)
            return 1
        shutil.rmtree(args.out)
    os.makedirs(args.out, exist_ok=True)

    use_tf = not args.no_transformers and have_transformers()
    if not args.no_transformers and not use_tf:
        print("transformers/torch not importable: writing with numpy in the hub layout")
    if use_tf:
        write_transformers(args.out, cfg, args.dtype, args.seed, args.max_shard_size)
    else:
        write_numpy(args.out, cfg, args.dtype, args.seed, not args.no_attn_bias)
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(args.tokenizer, f), os.path.join(args.out, f))
    n_params = (cfg["vocab_size"] + cfg["n_positions"]) * cfg["n_embd"] + 2 * cfg["n_embd"] + \
        cfg["n_layer"] * (12 * cfg["n_embd"] ** 2 + 13 * cfg["n_embd"])
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print("%s: %s-shaped (L=%d C=%d NH=%d maxT=%d V=%d), %d parameters, %s, %s layout, seed %d, "
          "%d bytes" % (args.out, args.config, cfg["n_layer"], cfg["n_embd"], cfg["n_head"],
                        cfg["n_positions"], cfg["vocab_size"], n_params, args.dtype,
                        "save_pretrained" if use_tf else "hub", args.seed, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
