#!/usr/bin/env python3
"""make_tokenizer_golden.py: golden GPT-2 token ids from tiktoken, the oracle for tests/test_tokenizer.c.

    python3 tools/make_tokenizer_golden.py                # writes tests/data/tokenizer_golden.json
    python3 tools/make_tokenizer_golden.py --c-tables     # prints the class tables for src/tokenizer.c

Builds tiktoken's "gpt2" encoding from the vendored tests/data/gpt2-tokenizer files (no network) and
records, for a varied corpus, the ids that tiktoken produces:
  - "cases": text (hex) -> ids, through encode_ordinary (allow_special 0), encode with
    <|endoftext|> allowed (allow_special 1), or _encode_bytes (api "bytes": byte strings that are not
    valid UTF-8, which only that byte-level entry point accepts);
  - "sweep": every code point of planes 0-3 and 14 in a few contexts, as (n_ids, FNV-1a hash of the
    ids) per chunk of 4096 code points, the text being rebuilt by the C test (see sweep_text());
  - "custom": a small vocabulary of its own (vocab.json and merges.txt text) with cases, for the rules
    that GPT-2's own files never exercise: a piece that is a token but that merging cannot reach,
    and the re-merge across an invalid byte that takes in whitespace tokens before the last piece
    (GPT-2 has no token of two whitespace characters but "\\n\\n");
  - "classes": the character class (L letter, N number, W whitespace, O other) that tiktoken's
    pre-tokenizer regex gives each Unicode scalar value, as ranges.
tiktoken's regex engine (Rust) uses newer Unicode tables than many PCRE2 builds, and its \\s is not
PCRE2's. --c-tables compares tiktoken's classes with those of the PCRE2 library on this machine
(through ctypes) and prints what src/tokenizer.c adds to \\p{L} and \\p{N}, and the whitespace set
that replaces \\s.
Requires tiktoken (tested with 0.14.0). Deterministic: the random cases come from fixed seeds.
"""
import argparse
import json
import os
import random
import sys

os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, never a stale cache
import tiktoken  # noqa: E402
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402
from tiktoken_ext import openai_public  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKDIR = os.path.join(ROOT, "tests", "data", "gpt2-tokenizer")
OUT = os.path.join(ROOT, "tests", "data", "tokenizer_golden.json")

# Copied from tiktoken_ext/openai_public.py (r50k_pat_str, the pattern of the "gpt2" encoding); the
# assertion below catches a tiktoken that has changed it.
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = "<|endoftext|>"
SWEEP_CHUNK = 4096
SWEEP_RANGES = [(0x0, 0x40000), (0xE0000, 0xE1000)]


def make_encoding():
    assert openai_public.r50k_pat_str == GPT2_PAT, "tiktoken's gpt2 pattern has changed"
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(TOKDIR, "merges.txt"),
                                            os.path.join(TOKDIR, "vocab.json"))
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


def scalar_values(lo, hi):
    return [c for c in range(lo, hi) if not 0xD800 <= c < 0xE000]


def char_classes():
    """Probes tiktoken's pre-tokenizer for the class of every scalar value. With a vocabulary of the
    256 bytes plus the tokens p+c (p one of 'a', '1', '!', '\\t'), the text p+c encodes to one token
    exactly when the regex keeps p and c in one piece: 'a'+c iff c is a letter (' ?\\p{L}++'), '1'+c
    iff a number, '!'+c iff neither nor whitespace, '\\t'+c iff whitespace ('\\s++$')."""
    probes = [("L", b"a"), ("N", b"1"), ("O", b"!"), ("W", b"\t")]
    base = {bytes([b]): b for b in range(256)}
    cls = {}
    step = 0x20000
    for lo in range(0, 0x110000, step):
        cps = scalar_values(lo, min(lo + step, 0x110000))
        ranks = dict(base)
        for _, p in probes:
            for c in cps:
                ranks[p + chr(c).encode()] = len(ranks)
        enc = tiktoken.Encoding("probe", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={})
        for c in cps:
            hits = [k for k, p in probes if len(enc.encode_ordinary(p.decode() + chr(c))) == 1]
            assert len(hits) == 1, (hex(c), hits)
            cls[c] = hits[0]
    ranges = []
    for c in sorted(cls):
        if ranges and ranges[-1][2] == cls[c] and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        elif ranges and ranges[-1][2] == cls[c] and ranges[-1][1] == 0xD7FF and c == 0xE000:
            ranges[-1][1] = c  # bridge the surrogate gap: they never occur in UTF-8
        else:
            ranges.append([c, c, cls[c]])
    return ranges


