#!/usr/bin/env bash
# gpu_check.sh: everything this project checks on an NVIDIA GPU, in one command that fits one device
# call. From the repository root (also `make gpu-check`):
#
#   tools/gpu_check.sh quick      under 8 minutes on an H200 from a bare machine, build included:
#                                 deps, build, test (the cuda_* suites), compare (random gpt2 124M
#                                 against transformers, fp32 and fp16, 16 prompts x 32 greedy tokens),
#                                 bench (batch 1/64/256 fp16), oracle (.verify/gpu_oracle.py on gpt2),
#                                 memcheck (compute-sanitizer on the kernel tests), in that order: the
#                                 sanitizer last, as the step most likely to run out of time
#   tools/gpu_check.sh full       the longer run for a second command: the whole test suite, racecheck
#                                 too, gpt2 and gpt2-medium in fp32/fp16/bf16, 32 prompts x 64 tokens
#   tools/gpu_check.sh selftest   the step runner alone with tiny limits (no GPU needed; `make test`
#                                 runs it through tests/test_gpu_check.c)
#
# What the device machine lacks travels in two git-ignored folders, named in the device call's carry:
#   .gpu-deps   jansson, PCRE2 and Criterion (headers and libraries), made HERE by one command:
#               tools/fetch_device_deps.sh   (at most 20 MiB; see that script)
#   .verify     the independent oracle: mkdir -p .verify && cp ../shared/verify/gpu_oracle.py .verify/
# A device call: run(command="GPU_CHECK_COMMIT=<commit> tools/gpu_check.sh quick", carry=[".gpu-deps",
# ".verify"], timeout_s=600) (the copy there may have no .git, so name the commit).
# The build finds .gpu-deps through -I/-L and an rpath baked into build-gpu's binaries only (DT_RPATH,
# which also serves the libraries libcriterion itself needs): no ldconfig, no LD_LIBRARY_PATH, and
# nothing of the system's (libc, libssl, ...) is in the folder to shadow it.
#
# Time: every step runs under `timeout` with its own limit, capped by what is left of the mode's
# budget (quick 450 s, full 560 s; GPU_CHECK_BUDGET overrides). A step that runs out is recorded as
# TIMEOUT and the next still runs; a step with under 3 s of budget left is recorded as SKIPPED. So the
# command ends inside its budget whatever hangs, and the summary says what was and was not checked.
#
# Results: $OUT (or build-gpu/logs when OUT is unset) gets summary.txt (the table, also printed last),
# summary.tsv (step, status, seconds, limit, note), logs.tar.gz (every step's log), and the oracle's
# and the bench's JSON. These are refreshed after every step, so a call cut short still returns them.
# At most 8 files, as the device tool returns.
#
# Exit status: 0 every step passed; 1 a step failed or timed out; 3 no GPU here (every GPU step says
# "no GPU", nothing was checked on a GPU); 2 bad usage.
#
# Pass rule of the 16-bit comparisons (compare step): fp16/bf16 logits are judged against transformers
# in fp32, not in fp16. Random weights make flat logits (gpt2's init gives logits of standard
# deviation ~0.5 over 50257 tokens: the best two are often within 0.01 of each other), so a correct
# 16-bit engine flips some top-1 near-ties, and so does transformers' own fp16. The rule is relative
# to what transformers' 16-bit model reaches against its fp32 model on the same prompts (a correct
# implementation with the same rounding): our max |logit diff| <= 2 x transformers' + 1e-3, our top-1
# agreement >= transformers' - 0.02, and no top-1 change where the fp32 margin exceeds twice our max
# |diff| (no rounding of that size can flip it). See tools/compare_pytorch.py --help.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd) || exit 2
cd "$ROOT" || exit 2
SELF="$ROOT/tools/gpu_check.sh"

EXIT_NO_GPU=3
MIN_STEP=3 # seconds: a step gets at least this much budget or is skipped

