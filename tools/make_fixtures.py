#!/usr/bin/env python3
"""Write the small random GPT-2 test checkpoints and their golden outputs.

For each fixture model this script
  1. builds a GPT2LMHeadModel with deterministic random weights (torch.manual_seed / torch.Generator
     seeded from --seed and the model's own offset), using a wide initialisation so that logits are
     spread out and greedy decoding is not decided by float noise;
  2. stores it in tests/data/models/<name>/ in one of the two real Hugging Face layouts:
       "hub"             the layout of the hub's gpt2 repo: tensor names without the "transformer."
                         prefix, no lm_head.weight (tied), an old-style config.json (with n_ctx),
                         and for "tiny" the h.N.attn.bias causal-mask buffers that the hub file
                         carries (1, 1, maxT, maxT);
       "save_pretrained" exactly what transformers' save_pretrained writes (transformer. prefix,
                         lm_head.weight only when untied, optional shards + model.safetensors.index.json);
  3. loads the directory back with GPT2LMHeadModel.from_pretrained(dtype=float32,
     attn_implementation="eager") -- so the golden logits come from exactly the stored weights, upcast
     to float32 -- and checks that every parameter equals the stored tensor;
  4. computes golden logits and greedy continuations (model.generate, do_sample=False) and checks
     that at every greedy step and every prompt row the gap between the top-2 logits exceeds
     --min-gap; if not, it retries with the next seed;
  5. writes tests/data/models/<name>/golden.json and relative symlinks vocab.json / merges.txt to
     ../../gpt2-tokenizer/.

golden.json:
  {"source": "transformers X, torch Y, GPT2LMHeadModel float32 eager",
   "model": name, "seed": S, "vocab_size": V, "n_positions": maxT, "stored_dtype": "F16"|"BF16"|"F32",
   "layout": "hub"|"save_pretrained", "G": 12, "min_top2_gap": ...,
   "cases": [{"ids": [...], "cols": [...], "logits": [[...]...], "greedy": [...], "text": optional}],
   "batch_greedy": [{"text": ..., "ids": [...], "greedy": [16 ids]}]   (50257-vocab models only)}
Logit values are the float32 outputs rounded to 6 decimals ("%.6f", absolute error <= 5e-7):
the shortest float32 reprs would take about 10% more room and push tests/data/models past 12 MB.

Rerunning with the same arguments and the same transformers/torch versions gives the same files.
Needs numpy, torch, transformers, safetensors, tiktoken; runs on CPU in about 15 seconds.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TOKENIZER_DIR_REL = os.path.join("tests", "data", "gpt2-tokenizer")
MODELS_DIR_REL = os.path.join("tests", "data", "models")
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256

# name -> shape, storage and seed offset. init: std of every weight matrix (the config's
# initializer_range), so logits have a standard deviation of a few units.
MODELS = {
    "tiny": dict(vocab=50257, n_embd=32, n_head=4, n_layer=2, n_pos=64, dtype="float16",
                 layout="hub", tied=True, shards=1, seed_offset=0, init=0.3, attn_bias=True),
    "tiny-bf16": dict(vocab=50257, n_embd=32, n_head=4, n_layer=2, n_pos=64, dtype="bfloat16",
                      layout="save_pretrained", tied=True, shards=1, seed_offset=100, init=0.3),
    "small": dict(vocab=1000, n_embd=64, n_head=4, n_layer=3, n_pos=128, dtype="float32",
                  layout="hub", tied=True, shards=1, seed_offset=200, init=0.2, attn_bias=False),
    "small-untied-sharded": dict(vocab=1000, n_embd=48, n_head=3, n_layer=2, n_pos=96,
                                 dtype="float32", layout="save_pretrained", tied=False, shards=2,
                                 seed_offset=300, init=0.2),
}

# Real text for the text cases (cut to an exact token count) and for batch_greedy.
CASE_TEXTS = [
    "The old lighthouse keeper climbed the spiral stairs every evening, counting each of the "
    "one hundred and twelve steps, and lit the lamp that had guided ships past the rocks for "
    "nearly two centuries. Nobody remembered who had built it.",
    "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n",
    "Grüße aus München! 東京の天気は晴れ 🙂🚀 Привет, мир! Ça va très bien, naïve café. "
    "Ελληνικά, עברית.",
]

BATCH_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "Zürich, São Paulo, Kraków: naïve café façade; 東京とソウル, Москва. 🙂🚀",
    "In 2023, 1,234,567 people paid $89.99 (about €82) each; 42% said \"yes!\"",
    "  leading spaces\n\n\ttabs\tand   multiple   spaces  \n",
    "I'm sure they'll say it's what we've done, isn't it? You're right, they'd know.",
    "<div class=\"row\">{\"key\": [1, 2, 3], \"ok\": true, \"name\": null}</div>",
]


def gpt2_local_encoding(tok_dir):
    """tiktoken's gpt2 encoding built from DIR/vocab.json and DIR/merges.txt, without network."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(tok_dir, "merges.txt"),
                                            os.path.join(tok_dir, "vocab.json"))
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT})