def pcre2_classes():
    """{code point: 'L' | 'N' | 'O'} per the PCRE2 library on this machine (\\p{L}, \\p{N}), and its
    version and Unicode version."""
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("pcre2-8") or "libpcre2-8.so.0")
    c_size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.pcre2_compile_8.restype = ctypes.c_void_p
    lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                    ctypes.POINTER(ctypes.c_int), c_size_p, ctypes.c_void_p]
    lib.pcre2_match_data_create_from_pattern_8.restype = ctypes.c_void_p
    lib.pcre2_match_data_create_from_pattern_8.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                  ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
    lib.pcre2_config_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
    versions = []
    for what in (11, 10):  # PCRE2_CONFIG_VERSION, PCRE2_CONFIG_UNICODE_VERSION
        buf = ctypes.create_string_buffer(64)
        lib.pcre2_config_8(what, buf)
        versions.append(buf.value.decode())
    pat = rb"(\p{L})|(\p{N})"
    err, off = ctypes.c_int(), ctypes.c_size_t()
    code = lib.pcre2_compile_8(pat, len(pat), 0x00080000 | 0x80000000,  # PCRE2_UTF | PCRE2_ANCHORED
                               ctypes.byref(err), ctypes.byref(off), None)
    assert code, "PCRE2 compile failed"
    md = lib.pcre2_match_data_create_from_pattern_8(code, None)
    cls = {}
    for c in scalar_values(0, 0x110000):
        b = chr(c).encode()
        rc = lib.pcre2_match_8(code, b, len(b), 0, 0, md, None)
        cls[c] = "L" if rc == 2 else "N" if rc == 3 else "O"
    return cls, versions


