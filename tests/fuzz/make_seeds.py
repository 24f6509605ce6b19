#!/usr/bin/env python3
"""make_seeds.py: writes the seed corpora under tests/fuzz/corpus/ (run from anywhere; deterministic).

    python3 tests/fuzz/make_seeds.py

Seeds are small and meaningful: safetensors images written by the reference `safetensors` library
plus the headers of the fixture checkpoints; valid and broken config.json files; request lines; a
small vocab/merges pair; text in many scripts. Existing seed files are replaced; files found by
fuzzing and added by hand (names starting with "found-") are kept.
"""
import glob
import json
import os
import struct

import numpy as np
from safetensors.numpy import save

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODELS = os.path.join(ROOT, "tests", "data", "models")
TOKDIR = os.path.join(ROOT, "tests", "data", "gpt2-tokenizer")
SEP = b"\n#merges#\n"  # must match fuzz_tokenizer_load.c
FILE_SEP = b"\n#file#\n"  # must match fuzz_model.c


def write(corpus, name, data):
    d = os.path.join(HERE, "corpus", corpus)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clear(corpus):
    for p in glob.glob(os.path.join(HERE, "corpus", corpus, "*")):
        if not os.path.basename(p).startswith("found-"):
            os.remove(p)


def st_raw(header, data=b"", pad=0):
    h = json.dumps(header, separators=(",", ":")).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    clear("safetensors")
    rng = np.random.default_rng(1)
    write("safetensors", "f32-one", save({"x": rng.standard_normal((2, 3)).astype(np.float32)}))
    write("safetensors", "dtypes", save({
        "a.f16": rng.standard_normal(5).astype(np.float16),
        "b.f64": rng.standard_normal((1, 2)).astype(np.float64),
        "c.i64": np.arange(3, dtype=np.int64),
        "d.u8": np.arange(7, dtype=np.uint8),
        "e.bool": np.array([True, False, True]),
        "f.i32": np.arange(4, dtype=np.int32).reshape(2, 2),
        "g.u16": np.arange(2, dtype=np.uint16),
    }, metadata={"format": "pt"}))
    write("safetensors", "scalar-and-empty", save({
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "z": np.ones((1,), dtype=np.float32),
    }))
    write("safetensors", "empty-header", st_raw({}))
    write("safetensors", "metadata-null-padded", st_raw({"__metadata__": None}, pad=7))
    write("safetensors", "bf16-raw",
          st_raw({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\x80\x3f\x00\x40"))
    write("safetensors", "f4-f6-raw", st_raw({
        "p": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]},
        "q": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [1, 4]},
        "r": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [4, 5]}}, b"\x12\x34\x56\x78\x9a"))
    # Error paths that random mutation rarely reaches: 64-bit overflow of the element count and of
    # the byte size, a header that is JSON but not an object.
    write("safetensors", "shape-overflow",
          st_raw({"x": {"dtype": "F32", "shape": [9223372036854775807, 4], "data_offsets": [0, 4]}}, b"\0" * 4))
    write("safetensors", "bytes-overflow",
          st_raw({"x": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8]}}, b"\0" * 8))
    h = b"[]"
    write("safetensors", "header-array", struct.pack("<Q", len(h)) + h)
    # The fixture checkpoints: their headers alone (data missing), and the same tensor table with every
    # dimension cut to at most 2 so that a valid file stays small.
    for path in sorted(glob.glob(os.path.join(MODELS, "*", "*.safetensors"))):
        raw = open(path, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        tag = os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path).replace(".safetensors", "")
        write("safetensors", "header-" + tag, raw[:8 + n])
        header = json.loads(raw[8:8 + n])
        small, off = {}, 0
        for name, t in sorted(header.items(), key=lambda kv: kv[1].get("data_offsets", [0])[0] if kv[0] != "__metadata__" else -1):
            if name == "__metadata__":
                small[name] = t
                continue
            shape = [min(d, 2) for d in t["shape"]]
            size = int(np.prod(shape, dtype=np.int64)) * {"F32": 4, "F16": 2, "BF16": 2}.get(t["dtype"], 4)
            small[name] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [off, off + size]}
            off += size
        write("safetensors", "small-" + tag, st_raw(small, bytes(range(256)) * (off // 256) + bytes(range(off % 256))))


def config_seeds():
    clear("config")
    for path in sorted(glob.glob(os.path.join(MODELS, "*", "config.json"))):
        write("config", "fixture-" + os.path.basename(os.path.dirname(path)), open(path, "rb").read())
    base = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024, "vocab_size": 50257}
    write("config", "minimal", json.dumps(base))
    write("config", "n_ctx-only", json.dumps({**{k: v for k, v in base.items() if k != "n_positions"}, "n_ctx": 1024}))
    write("config", "all-fields", json.dumps({**base, "model_type": "gpt2", "layer_norm_epsilon": 1e-5,
                                              "activation_function": "gelu_new", "n_inner": None,
                                              "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                                              "tie_word_embeddings": False}))
    write("config", "bad-types", '{"n_layer": 1.5, "n_head": "4", "n_embd": true, "vocab_size": null}')
    write("config", "bad-divisible", json.dumps({**base, "n_head": 7}))
    write("config", "bad-eps", '{"n_layer":1,"n_head":1,"n_embd":1,"n_positions":1,"vocab_size":1,'
                               '"layer_norm_epsilon":1e-50}')
    write("config", "duplicate-key", '{"n_layer": 1, "n_layer": 2}')
    write("config", "huge-int", '{"n_layer": 99999999999999999999999}')
    write("config", "not-object", "[1, 2, 3]")


def request_seeds():
    clear("request")
    lines = [
        '{"id": "a", "prompt": "Hello", "max_tokens": 8}',
        '{"id": 7, "prompt": "x", "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 42}',
        '{"prompt": "y", "stop": ["\\n", "END"], "repetition_penalty": 1.3, "frequency_penalty": -0.5,'
        ' "presence_penalty": 2}',
        '{"prompt": "z", "stop": "\\n\\n"}',
        '{"prompt": "z", "stop": null}',
        '{"prompt": "caf\\u00e9 \\ud83d\\ude00 \\u00e9\\u4e2d"}',
        '{"prompt": "\u00e9t\u00e9 \u65e5\u672c \u0928\u092e\u0938\u094d\u0924\u0947"}',
        '{"id": "neg", "prompt": "p", "temperature": -1}',
        '{"id": "topp", "prompt": "p", "top_p": 0}',
        '{"id": "topk", "prompt": "p", "top_k": -1}',
        '{"id": "empty", "prompt": ""}',
        '{"id": "big", "prompt": "p", "max_tokens": 123456789012345678901234567890}',
        '{"id": "dup", "prompt": "p", "prompt": "q"}',
        '{"id": "unk", "prompt": "p", "frobnicate": 1}',
        '{"id": [1], "prompt": "p"}',
        '{"id": "nul", "prompt": "a\\u0000b"}',
        '{"id": "stops", "prompt": "p", "stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}',
        '["not", "an", "object"]',
        '{"prompt": "p"',
        '  {"prompt": "p"}  ',
    ]
    for i, l in enumerate(lines):
        write("request", "line-%02d" % i, l)
    write("request", "invalid-utf8", b'{"id": "bad", "prompt": "\xff\xfe"}')


def serve_seeds():
    """Bodies of POST /v1/completions (gpt2 serve): every prompt form and field, and bad ones."""
    clear("serve")
    bodies = [
        {"model": "tiny", "prompt": "Hello"},
        {"model": "tiny", "prompt": ["a", "b", ""], "n": 2, "max_tokens": 5, "seed": 3},
        {"model": "tiny", "prompt": [464, 2068], "logprobs": 3, "echo": True},
        {"model": "tiny", "prompt": [[1, 2], [3]], "stop": ["\n", "END"], "temperature": 0},
        {"model": "tiny", "prompt": "x", "stream": True, "stream_options": {"include_usage": True},
         "top_p": 0.9, "top_k": 40, "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u"},
        {"model": "tiny", "prompt": "x", "best_of": 1, "logit_bias": {}, "suffix": None, "logprobs": None},
        {"model": "tiny", "prompt": "x", "n": 0},
        {"model": "tiny", "prompt": [1, "a"]},
        {"model": "tiny", "prompt": "x", "stop": ""},
        {"model": "tiny", "prompt": "x", "logprobs": 10},
        {"model": "tiny", "prompt": "x", "frobnicate": 1},
        {"prompt": "no model"},
    ]
    for i, b in enumerate(bodies):
        write("serve", "body-%02d" % i, json.dumps(b, ensure_ascii=False))
    write("serve", "malformed", '{"model": "tiny", "prompt": ')
    write("serve", "invalid-utf8", b'{"model": "tiny", "prompt": "\xff\xfe"}')
    write("serve", "duplicate-key", '{"model": "tiny", "prompt": "a", "prompt": "b"}')
    write("serve", "unknown-field-utf8", '{"model": "tiny", "prompt": "a", "' + "\u00e9" * 30 + '": 1}')


def tokenizer_seeds():
    clear("tokenizer_load")
    # A small byte-level BPE: the 256 byte symbols, some merges of the real tokenizer whose parts are
    # all in the vocabulary, and <|endoftext|>.
    vocab = json.load(open(os.path.join(TOKDIR, "vocab.json"), encoding="utf-8"))
    merges = open(os.path.join(TOKDIR, "merges.txt"), encoding="utf-8").read().split("\n")
    header, merges = merges[0], [m for m in merges[1:] if m]
    small = {t: i for t, i in vocab.items() if i < 256}
    kept = []
    for m in merges[:400]:
        a, b = m.split(" ")
        if a in small and b in small and len(kept) < 60:
            kept.append(m)
            small[a + b] = vocab[a + b]
    small["<|endoftext|>"] = vocab["<|endoftext|>"]
    v = json.dumps(small, ensure_ascii=False).encode()
    mtxt = (header + "\n" + "\n".join(kept) + "\n").encode()
    write("tokenizer_load", "small", v + SEP + mtxt)
    write("tokenizer_load", "small-no-header", v + SEP + "\n".join(kept).encode())
    tiny = {t: i for t, i in vocab.items() if i < 256}
    tiny["\u0120t"] = 256
    write("tokenizer_load", "bytes-plus-one", json.dumps(tiny).encode() + SEP + b"#version: 0.2\n\xc4\xa0 t\n")
    write("tokenizer_load", "bad-merge", json.dumps(tiny).encode() + SEP + b"#version: 0.2\nx y\n")
    write("tokenizer_load", "empty", SEP)
    write("tokenizer_load", "vocab-not-object", b'["!", "a"]' + SEP)


def model_params(rng, prefix="", lm_head=None, buffers=False):
    """The parameters of fuzz_model.c's config (L 2, C 4, NH 2, V 8, maxT 4), Conv1D layout."""
    C, V, T = 4, 8, 4
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for l in range(2):
        for name, shape in {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
                            "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                            "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (C, 4 * C),
                            "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C),
                            "mlp.c_proj.bias": (C,)}.items():
            shapes[f"h.{l}.{name}"] = shape
        if buffers:
            shapes[f"h.{l}.attn.bias"] = (1, 1, T, T)
    params = {prefix + k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    if lm_head == "tied":
        params["lm_head.weight"] = params[prefix + "wte.weight"].copy()
    elif lm_head == "untied":
        params["lm_head.weight"] = rng.standard_normal((V, C)).astype(np.float32)
    return params


def bf16_file(params):
    """A BF16 safetensors image (numpy has no bfloat16): the top 16 bits of each float32."""
    header, blobs, off = {}, [], 0
    for name in sorted(params):
        a = params[name]
        raw = (a.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    return st_raw(header, b"".join(blobs))


def model_seeds():
    clear("model")
    rng = np.random.default_rng(2)
    write("model", "f32-hub-tied", save(model_params(rng)))
    write("model", "f16-save-pretrained-tied-head",
          save({k: v.astype(np.float16) for k, v in model_params(rng, "transformer.", "tied").items()}))
    write("model", "f32-untied-buffers", save(model_params(rng, lm_head="untied", buffers=True)))
    write("model", "bf16-hub", bf16_file(model_params(rng)))
    params = model_params(rng, lm_head="untied")
    names = sorted(params)
    shards = {"s1.safetensors": names[: len(names) // 2], "s2.safetensors": names[len(names) // 2:]}
    index = {"metadata": {"total_size": 0}, "weight_map": {n: f for f, ns in shards.items() for n in ns}}
    write("model", "sharded-2", json.dumps(index).encode() + FILE_SEP +
          FILE_SEP.join(save({n: params[n] for n in ns}) for ns in shards.values()))


TEXTS = {
    "english": "Hello, world! It's a test: don't panic. 12345 + 678 = 13023?\n",
    "spaces": "  leading and   inner   spaces\t\ttabs\n\n\nnewlines   \r\n trailing  ",
    "contractions": "I'm you're they've he'll we'd she's IT'S 'tis Y'ALL'D",
    "special": "a<|endoftext|>b <|endoftext|><|endoftext|> <|endoftext| <|end",
    "french": "Ça va? Élève, où est l'hôtel? « guillemets »",
    "german": "Größenwahn: Straße, Füße, ÄÖÜ äöü ß",
    "greek": "Καλημέρα κόσμε, ελληνικά γράμματα",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "arabic": "مرحبا بالعالم، هذا اختبار",
    "hebrew": "שלום עולם, זה מבחן",
    "hindi": "नमस्ते दुनिया, यह एक परीक्षण है।",
    "thai": "สวัสดีชาวโลก นี่คือการทดสอบ",
    "chinese": "你好，世界！这是一个测试。汉字１２３",
    "japanese": "こんにちは世界、カタカナとひらがな、漢字。",
    "korean": "안녕하세요 세계, 한국어 테스트입니다.",
    "emoji": "🙂👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ text🙂text",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 \u200b\u200d\ufeff",
    "math": "∀x∈ℝ: x² ≥ 0; ∑ᵢ aᵢ = ∞ ½ ⅓ Ⅻ ٣ ๓",
    "code": "int main(void) {\n    return printf(\"%d\\n\", 0x1F);\n}\n",
    "numbers": "3.14159 1,000,000 1e-10 0xFF 007 ²³ ١٢٣",
}


def text_seeds():
    clear("encode_decode")
    for name, t in TEXTS.items():
        write("encode_decode", name, t)
    write("encode_decode", "invalid-utf8", b"abc\xff\xfe \xc3( \xe2\x82 \xf0\x9f\x98 end\x80")
    write("encode_decode", "surrogates-overlong", b"\xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 \x00nul")
    write("encode_decode", "all-bytes", bytes(range(256)))
    write("encode_decode", "long-run", b" " * 300 + b"a" * 300 + b"\n" * 50)


if __name__ == "__main__":
    safetensors_seeds()
    config_seeds()
    request_seeds()
    serve_seeds()
    tokenizer_seeds()
    text_seeds()
    model_seeds()
