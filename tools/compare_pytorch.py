#!/usr/bin/env python3
"""Compare build/gpt2's logits and greedy continuations with Hugging Face transformers.

    compare_pytorch.py --model DIR --prompts FILE [--device cuda|cpu] [--dtype fp32|fp16|bf16]
                       [--bin build/gpt2] [--gen N] [--tol 1e-3] [--hf-device cpu|cuda] [--keep DIR]

FILE is JSONL, one prompt a line: {"prompt": "text"} (tokenized with tiktoken's gpt2 encoding
built from DIR/vocab.json and DIR/merges.txt, no network) or {"ids": [1, 2, 3]}.

For each prompt it runs
    BIN logits --model DIR --ids "1 2 3" --out F.npy --device D --dtype T
(which must write a float32 .npy of shape [T, V]) and GPT2LMHeadModel.from_pretrained(DIR) in
float32 (attn_implementation="eager", TF32 off) on the same ids, and prints the max and mean |logit
difference| and the top-1 agreement over all positions. For fp16 / bf16 the reference is still the
float32 model; transformers' own float16 / bfloat16 model is run too, as the yardstick of what a correct
16-bit implementation reaches against float32 on these weights. With --gen N > 0 it also runs, once for all prompts,
    BIN generate --model DIR --input X.jsonl --output Y.jsonl --device D --dtype T
with input lines {"id": ..., "prompt": text, "max_tokens": N, "temperature": 0} and compares each
output line's "tokens" (the generated ids) with model.generate(do_sample=False, max_new_tokens=N)
(eos_token_id=None so transformers never stops early; both sides are compared up to and
including the first <|endoftext|>, where build/gpt2 may stop). {"ids"} prompts take part only
when their ids decode to text that encodes back to the same ids.

Pass rule. fp32: max |diff| <= --tol, and with --strict-greedy every greedy continuation equal.
fp16 / bf16, against transformers fp32 (random weights give flat logits whose best two are often
within 0.01, so a correct 16-bit engine flips some near-ties, as transformers' own 16-bit model does):
  - max |diff| <= 2 x (transformers 16-bit's max |diff|) + 1e-3,
  - top-1 agreement >= (transformers 16-bit's top-1 agreement) - 0.02,
  - no top-1 change at a position whose fp32 margin (best minus second) exceeds 2 x our max |diff|
    (an error that small cannot flip it; a wrong kernel can).
  Greedy continuations are compared with transformers fp32 and reported only (16-bit near-ties make
  them diverge legitimately); --strict-greedy applies to fp32 alone.
Exit status: 0 pass, 1 a rule fails or build/gpt2 fails, 2 for bad arguments or input.
Needs numpy, torch, transformers, tiktoken.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256


class InputError(Exception):
    pass


def gpt2_local_encoding(model_dir):
    """tiktoken's gpt2 encoding from DIR/vocab.json + DIR/merges.txt, without network."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    vocab, merges = os.path.join(model_dir, "vocab.json"), os.path.join(model_dir, "merges.txt")
    for p in (vocab, merges):
        if not os.path.isfile(p):
            raise InputError("%s not found (needed to tokenize text prompts)" % p)
    ranks = data_gym_to_mergeable_bpe_ranks(merges, vocab)
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT})


def read_prompts(path, enc_fn, vocab_size, n_positions):
    """[{"line", "ids", "text" or None}] from the JSONL file."""
    out = []
    enc = None
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError("cannot open %s: %s" % (path, e.strerror))
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError("%s:%d: not JSON (%s)" % (path, lineno, e))
            if not isinstance(obj, dict) or ("prompt" in obj) == ("ids" in obj):
                raise InputError('%s:%d: need exactly one of "prompt" or "ids"' % (path, lineno))
            if "prompt" in obj:
                if not isinstance(obj["prompt"], str):
                    raise InputError('%s:%d: "prompt" must be a string' % (path, lineno))
                if enc is None:
                    enc = enc_fn()
                text = obj["prompt"]
                ids = enc.encode(text, disallowed_special=())
            else:
                ids = obj["ids"]
                if not isinstance(ids, list) or not all(isinstance(i, int) and
                                                        not isinstance(i, bool) for i in ids):
                    raise InputError('%s:%d: "ids" must be a list of integers' % (path, lineno))
                text = None
            if not ids:
                raise InputError("%s:%d: empty prompt" % (path, lineno))
            bad = [i for i in ids if i < 0 or i >= vocab_size]
            if bad:
                raise InputError("%s:%d: token id %d outside the model's vocabulary (%d)" %
                                 (path, lineno, bad[0], vocab_size))
            if len(ids) > n_positions:
                raise InputError("%s:%d: %d tokens exceed the context length %d" %
                                 (path, lineno, len(ids), n_positions))
            out.append({"line": lineno, "ids": ids, "text": text})
    if not out:
        raise InputError("%s: no prompts" % path)
    return out