def torch_dtype(name):
    import torch
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def build_model(spec, seed):
    """A float32 GPT2LMHeadModel with every parameter drawn from a generator seeded with `seed`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    special = spec["vocab"] - 1 if spec["vocab"] <= EOT else EOT
    cfg = GPT2Config(vocab_size=spec["vocab"], n_embd=spec["n_embd"], n_head=spec["n_head"],
                     n_layer=spec["n_layer"], n_positions=spec["n_pos"],
                     initializer_range=spec["init"], tie_word_embeddings=spec["tied"],
                     bos_token_id=special, eos_token_id=special)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(seed)
    std = spec["init"]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = tuple(p.shape)
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith(".weight"):   # layernorm gain: 0.5 .. 1.5
                    v = 0.5 + torch.rand(shape, generator=gen)
                else:                          # layernorm shift
                    v = 0.2 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias"):       # linear biases
                v = 0.1 * torch.randn(shape, generator=gen)
            else:                              # wte, wpe, lm_head and Conv1D weights
                v = std * torch.randn(shape, generator=gen)
            p.copy_(v)
        if spec["tied"]:
            assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model


def hub_config(cfg):
    """config.json in the style of the hub's gpt2 repo (n_ctx, no dtype/transformers_version)."""
    keys = ["activation_function", "architectures", "attn_pdrop", "bos_token_id", "embd_pdrop",
            "eos_token_id", "initializer_range", "layer_norm_epsilon", "model_type", "n_ctx",
            "n_embd", "n_head", "n_layer", "n_positions", "resid_pdrop", "summary_activation",
            "summary_first_dropout", "summary_proj_to_labels", "summary_type", "summary_use_proj",
            "task_specific_params", "vocab_size"]
    src = dict(cfg)
    src["n_ctx"] = src["n_positions"]
    src["task_specific_params"] = {"text-generation": {"do_sample": True, "max_length": 50}}
    out = {k: src[k] for k in keys}
    if not src.get("tie_word_embeddings", True):
        out["tie_word_embeddings"] = False
    return out