export GPU_CHECK_BUILD=${BUILD:-build-gpu}
export GPU_CHECK_WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
export GPU_CHECK_JOBS=${JOBS:-$(nproc)}
export NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
export GPT2_DEPS="$ROOT/.gpu-deps"

# ------------------------------------------------------------------------------------------------
# Steps. Each runs as `gpu_check.sh __step NAME` under timeout; exit 0 ok, $EXIT_NO_GPU no GPU, 4
# skipped (nothing to run it on), anything else failed.

have_gpu() { "$NVIDIA_SMI" -L 2>/dev/null | grep -q '^GPU '; }
need_gpu() { have_gpu || { echo "no GPU: '$NVIDIA_SMI -L' lists none"; exit "$EXIT_NO_GPU"; }; }
need_build() {
    [ -x "$GPU_CHECK_BUILD/gpt2" ] && [ -x "$GPU_CHECK_BUILD/test_gpt2" ] ||
        { echo "no build in $GPU_CHECK_BUILD (the build step failed or did not run)"; exit 4; }
}
random_model() { # random_model CONFIG: a random model dir (numpy only: fast), made once
    local dir="$GPU_CHECK_WORK/models/$1"
    if [ ! -f "$dir/config.json" ]; then
        python3 tools/make_random_model.py --config "$1" --no-transformers --seed 1 --force "$dir" >&2 || return 1
    fi
    echo "$dir"
}

step_deps() {
    if [ -f "$GPT2_DEPS/MANIFEST" ]; then
        echo "using $GPT2_DEPS ($(du -sh "$GPT2_DEPS" | cut -f1)):"
        cat "$GPT2_DEPS/MANIFEST"
    else
        echo "MISSING .gpu-deps: no $GPT2_DEPS/MANIFEST. Run tools/fetch_device_deps.sh on a machine with apt and"
        echo "a network, then carry .gpu-deps. Trying the system's jansson, PCRE2 and Criterion instead."
    fi
    printf '#define PCRE2_CODE_UNIT_WIDTH 8\n#include <jansson.h>\n#include <pcre2.h>\n#include <criterion/criterion.h>\nint main(void) { json_decref(json_object()); return 0; }\n' \
        >"$GPU_CHECK_WORK/deps.c"
    # Run in a clean environment: inside a Criterion test (tests/test_gpu_check.c) the runner's variables
    # would make libcriterion's constructor act as a test child and abort.
    # shellcheck disable=SC2086
    cc $DEPS_CFLAGS "$GPU_CHECK_WORK/deps.c" -o "$GPU_CHECK_WORK/deps" $DEPS_LDFLAGS -Wl,--no-as-needed -ljansson -lpcre2-8 -lcriterion &&
        env -i "$GPU_CHECK_WORK/deps" ||
        { echo "FAILED: jansson / PCRE2 / Criterion do not compile, link and load (is .gpu-deps carried?)"; exit 1; }
    echo "jansson, PCRE2, Criterion: compile, link and load"
    ldd "$GPU_CHECK_WORK/deps" | grep -E 'jansson|pcre2|criterion|not found'
    if ldd "$GPU_CHECK_WORK/deps" | grep -q 'not found'; then echo "FAILED: libraries not found (above)"; exit 1; fi
}