def run_cli(cmd, what):
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s\n%s" % (what, r.returncode,
                                                           " ".join(shlex.quote(c) for c in cmd),
                                                           (r.stderr or r.stdout).strip()[-2000:]))
    return dt


def dtype_kwarg():
    """from_pretrained's dtype keyword: "dtype" from transformers 4.56 on, "torch_dtype" before."""
    import transformers
    from packaging.version import Version
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_hf(model_dir, dtype, device):
    import torch
    import transformers
    from transformers import GPT2LMHeadModel
    transformers.utils.logging.disable_progress_bar()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager",
                                            **{dtype_kwarg(): tdtype})
    model.to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def judge_16bit(ours_max, ours_top1, hf_max, hf_top1, margin_flips):
    """The fp16/bf16 pass rule (see the module docstring): a list of failure messages, empty on pass."""
    fails = []
    if ours_max > 2 * hf_max + 1e-3:
        fails.append("max |diff| %.4g > 2 x transformers' %.4g + 1e-3" % (ours_max, hf_max))
    if ours_top1 < hf_top1 - 0.02:
        fails.append("top-1 agreement %.4f < transformers' %.4f - 0.02" % (ours_top1, hf_top1))
    if margin_flips:
        fails.append("%d top-1 changes where the fp32 margin exceeds 2 x max |diff|" % margin_flips)
    return fails


def top2_margin(x):
    """Best minus second-best per row of a 2-D array."""
    part = np.partition(x, -2, axis=1)
    return part[:, -1] - part[:, -2]


def hf_logits(model, ids, device):
    import torch
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long, device=device)
        return model(x).logits[0].float().cpu().numpy()