def save_model(model, spec, out_dir):
    """Writes the model into out_dir (which must exist and be empty) in the spec's layout."""
    import torch
    from safetensors.torch import load_file, save_file
    m = model.to(torch_dtype(spec["dtype"]))
    if spec["layout"] == "save_pretrained":
        if spec["shards"] == 1:
            m.save_pretrained(out_dir)
        else:
            total = sum(p.numel() * p.element_size() for p in m.parameters())
            for size in range(total // spec["shards"], total, max(1, total // 64)):
                for f in os.listdir(out_dir):
                    os.remove(os.path.join(out_dir, f))
                m.save_pretrained(out_dir, max_shard_size=size)
                n = len([f for f in os.listdir(out_dir) if f.endswith(".safetensors")])
                if n == spec["shards"]:
                    break
            else:
                raise RuntimeError("no max_shard_size gives %d shards" % spec["shards"])
    else:
        m.save_pretrained(out_dir)
        st = os.path.join(out_dir, "model.safetensors")
        tensors = load_file(st)
        hub = {}
        for k, v in tensors.items():
            if k == "lm_head.weight":
                raise RuntimeError("hub layout is for tied models only")
            assert k.startswith("transformer."), k
            hub[k[len("transformer."):]] = v
        # The hub's gpt2 file also carries each layer's causal-mask buffer h.N.attn.bias
        # (1, 1, maxT, maxT) (F32 there; here in the file's dtype, as model.half() would leave it);
        # loaders must ignore it. Only "tiny" has them, to keep tests/data/models under 12 MB.
        if spec.get("attn_bias"):
            n = spec["n_pos"]
            mask = torch.tril(torch.ones(n, n, dtype=torch_dtype(spec["dtype"]))).view(1, 1, n, n)
            for i in range(spec["n_layer"]):
                hub["h.%d.attn.bias" % i] = mask.clone()
        os.remove(st)
        save_file(hub, st, metadata={"format": "pt"})
        with open(os.path.join(out_dir, "config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(hub_config(cfg), f, indent=2, sort_keys=True)
            f.write("\n")
    model.to(torch.float32)


def stored_tensors(model_dir):
    """name -> tensor of every tensor in the directory's safetensors file(s), as stored."""
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(model_dir, f)))
    return out


def dtype_kwarg():
    """from_pretrained's dtype keyword: "dtype" from transformers 4.56 on, "torch_dtype" before."""
    import transformers
    from packaging.version import Version
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_oracle(model_dir, spec):
    """from_pretrained in float32 eager; checks every parameter equals the stored tensor."""
    import torch
    from transformers import GPT2LMHeadModel
    model, info = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager",
                                                  output_loading_info=True,
                                                  **{dtype_kwarg(): torch.float32})
    model.eval()
    if info["missing_keys"] or info.get("mismatched_keys") or info.get("error_msgs"):
        raise RuntimeError("%s: loading info %r" % (model_dir, info))
    unexpected = set(info["unexpected_keys"])
    if any(not k.endswith(".attn.bias") for k in unexpected):
        raise RuntimeError("%s: unexpected keys %r" % (model_dir, sorted(unexpected)))
    stored = stored_tensors(model_dir)
    sd = model.state_dict()
    seen = 0
    for k, v in stored.items():
        if k.endswith(".attn.bias"):
            continue
        key = k if k in sd else "transformer." + k
        if key not in sd:
            raise RuntimeError("stored tensor %s not in the model" % k)
        if not torch.equal(sd[key], v.to(torch.float32)):
            raise RuntimeError("parameter %s differs from the stored tensor" % key)
        seen += 1
    if spec["tied"]:
        if not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
            raise RuntimeError("lm_head is not tied to wte")
    else:
        if "lm_head.weight" not in stored or torch.equal(sd["lm_head.weight"],
                                                         sd["transformer.wte.weight"]):
            raise RuntimeError("untied model without a distinct stored lm_head")
    n_params = len([k for k in sd if not (spec["tied"] and k == "lm_head.weight")])
    if seen != n_params:
        raise RuntimeError("%d stored parameters for %d model parameters" % (seen, n_params))
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def top2_gaps(logits):
    """(T, V) float32 -> (argmax per row, top1 - top2 per row)."""
    part = np.sort(logits, axis=1)
    return logits.argmax(axis=1), part[:, -1] - part[:, -2]


def run_case(model, ids, n_new):
    """Golden logits for ids, greedy continuation, and the top-2 gaps of prompt rows and steps."""
    import torch
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        logits = model(x).logits[0].float().numpy()
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
    greedy = out[0, len(ids):].tolist()
    if out.shape[1] != len(ids) + n_new or out[0, :len(ids)].tolist() != list(ids):
        raise RuntimeError("generate returned %d tokens for %d + %d" % (out.shape[1], len(ids),
                                                                         n_new))
    # Recompute every greedy step without the KV cache: argmax must match and the top-2 gap is
    # what decides whether float noise could flip the choice.
    full = torch.tensor([list(ids) + greedy[:-1]], dtype=torch.long)
    with torch.no_grad():
        full_logits = model(full).logits[0].float().numpy()
    steps = full_logits[len(ids) - 1:]
    arg, step_gaps = top2_gaps(steps)
    if arg.tolist() != greedy:
        raise RuntimeError("generate's tokens differ from the argmax of a full forward")
    if not np.allclose(full_logits[:len(ids)], logits, rtol=0, atol=1e-4):
        raise RuntimeError("prefix logits differ between runs")
    _, row_gaps = top2_gaps(logits)
    return logits, greedy, float(row_gaps.min()), float(step_gaps.min())


def cut_text(enc, text, n):
    """The longest prefix of `text` (whole characters) that encodes to exactly n tokens, or None."""
    best = None
    for k in range(1, len(text) + 1):
        m = len(enc.encode(text[:k]))
        if m == n:
            best = text[:k]
        elif m > n:
            break
    return best