step_build() {
    need_gpu
    "$NVIDIA_SMI" --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || exit 1
    local cc
    cc=$("$NVIDIA_SMI" --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
    case $cc in '' | *[!0-9]*) echo "cannot read the compute capability ('$cc')"; exit 1 ;; esac
    echo "building for sm_$cc (+ PTX) into $GPU_CHECK_BUILD with $GPU_CHECK_JOBS jobs"
    CFLAGS="$DEPS_CFLAGS" LDFLAGS="$DEPS_LDFLAGS" make -j"$GPU_CHECK_JOBS" CUDA=1 CUDA_ARCH="$cc" \
        BUILD="$GPU_CHECK_BUILD" "$GPU_CHECK_BUILD/gpt2" "$GPU_CHECK_BUILD/test_gpt2" || exit 1
    ldd "$GPU_CHECK_BUILD/test_gpt2" | grep -E 'jansson|pcre2|criterion|git2|nanomsg|cublas|cudart|not found'
    if ldd "$GPU_CHECK_BUILD/test_gpt2" | grep -q 'not found'; then echo "FAILED: libraries not found (above)"; exit 1; fi
    if [ "$MODE" = full ]; then # the kernels' registers and spills, for the record
        local nvcc
        nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
        for f in kernels/*.cu; do
            "$nvcc" -std=c++17 -O2 -gencode arch=compute_$cc,code=sm_$cc -Iinclude -Isrc -Ikernels -Xptxas -v \
                -c "$f" -o /dev/null 2>&1 | grep -E "spill" | grep -v " 0 bytes spill stores, 0 bytes spill loads" &&
                echo "WARNING: spills in $f (above)"
        done
    fi
    exit 0
}

step_test() {
    need_gpu
    need_build
    local filter='cuda_*/*' log="$GPU_CHECK_WORK/test.out" rc
    [ "$MODE" = full ] && filter='*/*'
    # four test processes share the GPU; each CPU reference gets four threads
    OMP_NUM_THREADS=4 GPT2_BIN="$GPU_CHECK_BUILD/gpt2" "$GPU_CHECK_BUILD/test_gpt2" --filter "$filter" --jobs 4 \
        --verbose --json="$GPU_CHECK_WORK/test-report.json" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    python3 tools/test_summary.py "$GPU_CHECK_WORK/test-report.json"
    if grep -E '^\[SKIP\] cuda' "$log"; then echo "FAILED: CUDA tests were skipped on a GPU machine"; exit 1; fi
    grep -q '^\[PASS\] cuda_kernels' "$log" || { echo "FAILED: no CUDA test passed"; exit 1; }
    exit "$rc"
}

# sanitize TOOL FILTER: the tests in FILTER under compute-sanitizer; fails on any reported error and
# when the sanitizer did not report on every test process (Criterion forks one per test).
sanitize() {
    need_gpu
    need_build
    local tool=$1 filter=$2 log="$GPU_CHECK_WORK/$1.out" rc n_tests n_summaries
    command -v compute-sanitizer >/dev/null || { echo "FAILED: compute-sanitizer not found"; exit 1; }
    GPT2_BIN="$GPU_CHECK_BUILD/gpt2" compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 86 \
        "$GPU_CHECK_BUILD/test_gpt2" --filter "$filter" --jobs 1 --verbose 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    n_tests=$(grep -cE '^\[(PASS|FAIL)\]' "$log")
    n_summaries=$(grep -c 'ERROR SUMMARY:' "$log")
    echo "$tool: $n_tests tests, $n_summaries sanitizer summaries"
    if grep -E 'ERROR SUMMARY: [1-9]' "$log"; then echo "FAILED: $tool found errors"; exit 1; fi
    [ "$n_tests" -gt 0 ] || { echo "FAILED: $tool: no test ran"; exit 1; }
    [ "$n_summaries" -ge "$n_tests" ] || { echo "FAILED: $tool did not attach to every test process"; exit 1; }
    exit "$rc"
}
step_memcheck() { sanitize memcheck 'cuda_kernels/*'; }
step_racecheck() { sanitize racecheck 'cuda_kernels/*'; }

