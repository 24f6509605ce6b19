#!/usr/bin/env bash
# gpu_check.sh: on a machine with an NVIDIA GPU, from the repository root (also `make gpu-check`):
#   deps       unpack .gpu-deps/*.deb (made by tools/fetch_device_deps.sh) into /tmp/gpu-deps with
#              dpkg -x (never into /) and point CPATH, LIBRARY_PATH and LD_LIBRARY_PATH at it; only
#              the libraries this machine lacks are put on LD_LIBRARY_PATH. Always runs first.
#   build      make CUDA=1 CUDA_ARCH=<compute capability of GPU 0> BUILD=build-gpu
#   test       the whole test suite, CUDA tests included (none may be skipped)
#   memcheck   the CUDA tests under compute-sanitizer --tool memcheck
#   racecheck  the CUDA kernel tests under compute-sanitizer --tool racecheck
#   compare    random full-size gpt2 and gpt2-medium (tools/make_random_model.py) against transformers
#              with tools/compare_pytorch.py: 32 prompts of different lengths, 64 greedy tokens, fp32
#              (max |logit diff| <= 2e-3) and fp16
#
#   tools/gpu_check.sh [STEP...]     default: build test memcheck racecheck compare
#
# Every step runs even when an earlier one failed (a step that needs the build is skipped when
# there is none); the summary at the end lists each step's result, and the exit status is 1 when
# any step failed. Logs: $OUT/<step>.log when OUT is set, else build-gpu/logs/<step>.log.
# Environment: BUILD (build-gpu), JOBS (nproc), COMPARE_MODELS ("gpt2 gpt2-medium").
set -u
cd "$(dirname "$0")/.." || exit 2

BUILD=${BUILD:-build-gpu}
LOGDIR=${OUT:-$BUILD/logs}
JOBS=${JOBS:-$(nproc)}
COMPARE_MODELS=${COMPARE_MODELS:-gpt2 gpt2-medium}
DEPS=/tmp/gpu-deps
mkdir -p "$LOGDIR" || exit 2

if [ $# -gt 0 ]; then steps=("$@"); else steps=(build test memcheck racecheck compare); fi
for s in "${steps[@]}"; do
    case $s in
    deps | build | test | memcheck | racecheck | compare) ;;
    *) echo "gpu_check: unknown step '$s' (steps: deps build test memcheck racecheck compare)" >&2; exit 2 ;;
    esac
done

summary=()
failed=0
# run_step NAME FUNCTION: runs FUNCTION in this shell (so that exports persist), output to the log.
run_step() {
    local name=$1 fn=$2 start rc
    start=$(date +%s)
    echo "=== $name (log: $LOGDIR/$name.log)"
    "$fn" >"$LOGDIR/$name.log" 2>&1
    rc=$?
    tail -n 30 "$LOGDIR/$name.log"
    if [ $rc -eq 0 ]; then
        summary+=("$(printf '%-10s ok      %4ds' "$name" $(($(date +%s) - start)))")
    else
        summary+=("$(printf '%-10s FAILED  %4ds  (exit %d, %s)' "$name" $(($(date +%s) - start)) $rc "$LOGDIR/$name.log")")
        failed=1
    fi
    return $rc
}

