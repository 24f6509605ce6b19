#!/usr/bin/env python3
"""Side by side: our engine (`gpt2 bench`) vs Hugging Face transformers' generate, on one device.

    python3 bench/bench_vs_pytorch.py [--config gpt2 --config gpt2-medium | --model DIR ...]
        [--device cuda|cpu] [--batch 1,8,64,256] [--prompt-len 128] [--gen-len 128] [--warmup 1]
        [--systems ours,hf,hf-compile,floor] [--ours-dtypes fp32,fp16,bf16] [--hf-dtypes float32,float16]
        [--out-dir bench/results] [--results-md bench/RESULTS.md] [--no-md]

Systems, each on the same model directory and the same prompts (max(batch) x prompt-len token ids
drawn by numpy.random.default_rng(seed) from the model's vocabulary; batch B takes the first B rows;
our engine reads them through `gpt2 bench --prompt-ids`):
  ours        build/gpt2 bench --json, once per --ours-dtypes entry (fp32, fp16, bf16).
  hf          GPT2LMHeadModel (attn_implementation="sdpa") .generate: greedy, use_cache,
              min_new_tokens = max_new_tokens = gen-len, dynamic KV cache; float32 and float16.
  hf-compile  the same with cache_implementation="static" and
              model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
              (transformers' own auto-compile is turned off with disable_compile=True so that only
              that one compile applies). A failure is recorded as "failed" with its error.
  floor       the decode bound at every batch size B: the bytes one decode step must read (every
              block weight and bias, the final layernorm and the lm_head once, in the dtype, plus
              each sequence's K and V cache at the mean context of the decode phase,
              prompt-len + gen-len / 2: 2 x L x C x that x B elements) divided by the device-to-
              device copy bandwidth measured in this run with torch (bytes read + written per s);
              its tokens/s is B over that time. At batch 1 the weights dominate; at batch 256 the
              KV cache does.

Every system is timed the same way: --warmup untimed generations, then one timed generation per
batch size. prefill = from the call to the first generated token on the host; decode step = one
new token of every sequence, reaching the host (our sample op; transformers' streamer, which
copies each step's tokens to the host); decode tok/s = B x (gen-len - 1) / decode time; end-to-end
tok/s = B x gen-len / total time. The transformers runs happen in child processes (one per model,
system and dtype, each with --timeout) so a crash, a hang or an out-of-memory error becomes a
recorded failure and device memory is returned between systems.

Writes OUT_DIR/<tag>.json (everything), OUT_DIR/<tag>.png (tokens/s vs batch size, log axes, one
line per system) and appends a section to --results-md with the device, driver, CUDA version,
commit, date and this exact command. Random models for --config NAME are made on first use with
tools/make_random_model.py --config NAME models/random-NAME.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

HF_DTYPES = ("float32", "float16", "bfloat16")
OURS_DTYPES = ("fp32", "fp16", "bf16")
# Our dtype -> the transformers dtype it is compared with (transformers has no bf16 run here).
OURS_VS_HF = {"fp32": "float32", "fp16": "float16", "bf16": "float16"}
ELEM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "float32": 4, "float16": 2, "bfloat16": 2}


def die(msg):
    print(f"bench_vs_pytorch: {msg}", file=sys.stderr)
    sys.exit(2)


def int_list(s, name):
    try:
        v = [int(x) for x in s.split(",")]
    except ValueError:
        die(f"{name} '{s}': expected comma-separated integers")
    if not v or any(x < 1 for x in v):
        die(f"{name} '{s}': expected positive integers")
    return v


def str_list(s, name, allowed):
    v = [x for x in s.split(",") if x]
    bad = [x for x in v if x not in allowed]
    if bad:
        die(f"{name}: unknown {', '.join(bad)} (expected some of {', '.join(allowed)})")
    return v


def peak_rss_mib():
    """This process's peak resident memory (VmHWM; ru_maxrss would include a parent's peak across exec)."""
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------
# The transformers side (runs in a child process: bench_vs_pytorch.py --worker SPEC.json)


def hf_worker(spec_path):
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.generation.streamers import BaseStreamer

    with open(spec_path) as f:
        spec = json.load(f)
    dev = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    P, G = spec["prompt_len"], spec["gen_len"]
    prompts = np.asarray(spec["prompts"], dtype=np.int64)
    out = {"load_s": None, "results": [], "error": None}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    class TimingStreamer(BaseStreamer):
        """Times each put after the first (the prompt); generate hands it each step's tokens on the host."""

        def __init__(self):
            self.times, self.n_put = [], 0

        def put(self, value):
            self.n_put += 1
            if self.n_put > 1:
                self.times.append(time.perf_counter())

        def end(self):
            pass

    try:
        t0 = time.perf_counter()
        model = GPT2LMHeadModel.from_pretrained(spec["model"], dtype=dtype, attn_implementation="sdpa")
        model = model.to(dev).eval()
        sync()
        out["load_s"] = time.perf_counter() - t0
        eos = model.config.eos_token_id
        kw = dict(max_new_tokens=G, min_new_tokens=G, do_sample=False, use_cache=True, pad_token_id=eos,
                  eos_token_id=eos)
        n_warm = spec["warmup"]
        if spec["compile"]:
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
            kw.update(cache_implementation="static", disable_compile=True)
            n_warm = max(n_warm, 2)  # the first run compiles, CUDA graphs are recorded after it
    except Exception as e:  # noqa: BLE001 - any failure is a result to record
        out["error"] = f"{type(e).__name__}: {e}"
        return out

    for B in spec["batch"]:
        r = {"batch": B}
        try:
            ids = torch.from_numpy(prompts[:B]).to(dev)
            am = torch.ones_like(ids)
            tw = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n_warm):
                    model.generate(ids, attention_mask=am, **kw)
                sync()
                r["warmup_s"] = time.perf_counter() - tw
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                st = TimingStreamer()
                sync()
                t0 = time.perf_counter()
                seqs = model.generate(ids, attention_mask=am, streamer=st, **kw)
                sync()
                t1 = time.perf_counter()
            if len(st.times) != G or seqs.shape[1] != P + G:
                raise RuntimeError(f"generate made {seqs.shape[1] - P} tokens ({len(st.times)} streamed), "
                                   f"asked for {G}")
            steps = np.diff(np.asarray(st.times))
            r.update(prefill_s=st.times[0] - t0, decode_s=st.times[-1] - st.times[0], e2e_s=t1 - t0,
                     decode_step_ms_median=1e3 * float(np.percentile(steps, 50)),
                     decode_step_ms_p90=1e3 * float(np.percentile(steps, 90)),
                     seq0_tokens=seqs[0, P:].tolist())
            r["prefill_tok_s"] = B * P / r["prefill_s"]
            r["decode_tok_s"] = B * (G - 1) / r["decode_s"]
            r["e2e_tok_s"] = B * G / r["e2e_s"]
            if dev.type == "cuda":
                r["peak_alloc_mib"] = torch.cuda.max_memory_allocated() / 2**20
            r["peak_rss_mib"] = peak_rss_mib()
            r["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            r.update(status="failed", error=f"{type(e).__name__}: {str(e)[:2000]}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        out["results"].append(r)
    return out


# ------------------------------------------------------------------------------------------------
# The parent: environment, floor, our engine, children, table, plot, RESULTS.md


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def git_commit():
    r = run(["git", "-C", REPO, "rev-parse", "HEAD"])
    if r.returncode != 0:
        return "unknown (git rev-parse HEAD failed: no commit yet?)"
    sha = r.stdout.strip()
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return sha + (" + uncommitted changes" if dirty else "")


def environment(device):
    import torch
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            env["cpu"] = names[0]
    except OSError:
        pass
    try:
        env["loadavg_before"] = os.getloadavg()
    except OSError:
        pass
    if device == "cuda":
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda_runtime_torch"] = torch.version.cuda
        q = run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"])
        env["driver"] = q.stdout.strip() if q.returncode == 0 else "unknown (nvidia-smi failed)"
        smi = run(["nvidia-smi"])
        line = next((ln for ln in smi.stdout.splitlines() if "CUDA Version" in ln), "")
        env["cuda_driver_version"] = line.split("CUDA Version:")[1].strip(" |") if line else "unknown"
        nv = run(["nvcc", "--version"]) if run(["which", "nvcc"]).returncode == 0 else None
        env["nvcc"] = nv.stdout.strip().splitlines()[-1] if nv and nv.returncode == 0 else "not found"
    else:
        env["device"] = f"CPU: {env['cpu']}, {env['cores']} cores"
        env["driver"] = env["cuda_runtime_torch"] = env["cuda_driver_version"] = env["nvcc"] = "n/a (CPU run)"
    return env


def copy_bandwidth(device):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (median of 5)."""
    import torch

    n = (1 << 30) if device == "cuda" else (256 << 20)
    x = torch.empty(n, dtype=torch.uint8, device=device)
    x.fill_(1)
    y = torch.empty_like(x)
    iters, rates = (20 if device == "cuda" else 5), []
    for _ in range(3):
        y.copy_(x)
    for _ in range(5):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(iters):
                y.copy_(x)
            b.record()
            b.synchronize()
            dt = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                y.copy_(x)
            dt = time.perf_counter() - t0
        rates.append(2 * n * iters / dt)
    del x, y
    if device == "cuda":
        torch.cuda.empty_cache()
    rates.sort()
    return {"bytes": n, "iters": iters, "bytes_per_s": rates[len(rates) // 2], "all_bytes_per_s": rates}


def weight_bytes_per_token(cfg, elem):
    """Bytes of weights one decode step reads for one sequence: the blocks, ln_f and the lm_head.
    The embedding lookups (one row of wte and wpe) are negligible and left out."""
    L, C, V = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]
    per_layer = 12 * C * C + 13 * C  # qkv 3C^2+3C, proj C^2+C, fc 4C^2+4C, fcproj 4C^2+C, 2 layernorms 4C
    return (L * per_layer + 2 * C + V * C) * elem


def kv_bytes_per_step(cfg, elem, batch, context):
    """Bytes of K and V cache one decode step reads: every layer's keys and values of `context`
    positions for each of `batch` sequences."""
    return 2 * cfg["n_layer"] * cfg["n_embd"] * context * batch * elem


def model_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    return {"n_layer": c["n_layer"], "n_embd": c["n_embd"], "n_head": c["n_head"],
            "n_positions": c.get("n_positions", c.get("n_ctx")), "vocab_size": c["vocab_size"]}


def ensure_random_model(name):
    out = os.path.join(REPO, "models", f"random-{name}")
    if not os.path.isfile(os.path.join(out, "config.json")):
        print(f"making random model {name} in {out} ...", flush=True)
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_random_model.py"), "--config", name,
                            out, "--force"])
        if r.returncode != 0:
            die(f"tools/make_random_model.py --config {name} failed (exit {r.returncode})")
    return out


def run_ours(args, model_dir, dtype, ids_path, work):
    jpath = os.path.join(work, f"ours-{dtype}.json")
    cmd = [args.bin, "bench", "--model", model_dir, "--device", args.device, "--dtype", dtype,
           "--batch", ",".join(map(str, args.batch)), "--prompt-len", str(args.prompt_len),
           "--gen-len", str(args.gen_len), "--warmup", str(args.warmup), "--prompt-ids", ids_path, "--json", jpath]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print("  $", " ".join(shlex.quote(c) for c in cmd), flush=True)
    try:
        r = run(cmd, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {args.timeout} s", "command": cmd, "results": []}
    res = {"command": cmd, "stdout": r.stdout}
    data = None
    if os.path.isfile(jpath):
        with open(jpath) as f:
            data = json.load(f)
    if r.returncode != 0:
        res.update(status="failed", error=f"exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    else:
        res["status"] = "ok"
    if data:
        res.update({k: v for k, v in data.items() if k not in ("status", "error")})
        if data.get("error"):
            res["error"] = data["error"]
        for x in data["results"]:
            x["status"] = "ok"
    res.setdefault("results", [])
    if r.stdout:
        print("    " + r.stdout.rstrip().replace("\n", "\n    "), flush=True)
    if res["status"] != "ok":
        print(f"    FAILED: {res['error']}", flush=True)
    return res


def run_hf(args, model_dir, dtype, compiled, prompts, work):
    tag = f"hf{'-compile' if compiled else ''}-{dtype}"
    spec = {"model": model_dir, "device": args.device, "dtype": dtype, "compile": compiled, "batch": args.batch,
            "prompt_len": args.prompt_len, "gen_len": args.gen_len, "warmup": args.warmup, "threads": args.threads,
            "prompts": prompts}
    spath, opath = os.path.join(work, f"{tag}.spec.json"), os.path.join(work, f"{tag}.out.json")
    with open(spath, "w") as f:
        json.dump(spec, f)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", spath, "--worker-out", opath]
    print(f"  transformers {tag} (child process, timeout {args.timeout} s) ...", flush=True)
    t0 = time.perf_counter()
    try:
        r = run(cmd, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {args.timeout} s", "results": []}
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not os.path.isfile(opath):
        return {"status": "failed", "error": f"exit {r.returncode}: {r.stderr.strip()[-2000:]}", "results": [],
                "wall_s": wall}
    with open(opath) as f:
        res = json.load(f)
    res["wall_s"] = wall
    res["status"] = "failed" if res.get("error") else "ok"
    for x in res["results"]:
        if x["status"] == "ok":
            print(f"    batch {x['batch']:>4}: prefill {x['prefill_tok_s']:10.1f} tok/s, decode "
                  f"{x['decode_tok_s']:10.1f} tok/s, e2e {x['e2e_tok_s']:10.1f} tok/s", flush=True)
        else:
            print(f"    batch {x['batch']:>4}: FAILED {x['error'][:300]}", flush=True)
    if res.get("error"):
        print(f"    FAILED: {res['error'][:500]}", flush=True)
    return res


def by_batch(sysres):
    return {x["batch"]: x for x in sysres.get("results", []) if x.get("status") == "ok"}


def floor_at(fres, B):
    """The floor's numbers at batch B: per batch (weights + KV cache) when recorded, else (older runs)
    the weights-only bound, which holds at batch 1 only."""
    fb = fres.get("by_batch", {}).get(str(B))
    if fb:
        return fb
    if B == 1 and fres.get("decode_tok_s"):
        return {"decode_tok_s": fres["decode_tok_s"], "step_ms": fres["step_ms"]}
    return None


def fmt(v, spec="10.1f"):
    return "-" if v is None else format(v, spec)


def build_table(args, models):
    """Rows per model and batch size, as text and as markdown."""
    head = ["model", "batch", "system", "prefill tok/s", "decode tok/s", "step ms p50", "e2e tok/s",
            "ours/hf", "ours/hf-compile", "ours/floor"]
    rows = []
    for mname, m in models.items():
        systems = m["systems"]
        for B in args.batch:
            for sname, sres in systems.items():
                x = by_batch(sres).get(B)
                if sres.get("kind") == "floor":
                    fb = floor_at(sres, B)
                    if fb:
                        rows.append([mname, B, sname, "-", fmt(fb["decode_tok_s"]), fmt(fb["step_ms"], ".3f"),
                                     "-", "", "", ""])
                    continue
                if x is None:
                    err = sres.get("error") or next((y.get("error") for y in sres.get("results", [])
                                                      if y["batch"] == B), None) or "not run"
                    rows.append([mname, B, sname, "failed", "", "", "", "", "", err.splitlines()[0][:60]])
                    continue
                r_hf = r_hfc = r_floor = ""
                if sres.get("kind") == "ours":
                    hd = OURS_VS_HF[sres["dtype"]]
                    h = by_batch(systems.get(f"hf {hd}", {})).get(B)
                    hc = by_batch(systems.get(f"hf-compile {hd}", {})).get(B)
                    fl = systems.get(f"floor {'fp32' if sres['dtype'] == 'fp32' else '16-bit'}")
                    r_hf = f"{x['e2e_tok_s'] / h['e2e_tok_s']:.2f}" if h else ""
                    r_hfc = f"{x['e2e_tok_s'] / hc['e2e_tok_s']:.2f}" if hc else ""
                    fb = floor_at(fl, B) if fl else None
                    if fb:
                        r_floor = f"{x['decode_tok_s'] / fb['decode_tok_s']:.3g}"
                rows.append([mname, B, sname, fmt(x["prefill_tok_s"]), fmt(x["decode_tok_s"]),
                             fmt(x["decode_step_ms_median"], ".3f"), fmt(x["e2e_tok_s"]), r_hf, r_hfc, r_floor])
    return head, rows


def table_text(head, rows):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(str(h).rjust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(str(c).rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def table_md(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i != 2 and i != 0 else "---"
                                                            for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(str(c).strip() for c in r) + " |" for r in rows]
    return "\n".join(lines)


def plot(args, models, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(models)
    fig, axes = plt.subplots(2, len(names), figsize=(6.5 * len(names), 9), squeeze=False)
    for j, mname in enumerate(names):
        for i, (metric, label) in enumerate([("e2e_tok_s", "end-to-end generated tokens/s"),
                                             ("decode_tok_s", "decode tokens/s")]):
            ax = axes[i][j]
            for sname, sres in models[mname]["systems"].items():
                if sres.get("kind") == "floor":
                    pts = [(B, floor_at(sres, B)) for B in args.batch]
                    pts = [(B, fb) for B, fb in pts if fb]
                    if metric == "decode_tok_s" and pts:
                        ax.plot([b for b, _ in pts], [fb["decode_tok_s"] for _, fb in pts], marker="*",
                                markersize=10, linestyle="--", label=f"{sname} (bandwidth bound)")
                    continue
                pts = sorted(by_batch(sres).items())
                if pts:
                    ax.plot([b for b, _ in pts], [x[metric] for _, x in pts], marker="o", label=sname)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(args.batch)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("batch size")
            ax.set_ylabel(label)
            ax.set_title(f"{mname}: {label}\nprompt {args.prompt_len}, gen {args.gen_len}, {models[mname]['device']}",
                         fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--model", action="append", default=[], help="model directory (repeatable)")
    ap.add_argument("--config", action="append", default=[],
                    help="random model of this OpenAI shape (gpt2, gpt2-medium, ...), made on first use under "
                         "models/random-NAME (repeatable; default gpt2 and gpt2-medium when no --model)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", default="1,8,64,256")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both engines (0: their default)")
    ap.add_argument("--systems", default="ours,hf,hf-compile,floor")
    ap.add_argument("--ours-dtypes", help="default fp32,fp16,bf16 on cuda, fp32 on cpu")
    ap.add_argument("--hf-dtypes", help="default float32,float16 on cuda, float32 on cpu")
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "gpt2"), help="our CLI (default build/gpt2)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds allowed to each engine run (default 1200)")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--tag", help="file name stem of the outputs (default DEVICE-UTCDATE)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run --tag: keep its systems that finished, run the rest")
    ap.add_argument("--results-md", default=os.path.join(REPO, "bench", "RESULTS.md"))
    ap.add_argument("--no-md", action="store_true", help="do not append to --results-md")
    ap.add_argument("--note", default="", help="a line added to the RESULTS.md section")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = ap.parse_args()

    if args.worker:
        res = hf_worker(args.worker)
        with open(args.worker_out, "w") as f:
            json.dump(res, f)
        return 0

    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    args.batch = int_list(args.batch, "--batch")
    if args.prompt_len < 1 or args.gen_len < 2 or args.warmup < 0:
        die("--prompt-len must be >= 1, --gen-len >= 2, --warmup >= 0")
    systems = str_list(args.systems, "--systems", ("ours", "hf", "hf-compile", "floor"))
    ours_dtypes = str_list(args.ours_dtypes or ("fp32,fp16,bf16" if args.device == "cuda" else "fp32"),
                           "--ours-dtypes", OURS_DTYPES)
    hf_dtypes = str_list(args.hf_dtypes or ("float32,float16" if args.device == "cuda" else "float32"),
                         "--hf-dtypes", HF_DTYPES)
    if "ours" in systems and not os.access(args.bin, os.X_OK):
        die(f"{args.bin}: not found or not executable (run make first, or pass --bin)")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401 - checked now rather than after an hour of benchmarks
        except ImportError:
            die("matplotlib is needed for the plot: pip install matplotlib (or pass --no-plot)")
    model_dirs = [os.path.abspath(m) for m in args.model]
    configs = args.config or ([] if args.model else ["gpt2", "gpt2-medium"])
    model_dirs += [ensure_random_model(c) for c in configs]

    import numpy as np
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        die("--device cuda: torch sees no GPU (use --device cpu for a CPU run)")
    now = datetime.datetime.now(datetime.timezone.utc)
    if args.resume and not args.tag:
        die("--resume needs the --tag of the run to continue")
    tag = args.tag or f"{args.device}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    os.makedirs(args.out_dir, exist_ok=True)
    jpath, png = os.path.join(args.out_dir, f"{tag}.json"), os.path.join(args.out_dir, f"{tag}.png")
    settings = {"device": args.device, "batch": args.batch, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
                "warmup": args.warmup, "seed": args.seed, "threads": args.threads}
    prev = {}
    if args.resume and os.path.isfile(jpath):
        with open(jpath) as f:
            prev = json.load(f)
        if prev["meta"]["settings"] != settings:
            die(f"--resume: {jpath} was made with {prev['meta']['settings']}, not {settings}")
    env = environment(args.device)
    print(f"device: {env['device']}; driver {env['driver']}; torch {env['torch']}, transformers "
          f"{env['transformers']}", flush=True)

    bw = prev.get("meta", {}).get("copy_bandwidth")
    if "floor" in systems and not bw:
        bw = copy_bandwidth(args.device)
    if bw:
        print(f"device-to-device copy: {bw['bytes_per_s'] / 1e9:.1f} GB/s (read + write)", flush=True)

    meta = {"commands": prev.get("meta", {}).get("commands", []) + [command], "date": now.isoformat(timespec="seconds"),
            "commit": git_commit(), "env": env, "settings": settings,
            "prompts": f"numpy.random.default_rng({args.seed}).integers(0, vocab_size, (max batch, prompt_len)); "
                       f"batch B uses the first B rows; the same ids go to every system",
            "copy_bandwidth": bw}
    models = prev.get("models", {})

    def save():
        """Written after every system, so that a run cut short keeps what it measured (see --resume)."""
        with open(jpath + ".tmp", "w") as f:
            json.dump({"meta": meta, "models": models}, f, indent=1)
        os.replace(jpath + ".tmp", jpath)

    with tempfile.TemporaryDirectory(prefix="gpt2-bench-") as work:
        for mdir in model_dirs:
            cfg = model_config(mdir)
            if args.prompt_len + args.gen_len > cfg["n_positions"]:
                die(f"{mdir}: --prompt-len + --gen-len = {args.prompt_len + args.gen_len} exceeds n_positions "
                    f"{cfg['n_positions']}")
            mname = os.path.basename(mdir.rstrip("/"))
            print(f"\n== {mname} ({mdir}): L={cfg['n_layer']} C={cfg['n_embd']} V={cfg['vocab_size']}", flush=True)
            rng = np.random.default_rng(args.seed)
            prompts = rng.integers(0, cfg["vocab_size"], size=(max(args.batch), args.prompt_len)).tolist()
            ids_path = os.path.join(work, f"prompts-{mname}.txt")
            with open(ids_path, "w") as f:
                f.write("\n".join(" ".join(map(str, row)) for row in prompts) + "\n")
            m = models.setdefault(mname, {"dir": mdir, "config": cfg, "device": env["device"], "systems": {}})
            sysres = m["systems"]
            todo = [(f"ours {dt}", "ours", dt) for dt in ours_dtypes if "ours" in systems]
            for kind in ("hf", "hf-compile"):
                todo += [(f"{kind} {dt}", kind, dt) for dt in hf_dtypes if kind in systems]
            for name, kind, dt in todo:
                if sysres.get(name, {}).get("status") == "ok":
                    print(f"  {name}: kept from the earlier run of {tag}", flush=True)
                    continue
                if kind == "ours":
                    sysres[name] = dict(run_ours(args, mdir, dt, ids_path, work), kind=kind, dtype=dt)
                else:
                    sysres[name] = dict(run_hf(args, mdir, dt, kind == "hf-compile", prompts, work), kind=kind,
                                        dtype=dt)
                save()
            if bw and "floor" in systems:
                context = args.prompt_len + args.gen_len / 2  # mean positions attended in the decode phase
                for label, elem in (("fp32", 4), ("16-bit", 2)):
                    nbytes = weight_bytes_per_token(cfg, elem)
                    t = nbytes / bw["bytes_per_s"]
                    per_b = {}
                    for B in args.batch:
                        kvb = kv_bytes_per_step(cfg, elem, B, context)
                        tb = (nbytes + kvb) / bw["bytes_per_s"]
                        per_b[str(B)] = {"kv_bytes_per_step": kvb, "step_ms": 1e3 * tb, "decode_tok_s": B / tb}
                    sysres[f"floor {label}"] = {"kind": "floor", "status": "ok", "weight_bytes_per_token": nbytes,
                                                "copy_bytes_per_s": bw["bytes_per_s"], "step_ms": 1e3 * t,
                                                "decode_tok_s": 1 / t, "mean_context": context, "by_batch": per_b}
            # Greedy agreement of sequence 0 between ours and transformers at the same dtype (information:
            # random models have near-ties, so fp16 runs may part ways legitimately).
            agree = {}
            for dt in OURS_DTYPES:
                o, h = by_batch(sysres.get(f"ours {dt}", {})), by_batch(sysres.get(f"hf {OURS_VS_HF[dt]}", {}))
                for B in args.batch:
                    if B in o and B in h:
                        a, b = o[B]["seq0_tokens"], h[B]["seq0_tokens"]
                        k = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
                        agree[f"ours {dt} vs hf {OURS_VS_HF[dt]}, batch {B}"] = f"{k}/{len(a)} tokens agree"
            m["seq0_agreement"] = agree
            save()

    head, rows = build_table(args, models)
    text = table_text(head, rows)
    print("\n" + text)
    for mname, m in models.items():
        for k, v in m["seq0_agreement"].items():
            print(f"{mname}: greedy sequence 0, {k}: {v}")

    if args.no_plot:
        png = None
    else:
        plot(args, models, png)
    print(f"\nwrote {os.path.relpath(jpath, REPO)}" + (f" and {os.path.relpath(png, REPO)}" if png else ""))

    if not args.no_md:
        dev_kind = "GPU" if args.device == "cuda" else f"CPU ({env['cores']} cores)"
        md = [f"\n## {now.strftime('%Y-%m-%d %H:%M UTC')}: {dev_kind}, {', '.join(models)}\n",
              f"- Device: {env['device']}",
              f"- Driver: {env['driver']}; CUDA: driver API {env['cuda_driver_version']}, torch built with "
              f"{env['cuda_runtime_torch']}, nvcc {env['nvcc']}",
              f"- Commit: {meta['commit']}",
              f"- Date: {meta['date']}",
              "- Command" + ("s (one run, resumed)" if len(meta["commands"]) > 1 else "") + ": "
              + "; ".join(f"`{c}`" for c in meta["commands"]),
              f"- torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}",
              f"- Settings: batch {args.batch}, prompt-len {args.prompt_len}, gen-len {args.gen_len}, warmup "
              f"{args.warmup}, seed {args.seed}, threads {args.threads or 'default'}",
              ]
        if "loadavg_before" in env:
            md.append(f"- Load average before the run: {', '.join(f'{x:.2f}' for x in env['loadavg_before'])}")
        if bw:
            md.append(f"- Copy bandwidth (torch, read + write): {bw['bytes_per_s'] / 1e9:.1f} GB/s")
        if args.note:
            md.append(f"- Note: {args.note}")
        files = [os.path.relpath(p, REPO) for p in (jpath, png) if p]
        md += ["- Files: " + ", ".join(f"`{p}`" for p in files), "",
               "Ratios: end-to-end tokens/s of ours over transformers at the matching dtype (ours bf16 against "
               "transformers float16); ours/floor: decode tokens/s over the bandwidth bound at that batch size (weights "
               "+ KV cache read once per step).", "",
               table_md(head, rows), ""]
        for mname, m in models.items():
            for k, v in m["seq0_agreement"].items():
                md.append(f"- {mname}: greedy sequence 0, {k}: {v}")
        with open(args.results_md, "a") as f:
            f.write("\n".join(md) + "\n")
        print(f"appended a section to {os.path.relpath(args.results_md, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
