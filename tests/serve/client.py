#!/usr/bin/env python3
"""Clients of `gpt2 serve` for tests/test_serve.c: the official `openai` package, plus raw sockets for
what that client never sends (malformed bodies, abrupt disconnects, slow readers).

usage: client.py CASE BASE_URL [ARGS...]   (BASE_URL: http://127.0.0.1:PORT, loopback only)

Each case checks what it can itself (an AssertionError exits 1 with the reason on stderr) and prints
one JSON document on stdout for the C test to check against independent results (`gpt2 generate`).
Every socket has a timeout and every loop a bound: a stuck server fails the case, never hangs it.
"""
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse

import openai

MODEL = "tiny"
TIMEOUT = 200  # seconds without a byte; queued streams get none until their first token (slow under ASan)


def client(base, key="none"):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


def complete(c, **kw):
    extra = {}
    for k in ("top_k", "repetition_penalty"):
        if k in kw:
            extra[k] = kw.pop(k)
    return c.completions.create(model=MODEL, extra_body=extra or None, **kw)


def stream_text(c, **kw):
    """Concatenated text per choice index, finish reasons, chunk count."""
    texts, finish, chunks = {}, {}, 0
    for ch in complete(c, stream=True, **kw):
        chunks += 1
        for choice in ch.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish, chunks


def metrics(base):
    host, port = hostport(base)
    status, _, body = raw_request(host, port, "GET", "/metrics", b"")
    assert status == 200, status
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def hostport(base):
    u = urllib.parse.urlparse(base)
    assert u.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only: " + base
    return u.hostname, u.port