step_deps() {
    shopt -s nullglob
    local debs=(.gpu-deps/*.deb)
    if [ ${#debs[@]} -eq 0 ]; then
        echo "no .gpu-deps/*.deb: using the system's libjansson, libpcre2 and libcriterion"
    else
        rm -rf "$DEPS" && mkdir -p "$DEPS/rt" || return 1
        for f in "${debs[@]}"; do dpkg -x "$f" "$DEPS" || { echo "dpkg -x $f failed"; return 1; }; done
        echo "unpacked ${#debs[@]} packages into $DEPS"
        # Runtime: only the sonames the system cannot resolve, so that none of its own is shadowed.
        local have so n
        have=$(ldconfig -p 2>/dev/null | awk 'NR > 1 {print $1}')
        for so in "$DEPS"/usr/lib/x86_64-linux-gnu/*.so.* "$DEPS"/lib/x86_64-linux-gnu/*.so.*; do
            n=$(basename "$so")
            if ! grep -qxF "$n" <<<"$have"; then ln -sf "$so" "$DEPS/rt/$n"; fi
        done
        echo "on LD_LIBRARY_PATH ($DEPS/rt): $(ls "$DEPS/rt" | tr '\n' ' ')"
        export CPATH="$DEPS/usr/include${CPATH:+:$CPATH}"
        export LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu:$DEPS/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$DEPS/rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    # the headers and libraries the build needs must now be found
    printf '#define PCRE2_CODE_UNIT_WIDTH 8\n#include <jansson.h>\n#include <pcre2.h>\n#include <criterion/criterion.h>\nint main(void) { return 0; }\n' >/tmp/gpu_check_deps.c
    cc /tmp/gpu_check_deps.c -o /tmp/gpu_check_deps -ljansson -lpcre2-8 -lcriterion && /tmp/gpu_check_deps ||
        { echo "jansson / pcre2 / criterion not usable: run tools/fetch_device_deps.sh where there is a network, and carry .gpu-deps"; return 1; }
    echo "jansson, pcre2, criterion: compile, link and load"
}

ARCH=""
step_build() {
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no GPU driver here"; return 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || return 1
    local cc
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
    case $cc in '' | *[!0-9]*) echo "cannot read the compute capability ('$cc')"; return 1 ;; esac
    ARCH=$cc
    echo "building for sm_$ARCH into $BUILD"
    make -j"$JOBS" CUDA=1 CUDA_ARCH="$ARCH" BUILD="$BUILD" "$BUILD/gpt2" "$BUILD/test_gpt2" || return 1
    # the kernels' register and spill report, for the record (no local memory in the hot kernels)
    local nvcc
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    for f in kernels/attention_prefill.cu kernels/attention_decode.cu kernels/layernorm.cu kernels/sample.cu; do
        "$nvcc" -std=c++17 -O2 -gencode arch=compute_$ARCH,code=sm_$ARCH -Iinclude -Isrc -Ikernels -Xptxas -v \
            -c "$f" -o /dev/null 2>&1 | grep -E "Compiling entry|spill" | grep -v "0 bytes spill stores, 0 bytes spill loads" |
            grep -B1 "spill" && echo "WARNING: spills in $f (above)"
    done
    return 0
}

have_build() { [ -x "$BUILD/test_gpt2" ] && [ -x "$BUILD/gpt2" ]; }

step_test() {
    have_build || { echo "no build in $BUILD"; return 1; }
    local log=/tmp/gpu_check_test.out rc
    GPT2_BIN="$BUILD/gpt2" "$BUILD/test_gpt2" --jobs "$JOBS" --verbose 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    # on a GPU machine no CUDA test may skip
    if grep -E '^\[SKIP\] cuda' "$log"; then
        echo "CUDA tests were skipped on a GPU machine"
        return 1
    fi
    grep -q '^\[PASS\] cuda_kernels' "$log" || { echo "no CUDA test ran"; return 1; }
    return "$rc"
}

# sanitize TOOL FILTER: the tests in FILTER under compute-sanitizer; fails on any reported error, and
# when the sanitizer did not report on every test process (Criterion forks one per test).
sanitize() {
    local tool=$1 filter=$2 log=/tmp/gpu_check_$1.out rc n_tests n_summaries
    have_build || { echo "no build in $BUILD"; return 1; }
    command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not found"; return 1; }
    GPT2_BIN="$BUILD/gpt2" compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 86 \
        "$BUILD/test_gpt2" --filter "$filter" --jobs 1 --verbose 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    n_tests=$(grep -cE '^\[(PASS|FAIL)\]' "$log")
    n_summaries=$(grep -c 'ERROR SUMMARY:' "$log")
    echo "$tool: $n_tests tests, $n_summaries sanitizer summaries"
    if grep -E 'ERROR SUMMARY: [1-9]' "$log"; then echo "$tool found errors"; return 1; fi
    [ "$n_tests" -gt 0 ] || { echo "$tool: no test ran"; return 1; }
    [ "$n_summaries" -ge "$n_tests" ] || { echo "$tool: the sanitizer did not attach to every test process"; return 1; }
    return "$rc"
}
step_memcheck() { sanitize memcheck 'cuda_*/*'; }
step_racecheck() { sanitize racecheck 'cuda_kernels/*'; }

step_compare() {
    have_build || { echo "no build in $BUILD"; return 1; }
    local dir=/tmp/gpu_check_models prompts=/tmp/gpu_check_prompts.jsonl rc=0 cfg
    mkdir -p "$dir" || return 1
    # 32 prompts from 1 to about 800 tokens (so that 64 more fit in the 1024-token context)
    python3 - "$prompts" <<'EOF' || return 1
import json, sys
words = ("The history of natural language processing generally started in the 1950s, although work can be "
         "found from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery "
         "and Intelligence which proposed what is now called the Turing test as a criterion of intelligence. "
         "Up to the 1980s, most natural language processing systems were based on complex sets of "
         "hand-written rules; starting in the late 1980s, however, there was a revolution with the "
         "introduction of machine learning algorithms for language processing, 42 times over!").split()
with open(sys.argv[1], "w") as f:
    for i in range(32):
        n = 1 + i + (i * i * 560) // 961  # 1 .. 592 words, all different
        f.write(json.dumps({"prompt": " ".join(words[j % len(words)] for j in range(n))}) + "\n")
EOF
    for cfg in $COMPARE_MODELS; do
        if [ ! -f "$dir/$cfg/config.json" ]; then
            python3 tools/make_random_model.py --config "$cfg" "$dir/$cfg" || { rc=1; continue; }
        fi
        echo "--- $cfg fp32"
        python3 tools/compare_pytorch.py --model "$dir/$cfg" --prompts "$prompts" --device cuda --hf-device cuda \
            --dtype fp32 --bin "$BUILD/gpt2" --gen 64 --tol 2e-3 || rc=1
        echo "--- $cfg fp16"
        python3 tools/compare_pytorch.py --model "$dir/$cfg" --prompts "$prompts" --device cuda --hf-device cuda \
            --dtype fp16 --bin "$BUILD/gpt2" --gen 64 || rc=1
    done
    return $rc
}

run_step deps step_deps
for s in "${steps[@]}"; do
    [ "$s" = deps ] && continue
    run_step "$s" "step_$s"
done

echo
echo "=== gpu_check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"
printf '%s\n' "${summary[@]}"
exit $failed
