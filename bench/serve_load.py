#!/usr/bin/env python3
"""serve_load.py: throughput and latency of `gpt2 serve` under 1, 16 and 64 concurrent clients.

    python3 bench/serve_load.py --model tests/data/models/tiny [--device cpu] [--max-tokens 32]
    python3 bench/serve_load.py --url http://127.0.0.1:8000 --served-model tiny

With --model it starts `build/gpt2 serve` (or --bin) on a free loopback port and stops it at the end;
with --url it measures a server already running (loopback addresses only). Each client streams
completions through the official `openai` package, one after another, --requests-per-client each;
every request has its own prompt and seed and --max-tokens tokens (ignore-EOS is not in the API, so a
request that samples end-of-text ends early: the token counts come from the server's usage numbers).

Reported per concurrency: requests/s, output tokens/s (all clients together, over the wall time of
the level), and percentiles (p50/p90/p99) of the time to first token, the time per output token
after the first (per request: (end - first token) / (tokens - 1)) and the whole request. A warm-up
request runs first. The machine, the model and the command are printed with the table; paste it
into bench/RESULTS.md.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.parse

import openai


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(c, model, prompt, seed, max_tokens):
    t0 = time.perf_counter()
    first, n_chunks, usage = None, 0, None
    for ch in c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, seed=seed, stream=True,
                                   temperature=1.0, stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].text and first is None:
            first = time.perf_counter()
        n_chunks += 1
        if ch.usage:
            usage = ch.usage
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage else 0
    return {"ttft": (first or end) - t0, "latency": end - t0, "tokens": tokens,
            "tpot": (end - first) / (tokens - 1) if first and tokens > 1 else None}


def level(base, model, n_clients, per_client, max_tokens):
    c = openai.OpenAI(base_url=base + "/v1", api_key=os.environ.get("OPENAI_API_KEY", "none"), max_retries=0,
                      timeout=600)
    results, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients)

    def client(i):
        barrier.wait()
        for k in range(per_client):
            try:
                r = one_request(c, model, f"Client {i} request {k}: once upon a time", 1000 * i + k, max_tokens)
                with lock:
                    results.append(r)
            except Exception as ex:  # counted, reported
                with lock:
                    errors.append(repr(ex))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": n_clients, "requests": len(results), "errors": len(errors), "wall_s": wall,
        "req_per_s": len(results) / wall, "tok_per_s": tokens / wall, "tokens": tokens,
        "ttft_ms": [1000 * pct([r["ttft"] for r in results], p) for p in (50, 90, 99)],
        "tpot_ms": [1000 * pct([r["tpot"] for r in results if r["tpot"] is not None], p) for p in (50, 90, 99)],
        "latency_ms": [1000 * pct([r["latency"] for r in results], p) for p in (50, 90, 99)],
        "first_error": errors[0] if errors else None,
    }


def start_server(args):
    cmd = [args.bin, "serve", "--model", args.model, "--device", args.device, "--host", "127.0.0.1", "--port", "0",
           "--max-queue", "100000"]
    if args.max_slots:
        cmd += ["--max-slots", str(args.max_slots)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if "listening on " not in line:
        p.kill()
        sys.exit(f"serve_load: the server did not start: {line!r}")
    return p, line.split("listening on ", 1)[1].strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory: start a server on it")
    ap.add_argument("--url", help="a running server (loopback only)")
    ap.add_argument("--served-model", help="the model's id on the server (default: the directory's name)")
    ap.add_argument("--bin", default="build/gpt2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-slots", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if bool(args.model) == bool(args.url):
        ap.error("give exactly one of --model or --url")
    proc = None
    if args.model:
        proc, base = start_server(args)
        model = args.served_model or os.path.basename(os.path.normpath(args.model))
    else:
        base = args.url.rstrip("/")
        host = urllib.parse.urlparse(base).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("serve_load: loopback addresses only")
        model = args.served_model or "gpt2"
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key=os.environ.get("OPENAI_API_KEY", "none"), max_retries=0)
        c.completions.create(model=model, prompt="warm-up", max_tokens=4)
        rows = [level(base, model, int(n), args.requests_per_client, args.max_tokens)
                for n in args.levels.split(",")]
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=60)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"gpt2 serve load: model {args.model or model} on {args.device if args.model else base}, CPU {cpu} "
          f"({os.cpu_count()} cores), commit {commit}, {args.max_tokens} tokens per request, "
          f"{args.requests_per_client} requests per client, streamed")
    print("command: python3 " + " ".join(sys.argv))
    print()
    print("| clients | requests | errors | req/s | output tok/s | TTFT p50/p90/p99 (ms) | "
          "per-token p50/p90/p99 (ms) | latency p50/p90/p99 (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda v: "/".join(f"{x:.1f}" for x in v)
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | "
              f"{f(r['ttft_ms'])} | {f(r['tpot_ms'])} | {f(r['latency_ms'])} |")
    for r in rows:
        if r["first_error"]:
            print(f"first error at {r['clients']} clients: {r['first_error']}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
