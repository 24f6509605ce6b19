#!/usr/bin/env python3
"""Alternating rounds on a noisy (shared) machine: our engine, optionally an older build of it, and
transformers, each run once per round in an order that reverses every round, so that a change of
the machine's load moves every system alike; reported as medians over the rounds and as medians of
the per-round ratios (the number to trust when the load drifts).

    python3 bench/ab_rounds.py --model DIR [--device cpu] [--threads 1] [--batch 1,8]
        [--prompt-len 64] [--gen-len 16] [--warmup 1] [--rounds 5]
        [--bin build/gpt2] [--bin OTHER_BUILD ...] [--no-hf] [--dtype fp32] [--json OUT]

Each system is timed as bench/bench_vs_pytorch.py times it (the same functions: `gpt2 bench
--prompt-ids` for ours, GPT2LMHeadModel.generate in a child process for transformers, the same
random prompt ids for all). Per round it prints prefill tok/s and the decode step's median per
batch size; at the end, per system, the medians, the ratio of each --bin's prefill tok/s to
transformers' in the same round, and each --bin's step time at the largest batch over its step
time at the smallest (the "batch-8 decode within 1.5 x batch-1" figure of issue 15).
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_vs_pytorch", os.path.join(HERE, "bench_vs_pytorch.py"))
bvp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bvp)


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="threads of every system (0: their default)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", action="append", default=[], help="our CLI (repeatable; default build/gpt2)")
    ap.add_argument("--dtype", default="fp32", choices=list(bvp.OURS_DTYPES), help="our dtype")
    ap.add_argument("--no-hf", action="store_true", help="only our builds")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--json", help="write every round's numbers here")
    args = ap.parse_args()
    args.batch = bvp.int_list(args.batch, "--batch")
    bins = [os.path.abspath(b) for b in (args.bin or [os.path.join(bvp.REPO, "build", "gpt2")])]
    for b in bins:
        if not os.access(b, os.X_OK):
            bvp.die(f"{b}: not found or not executable")
    if args.rounds < 1 or args.prompt_len < 1 or args.gen_len < 2:
        bvp.die("--rounds and --prompt-len must be >= 1, --gen-len >= 2")
    mdir = os.path.abspath(args.model)
    cfg = bvp.model_config(mdir)
    hf_dtype = bvp.OURS_VS_HF[args.dtype]

    import numpy as np

    prompts = np.random.default_rng(args.seed).integers(0, cfg["vocab_size"],
                                                        size=(max(args.batch), args.prompt_len)).tolist()
    systems = [(f"ours {b}", b) for b in bins] + ([] if args.no_hf else [(f"hf {hf_dtype}", None)])
    rounds = []
    with tempfile.TemporaryDirectory(prefix="gpt2-ab-") as work:
        ids_path = os.path.join(work, "prompts.txt")
        with open(ids_path, "w") as f:
            f.write("\n".join(" ".join(map(str, row)) for row in prompts) + "\n")
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            got = {}
            print(f"== round {r + 1}/{args.rounds}: {', '.join(n for n, _ in order)}", flush=True)
            for name, b in order:
                if b is None:
                    res = bvp.run_hf(args, mdir, hf_dtype, False, prompts, work)
                else:
                    args.bin = b
                    res = bvp.run_ours(args, mdir, args.dtype, ids_path, work)
                if res.get("status") != "ok":
                    bvp.die(f"round {r + 1}, {name}: {res.get('error')}")
                got[name] = {x["batch"]: {k: x[k] for k in ("prefill_tok_s", "decode_step_ms_median", "e2e_tok_s")}
                             for x in res["results"] if x.get("status") == "ok"}
            rounds.append(got)

    lo, hi = min(args.batch), max(args.batch)
    print(f"\n{args.rounds} rounds, {args.device}, threads {args.threads}, prompt {args.prompt_len}, "
          f"gen {args.gen_len}, model {mdir}")
    hfn = None if args.no_hf else f"hf {hf_dtype}"
    summary = {}
    for name, _ in systems:
        s = {}
        for B in args.batch:
            pf = [rd[name][B]["prefill_tok_s"] for rd in rounds]
            st = [rd[name][B]["decode_step_ms_median"] for rd in rounds]
            s[B] = {"prefill_tok_s": med(pf), "step_ms": med(st)}
            line = (f"{name:<40} batch {B:>3}: prefill tok/s median {med(pf):8.1f} [{min(pf):.1f}-{max(pf):.1f}], "
                    f"step ms median {med(st):8.2f} [{min(st):.2f}-{max(st):.2f}]")
            if hfn and name != hfn:
                rat = [rd[name][B]["prefill_tok_s"] / rd[hfn][B]["prefill_tok_s"] for rd in rounds]
                s[B]["prefill_vs_hf"] = med(rat)
                line += f", prefill / hf's in the round: median {med(rat):.2f} [{min(rat):.2f}-{max(rat):.2f}]"
            print(line)
        if hi != lo:
            q = [rd[name][hi]["decode_step_ms_median"] / rd[name][lo]["decode_step_ms_median"] for rd in rounds]
            s["step_ratio"] = med(q)
            print(f"{name:<40} step at batch {hi} / at batch {lo}: median {med(q):.2f} "
                  f"[{min(q):.2f}-{max(q):.2f}] (rounds: {', '.join(f'{x:.2f}' for x in q)})")
        summary[name] = s
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k != "bin"}, "bins": bins,
                       "rounds": [{n: {str(b): v for b, v in d.items()} for n, d in rd.items()} for rd in rounds],
                       "summary": {n: {str(k): v for k, v in d.items()} for n, d in summary.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