def f32(x):
    """A float32 logit rounded to 6 decimals (absolute error <= 5e-7, about 2 float32 ulps at the
    logits' typical magnitude of 2): full float32 reprs would push tests/data/models past 12 MB."""
    v = float(np.float32(x))
    if not np.isfinite(v):
        raise RuntimeError("non-finite logit %r" % x)
    t = "%.6f" % v
    return "0.000000" if t == "-0.000000" else t


def dump_golden(g, path):
    """golden.json with one logits row per line (readable diffs, small files)."""
    lines = ["{"]
    top = [k for k in g if k not in ("cases", "batch_greedy")]
    for k in top:
        lines.append(" %s: %s," % (json.dumps(k), json.dumps(g[k], ensure_ascii=False)))
    lines.append(' "cases": [')
    for ci, c in enumerate(g["cases"]):
        lines.append("  {")
        if "text" in c:
            lines.append('   "text": %s,' % json.dumps(c["text"], ensure_ascii=False))
        lines.append('   "ids": %s,' % json.dumps(c["ids"], separators=(",", ":")))
        lines.append('   "greedy": %s,' % json.dumps(c["greedy"], separators=(",", ":")))
        lines.append('   "cols": %s,' % json.dumps(c["cols"], separators=(",", ":")))
        lines.append('   "logits": [')
        rows = ["    [" + ",".join(f32(v) for v in row) + "]" for row in c["logits"]]
        lines.append(",\n".join(rows))
        lines.append("   ]")
        lines.append("  }" + ("," if ci + 1 < len(g["cases"]) else ""))
    lines.append(" ]" + ("," if "batch_greedy" in g else ""))
    if "batch_greedy" in g:
        lines.append(' "batch_greedy": [')
        items = []
        for b in g["batch_greedy"]:
            items.append('  {"text": %s, "ids": %s, "greedy": %s}' % (
                json.dumps(b["text"], ensure_ascii=False),
                json.dumps(b["ids"], separators=(",", ":")),
                json.dumps(b["greedy"], separators=(",", ":"))))
        lines.append(",\n".join(items))
        lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must parse
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def make_golden(model, spec, name, seed, enc, n_greedy, n_batch_greedy, min_gap):
    """Returns (golden dict, min gap) or raises GapError when a gap is too small."""
    import torch
    import transformers
    rng = np.random.default_rng(seed)
    V, maxT = spec["vocab"], spec["n_pos"]
    big = V > 1000
    fixed_cols = sorted(rng.choice(V, size=256, replace=False).tolist()) if big else None
    lengths = [1, 2, 7, 13, 31, maxT - n_greedy]
    text_for_len = {7: 0, 13: 1, 31: 2} if big else {}
    cases = []
    gaps = []
    for L in lengths:
        G = min(n_greedy, maxT - L)
        case = {}
        if L in text_for_len:
            text = cut_text(enc, CASE_TEXTS[text_for_len[L]], L)
            if text is None:
                raise RuntimeError("text %d cannot be cut to %d tokens" % (text_for_len[L], L))
            ids = enc.encode(text)
            case["text"] = text
        else:
            ids = rng.integers(0, V, size=L).tolist()
        logits, greedy, row_gap, step_gap = run_case(model, ids, G)
        gaps.append(min(row_gap, step_gap))
        if min(row_gap, step_gap) <= min_gap:
            raise GapError("%s seed %d: top-2 gap %.3g at prompt length %d" %
                           (name, seed, min(row_gap, step_gap), L))
        if special_hit(greedy, spec):
            raise GapError("%s seed %d: greedy emits the end-of-text id" % (name, seed))
        if big:
            cols = sorted(set(fixed_cols) | set(logits.argmax(axis=1).tolist()))
        else:
            cols = list(range(V))
        case.update(ids=ids, cols=cols, greedy=greedy,
                    logits=[[float(v) for v in row[cols]] for row in logits])
        cases.append(case)
    golden = {
        "source": "transformers %s, torch %s, GPT2LMHeadModel float32 eager" % (
            transformers.__version__, torch.__version__),
        "model": name, "seed": seed, "vocab_size": V, "n_positions": maxT,
        "stored_dtype": {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[spec["dtype"]],
        "layout": spec["layout"], "tied": spec["tied"], "G": n_greedy,
        "logits_rounding": "%.6f of the float32 value (abs error <= 5e-7)",
    }
    if big:
        batch = []
        for text in BATCH_TEXTS:
            ids = enc.encode(text)
            if len(ids) + n_batch_greedy > maxT:
                raise RuntimeError("batch prompt too long: %r" % text)
            _, greedy, row_gap, step_gap = run_case(model, ids, n_batch_greedy)
            gaps.append(step_gap)
            if step_gap <= min_gap:
                raise GapError("%s seed %d: top-2 gap %.3g in batch prompt %r" %
                               (name, seed, step_gap, text))
            if special_hit(greedy, spec):
                raise GapError("%s seed %d: greedy emits the end-of-text id" % (name, seed))
            batch.append({"text": text, "ids": ids, "greedy": greedy})
        golden["batch_greedy"] = batch
    golden["min_top2_gap"] = float("%.6g" % min(gaps))
    golden["cases"] = cases
    return golden, min(gaps)


class GapError(Exception):
    pass


def special_hit(greedy, spec):
    """True when a greedy run emits the config's bos/eos id (engines may stop there)."""
    special = spec["vocab"] - 1 if spec["vocab"] <= EOT else EOT
    return special in greedy


def make_model(name, spec, base_seed, out_root, tok_dir, enc, args):
    seed = base_seed + spec["seed_offset"]
    for attempt in range(args.max_attempts):
        s = seed + attempt
        tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % name, dir=out_root)
        try:
            model = build_model(spec, s)
            save_model(model, spec, tmp)
            del model
            oracle = load_oracle(tmp, spec)
            try:
                golden, gap = make_golden(oracle, spec, name, s, enc, args.greedy,
                                          args.batch_greedy, args.min_gap)
            except GapError as e:
                print("  retry: %s" % e)
                shutil.rmtree(tmp)
                continue
            dump_golden(golden, os.path.join(tmp, "golden.json"))
            rel_tok = os.path.relpath(tok_dir, os.path.join(out_root, name))
            for f in ("vocab.json", "merges.txt"):
                os.symlink(os.path.join(rel_tok, f), os.path.join(tmp, f))
            for f in os.listdir(tmp):
                if not os.path.islink(os.path.join(tmp, f)):
                    os.chmod(os.path.join(tmp, f), 0o644)
            final = os.path.join(out_root, name)
            if os.path.lexists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            os.chmod(final, 0o755)
            return s, gap
        except BaseException:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            raise
    raise RuntimeError("%s: no seed in %d attempts gives top-2 gaps > %g" %
                       (name, args.max_attempts, args.min_gap))