step_compare() {
    need_gpu
    need_build
    local n_prompts=16 gen=32 configs=gpt2 dtypes="fp32 fp16" rc=0 cfg dt dir prompts="$GPU_CHECK_WORK/prompts.jsonl"
    if [ "$MODE" = full ]; then n_prompts=32 gen=64 configs="gpt2 gpt2-medium" dtypes="fp32 fp16 bf16"; fi
    # prompts of different lengths, 1 to ~600 tokens, so that every attention path is used
    python3 - "$prompts" "$n_prompts" <<'EOF' || exit 1
import json, sys
words = ("The history of natural language processing generally started in the 1950s, although work can be "
         "found from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery "
         "and Intelligence which proposed what is now called the Turing test as a criterion of intelligence. "
         "Up to the 1980s, most natural language processing systems were based on complex sets of "
         "hand-written rules; starting in the late 1980s, however, there was a revolution with the "
         "introduction of machine learning algorithms for language processing, 42 times over!").split()
n = int(sys.argv[2])
with open(sys.argv[1], "w") as f:
    for i in range(n):
        k = 1 + i + (i * i * 560) // ((n - 1) ** 2 or 1)  # 1 .. ~590 words, all different
        f.write(json.dumps({"prompt": " ".join(words[j % len(words)] for j in range(k))}) + "\n")
EOF
    for cfg in $configs; do
        dir=$(random_model "$cfg") || { rc=1; continue; }
        for dt in $dtypes; do
            echo "--- $cfg $dt"
            local strict=()
            [ "$dt" = fp32 ] && strict=(--strict-greedy --tol 2e-3)
            python3 tools/compare_pytorch.py --model "$dir" --prompts "$prompts" --device cuda --hf-device cuda \
                --dtype "$dt" --bin "$GPU_CHECK_BUILD/gpt2" --gen "$gen" "${strict[@]}" || rc=1
        done
    done
    exit $rc
}

step_oracle() {
    need_gpu
    need_build
    [ -f .verify/gpu_oracle.py ] || {
        echo "FAILED: MISSING .verify/gpu_oracle.py: mkdir -p .verify && cp ../shared/verify/gpu_oracle.py .verify/"
        echo "and carry .verify"
        exit 1
    }
    local args=(--configs gpt2 --prompts 16 --gen 32)
    [ "$MODE" = full ] && args=(--configs gpt2,gpt2-medium --prompts 32 --gen 64)
    mkdir -p "$GPU_CHECK_WORK/oracle"
    python3 .verify/gpu_oracle.py --bin "$GPU_CHECK_BUILD/gpt2" --tokenizer tests/data/gpt2-tokenizer "${args[@]}" \
        --out "$GPU_CHECK_WORK/oracle"
}

step_bench() {
    need_gpu
    need_build
    local dir
    dir=$(random_model gpt2) || exit 1
    "$GPU_CHECK_BUILD/gpt2" bench --model "$dir" --device cuda --dtype fp16 --batch 1,64,256 --prompt-len 128 \
        --gen-len 128 --json "$GPU_CHECK_WORK/bench.json"
}

# selftest steps: one that outlives its limit, one that passes, one capped by the budget, one late
step_selftest_sleep() { echo "sleeping past my limit"; sleep 30; echo "not reached"; }
step_selftest_ok() { echo "selftest step ran"; }

# ------------------------------------------------------------------------------------------------
# Entry points

if [ "${1:-}" = __step ]; then
    MODE=$GPU_CHECK_MODE
    mkdir -p "$GPU_CHECK_WORK" || exit 1
    "step_$2"
    exit $?
fi

MODE=${1:-}
case $MODE in
quick) STEPS="deps:30 build:200 test:150 compare:120 bench:60 oracle:120 memcheck:90"; BUDGET=450 ;;
full) STEPS="deps:30 build:200 test:240 compare:300 bench:60 oracle:240 memcheck:180 racecheck:180"; BUDGET=560 ;;
selftest) STEPS="selftest_sleep:1 selftest_ok:5 selftest_sleep:100 selftest_ok:5"; BUDGET=8 ;;
*) echo "usage: tools/gpu_check.sh quick|full|selftest   (see the top of the script)" >&2; exit 2 ;;
esac
BUDGET=${GPU_CHECK_BUDGET:-$BUDGET}
export GPU_CHECK_MODE=$MODE

if [ -f "$GPT2_DEPS/MANIFEST" ]; then
    # DT_RPATH, not DT_RUNPATH: it also serves the libraries libcriterion needs (libgit2, nanomsg, ...)
    export DEPS_CFLAGS="-I$GPT2_DEPS/include" DEPS_LDFLAGS="-L$GPT2_DEPS/lib -Wl,--disable-new-dtags,-rpath,$GPT2_DEPS/lib"
