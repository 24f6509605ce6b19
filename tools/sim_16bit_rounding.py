#!/usr/bin/env python3
"""The 16-bit tolerances of tests/test_cuda.c (check_rows_16bit), derived: a float64 simulation of the
CUDA engine's rounding points, compared with the exact forward, on random models shaped like the test
fixtures and like gpt2.

The engine stores weights and every activation in the storage type T (fp16 or bf16) and computes in
float: embeddings, layernorm outputs, qkv, the K/V cache, attention output, projections, the residual
stream and the MLP hidden are each rounded to T once; GEMMs and reductions accumulate in float; logits
come out in float. This script rounds at the same points (numpy has no bf16: round-to-nearest-even on
the float32 bits) and prints, per model and dtype, the worst per-row rel-L2 error and max |diff| /
max |ref| against float64, and the smallest rel-L2 distance between the logits of neighbouring
positions (what an off-by-one or wrong-slot kernel would produce instead).

    python3 tools/sim_16bit_rounding.py        (numpy only; about a minute)

Seen 2026-12-01 (numpy 2.4): real shape (2 layers, 12 x 64, V 50257, std 0.02): fp16 rel-L2 <= 1.2e-3,
bf16 <= 9.5e-3, neighbours >= 0.49 apart; tiny: fp16 3.0e-3, bf16 2.1e-2, neighbours 0.33; small:
fp16 2.4e-3 (rel-max 2.8e-3), bf16 2.7e-2 (rel-max 2.7e-2), neighbours 0.40.
"""
import numpy as np, sys
def bf16(x):
    x = np.asarray(x, np.float32); u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000).astype(np.uint32)
    return u.view(np.float32)
def f16(x): return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)
def ident(x): return np.asarray(x, np.float64)
def model(L, NH, C, V, maxT, std, rng):
    u = lambda *s: (std*np.sqrt(3)*rng.uniform(-1,1,s)).astype(np.float32)
    w = dict(wte=u(V,C), wpe=u(maxT,C), ln1w=(1+0.1*rng.uniform(-1,1,(L,C))).astype(np.float32), ln1b=u(L,C),
             qkvw=u(L,C,3*C), qkvb=u(L,3*C), apw=u(L,C,C), apb=u(L,C), ln2w=(1+0.1*rng.uniform(-1,1,(L,C))).astype(np.float32),
             ln2b=u(L,C), fcw=u(L,C,4*C), fcb=u(L,4*C), fpw=u(L,4*C,C), fpb=u(L,C),
             lnfw=(1+0.1*rng.uniform(-1,1,C)).astype(np.float32), lnfb=u(C))
    return w
def ln(x, w, b, R):
    m = x.mean(-1, keepdims=True); v = ((x-m)**2).mean(-1, keepdims=True)
    return R((x-m)/np.sqrt(v+1e-5)*w + b)
def gelu(x): return 0.5*x*(1+np.tanh(np.sqrt(2/np.pi)*(x+0.044715*x**3)))
def forward(w, ids, L, NH, C, R):
    W = {k: R(v) for k, v in w.items()}
    T = len(ids); HS = C//NH
    f = (lambda x: np.asarray(x, np.float64)) if R is ident else (lambda x: np.asarray(x, np.float32))
    resid = R(W['wte'][ids] + W['wpe'][:T])
    x = ln(resid, W['ln1w'][0], W['ln1b'][0], R)
    for l in range(L):
        qkv = R(f(x) @ f(W['qkvw'][l]))
        b = W['qkvb'][l]
        q = f(qkv[:, :C]) + b[:C]; k = R(qkv[:, C:2*C] + b[C:2*C]); v = R(qkv[:, 2*C:] + b[2*C:])
        att = np.zeros((T, C), q.dtype)
        for h in range(NH):
            s = slice(h*HS, (h+1)*HS)
            a = (q[:, s] @ k[:, s].T) / np.sqrt(HS)
            a = a + np.triu(np.full((T, T), -np.inf), 1)
            a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
            att[:, s] = a @ v[:, s]
        att = R(att)
        tmp = R(f(att) @ f(W['apw'][l]))
        resid = R(resid + (tmp + W['apb'][l]))
        x = ln(resid, W['ln2w'][l], W['ln2b'][l], R)
        h1 = R(f(x) @ f(W['fcw'][l])); h1 = R(gelu(h1 + W['fcb'][l]))
        tmp = R(f(h1) @ f(W['fpw'][l]))
        resid = R(resid + (tmp + W['fpb'][l]))
        if l + 1 < L: x = ln(resid, W['ln1w'][l+1], W['ln1b'][l+1], R)
        else: x = ln(resid, W['lnfw'], W['lnfb'], R)
    return np.asarray(x, np.float64) @ np.asarray(W['wte'], np.float64).T
for name, (L, NH, C, V, maxT, std, T) in dict(real=(2,12,768,50257,1024,0.02,96), tiny=(2,4,32,50257,64,0.3,64), small=(3,4,64,1000,128,0.2,128)).items():
    rng = np.random.default_rng(1); w = model(L, NH, C, V, maxT, std, rng)
    ids = rng.integers(0, V, T)
    ref = forward(w, ids, L, NH, C, ident)
    nb = np.linalg.norm(ref[1:] - ref[:-1], axis=1) / np.linalg.norm(ref[1:], axis=1)
    print(name, "ref |logit| max %.3g, row std %.3g; neighbour-row rel dist min %.3g" % (np.abs(ref).max(), ref.std(1).mean(), nb.min()))
    for dn, R in (("f32", lambda x: np.asarray(x, np.float32)), ("f16", f16), ("bf16", bf16)):
        got = forward(w, ids, L, NH, C, R)
        rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        mx = np.abs(got - ref).max(1) / np.abs(ref).max(1)
        top = (got.argmax(1) == ref.argmax(1)).mean()
        print("  %-4s rel-L2 max %.3g mean %.3g; max|d|/max|ref| max %.3g; max|d| %.3g; top1 %.3f" % (dn, rel.max(), rel.mean(), mx.max(), np.abs(got-ref).max(), top))