def tree_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# ---------------------------------------------------------------------------------------------
# --decoding: beam search, greedy no_repeat_ngram_size and scoring goldens
# (tests/data/decoding_golden.json), made by transformers' own generate(num_beams=...),
# generate(no_repeat_ngram_size=...) and forward over the committed fixture models, plus the "beam-eot"
# model: tiny-like, its end-of-text embedding row scaled by -4 so that end-of-text is often among the
# beams' candidates (in the other 50257-vocab fixtures its logit never ranks near the top; with this
# scale it is the most likely token at about 4% of positions), for the end-of-text cases. Existing models and their golden.json files are left as they are.

BEAM_EOT_SPEC = dict(vocab=50257, n_embd=16, n_head=2, n_layer=2, n_pos=48, dtype="float16",
                     layout="save_pretrained", tied=True, shards=1, seed_offset=400, init=0.3,
                     eot_scale=-4.0)
DECODING_GOLDEN_REL = os.path.join("tests", "data", "decoding_golden.json")

# (model, prompt length, num_beams, length_penalty, early_stopping, no_repeat_ngram_size,
#  max_new_tokens, n). Prompts are random ids drawn per case; "beam-eot" cases must end some returned
# hypothesis with end-of-text.
BEAM_CASES = [
    ("small", 5, 2, 1.0, False, 0, 12, 1),
    ("small", 7, 3, 1.0, False, 0, 10, 3),
    ("small", 4, 4, 0.5, True, 0, 9, 2),
    ("small", 6, 5, 2.0, False, 0, 8, 5),
    ("small", 3, 4, 1.0, False, 2, 14, 4),
    ("small", 5, 3, -1.0, True, 3, 10, 3),
    ("tiny", 6, 4, 1.0, False, 0, 10, 4),
    ("tiny", 4, 2, 1.5, True, 2, 12, 2),
    ("beam-eot", 5, 3, 1.0, False, 0, 12, 3),
    ("beam-eot", 4, 4, 1.0, True, 0, 12, 4),
    ("beam-eot", 6, 4, 0.0, False, 2, 10, 4),
    ("beam-eot", 5, 2, 2.0, "never", 0, 12, 2),
]