else
    export DEPS_CFLAGS="" DEPS_LDFLAGS=""
fi

LOGDIR=${OUT:-$ROOT/$GPU_CHECK_BUILD/logs}
STEPLOGS="$GPU_CHECK_WORK/logs"
rm -rf "$STEPLOGS" && mkdir -p "$LOGDIR" "$STEPLOGS" || exit 2
: >"$LOGDIR/summary.tsv"
START=$(date +%s)
GPU_NAME=$( (have_gpu && "$NVIDIA_SMI" --query-gpu=name,driver_version --format=csv,noheader | head -n 1) || echo "no GPU")
# the device machine's copy of the tree may have no .git: GPU_CHECK_COMMIT names the commit then
if [ -n "${GPU_CHECK_COMMIT:-}" ]; then COMMIT=$GPU_CHECK_COMMIT
elif COMMIT=$(git rev-parse --short HEAD 2>/dev/null); then git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT+dirty"
else COMMIT="unknown (no .git; set GPU_CHECK_COMMIT)"; fi

write_summary() {
    {
        echo "gpu_check $MODE: $(date -u +%Y-%m-%dT%H:%M:%SZ), $GPU_NAME, commit $COMMIT, budget ${BUDGET}s, used $(($(date +%s) - START))s"
        printf '%-15s %-8s %6s %6s  %s\n' step status secs limit note
        awk -F'\t' '{ printf "%-15s %-8s %6s %6s  %s\n", $1, $2, $3, $4, $5 }' "$LOGDIR/summary.tsv"
    } >"$LOGDIR/summary.txt"
    tar -czf "$LOGDIR/logs.tar.gz" -C "$GPU_CHECK_WORK" logs 2>/dev/null
    for f in oracle/oracle_results.json bench.json; do
        [ -f "$GPU_CHECK_WORK/$f" ] && cp "$GPU_CHECK_WORK/$f" "$LOGDIR/$(basename "$f")"
    done
}

n_fail=0 n_ok=0 n_nogpu=0 i=0
for entry in $STEPS; do
    name=${entry%%:*} limit=${entry##*:}
    i=$((i + 1))
    log="$STEPLOGS/$i-$name.log"
    left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt "$MIN_STEP" ]; then
        printf '%s\tSKIPPED\t0\t0\tbudget spent (%ss left)\n' "$name" "$left" >>"$LOGDIR/summary.tsv"
        echo "=== $name: SKIPPED (budget spent)"
        n_fail=$((n_fail + 1))
        write_summary
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s, log $log)"
    t0=$(date +%s)
    timeout -k 5 "$limit" "$SELF" __step "$name" >"$log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    tail -n 15 "$log"
    case $rc in
    0) status=ok note="" n_ok=$((n_ok + 1)) ;;
    124 | 137) status=TIMEOUT note="ran out of its ${limit}s" n_fail=$((n_fail + 1)) ;;
    "$EXIT_NO_GPU") status="no-GPU" note="no GPU here" n_nogpu=$((n_nogpu + 1)) ;;
    4) status=SKIPPED note="no build to run on" n_fail=$((n_fail + 1)) ;;
    *) status=FAILED note="exit $rc: $(grep -m1 -E 'FAILED|FAIL:|error' "$log" | cut -c1-100)" n_fail=$((n_fail + 1)) ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$limit" "$note" >>"$LOGDIR/summary.tsv"
    write_summary
done

if [ "$n_fail" -gt 0 ]; then verdict="FAIL: $n_fail step(s) failed, timed out or were skipped"; rc=1
elif [ "$n_nogpu" -gt 0 ]; then verdict="NO GPU: the $n_nogpu GPU step(s) did not run; nothing was checked on a GPU"; rc=$EXIT_NO_GPU
else verdict="PASS: all $n_ok steps ok"; rc=0; fi
echo "$verdict" >>"$LOGDIR/summary.txt"
echo
cat "$LOGDIR/summary.txt"
exit $rc