def coalesce(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def c_tables(ranges):
    """C arrays for src/tokenizer.c: the letters and numbers that tiktoken has and this PCRE2's \\p{L}
    and \\p{N} lack, and tiktoken's whitespace, largest range first (PCRE2 tests a class in order)."""
    tik = {}
    for a, b, k in ranges:
        for c in range(a, b + 1):
            tik[c] = k
    pc, (version, uversion) = pcre2_classes()
    for k in "LN":
        extra = [c for c in pc if pc[c] == k and tik[c] != k]
        assert not extra, ("PCRE2 %s has %s characters that tiktoken does not (%s...); src/tokenizer.c would "
                           "need to subtract them" % (version, k, ", ".join("U+%04X" % c for c in extra[:5])))
    out = ["/* Generated by tools/make_tokenizer_golden.py --c-tables:\n"
           " * tiktoken %s against PCRE2 %s (Unicode %s). */" % (tiktoken.__version__, version, uversion)]
    tables = [("letter_extra", "letters that \\p{L} lacks", [c for c in tik if tik[c] == "L" and pc[c] != "L"]),
              ("number_extra", "numbers that \\p{N} lacks", [c for c in tik if tik[c] == "N" and pc[c] != "N"]),
              ("space_ranges", "whitespace (Unicode White_Space)", [c for c in tik if tik[c] == "W"])]
    for name, what, cps in tables:
        rs = sorted(coalesce(cps), key=lambda r: (r[0] - r[1], r[0]))
        out.append("static const uint32_t %s[][2] = { /* %s: %d code points */" % (name, what, len(cps)))
        line = "   "
        for it in ("{0x%X, 0x%X}" % tuple(r) for r in rs):
            if len(line) + len(it) + 2 > 100:
                out.append(line)
                line = "   "
            line += " " + it + ","
        out.append(line)
        out.append("};")
    return "\n".join(out)


def sweep_text(lo, hi):
    """Must match sweep_text() in tests/test_tokenizer.c."""
    parts = []
    for c in scalar_values(lo, hi):
        ch = chr(c)
        parts.append("a" + ch + " " + ch + ch + "1" + ch + "!" + ch + "\t" + ch + "  " + ch + "x\n")
    return "".join(parts)


def fnv_ids(ids):
    """Must match fnv_ids() in tests/test_tokenizer.c."""
    h = 0xCBF29CE484222325
    for i in ids:
        h = ((h ^ i) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def fixed_texts():
    """(name, text) pairs of valid Unicode text."""
    t = []
    add = lambda name, s: t.append((name, s))  # noqa: E731
    add("empty", "")
    add("hello", "hello world")
    add("prose", "The quick brown fox jumps over the lazy dog. It was the best of times, it was the "
        "worst of times; it was the age of wisdom, it was the age of foolishness...\n\nChapter 2\n"
        "\"Well,\" said Mr. O'Brien, \u201cthat\u2019s that\u201d \u2014 and left (quietly).")
    add("code_c", "int main(int argc, char **argv) {\n    for (int i = 0; i < argc; i++) {\n"
        "        printf(\"%s\\n\", argv[i]);\n    }\n    return 0; // done\n}\n")
    add("code_py", "def f(x):\n\tif x >= 0x1F:\n\t\treturn [x**2 for _ in range(10)]\n\treturn {'a': None}\n")
    add("spaces_runs", "a b  c   d    e     f      g")
    add("tabs", "\ta\t\tb\t\t\tc\t \t d")
    add("newlines", "a\nb\n\nc\n\n\nd\r\ne\r\n\r\nf")
    add("trailing_spaces", "hello   ")
    add("trailing_newlines", "hello\n\n\n")
    add("leading_spaces", "   hello")
    add("nl_nl_nl_sp_sp_x", "\n\n\n  x")
    add("only_spaces", " " * 17)
    add("only_mixed_ws", " \t\n \r\n\t  \n ")
    add("space_before_digit_punct", "x  1  !  \u00e9  \u4e2d")
    add("contractions_lower", "don't I'm they're we've I'd he'll it's 's 't 're 've 'm 'll 'd")
    add("contractions_upper", "DON'T I'M THEY'RE WE'VE I'D HE'LL IT'S 'S 'T 'RE 'VE 'M 'LL 'D")
    add("contractions_mixed", "they'Re You'Ve i'M wE'lL ' s '' 'x'' ''s")
    add("apostrophes", "rock 'n' roll, '90s, ''quoted'', \u2019s")
    add("numbers", "0 1 12 123 1234 12345 123456 1234567 3.14159 -2.5e-10 1,000,000 0x7fff 1/2")
    add("long_digits", "31415926535897932384626433832795028841971693993751058209749445923078164062862")
    add("unicode_digits", "\u0661\u0662\u0663 \u096a\u096b \uff11\uff12 \u00b2\u00b3 \u2167 \u3007 \u0e51\u0e52")
    add("latin_accents", "Cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade, \u00e5ngstr\u00f6m, "
        "Stra\u00dfe, \u0141\u00f3d\u017a, \u0159\u00ed\u0161e, \u00f1and\u00fa")
    add("greek", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5! "
        "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac.")
    add("cyrillic", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0421\u044a\u0435\u0448\u044c "
        "\u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 "
        "\u0431\u0443\u043b\u043e\u043a.")
    add("arabic", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c "
        "\u0643\u064a\u0641 \u062d\u0627\u0644\u0643\u061f \u0661\u0662\u0663")
    add("hebrew", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd! \u05de\u05b8\u05d4 "
        "\u05e9\u05b0\u05c1\u05dc\u05d5\u05b9\u05de\u05b0\u05da\u05b8")
    add("devanagari", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0964 "
        "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e")
    add("thai", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01 "
        "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22")
    add("cjk", "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002"
        "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca")
    add("korean", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4! \ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8")
    add("emoji", "I \u2764\ufe0f \U0001f355! \U0001f600\U0001f601 \U0001f44d\U0001f3fd ok")
    add("emoji_zwj", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f3f3\ufe0f\u200d\U0001f308 "
        "\U0001f9d1\U0001f3fb\u200d\U0001f4bb")
    add("flags", "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5 \U0001f1e9\U0001f1ea \U0001f3f4\U000e0067\U000e0062"
        "\U000e0073\U000e0063\U000e0074\U000e007f")
    add("combining", "e\u0301 a\u0300\u0301\u0302 Z\u0351\u0352\u0353\u0354 n\u0303o \u1e9b\u0323 \u0915\u093c")
    add("u180e", "a\u180eb \u180e c\u180e\u180e d \u180e a  \u180ex y  \u180e!")
    add("nbsp", "a\u00a0b \u00a0 c\u00a0\u00a0d\u00a0")
    add("thin_space", "a\u2009b \u2009c\u2009\u2009 d\u2009")
    add("ideographic_space", "\u4e2d\u3000\u6587\u3000\u3000x\u3000")
    add("nel", "a\u0085b\u0085\u0085c \u0085 d\u0085")
    add("other_unicode_ws", "a\u1680b\u2000c\u2001d\u200ae\u2028f\u2029g\u202fh\u205fi\u000bj\u000ck")
    add("not_ws", "a\u200bb\u200cc\u200dd\ufeffe\u2060f\u001cg\u001dh\u001ei\u001fj")
    add("ws_before_letter", "a\u3000\u3000b  \u00a0c\n d\t\te\u0085\u0085f")
    add("eot_alone", EOT)
    add("eot_in_text", "Hello" + EOT + "World " + EOT + " again" + EOT + EOT + "\n" + EOT)
    add("eot_partial", "<|endoftext| <|endoftext|<|endoftext|>|>< |endoftext|>")
    add("long_word", "a" * 3000)
    add("long_word_mixed", "pneumonoultramicroscopicsilicovolcanoconiosis" * 40)
    add("long_letters_cjk", "\u4e00\u4e8c\u4e09\u56db\u4e94\u516d\u4e03\u516b\u4e5d\u5341" * 300)
    add("long_digits_run", "9876543210" * 300)
    add("long_punct", "!?#$%&*+-=" * 300)
    add("long_spaces", " " * 5000 + "x")
    add("long_newlines", "\n" * 3000)
    add("nul_and_controls", "a\x00b\x01\x02c\x7f \x00 \x1b[0m")
    add("unicode16_letters", "\U00011380\U00011381 \U0001e5d0\U0001e5d1 \U00031350\U00031351 \U0002ebf0 "
        "\ua7cb\ua7cc \u1c89")
    add("unicode16_numbers", "\U00010d40\U00010d41 \U0001ccf0\U0001ccf1 \U0001e5f1 x\U000116d0")
    add("private_use_and_nonchars", "\ue000\uf8ff \U000f0000\U0010fffd \ufffe\uffff \U0010ffff")
    add("replacement_char", "\ufffd \ufffd\ufffd a\ufffdb")
    add("math", "\u2200x\u2208\u211d: x\u00b2 \u2265 0 \u2211\u1d62 \u222b f(x)dx \u2248 \u03c0")
    return t


POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~",
    "'''''sdmtlvreSDMTLVRE",
    "     \t\n\n\r\x0b\x0c",
    "\u00e0\u00e9\u00ee\u00f5\u00fc\u00e7\u00df\u00c5\u00d8\u0153",
    "\u03b1\u03b2\u03b3\u0394\u03a9\u0430\u0431\u0432\u0416\u042f",
    "\u4e00\u4e2d\u6587\u5b57\u3042\u30a2\u3001\u3002",
    "\uac00\ub098\ub2e4\ud55c",
    "\u0627\u0644\u0639\u05d0\u05d1\u0915\u093e\u0e01\u0e32",
    "\U0001f600\U0001f44d\U0001f3fd\u200d\u2764\ufe0f\U0001f1fa\U0001f1f8",
    "\u0300\u0301\u0308\u0323\u093c\u094d",
    "\u0085\u00a0\u1680\u2000\u2009\u200a\u2028\u2029\u202f\u205f\u3000\u180e\u200b\ufeff",
    "\u00b2\u0661\u096a\uff11\u2167\u3007\u00bd",
    "\U00011380\U0001e5d0\U00031350\U0001ccf0\U00010d40\ua7cb",
    "<|endoftext|>",
]


def random_texts(n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pools = rng.sample(POOLS, rng.randint(1, 5))
        length = rng.randint(1, 80)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(length))
        out.append(("random_%d" % i, s))
    return out


def byte_chars():
    """GPT-2's bytes_to_unicode(): the character that stands for each byte in vocab.json/merges.txt."""
    printable = [b for b in range(256) if ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    out, n = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


CUSTOM_MERGES = [(b"\n", b" "), (b" ", b" "), (b"  ", b"  "), (b"b", b"c"), (b"a", b"b"), (b"c", b"d"),
                 (b"ab", b"cd"), (b"\n ", b" "), (b"\xc3", b"\x82"), (b"\t", b"\t"),
                 (b"a", b"a"), (b"aa", b"aa"), (b"x", b"\xff"), (b"\r", b" ")]


def custom_vocabulary():
    """A byte-level vocabulary of our own: byte b has id b, merge line i creates id 256 + i, and
    <|endoftext|> follows. Returns the vocab.json and merges.txt text and cases from tiktoken."""
    bc = byte_chars()
    spell = lambda bs: "".join(bc[b] for b in bs)  # noqa: E731
    ranks = {bytes([b]): b for b in range(256)}
    lines = ["#version: 0.2"]
    for a, b in CUSTOM_MERGES:
        ranks[a + b] = len(ranks)
        lines.append(spell(a) + " " + spell(b))
    eot = len(ranks)
    enc = tiktoken.Encoding("custom", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={EOT: eot})
    vocab = {spell(t): r for t, r in ranks.items()}
    vocab[EOT] = eot
    texts = [b"abcd", b"xabcd", b"abcd abcd", b"a\n \xc3\x82\xff", b"a\n \xc3\x82", b"a \n\n \xc3\x82\x80",
             b"x\n\t \xc3\x82\xc3", b"a\r \xc3\x82\xff", b"    a", b"      \xff", b"\t\t\t\xff", b"aaaaaaa",
             b"x\xff", b"\xffx"]
    rng = random.Random(99)
    chunks = [b"a", b"b", b"c", b"d", b"x", b" ", b"  ", b"\n", b"\t", b"\r", b"\xc3\x82", b"!", b"1", b"\xff",
              b"\xc3", b"<|endoftext|>"]
    for _ in range(300):
        texts.append(b"".join(rng.choice(chunks) for _ in range(rng.randint(1, 14))))
    cases = []
    for bs in texts:
        try:
            s = bs.decode("utf-8")
            cases.append({"api": "ordinary", "hex": bs.hex(), "ids": enc.encode_ordinary(s)})
            if EOT in s:
                cases.append({"api": "special", "hex": bs.hex(), "ids": enc.encode(s, allowed_special={EOT})})
        except UnicodeDecodeError:
            cases.append({"api": "bytes", "hex": bs.hex(), "ids": enc._encode_bytes(bs)})
    return {"vocab_json": json.dumps(vocab, ensure_ascii=False), "merges_txt": "\n".join(lines) + "\n",
            "eot": eot, "cases": cases}


def random_special_texts(n, seed):
    """Random texts with <|endoftext|> inserted at random places (encoded with it allowed)."""
    rng = random.Random(seed)
    out = []
    for i, (_, s) in enumerate(random_texts(n, seed)):
        for _ in range(rng.randint(1, 3)):
            k = rng.randint(0, len(s))
            s = s[:k] + EOT + s[k:]
        out.append(("random_special_%d" % i, s))
    return out


def invalid_byte_cases():
    b = [
        ("inv_lone_ff", b"\xff"),
        ("inv_lone_cont", b"\x80"),
        ("inv_start", b"\xffhello world"),
        ("inv_end_truncated_3", b"hello wor\xe4\xb8"),
        ("inv_end_truncated_4", b"emoji \xf0\x9f\x98"),
        ("inv_middle", b"hello \xff world, more text after it"),
        ("inv_after_spaces", b"hello   \xff"),
        ("inv_after_newlines", b"a\n\n \t\xfe x"),
        ("inv_after_space_tokens", b"x  \n\n  \n \xc0"),
        ("inv_overlong_slash", b"a\xc0\xafb"),
        ("inv_overlong_3", b"a\xe0\x80\xafb"),
        ("inv_surrogate", b"a\xed\xa0\x80b"),
        ("inv_above_10ffff", b"a\xf4\x90\x80\x80b"),
        ("inv_f5", b"\xf5\xf6\xf7\xf8\xf9\xfa\xfb\xfc\xfd"),
        ("inv_latin1", b"caf\xe9 au lait, na\xefve fa\xe7ade"),
        ("inv_cesu_pair", b"\xed\xa0\xbd\xed\xb8\x80 smile"),
        ("inv_many", b"\x80\x81\x82 abc \xc3 \xe2\x82 \xf0\x9f"),
        ("inv_after_eot_text", b"<|endoftext|>\xff"),
        ("inv_all_bytes", bytes(range(256))),
        ("inv_digit_tail", b"12345\xff6789"),
        ("inv_letters_tail", b"Hello\xffWorld"),
    ]
    rng = random.Random(20240601)
    chunks = [b"a", b"the", b" ", b"  ", b"\n", b"\t", b"'s", b"12", b"!", b".", b"\xc3\xa9",
              b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80", b"\xff", b"\x80", b"\xc3", b"\xe4\xb8", b"\xed\xa0\x80",
              b"\xf0\x9f", b"\xc0\xaf"]
    for i in range(150):
        s = b"".join(rng.choice(chunks) for _ in range(rng.randint(1, 25)))
        b.append(("inv_random_%d" % i, s))
    for i in range(50):
        s = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        b.append(("inv_random_bytes_%d" % i, s))
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--c-tables", action="store_true", help="print the C class tables and exit")
    args = ap.parse_args()

    classes = char_classes()
    if args.c_tables:
        print(c_tables(classes))
        return

    enc = make_encoding()
    cases = []
    texts = fixed_texts() + random_texts(400, 1234)
    for name, s in texts:
        cases.append({"name": name, "api": "ordinary", "hex": s.encode().hex(), "ids": enc.encode_ordinary(s)})
        if EOT in s or name.startswith("eot") or name in ("hello", "prose"):
            cases.append({"name": name + "+special", "api": "special", "hex": s.encode().hex(),
                          "ids": enc.encode(s, allowed_special={EOT})})
    for name, s in random_special_texts(40, 777):
        cases.append({"name": name, "api": "special", "hex": s.encode().hex(),
                      "ids": enc.encode(s, allowed_special={EOT})})
    for name, bs in invalid_byte_cases():
        try:
            bs.decode("utf-8")
            api = "ordinary"  # a random byte string that happens to be valid
        except UnicodeDecodeError:
            api = "bytes"
        ids = enc._encode_bytes(bs)
        assert enc.decode_bytes(ids) == bs
        cases.append({"name": name, "api": api, "hex": bs.hex(), "ids": ids})

    sweep = []
    for lo, hi in SWEEP_RANGES:
        for a in range(lo, hi, SWEEP_CHUNK):
            b = min(a + SWEEP_CHUNK, hi)
            ids = enc.encode_ordinary(sweep_text(a, b))
            sweep.append({"lo": a, "hi": b, "n_ids": len(ids), "fnv": fnv_ids(ids)})

    doc = {
        "generator": "tools/make_tokenizer_golden.py",
        "tiktoken_version": tiktoken.__version__,
        "pattern": GPT2_PAT,
        "eot": 50256,
        "n_vocab": enc.n_vocab,
        "custom": custom_vocabulary(),
        "classes": classes,
        "sweep_chunk": SWEEP_CHUNK,
        "sweep": sweep,
        "cases": cases,
    }
    # One case per line keeps the file diffable.
    with open(args.out, "w", encoding="ascii") as f:
        f.write("{\n")
        keys = [k for k in doc if k not in ("classes", "sweep", "cases")]
        for k in keys:
            f.write("%s: %s,\n" % (json.dumps(k), json.dumps(doc[k], separators=(",", ":"))))
        f.write('"classes": %s,\n' % json.dumps(doc["classes"], separators=(",", ":")))
        for k in ("sweep", "cases"):
            f.write('"%s": [\n' % k)
            for i, c in enumerate(doc[k]):
                f.write(json.dumps(c, separators=(",", ":")) + (",\n" if i + 1 < len(doc[k]) else "\n"))
            f.write("]" + (",\n" if k == "sweep" else "\n"))
        f.write("}\n")
    print("wrote %s: %d cases, %d sweep chunks, %d class ranges, %d bytes" % (
        args.out, len(cases), len(sweep), len(classes), os.path.getsize(args.out)), file=sys.stderr)


if __name__ == "__main__":
    main()