# Greedy (num_beams 1, do_sample=False) with no_repeat_ngram_size: (model, prompt length,
# no_repeat_ngram_size, max_new_tokens, repetition_penalty). Prompts are drawn per case until the
# plain greedy continuation (same penalty, no ban) repeats an n-gram of that size, so that the ban
# changes the output, and until every step of the banned run has a top-2 gap over the processed
# scores (banned tokens at -inf) of at least --min-gap.
GREEDY_NGRAM_CASES = [
    ("small", 6, 2, 20, 1.0),
    ("small", 6, 3, 24, 1.0),
    ("small", 4, 1, 12, 1.0),
    ("small", 5, 2, 16, 1.3),
    ("tiny", 6, 2, 20, 1.0),
    ("tiny", 5, 3, 24, 1.0),
]


def greedy_generate(model, ids, ngram, max_new, rep, eos):
    """transformers' greedy continuation of ids and the smallest top-2 gap of its processed scores."""
    import torch
    kw = dict(num_beams=1, do_sample=False, max_new_tokens=max_new, eos_token_id=eos,
              pad_token_id=eos if eos is not None else 0, return_dict_in_generate=True,
              output_scores=True)
    if ngram:
        kw["no_repeat_ngram_size"] = ngram
    if rep != 1.0:
        kw["repetition_penalty"] = rep
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), **kw)
    toks = out.sequences[0, len(ids):].tolist()
    gap = min(float(t[0] - t[1]) for t in (torch.topk(sc[0], 2).values for sc in out.scores))
    return toks, gap


def repeats_ngram(seq, n):
    """Whether some n-gram occurs twice in seq."""
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(set(grams)) < len(grams)


def make_beam_eot_model(out_root, tok_dir, seed):
    """Writes out_root/beam-eot: random weights as build_model, the end-of-text row of wte scaled."""
    import torch
    spec = BEAM_EOT_SPEC
    model = build_model(spec, seed + spec["seed_offset"])
    with torch.no_grad():
        model.transformer.wte.weight[EOT] *= spec["eot_scale"]
    final = os.path.join(out_root, "beam-eot")
    if os.path.lexists(final):
        shutil.rmtree(final)
    os.makedirs(final)
    save_model(model, spec, final)
    rel_tok = os.path.relpath(tok_dir, final)
    for f in ("vocab.json", "merges.txt"):
        os.symlink(os.path.join(rel_tok, f), os.path.join(final, f))
    return final


class _Noise:
    """A logits processor adding uniform noise in [-eps, eps] (robustness check of a golden)."""

    def __init__(self, eps, seed):
        import torch
        self.eps = eps
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids, scores):
        import torch
        noise = (torch.rand(scores.shape, generator=self.gen) * 2 - 1) * self.eps
        return scores + noise


def beam_generate(model, ids, nb, lp, es, ngram, max_new, n, eos, noise=None):
    import torch
    from transformers import LogitsProcessorList
    kw = dict(num_beams=nb, do_sample=False, length_penalty=lp, early_stopping=es,
              max_new_tokens=max_new, num_return_sequences=n, eos_token_id=eos,
              pad_token_id=eos if eos is not None else 0, return_dict_in_generate=True,
              output_scores=True)
    if ngram:
        kw["no_repeat_ngram_size"] = ngram
    if noise is not None:
        kw["logits_processor"] = LogitsProcessorList([noise])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), **kw)
    P = len(ids)
    res = []
    for i in range(n):
        k = int((out.beam_indices[i] >= 0).sum())  # generated length of this hypothesis
        toks = out.sequences[i, P:P + k].tolist()
        res.append({"tokens": toks, "score": float(out.sequences_scores[i])})
    return res, len(out.scores)  # scores: one entry per step the search ran