def raw_request(host, port, method, path, body, headers=None, timeout=TIMEOUT):
    """One HTTP/1.1 request on a fresh connection; (status, headers text, body bytes)."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        h = {"Host": f"{host}:{port}", "Content-Type": "application/json", "Connection": "close"}
        if body is not None:
            h["Content-Length"] = str(len(body))
        h.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        s.sendall(head.encode() + (body or b""))
        data = b""
        while True:
            try:
                got = s.recv(65536)
            except ConnectionResetError:
                break
            if not got:
                break
            data += got
    finally:
        s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        rest = dechunk(rest)
    return status, head.decode("latin-1"), rest


def dechunk(rest):
    body_out, i = b"", 0
    while i < len(rest):
        j = rest.index(b"\r\n", i)
        n = int(rest[i:j].split(b";")[0], 16)
        if n == 0:
            break
        body_out += rest[j + 2:j + 2 + n]
        i = j + 2 + n + 2
    return body_out


def error_of(body):
    e = json.loads(body)["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    return e


# ------------------------------------------------------------------------------------------------
# Cases

def case_plain(base):
    c = client(base)
    r = complete(c, prompt="Hello, my name is", max_tokens=8, seed=1)
    assert r.object == "text_completion" and len(r.choices) == 1, r
    ch = r.choices[0]
    assert ch.index == 0 and ch.finish_reason in ("length", "stop"), ch
    assert r.usage.completion_tokens == 8 or ch.finish_reason == "stop", r.usage
    assert r.usage.prompt_tokens == 5, r.usage  # tiktoken gpt2: "Hello", ",", " my", " name", " is"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    models = c.models.list()
    assert [m.id for m in models.data] == [MODEL], models
    # token ids as the prompt: the same ids as the text above give the same output
    r2 = complete(c, prompt=[15496, 11, 616, 1438, 318], max_tokens=8, seed=1)
    assert r2.choices[0].text == ch.text, (r2.choices[0].text, ch.text)
    # an empty prompt is the end-of-text token, as OpenAI does
    r3 = complete(c, prompt="", max_tokens=4, seed=1)
    assert r3.usage.prompt_tokens == 1, r3.usage
    print(json.dumps({"text": ch.text, "finish_reason": ch.finish_reason}))


def case_list(base):
    c = client(base)
    prompts = ["The quick brown fox", "Once upon a time", "In 1999,"]
    r = complete(c, prompt=prompts, max_tokens=10, seed=3, temperature=0.9)
    assert [ch.index for ch in r.choices] == [0, 1, 2], r.choices
    for i, p in enumerate(prompts):
        alone = complete(c, prompt=p, max_tokens=10, seed=3, temperature=0.9)
        assert r.choices[i].text == alone.choices[0].text, (i, r.choices[i].text, alone.choices[0].text)
    # lists of token-id lists
    r2 = complete(c, prompt=[[464, 2068], [7454, 2402, 257]], max_tokens=5, temperature=0)
    assert len(r2.choices) == 2
    assert r2.choices[0].text == complete(c, prompt="The quick", max_tokens=5, temperature=0).choices[0].text
    print(json.dumps({"texts": [ch.text for ch in r.choices]}))


def case_n(base):
    c = client(base)
    r = complete(c, prompt="A B C", max_tokens=12, n=3, seed=5)
    assert [ch.index for ch in r.choices] == [0, 1, 2], r.choices
    texts = [ch.text for ch in r.choices]
    assert len(set(texts)) == 3, texts  # choice j samples with seed + j
    for j in range(3):
        alone = complete(c, prompt="A B C", max_tokens=12, seed=5 + j)
        assert alone.choices[0].text == texts[j], (j, alone.choices[0].text, texts[j])
    # n with two prompts: prompt-major order
    r2 = complete(c, prompt=["x", "y"], max_tokens=4, n=2, seed=9)
    assert len(r2.choices) == 4
    assert r2.choices[2].text == complete(c, prompt="y", max_tokens=4, seed=9).choices[0].text
    print(json.dumps({"texts": texts}))


def case_stream(base):
    c = client(base)
    ref = complete(c, prompt="Streaming test:", max_tokens=20, seed=11)
    texts, finish, chunks = stream_text(c, prompt="Streaming test:", max_tokens=20, seed=11)
    assert texts == {0: ref.choices[0].text}, (texts, ref.choices[0].text)
    assert finish == {0: ref.choices[0].finish_reason}, finish
    assert chunks >= 2, chunks  # token by token, not one block
    # several choices in one stream, and usage at the end
    n_usage = 0
    got = {}
    for ch in complete(c, prompt=["a", "b"], n=2, max_tokens=6, seed=2, stream=True,
                       stream_options={"include_usage": True}):
        if ch.usage:
            n_usage += 1
            assert ch.usage.completion_tokens <= 24
        for choice in ch.choices:
            got[choice.index] = got.get(choice.index, "") + choice.text
    assert n_usage == 1 and sorted(got) == [0, 1, 2, 3], (n_usage, got)
    full = complete(c, prompt=["a", "b"], n=2, max_tokens=6, seed=2)
    assert [got[i] for i in range(4)] == [ch.text for ch in full.choices]
    # echo: the prompt comes first
    e = complete(c, prompt="Echo me", max_tokens=3, seed=1, echo=True)
    assert e.choices[0].text.startswith("Echo me"), e.choices[0].text
    et, _, _ = stream_text(c, prompt="Echo me", max_tokens=3, seed=1, echo=True)
    assert et[0] == e.choices[0].text, (et, e.choices[0].text)
    print(json.dumps({"text": texts[0], "chunks": chunks}))


def case_logprobs(base):
    c = client(base)
    r = complete(c, prompt="Log probabilities of", max_tokens=10, seed=4, logprobs=0)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == n and len(lp.token_logprobs) == n and len(lp.text_offset) == n, lp
    assert all(x <= 0 for x in lp.token_logprobs), lp.token_logprobs
    if not any(t.startswith("bytes:") for t in lp.tokens):
        assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0, lp.text_offset
    # the same logprobs when streamed
    toks, lps = [], []
    for ch in complete(c, prompt="Log probabilities of", max_tokens=10, seed=4, logprobs=0, stream=True):
        for choice in ch.choices:
            if choice.logprobs:
                toks += choice.logprobs.tokens
                lps += choice.logprobs.token_logprobs
    assert toks == lp.tokens and lps == lp.token_logprobs, (toks, lp.tokens)
    # greedy takes the most likely token: its logprob is no lower than any sampled first token's
    g = complete(c, prompt="Same context", max_tokens=1, temperature=0, logprobs=0).choices[0].logprobs
    for seed in range(6):
        o = complete(c, prompt="Same context", max_tokens=1, seed=seed, logprobs=0).choices[0].logprobs
        assert o.token_logprobs[0] <= g.token_logprobs[0] + 1e-6, (o, g)
    print(json.dumps({"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "text": r.choices[0].text}))


def case_top_logprobs(base, ids):
    """logprobs = 3 with echo on a token-id prompt: the prompt's logprobs and alternatives (the C test
    compares them with `gpt2 logits`), then greedy tokens, each the top alternative of its step."""
    c = client(base)
    ids = [int(x) for x in ids.split(",")]
    r = complete(c, prompt=ids, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    assert all(len(d) == 3 for d in lp.top_logprobs[1:]), lp.top_logprobs
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    g = complete(c, prompt=ids, max_tokens=6, echo=True, logprobs=3, temperature=0)
    glp = g.choices[0].logprobs
    assert glp.tokens[:len(ids)] == lp.tokens and glp.token_logprobs[:len(ids)] == lp.token_logprobs
    for tok, val, top in zip(glp.tokens[len(ids):], glp.token_logprobs[len(ids):], glp.top_logprobs[len(ids):]):
        best = max(top, key=top.get)
        assert best == tok and abs(top[best] - val) < 1e-6, (tok, val, top)
    assert g.choices[0].text.startswith(r.choices[0].text), (g.choices[0].text, r.choices[0].text)
    assert glp.text_offset == sorted(glp.text_offset), glp.text_offset
    # streamed: the same lists, the echo chunk first
    toks, vals, tops = [], [], []
    first = None
    for ch in complete(c, prompt=ids, max_tokens=6, echo=True, logprobs=3, temperature=0, stream=True):
        for choice in ch.choices:
            if first is None:
                first = choice.text
            if choice.logprobs:
                toks += choice.logprobs.tokens
                vals += choice.logprobs.token_logprobs
                tops += choice.logprobs.top_logprobs
    assert first == r.choices[0].text, (first, r.choices[0].text)
    assert toks == glp.tokens and vals == glp.token_logprobs and tops == glp.top_logprobs, (toks, glp.tokens)
    print(json.dumps({"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs}))


def case_stop(base):
    c = client(base)
    full = complete(c, prompt="Stop here:", max_tokens=30, seed=8).choices[0].text
    assert len(full) > 12, full
    stop = full[6:10]
    r = complete(c, prompt="Stop here:", max_tokens=30, seed=8, stop=[stop, "\u2603never"])
    want = full[:full.index(stop)]
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop", (r.choices[0].text, want, stop)
    st, fin, _ = stream_text(c, prompt="Stop here:", max_tokens=30, seed=8, stop=stop)
    assert st[0] == want and fin[0] == "stop", (st, want)
    print(json.dumps({"full": full, "stop": stop, "text": r.choices[0].text}))


def case_seed(base):
    c = client(base)
    kw = dict(prompt="Reproducible", max_tokens=16, temperature=1.0, top_p=0.95)
    a = complete(c, seed=1234, **kw).choices[0].text
    b = complete(c, seed=1234, **kw).choices[0].text
    d = complete(c, seed=4321, **kw).choices[0].text
    e = complete(c, **kw).choices[0].text  # no seed: a random one
    f = complete(c, **kw).choices[0].text
    assert a == b, (a, b)
    assert a != d, (a, d)
    assert e != f, (e, f)
    print(json.dumps({"a": a, "d": d}))


def case_replay(base, path):
    """Each JSONL request of `gpt2 generate --input` sent as a completion, plain and streamed."""
    c = client(base)
    out = []
    for line in open(path):
        q = json.loads(line)
        kw = {k: q[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                "frequency_penalty", "presence_penalty", "repetition_penalty") if k in q}
        r = complete(c, prompt=q["prompt"], **kw)
        st, fin, _ = stream_text(c, prompt=q["prompt"], **kw)
        out.append({"id": q["id"], "text": r.choices[0].text, "stream_text": st.get(0, ""),
                    "finish_reason": r.choices[0].finish_reason, "stream_finish": fin.get(0),
                    "completion_tokens": r.usage.completion_tokens, "prompt_tokens": r.usage.prompt_tokens})
    print(json.dumps(out))


def case_concurrent(base, n_clients):
    """n clients stream at once, each its own prompt and seed; each answer must equal the same request
    made alone afterwards (no mix-ups), and the batch must have been shared."""
    n_clients = int(n_clients)
    c = client(base)
    results, errors = [None] * n_clients, []
    barrier = threading.Barrier(n_clients)

    def run(i):
        try:
            barrier.wait(timeout=TIMEOUT)
            results[i] = stream_text(c, prompt=f"Client {i} says", max_tokens=16, seed=100 + i)
        except Exception as ex:  # reported below
            errors.append(f"client {i}: {ex!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert not errors, errors
    assert all(r is not None for r in results), "a client did not finish"
    peak = metrics(base)["gpt2_active_slots_peak"]
    # the references: the same requests, not streamed (and all at once too)
    refs = [None] * n_clients

    def ref(i):
        try:
            refs[i] = complete(c, prompt=f"Client {i} says", max_tokens=16, seed=100 + i).choices[0]
        except Exception as ex:
            errors.append(f"reference {i}: {ex!r}")

    threads = [threading.Thread(target=ref, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert not errors, errors
    mismatched = []
    for i in range(n_clients):
        texts, finish, _ = results[i]
        if texts != {0: refs[i].text} or finish != {0: refs[i].finish_reason}:
            mismatched.append((i, texts, refs[i].text))
    assert not mismatched, mismatched[:3]
    print(json.dumps({"clients": n_clients, "active_slots_peak": peak}))


def case_bad_input(base):
    host, port = hostport(base)
    post = lambda body, **kw: raw_request(host, port, "POST", "/v1/completions", body, **kw)
    seen = {}
    # malformed JSON: 400, the position named
    s, _, b = post(b'{"model": "tiny", "prompt": "x",')
    e = error_of(b)
    assert s == 400 and e["type"] == "invalid_request_error" and "column" in e["message"], (s, e)
    seen["malformed"] = e["message"]
    # wrong types: 400 naming the field
    for field, value in [("max_tokens", '"ten"'), ("temperature", '"hot"'), ("n", "0"), ("stream", '"yes"'),
                         ("stop", "[1]"), ("prompt", "{}"), ("top_p", "1.5"), ("logprobs", '"x"'),
                         ("seed", "1.5"), ("presence_penalty", "3"), ("prompt", "[[1, -2]]"), ("bogus", "1")]:
        body = '{"model": "tiny", "prompt": "x", "%s": %s}' % (field, value) if field != "prompt" else \
               '{"model": "tiny", "prompt": %s}' % value
        s, _, b = post(body.encode())
        e = error_of(b)
        assert s == 400 and e["param"] and e["param"].startswith(field), (field, s, e)
        assert field in e["message"], (field, e)
        seen[field] = e["message"]
    # not an object, invalid UTF-8, NUL bytes, deep nesting: 400, and the server stays up
    for body in [b"[1,2]", b'{"model": "tiny", "prompt": "\xff\xfe"}', b"\x00" * 100, b"[" * 5000, b""]:
        s, _, b = post(body)
        assert s == 400, (body[:20], s, b)
        error_of(b)
    # unknown model: 404; unknown route: 404; wrong method: 405
    s, _, b = post(b'{"model": "gpt-4", "prompt": "x"}')
    assert s == 404 and error_of(b)["code"] == "model_not_found", (s, b)
    assert raw_request(host, port, "GET", "/v1/nothing", None)[0] == 404
    assert raw_request(host, port, "GET", "/v1/completions", None)[0] == 405
    # a prompt longer than the context: 400
    s, _, b = post(json.dumps({"model": "tiny", "prompt": "word " * 200}).encode())
    assert s == 400 and error_of(b)["param"] == "prompt", (s, b)
    # a body over --max-body announced by Content-Length: 413 at once, before the body is sent
    sk = socket.create_connection((host, port), timeout=10)
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 50000000\r\n\r\n")
    head = sk.recv(4096)
    sk.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:100]
    # the same through the openai client, which gets a BadRequestError
    c = client(base)
    try:
        complete(c, prompt="x", max_tokens=-1)
        raise AssertionError("max_tokens -1 accepted")
    except openai.BadRequestError as ex:
        assert ex.status_code == 400 and "max_tokens" in str(ex)
    # after all that, a normal request still works
    r = complete(c, prompt="Still alive", max_tokens=4)
    assert r.usage.completion_tokens >= 1 or r.choices[0].finish_reason == "stop"
    print(json.dumps(seen))


def case_chunked_body(base, max_body):
    """A body without Content-Length (chunked) that grows past --max-body: refused (413 or the connection
    closed) without the server reading it all."""
    host, port = hostport(base)
    sk = socket.create_connection((host, port), timeout=10)
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    sent, refused = 0, False
    try:
        for _ in range(1000):  # up to 64 MiB: far past any sane limit
            sk.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        refused = True
    try:
        head = sk.recv(4096)
    except (ConnectionResetError, socket.timeout):
        head = b""
    sk.close()
    assert refused or head.startswith(b"HTTP/1.1 413"), (sent, head[:80])
    assert sent < 64 * 1024 * 1024, sent
    assert complete(client(base), prompt="ok", max_tokens=2).choices
    print(json.dumps({"sent_before_refusal": sent, "status": head[:12].decode("latin-1")}))


def case_auth(base, key):
    host, port = hostport(base)
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer " + key + "x"},
                    {"Authorization": key}, {"Authorization": "Bearer " + key[:-1]}]:
        for path in ("/v1/models", "/v1/completions", "/health", "/metrics"):
            s, _, b = raw_request(host, port, "POST" if "compl" in path else "GET", path,
                                  b'{"model": "tiny", "prompt": "x"}' if "compl" in path else None, headers)
            assert s == 401 and error_of(b)["code"] == "invalid_api_key", (headers, path, s, b)
    try:
        complete(client(base, "wrong"), prompt="x", max_tokens=2)
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as ex:
        assert ex.status_code == 401
    r = complete(client(base, key), prompt="x", max_tokens=2)
    assert r.choices
    print(json.dumps({"ok": True}))


def sse_socket(host, port, body):
    sk = socket.create_connection((host, port), timeout=TIMEOUT)
    data = json.dumps(body).encode()
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    return sk


def case_disconnect(base):
    """Clients that hang up mid-stream (and mid-wait, not streaming) get their sequences cancelled; a
    client alongside them gets its whole answer."""
    host, port = hostport(base)
    c = client(base)
    before = metrics(base)["gpt2_sequences_cancelled_total"]
    ref = complete(c, prompt="Bystander", max_tokens=30, seed=1).choices[0].text
    out = {}

    def bystander():
        out["text"] = stream_text(c, prompt="Bystander", max_tokens=30, seed=1)[0].get(0)

    t = threading.Thread(target=bystander)
    t.start()
    socks = []
    for i in range(3):
        sk = sse_socket(host, port, {"model": MODEL, "prompt": f"Leaver {i}", "max_tokens": 50, "stream": True,
                                     "seed": i})
        got = b""
        while b"data:" not in got:
            more = sk.recv(4096)
            assert more, "closed before the first event"
            got += more
        socks.append(sk)
    # one that does not stream: it hangs up while waiting for the whole answer
    sk = sse_socket(host, port, {"model": MODEL, "prompt": "Impatient", "max_tokens": 50})
    time.sleep(0.2)
    socks.append(sk)
    for i, sk in enumerate(socks):  # abrupt: RST for two, FIN for the others
        if i % 2 == 0:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sk.close()
    t.join(TIMEOUT)
    assert out.get("text") == ref, (out, ref)
    deadline = time.time() + 20
    while True:
        m = metrics(base)
        if m["gpt2_sequences_cancelled_total"] - before >= 4 and m["gpt2_active_slots"] == 0 and \
                m["gpt2_queue_length"] == 0:
            break
        assert time.time() < deadline, m
        time.sleep(0.05)
    print(json.dumps({"cancelled": m["gpt2_sequences_cancelled_total"] - before}))


def case_slow(base):
    """A client that reads its stream slowly gets all of it; one that sends its headers a byte at a time
    and then stalls holds nobody up; others are served at full speed meanwhile."""
    host, port = hostport(base)
    c = client(base)
    ref = complete(c, prompt="Slow reader", max_tokens=40, seed=6).choices[0].text
    slow = sse_socket(host, port, {"model": MODEL, "prompt": "Slow reader", "max_tokens": 40, "seed": 6,
                                   "stream": True})
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stall = socket.create_connection((host, port), timeout=TIMEOUT)
    for ch in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le":
        stall.send(bytes([ch]))
    t0 = time.time()
    for i in range(5):  # meanwhile, others are served
        assert complete(c, prompt=f"Other {i}", max_tokens=8).choices
    others = time.time() - t0
    data = b""
    for _ in range(100000):
        time.sleep(0.002)
        more = slow.recv(256)
        if not more:
            break
        data += more
    slow.close()
    stall.close()
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
    data = dechunk(data)
    events = [json.loads(l[6:]) for l in data.decode().split("\n") if l.startswith("data: {")]
    text = "".join(ch["text"] for e in events for ch in e["choices"])
    assert text == ref and data.rstrip().endswith(b"data: [DONE]"), (text, ref, data[-60:])
    print(json.dumps({"events": len(events), "others_s": others}))


def case_timeouts(base):
    """--timeout 1 --max-slots 1 with slow steps: a stream that waits longer than that for its slot
    (and so for its first token) is not idle and gets its whole answer, as does the request ahead of
    it; a client that stalls mid-header is closed."""
    host, port = hostport(base)
    c = client(base)
    stall = socket.create_connection((host, port), timeout=TIMEOUT)
    stall.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    out = {}

    def plain():
        out["plain"] = complete(c, prompt="Waiting", max_tokens=25, seed=1)

    t = threading.Thread(target=plain)
    t0 = time.time()
    t.start()
    time.sleep(0.3)
    texts, finish, _ = stream_text(c, prompt="Waiting", max_tokens=5, seed=1)
    t.join(TIMEOUT)
    took = time.time() - t0
    assert took > 2, took  # the requests did outlast --timeout
    assert out["plain"].usage.completion_tokens == 25, out
    assert out["plain"].choices[0].text.startswith(texts[0]) and finish == {0: "length"}, (texts, out)
    stall.settimeout(10)
    try:
        closed = stall.recv(4096) == b""
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        closed = False
    assert closed, "a stalled client was not closed"
    print(json.dumps({"took_s": took}))


def case_queue(base):
    """--max-slots 1 --max-queue 1: one runs, one waits, the next gets 429 at once."""
    host, port = hostport(base)
    a = sse_socket(host, port, {"model": MODEL, "prompt": "First", "max_tokens": 40, "stream": True})
    got = b""
    while b"data:" not in got:
        more = a.recv(4096)
        assert more
        got += more
    b = sse_socket(host, port, {"model": MODEL, "prompt": "Second", "max_tokens": 4, "stream": True})
    time.sleep(0.1)
    c = client(base)
    t0 = time.time()
    try:
        complete(c, prompt="Third", max_tokens=4)
        raise AssertionError("no 429")
    except openai.RateLimitError as ex:
        assert ex.status_code == 429
    fast = time.time() - t0
    a.close()
    b.close()
    print(json.dumps({"refused_in_s": fast}))


def case_drain(base, pid, expect, sig="TERM"):
    """SIG (TERM or INT) while a stream runs: `expect` = full (it finishes) or cut (the drain deadline
    cancels it, the client gets an error event). No new connection is accepted meanwhile."""
    host, port = hostport(base)
    c = client(base)
    stream = complete(c, prompt="Draining", max_tokens=40, seed=2, stream=True)
    text, finish, sent = "", None, False
    refused = None
    try:
        for ch in stream:
            for choice in ch.choices:
                text += choice.text
                finish = choice.finish_reason or finish
            if not sent:
                os.kill(int(pid), signal.SIGINT if sig == "INT" else signal.SIGTERM)
                sent = True
                time.sleep(0.3)
                try:
                    socket.create_connection((host, port), timeout=2).close()
                    refused = False
                except OSError:
                    refused = True
        outcome = "full"
    except openai.APIError as ex:
        outcome = "cut"
        assert "shutting down" in str(ex), ex
    assert refused is True, "a new connection was accepted while draining"
    assert outcome == expect, (outcome, expect, text, finish)
    if expect == "full":
        assert finish == "length", finish
    print(json.dumps({"outcome": outcome, "text": text}))


def main():
    case, base, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    globals()["case_" + case](base, *args)


if __name__ == "__main__":
    main()
