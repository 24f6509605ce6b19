#!/usr/bin/env bash
# The one command to generate text on a fresh machine: installs the build dependencies (Debian),
# builds, fetches GPT-2 (124M) from the Hugging Face Hub when there is a network, and generates.
# Without a network it uses the bundled small random model and says so.
#   bash tools/quickstart.sh ["prompt"] [more `gpt2 generate` options, e.g. -n 100 --device cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-The meaning of life is}"
[ $# -gt 0 ] && shift
if ! dpkg -s libcriterion-dev libjansson-dev libpcre2-dev >/dev/null 2>&1; then
    make deps
fi
make -j"$(nproc)" build/gpt2 >/dev/null
model="${GPT2_MODEL:-models/gpt2}"
if [ ! -f "$model/config.json" ]; then
    if ! python3 tools/download_model.py gpt2 --out "$model"; then
        echo "quickstart: no network, so no real weights: using the bundled small RANDOM model" \
             "tests/data/models/tiny (real tokenizer, random weights: the text will be gibberish)" >&2
        model=tests/data/models/tiny
    fi
fi
exec build/gpt2 generate --model "$model" --prompt "$prompt" "$@"