def make_decoding_golden(args, enc):
    import torch
    out_root = args.out
    make_beam_eot_model(out_root, args.tokenizer, args.seed)
    models = {}
    for name in ("small", "tiny", "beam-eot"):
        spec = MODELS.get(name, BEAM_EOT_SPEC)
        models[name] = load_oracle(os.path.join(out_root, name), spec)
    golden = {"source": "transformers %s, torch %s, GPT2LMHeadModel float32 eager; generate(num_beams, "
                        "do_sample=False, ...), generate(do_sample=False, no_repeat_ngram_size, ...) and forward" % (__import__("transformers").__version__,
                                                               torch.__version__),
              "beam_eot_scale": BEAM_EOT_SPEC["eot_scale"], "beams": [], "score": []}
    # scoring: the perplexity guide's windows over texts on "tiny" (n_positions 64)
    model = models["tiny"]
    maxT = model.config.n_positions
    texts = [CASE_TEXTS[0], CASE_TEXTS[0] + " " + CASE_TEXTS[2] + " " + CASE_TEXTS[1], CASE_TEXTS[1][:40]]
    for ti, text in enumerate(texts):
        ids = enc.encode(text, allowed_special="all")
        for stride in ([maxT, 16, 50, 1] if len(ids) > maxT else [maxT, 7]):
            nll, scored, guide = score_windows(model, ids, maxT, stride)
            golden["score"].append({"text": text, "n_ids": len(ids), "stride": stride, "tokens": scored,
                                    "nll": nll})
            print(flush=True)
            print("  score text %d (%d tokens) stride %d: %d scored, nll %.6f" % (ti, len(ids), stride,
                                                                               scored, nll))
            if stride == maxT and abs(guide - nll) > 1e-6 * abs(nll):
                raise RuntimeError("non-overlapping windows: the guide's loop gives %.9g, the sum %.9g"
                                   % (guide, nll))
    gen = np.random.default_rng(args.seed + 77)
    for ci, (name, P, nb, lp, es, ngram, max_new, n) in enumerate(BEAM_CASES):
        model = models[name]
        V = model.config.vocab_size
        eos = EOT if V > EOT else None
        for attempt in range(60):
            ids = [int(x) for x in gen.integers(0, min(V, EOT), size=P)]
            res, steps = beam_generate(model, ids, nb, lp, es, ngram, max_new, n, eos)
            if name == "beam-eot" and not any(h["tokens"] and h["tokens"][-1] == EOT for h in res):
                continue
            # robust: the same hypotheses when every log-probability moves by up to 1e-3
            if all([h["tokens"] for h in beam_generate(model, ids, nb, lp, es, ngram, max_new, n, eos,
                                                       _Noise(1e-3, 1000 * ci + k))[0]] ==
                   [h["tokens"] for h in res] for k in range(2)):
                break
            print("  beam case %d: not robust to 1e-3 noise, another prompt" % ci, flush=True)
        else:
            raise RuntimeError("beam case %d: no prompt found" % ci)
        golden["beams"].append({"model": name, "prompt": ids, "num_beams": nb, "length_penalty": lp,
                                "early_stopping": es, "no_repeat_ngram_size": ngram,
                                "max_new_tokens": max_new, "n": n, "eos": eos, "hypotheses": res,
                                "steps": steps})
        print("  beam case %d (%s, %d beams): %d steps, %s" % (ci, name, nb, steps,
                                                              [(len(h["tokens"]), round(h["score"], 4))
                                                               for h in res]))
    # greedy with no_repeat_ngram_size (own random stream: the beam cases' prompts stay as they were)
    golden["greedy_ngram"] = []
    gen = np.random.default_rng(args.seed + 78)
    for ci, (name, P, ngram, max_new, rep) in enumerate(GREEDY_NGRAM_CASES):
        model = models[name]
        V = model.config.vocab_size
        eos = EOT if V > EOT else None
        for attempt in range(300):
            ids = [int(x) for x in gen.integers(0, min(V, EOT), size=P)]
            plain, plain_gap = greedy_generate(model, ids, 0, max_new, rep, eos)
            if not repeats_ngram(ids + plain, ngram) or plain_gap < args.min_gap:
                continue  # the ban would change nothing, or the plain run is not a robust reference
            toks, gap = greedy_generate(model, ids, ngram, max_new, rep, eos)
            if toks == plain:
                raise RuntimeError("greedy case %d: the ban changed nothing although %r repeats a %d-gram"
                                   % (ci, ids + plain, ngram))
            if repeats_ngram(ids + toks, ngram):
                raise RuntimeError("greedy case %d: transformers' output repeats a %d-gram" % (ci, ngram))
            if gap >= args.min_gap:
                break
        else:
            raise RuntimeError("greedy case %d: no prompt found" % ci)
        golden["greedy_ngram"].append({"model": name, "prompt": ids, "no_repeat_ngram_size": ngram,
                                       "max_new_tokens": max_new, "repetition_penalty": rep, "eos": eos,
                                       "tokens": toks, "tokens_without_ban": plain,
                                       "min_top2_gap": min(gap, plain_gap)})
        print("  greedy case %d (%s, ngram %d, rep %g): %d tokens, %d differ from plain greedy, gap %.4g"
              % (ci, name, ngram, rep, len(toks), sum(a != b for a, b in zip(toks, plain)), gap))
    path = os.path.join(REPO_ROOT, DECODING_GOLDEN_REL)
    with open(path, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def score_windows(model, ids, maxT, stride):
    """Sum of -ln p over the tokens the perplexity guide scores (windows at 0, S, 2S, ... of at most
    maxT tokens; a token is scored in the first window that holds it with context), in float64 from
    float32 logits; and the guide's own loop (mean loss x (trg_len - 1)), equal when S = maxT."""
    import torch
    nll, scored, guide, prev_end = 0.0, 0, 0.0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + maxT, len(ids))
        window = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logits = model(window).logits[0].to(torch.float64)
        lsm = torch.log_softmax(logits, dim=-1)
        for i in range(max(begin + 1, prev_end), end):
            nll -= float(lsm[i - begin - 1, ids[i]])
            scored += 1
        trg_len = end - prev_end
        labels = window.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(window, labels=labels).loss
        guide += float(loss) * (int((labels != -100).sum()) - 1)
        prev_end = end
        if end == len(ids):
            break
    return nll, scored, guide


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Models: " + ", ".join(MODELS))
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, MODELS_DIR_REL),
                    help="output folder (default: tests/data/models)")
    ap.add_argument("--tokenizer", default=os.path.join(REPO_ROOT, TOKENIZER_DIR_REL),
                    help="folder with vocab.json and merges.txt (default: tests/data/gpt2-tokenizer)")
    ap.add_argument("--seed", type=int, default=1234, help="base seed (default 1234)")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--greedy", type=int, default=12, help="greedy tokens per case (default 12)")
    ap.add_argument("--batch-greedy", type=int, default=16,
                    help="greedy tokens per batch_greedy prompt (default 16)")
    ap.add_argument("--min-gap", type=float, default=1e-3,
                    help="required top-2 logit gap at every greedy step and prompt row")
    ap.add_argument("--max-attempts", type=int, default=50, help="seeds to try per model")
    ap.add_argument("--max-bytes", type=int, default=14 * 1000 * 1000,
                    help="fail when the output folder grows past this (default 14 MB: beam-eot added 1.6)")
    ap.add_argument("--decoding", action="store_true",
                    help="only the beam search and scoring goldens (tests/data/decoding_golden.json) and "
                         "the beam-eot model, from the committed fixtures")
    args = ap.parse_args()

    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n not in MODELS:
            ap.error("unknown model %r (known: %s)" % (n, ", ".join(MODELS)))
    for f in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(args.tokenizer, f)):
            print("error: %s has no %s" % (args.tokenizer, f), file=sys.stderr)
            return 1
    os.makedirs(args.out, exist_ok=True)
    enc = gpt2_local_encoding(args.tokenizer)
    if args.decoding:
        make_decoding_golden(args, enc)
        return 0
    for name in names:
        print("%s ..." % name, flush=True)
        seed, gap = make_model(name, MODELS[name], args.seed, args.out, args.tokenizer, enc, args)
        print("  seed %d, min top-2 gap %.4g" % (seed, gap))
    print("\nsizes (bytes, symlinks not counted):")
    for name in sorted(os.listdir(args.out)):
        d = os.path.join(args.out, name)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            p = os.path.join(d, f)
            if os.path.islink(p):
                print("  %-48s -> %s" % (os.path.join(name, f), os.readlink(p)))
            else:
                print("  %-48s %10d" % (os.path.join(name, f), os.path.getsize(p)))
    total = tree_size(args.out)
    print("  %-48s %10d" % ("total", total))
    if total > args.max_bytes:
        print("error: %s holds %d bytes, over the %d limit" % (args.out, total, args.max_bytes),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
