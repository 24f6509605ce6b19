#!/usr/bin/env python3
"""tiktoken_diff.py: compares gpt2_encode with tiktoken on every input of a fuzz corpus.

    make fuzz
    python3 tests/fuzz/tiktoken_diff.py [CORPUS_DIR ...]   # default: tests/fuzz/corpus/encode_decode
    python3 tests/fuzz/tiktoken_diff.py --dump FILE       # compare an existing GPT2_FUZZ_DUMP file

fuzz_encode_decode proves that decode(encode(x)) == x, which any tokenizer that never merges would
also pass. This script checks the ids themselves against tiktoken (built from the vendored
tests/data/gpt2-tokenizer files, as tools/make_tokenizer_golden.py does) on the inputs that fuzzing
found interesting. Each corpus runs through build-fuzz/fuzz_encode_decode with GPT2_FUZZ_DUMP set,
which records the ids it produced, then:
  - valid UTF-8: ids0 must equal tiktoken's encode_ordinary(text), ids1 its encode(text,
    allowed_special={"<|endoftext|>"});
  - other bytes: ids0 must equal tiktoken's byte-level CoreBPE._encode_bytes(x), and ids1 the same
    on each piece between "<|endoftext|>" markers, joined by 50256.
Exits 1 on any difference, printing the first few (input in hex and both id lists).
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_tokenizer_golden import EOT, make_encoding  # noqa: E402

EOT_ID = 50256


def reference(enc, data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        return enc.encode_ordinary(text), enc.encode(text, allowed_special={EOT}, disallowed_special=())
    core = enc._core_bpe
    ids1 = []
    for i, part in enumerate(data.split(EOT.encode())):
        if i:
            ids1.append(EOT_ID)
        if part:
            ids1.extend(core._encode_bytes(part))
    return core._encode_bytes(data), ids1


def main():
    args = sys.argv[1:]
    enc = make_encoding()
    checked, bad = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        if args[:1] == ["--dump"]:
            dump = args[1]
        else:
            corpora = args or [os.path.join(HERE, "corpus", "encode_decode")]
            binary = os.path.join(ROOT, "build-fuzz", "fuzz_encode_decode")
            if not os.access(binary, os.X_OK):
                sys.exit(f"{binary} not found: run `make fuzz` first")
            dump = os.path.join(tmp, "dump.jsonl")
            for corpus in corpora:
                # -runs=0: run every corpus input once, then stop.
                subprocess.run([binary, "-runs=0", corpus], cwd=ROOT, env={**os.environ, "GPT2_FUZZ_DUMP": dump},
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = set()
        with open(dump) as f:
            for line in f:
                rec = json.loads(line)
                if rec["hex"] in seen:
                    continue
                seen.add(rec["hex"])
                data = bytes.fromhex(rec["hex"])
                want0, want1 = reference(enc, data)
                checked += 1
                if rec["ids0"] != want0 or rec["ids1"] != want1:
                    bad.append((data, rec, want0, want1))
    print(f"tiktoken_diff: {checked} distinct inputs, {len(bad)} differ")
    for data, rec, want0, want1 in bad[:5]:
        print(f"  input {data.hex()} ({data[:60]!r})")
        for k, want in (("ids0", want0), ("ids1", want1)):
            if rec[k] != want:
                print(f"    {k}: gpt2 {rec[k][:40]}\n          tiktoken {want[:40]}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
