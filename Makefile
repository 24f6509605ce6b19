# gpt2: GPT-2 inference engine. `make` builds build/gpt2 and build/libgpt2.a; `make test` runs the tests.
# CUDA sources compile in when nvcc is found (override with CUDA=0 or NVCC=/path/to/nvcc).

CC      ?= cc
BUILD   ?= build
NVCC    ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA    ?= $(if $(NVCC),1,0)
# Compute capabilities for the CUDA build, a space-separated list ("80 90"): machine code for each, and
# PTX of the last one so that newer GPUs JIT-compile it. tools/gpu_check.sh sets it from the GPU it finds.
CUDA_ARCH ?= 90
# WERROR=0 turns warnings back into warnings (C and nvcc), for compilers newer than the tested ones.
WERROR  ?= 1
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

OPT      ?= -O2
SAN      ?=
CFLAGS   += -std=c11 $(OPT) -g -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror) -Wshadow -Wno-unused-parameter -fopenmp \
            -fno-fast-math -D_GNU_SOURCE -Iinclude -Isrc -MMD -MP $(SAN)
LDFLAGS  += -fopenmp $(SAN)
LDLIBS   += -ljansson -lpcre2-8 -lm -lpthread
TEST_LDLIBS = -lcriterion

LIB_SRCS  := $(filter-out src/main.c src/cli_%.c src/backend_cuda.c src/cuda_%.c,$(wildcard src/*.c))
CLI_SRCS  := src/main.c $(wildcard src/cli_*.c)
TEST_SRCS := $(wildcard tests/test_*.c)
CU_SRCS   := $(wildcard kernels/*.cu)

ifeq ($(CUDA),1)
CFLAGS      += -DGPT2_HAVE_CUDA -I$(CUDA_HOME)/include
LIB_SRCS    += src/backend_cuda.c $(wildcard src/cuda_*.c)
CUDA_GENCODE := $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_$(lastword $(CUDA_ARCH)),code=compute_$(lastword $(CUDA_ARCH))
NVCC_WERROR := $(if $(filter 1,$(WERROR)),-Xcompiler -Werror -Werror all-warnings)
NVCCFLAGS   ?= -O2 -g -std=c++17 $(CUDA_GENCODE) -Xcompiler -Wall,-Wextra,-Wno-unused-parameter $(NVCC_WERROR) \
               -Iinclude -Isrc -Ikernels -MMD -MP
LDLIBS      += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt
CU_OBJS     := $(CU_SRCS:%.cu=$(BUILD)/%.o)
else
CU_OBJS     :=
endif

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(CU_OBJS)
CLI_OBJS  := $(CLI_SRCS:%.c=$(BUILD)/%.o)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/%.o)

.PHONY: all test deps fixtures clean gpu-check asan fuzz fuzz-smoke valgrind bench-cpu
all: $(BUILD)/gpt2 $(BUILD)/libgpt2.a

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The CPU engine's inner loops want the full vectoriser (no fast-math: results stay IEEE).
$(BUILD)/src/ops_cpu.o: OPT = -O3

# The CPU benchmark driver: memory bandwidth and the decode-step matmuls (see bench/bench_cpu.c).
bench-cpu: $(BUILD)/bench_cpu
$(BUILD)/bench_cpu: $(BUILD)/bench/bench_cpu.o $(BUILD)/libgpt2.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench/bench_cpu.o: OPT = -O3

$(BUILD)/libgpt2.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/gpt2: $(CLI_OBJS) $(BUILD)/libgpt2.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(BUILD)/libgpt2.a $(LDLIBS)

$(BUILD)/test_gpt2: $(TEST_OBJS) $(BUILD)/libgpt2.a
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJS) $(BUILD)/libgpt2.a $(LDLIBS) $(TEST_LDLIBS)

# The tests find the fixtures and the CLI relative to the repository root.
TEST_ARGS ?=
# Criterion's own summary does not count skips, so a closing line from its JSON report does.
test: $(BUILD)/gpt2 $(BUILD)/test_gpt2
	GPT2_BIN=$(BUILD)/gpt2 $(BUILD)/test_gpt2 --json=$(BUILD)/test-report.json $(TEST_ARGS); rc=$$?; \
	python3 tools/test_summary.py $(BUILD)/test-report.json && exit $$rc

# The CPU suite under AddressSanitizer + UndefinedBehaviorSanitizer, in its own build folder.
asan:
	$(MAKE) BUILD=build-asan CUDA=0 OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

# libFuzzer targets (clang): tests/fuzz/fuzz_NAME.c -> build-fuzz/fuzz_NAME, with the CPU library sources.
FUZZ_CC     ?= clang
FUZZ_SRCS   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS   := $(FUZZ_SRCS:tests/fuzz/%.c=build-fuzz/%)
FUZZ_LIB    := $(filter-out src/backend_cuda.c src/cuda_%.c,$(LIB_SRCS))
FUZZ_FLAGS  := -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fopenmp \
               -D_GNU_SOURCE -Iinclude -Isrc
FUZZ_SECONDS ?= 60
fuzz: $(FUZZ_BINS)
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB) $(wildcard src/*.h)
	@mkdir -p build-fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_LIB) -ljansson -lpcre2-8 -lm
# A short run of every target on its seed corpus (part of CI); new inputs go to a scratch folder.
fuzz-smoke: $(FUZZ_BINS)
	@set -e; for f in $(FUZZ_BINS); do n=$${f#build-fuzz/fuzz_}; mkdir -p build-fuzz/corpus-$$n; \
	  echo "fuzz-smoke: $$n for $(FUZZ_SECONDS) s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build-fuzz/corpus-$$n tests/fuzz/corpus/$$n \
	    2>build-fuzz/$$n.log || { tail -50 build-fuzz/$$n.log; exit 1; }; \
	  grep -E "stat::number_of_executed_units" build-fuzz/$$n.log; done

# The CPU suite once under valgrind memcheck (slow; not part of CI).
valgrind: $(BUILD)/gpt2 $(BUILD)/test_gpt2
	GPT2_BIN=$(BUILD)/gpt2 OMP_NUM_THREADS=1 valgrind --error-exitcode=1 --leak-check=full \
	    --errors-for-leak-kinds=definite $(BUILD)/test_gpt2 --jobs 1 --no-early-exit $(TEST_ARGS)

# System packages (Debian). Run as root, or through sudo when it is there.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    build-essential clang libclang-rt-14-dev libcriterion-dev libjansson-dev libpcre2-dev python3
	@# optional: lets the loader tests compare with the reference safetensors reader (they skip without it)
	-python3 -m pip install -q safetensors numpy 2>/dev/null

# On a machine with an NVIDIA GPU: build for it, run everything, sanitizers, compare with PyTorch.
gpu-check:
	bash tools/gpu_check.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-gpu

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(BUILD)/bench/bench_cpu.d