def hf_generate(model, ids, n, device):
    import torch
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long, device=device)
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def upto_eot(tokens):
    return tokens[:tokens.index(EOT) + 1] if EOT in tokens else tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--model", required=True, help="model directory (config.json, weights, tokenizer)")
    ap.add_argument("--prompts", required=True, help='JSONL file of {"prompt": ...} or {"ids": [...]}')
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="device for build/gpt2 (default cuda)")
    ap.add_argument("--hf-device", choices=["cuda", "cpu"],
                    help="device for transformers (default: --device if torch has it, else cpu)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                    help="compute dtype on both sides (default fp32)")
    ap.add_argument("--bin", default="build/gpt2", help="the CLI (default build/gpt2)")
    ap.add_argument("--gen", type=int, default=0, help="greedy tokens to compare (default 0: none)")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="fp32: largest allowed max |logit diff| (default 1e-3)")
    ap.add_argument("--strict-greedy", action="store_true",
                    help="fp32: exit 1 when a greedy continuation differs")
    ap.add_argument("--keep", metavar="DIR", help="keep the .npy/.jsonl files in DIR")
    args = ap.parse_args()
    if args.gen < 0:
        ap.error("--gen must be >= 0")

    import torch
    hf_device = args.hf_device or ("cuda" if args.device == "cuda" and torch.cuda.is_available()
                                   else "cpu")
    if hf_device == "cuda" and not torch.cuda.is_available():
        print("error: --hf-device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if not os.path.isfile(args.bin) or not os.access(args.bin, os.X_OK):
        print("error: %s is not an executable (build it with make, or pass --bin)" % args.bin,
              file=sys.stderr)
        return 2
    try:
        with open(os.path.join(args.model, "config.json")) as f:
            cfg = json.load(f)
        vocab_size = int(cfg["vocab_size"])
        n_positions = int(cfg.get("n_positions", cfg.get("n_ctx", 1024)))
        prompts = read_prompts(args.prompts, lambda: gpt2_local_encoding(args.model),
                               vocab_size, n_positions)
    except (OSError, ValueError, KeyError) as e:
        print("error: %s/config.json: %s" % (args.model, e), file=sys.stderr)
        return 2
    except InputError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2

    t0 = time.time()
    model = load_hf(args.model, "fp32", hf_device)
    model16 = load_hf(args.model, args.dtype, hf_device) if args.dtype != "fp32" else None
    print("model %s: V=%d maxT=%d; transformers %s on %s (fp32%s, eager); %s on %s (%s)" % (
        args.model, vocab_size, n_positions, __import__("transformers").__version__, hf_device,
        " and %s" % args.dtype if model16 is not None else "", args.bin, args.device, args.dtype))
    print("transformers load: %.1f s" % (time.time() - t0))

    work = args.keep or tempfile.mkdtemp(prefix="compare_pytorch-")
    os.makedirs(work, exist_ok=True)
    failed = False
    all_max, all_sum, all_n, top1_hits, top1_n = 0.0, 0.0, 0, 0, 0
    hf_max, hf_hits, margins, ours_argmax, ref_argmax = 0.0, 0, [], [], []
    print("\n%-5s %6s %12s %12s %8s%s" % ("line", "T", "max|diff|", "mean|diff|", "top-1",
                                         "   transformers %s: max|diff| top-1" % args.dtype
                                         if model16 is not None else ""))
    try:
        for i, p in enumerate(prompts):
            npy = os.path.join(work, "logits_%d.npy" % i)
            cmd = [args.bin, "logits", "--model", args.model, "--ids",
                   " ".join(str(t) for t in p["ids"]), "--out", npy, "--device", args.device,
                   "--dtype", args.dtype]
            run_cli(cmd, "logits for line %d" % p["line"])
            try:
                ours = np.load(npy)
            except (OSError, ValueError) as e:
                raise RuntimeError("%s: not a readable .npy (%s)" % (npy, e))
            T = len(p["ids"])
            if ours.dtype != np.float32 or ours.shape != (T, vocab_size):
                raise RuntimeError("%s: %s %s, expected float32 (%d, %d)" % (
                    npy, ours.dtype, ours.shape, T, vocab_size))
            ref = hf_logits(model, p["ids"], hf_device)
            if not np.all(np.isfinite(ours)):
                raise RuntimeError("line %d: build/gpt2's logits are not all finite" % p["line"])
            d = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
            agree = int((ours.argmax(axis=1) == ref.argmax(axis=1)).sum())
            all_max = max(all_max, float(d.max()))
            all_sum += float(d.sum())
            all_n += d.size
            top1_hits += agree
            top1_n += T
            extra = ""
            if model16 is not None:
                ref16 = hf_logits(model16, p["ids"], hf_device)
                d16 = np.abs(ref16.astype(np.float64) - ref.astype(np.float64))
                agree16 = int((ref16.argmax(axis=1) == ref.argmax(axis=1)).sum())
                hf_max = max(hf_max, float(d16.max()))
                hf_hits += agree16
                margins.append(top2_margin(ref.astype(np.float64)))
                ours_argmax.append(ours.argmax(axis=1))
                ref_argmax.append(ref.argmax(axis=1))
                extra = "   %12.4g %8s" % (d16.max(), "%d/%d" % (agree16, T))
            print("%-5d %6d %12.4g %12.4g %8s%s" % (p["line"], T, d.max(), d.mean(),
                                                   "%d/%d" % (agree, T), extra))

        greedy_agree, greedy_n, greedy_skip = 0, 0, 0
        if args.gen > 0:
            enc = gpt2_local_encoding(args.model)
            items = []
            for i, p in enumerate(prompts):
                text = p["text"]
                if text is None:
                    try:
                        t = enc.decode_bytes(p["ids"]).decode("utf-8")
                        if enc.encode(t, disallowed_special=()) == p["ids"]:
                            text = t
                    except (UnicodeDecodeError, KeyError):
                        pass
                n = min(args.gen, n_positions - len(p["ids"]))
                if text is None or n <= 0:
                    greedy_skip += 1
                    continue
                items.append((i, p, text, n))
            inp = os.path.join(work, "generate_in.jsonl")
            outp = os.path.join(work, "generate_out.jsonl")
            with open(inp, "w", encoding="utf-8") as f:
                for i, p, text, n in items:
                    f.write(json.dumps({"id": i, "prompt": text, "max_tokens": n,
                                        "temperature": 0}, ensure_ascii=False) + "\n")
            if items:
                dt = run_cli([args.bin, "generate", "--model", args.model, "--input", inp,
                              "--output", outp, "--device", args.device, "--dtype", args.dtype],
                             "generate")
                results = {}
                with open(outp, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            obj = json.loads(line)
                            results[obj["id"]] = obj
                        except (ValueError, KeyError, TypeError):
                            raise RuntimeError("%s:%d: not a JSON object with an id" % (outp,
                                                                                        lineno))
                print("\ngreedy, %d tokens (build/gpt2 generate: %.2f s for %d prompts)" % (
                    args.gen, dt, len(items)))
                for i, p, text, n in items:
                    ref = hf_generate(model, p["ids"], n, hf_device)
                    obj = results.get(i)
                    if obj is None or "error" in obj or not isinstance(obj.get("tokens"), list):
                        print("  line %d: no tokens from build/gpt2: %s" % (
                            p["line"], json.dumps(obj)[:300] if obj else "missing"))
                        greedy_n += 1
                        continue
                    ours = obj["tokens"]
                    if len(ours) == len(p["ids"]) + n and ours[:len(p["ids"])] == p["ids"]:
                        ours = ours[len(p["ids"]):]  # the CLI echoed the prompt
                    same = upto_eot(ours) == upto_eot(ref)
                    greedy_n += 1
                    greedy_agree += same
                    if not same:
                        k = next((j for j, (a, b) in enumerate(zip(ours, ref)) if a != b),
                                 min(len(ours), len(ref)))
                        print("  line %d: differ at token %d: ours %s, transformers %s" % (
                            p["line"], k, ours, ref))
                    else:
                        print("  line %d: agree (%d tokens)" % (p["line"], len(upto_eot(ref))))
    except RuntimeError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            for f in os.listdir(work):
                os.remove(os.path.join(work, f))
            os.rmdir(work)

    top1 = top1_hits / top1_n
    print("\nsummary: %d prompts, %d positions; max |diff| %.4g, mean |diff| %.4g, top-1 %.4f" % (
        len(prompts), top1_n, all_max, all_sum / all_n, top1))
    if args.gen > 0:
        print("greedy: %d/%d agree, %d skipped (ids that do not round-trip through text)" % (
            greedy_agree, greedy_n, greedy_skip))
    if args.dtype == "fp32" and all_max > args.tol:
        print("FAIL: max |diff| %.4g > tol %g" % (all_max, args.tol))
        failed = True
    if args.dtype != "fp32":
        hf_top1 = hf_hits / top1_n
        m, oa, ra = np.concatenate(margins), np.concatenate(ours_argmax), np.concatenate(ref_argmax)
        flips = int(((m > 2 * all_max) & (oa != ra)).sum())
        print("transformers %s against its fp32: max |diff| %.4g, top-1 %.4f; ours: max |diff| %.4g, "
              "top-1 %.4f; %d positions with an fp32 margin over 2 x our max |diff|, %d flipped there" % (
                  args.dtype, hf_max, hf_top1, all_max, top1, int((m > 2 * all_max).sum()), flips))
        for msg in judge_16bit(all_max, top1, hf_max, hf_top1, flips):
            print("FAIL: " + msg)
            failed = True
    if args.strict_greedy and args.dtype == "fp32" and greedy_agree != greedy_n:
        print("FAIL: %d greedy continuations differ" % (greedy_n - greedy_agree))
        failed = True
    if not failed:
        print("PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
