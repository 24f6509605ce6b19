# gpt2: GPT-2 inference engine. `make` builds build/gpt2, build/libgpt2.a and build/libgpt2.so;
# `make test` runs the tests; `make install PREFIX=...` installs the library, its header and gpt2.pc.
# CUDA sources compile in when nvcc is found (override with CUDA=0 or NVCC=/path/to/nvcc).

# `make` alone builds `all` (declared below, after rules such as the MPI stamp's that would otherwise
# become the default goal).
.DEFAULT_GOAL := all

CC      ?= cc
BUILD   ?= build
NVCC    ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA    ?= $(if $(NVCC),1,0)
# Compute capabilities for the CUDA build, a space-separated list ("80 90"): machine code for each, and
# PTX of the last one so that newer GPUs JIT-compile it. tools/gpu_check.sh sets it from the GPU it finds.
CUDA_ARCH ?= 90
# MPI=1 builds the CLI with MPI (data-parallel `mpirun -n R build/gpt2 generate ...`, see the README);
# on when mpicc is found. The library never uses MPI; without it the CLI runs as one process.
MPICC   ?= $(shell command -v mpicc 2>/dev/null)
MPI     ?= $(if $(MPICC),1,0)
# WERROR=0 turns warnings back into warnings (C and nvcc), for compilers newer than the tested ones.
WERROR  ?= 1
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

OPT      ?= -O2
SAN      ?=
# -fvisibility=hidden: only GPT2_API declarations (include/gpt2.h) are exported from libgpt2.so.
CFLAGS   += -std=c11 $(OPT) -g -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror) -Wshadow -Wno-unused-parameter -fopenmp \
            -fno-fast-math -D_GNU_SOURCE -fPIC -fvisibility=hidden -Iinclude -Isrc -MMD -MP $(SAN)
LDFLAGS  += -fopenmp $(SAN)
LDLIBS   += -ljansson -lpcre2-8 -lm -lpthread
TEST_LDLIBS = -lcriterion

LIB_SRCS  := $(filter-out src/main.c src/cli_%.c src/serve_%.c src/backend_cuda.c src/cuda_%.c,$(wildcard src/*.c))
CLI_SRCS  := src/main.c $(wildcard src/cli_*.c)
# The CLI talks to the library through gpt2.h alone (it links the public libgpt2.a, whose other symbols
# are local); these helpers (JSONL requests, .npy files, file reading) it links as its own copies.
CLI_SUPPORT_OBJS := $(BUILD)/src/request.o $(BUILD)/src/npy.o $(BUILD)/src/util.o $(BUILD)/src/serve_req.o
# `gpt2 serve` needs libmicrohttpd (make deps installs it); without it the rest builds and serve says so.
MHD     ?= $(shell pkg-config --exists libmicrohttpd 2>/dev/null && echo 1 || echo 0)
MHD_LIBS := $(if $(filter 1,$(MHD)),$(shell pkg-config --libs libmicrohttpd))
TEST_SRCS := $(wildcard tests/test_*.c)
CU_SRCS   := $(wildcard kernels/*.cu)

ifeq ($(CUDA),1)
CFLAGS      += -DGPT2_HAVE_CUDA -I$(CUDA_HOME)/include
LIB_SRCS    += src/backend_cuda.c $(wildcard src/cuda_*.c)
CUDA_GENCODE := $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_$(lastword $(CUDA_ARCH)),code=compute_$(lastword $(CUDA_ARCH))
NVCC_WERROR := $(if $(filter 1,$(WERROR)),-Xcompiler -Werror -Werror all-warnings)
# -fPIC, -fvisibility=hidden: for libgpt2.so. -fno-gnu-unique: CUB's and Thrust's template statics
# become weak rather than "unique" symbols, which objcopy can make local in libgpt2.a.
NVCCFLAGS   ?= -O2 -g -std=c++17 $(CUDA_GENCODE) -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fPIC,-fvisibility=hidden,-fno-gnu-unique $(NVCC_WERROR) \
               -Iinclude -Isrc -Ikernels -MMD -MP
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt
LDLIBS      += $(CUDA_LIBS)
CU_OBJS     := $(CU_SRCS:%.cu=$(BUILD)/%.o)
else
CU_OBJS     :=
CUDA_LIBS   :=
endif

ifeq ($(MPI),1)
# Open MPI's wrapper says how to compile and link against it (MPICH's: -compile-info / -link-info);
# its headers as system headers, so that -Werror does not judge them.
MPI_CFLAGS ?= $(patsubst -I%,-isystem %,$(shell $(MPICC) --showme:compile 2>/dev/null || $(MPICC) -compile-info 2>/dev/null | cut -d' ' -f2-))
MPI_LIBS   ?= $(shell $(MPICC) --showme:link 2>/dev/null || $(MPICC) -link-info 2>/dev/null | cut -d' ' -f2-)
$(BUILD)/src/cli_mpi.o: CFLAGS += -DGPT2_HAVE_MPI $(MPI_CFLAGS)
$(BUILD)/tests/test_mpi.o: CFLAGS += -DGPT2_HAVE_MPI
else
MPI_LIBS   :=
endif
# Which build (MPI=0 or 1) cli_mpi.o and test_mpi.o were built for: switching rebuilds them.
MPI_STAMP := $(BUILD)/mpi-$(MPI).stamp
$(MPI_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/mpi-*.stamp
	@touch $@
$(BUILD)/src/cli_mpi.o $(BUILD)/tests/test_mpi.o: $(MPI_STAMP)

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(CU_OBJS)
CLI_OBJS  := $(CLI_SRCS:%.c=$(BUILD)/%.o)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/%.o)

.PHONY: all test test-run deps fixtures clean gpu-check asan fuzz fuzz-smoke valgrind install bench-cpu bench-kernels
all: $(BUILD)/gpt2 $(BUILD)/libgpt2.a $(BUILD)/libgpt2.so

# Which build (CUDA=0 or 1) the objects in $(BUILD) were built for: switching rebuilds them.
CUDA_STAMP := $(BUILD)/cuda-$(CUDA).stamp
$(CUDA_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/cuda-*.stamp
	@touch $@

$(BUILD)/%.o: %.c $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The CPU engine's inner loops want the full vectoriser (no fast-math: results stay IEEE).
$(BUILD)/src/ops_cpu.o: OPT = -O3

# The CPU benchmark driver: memory bandwidth and the decode-step matmuls (see bench/bench_cpu.c).
bench-cpu: $(BUILD)/bench_cpu
$(BUILD)/bench_cpu: $(BUILD)/bench/bench_cpu.o $(BUILD)/libgpt2_internal.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench/bench_cpu.o: OPT = -O3

# The public names: every GPT2_API declaration of include/gpt2.h.
$(BUILD)/gpt2.syms: include/gpt2.h
	@mkdir -p $(dir $@)
	sed -n 's/^GPT2_API .*[ *]\(gpt2_[a-z0-9_]*\)(.*/\1/p' $< | sort -u > $@
$(BUILD)/gpt2.map: $(BUILD)/gpt2.syms
	{ echo '{ global:'; sed 's/$$/;/' $<; echo 'local: *; };'; } > $@

# One relocatable object in which every symbol but the public ones is local, so that the archive
# exports nothing else (kernel launchers, ops) into a program that links it.
$(BUILD)/libgpt2.a: $(LIB_OBJS) $(BUILD)/gpt2.syms $(CUDA_STAMP)
	@rm -f $@ $(BUILD)/libgpt2.o
	$(LD) -r -o $(BUILD)/libgpt2.o $(LIB_OBJS)
	objcopy --keep-global-symbols=$(BUILD)/gpt2.syms $(BUILD)/libgpt2.o
	ar rcs $@ $(BUILD)/libgpt2.o

$(BUILD)/libgpt2.so: $(LIB_OBJS) $(BUILD)/gpt2.map $(CUDA_STAMP)
	$(CC) -shared $(LDFLAGS) -Wl,-soname,libgpt2.so -Wl,--version-script=$(BUILD)/gpt2.map -o $@ $(LIB_OBJS) $(LDLIBS)

# Every library object with its symbols global, for the tests of internal modules.
$(BUILD)/libgpt2_internal.a: $(LIB_OBJS) $(CUDA_STAMP)
	@rm -f $@
	ar rcs $@ $(LIB_OBJS)

$(BUILD)/gpt2: $(CLI_OBJS) $(CLI_SUPPORT_OBJS) $(BUILD)/libgpt2.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(CLI_SUPPORT_OBJS) $(BUILD)/libgpt2.a $(LDLIBS) $(MHD_LIBS) $(MPI_LIBS)

# Whether cli_serve.o was built with libmicrohttpd: switching rebuilds it.
MHD_STAMP := $(BUILD)/mhd-$(MHD).stamp
$(MHD_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/mhd-*.stamp
	@touch $@
$(BUILD)/src/cli_serve.o: $(MHD_STAMP)
$(BUILD)/src/cli_serve.o: CFLAGS += $(if $(filter 1,$(MHD)),-DGPT2_HAVE_MHD $(shell pkg-config --cflags libmicrohttpd))

$(BUILD)/test_gpt2: $(TEST_OBJS) $(BUILD)/libgpt2_internal.a $(BUILD)/src/serve_req.o
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJS) $(BUILD)/src/serve_req.o $(BUILD)/libgpt2_internal.a $(LDLIBS) $(TEST_LDLIBS)

# make install PREFIX=DIR: include/gpt2.h, libgpt2.a, libgpt2.so and a pkg-config file.
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
PC_PRIVATE := -lgomp -lm -lpthread $(CUDA_LIBS)
$(BUILD)/gpt2.pc: Makefile
	@mkdir -p $(dir $@)
	printf '%s\n' 'prefix=$(PREFIX)' 'includedir=$${prefix}/include' 'libdir=$(LIBDIR)' '' \
	    'Name: gpt2' 'Description: GPT-2 inference engine (CPU and CUDA)' 'Version: 0.1.0' \
	    'Requires.private: jansson libpcre2-8' 'Cflags: -I$${includedir}' 'Libs: -L$${libdir} -lgpt2' \
	    'Libs.private: $(PC_PRIVATE)' > $@
install: $(BUILD)/libgpt2.a $(BUILD)/libgpt2.so
	@rm -f $(BUILD)/gpt2.pc
	$(MAKE) --no-print-directory $(BUILD)/gpt2.pc PREFIX=$(PREFIX) LIBDIR=$(LIBDIR)
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/gpt2.h $(DESTDIR)$(PREFIX)/include/gpt2.h
	install -m 644 $(BUILD)/libgpt2.a $(DESTDIR)$(LIBDIR)/libgpt2.a
	install -m 755 $(BUILD)/libgpt2.so $(DESTDIR)$(LIBDIR)/libgpt2.so
	install -m 644 $(BUILD)/gpt2.pc $(DESTDIR)$(LIBDIR)/pkgconfig/gpt2.pc

# The tests find the fixtures and the CLI relative to the repository root.
TEST_ARGS ?=
# Criterion's own summary does not count skips, so a closing line from its JSON report does.
# The library is installed into $(BUILD)/prefix first: test_library builds the README's example against it.
TEST_PREFIX = $(abspath $(BUILD))/prefix
# `make test` is the README's test command, so on a fresh machine it sets the machine up first: when a
# build dependency is missing it runs `make deps`, then the tests in a new make (which then sees
# libmicrohttpd and mpicc, found when the Makefile is read).
DEPS_OK := $(shell pkg-config --exists criterion jansson libpcre2-8 libmicrohttpd 2>/dev/null && \
                   command -v mpicc >/dev/null 2>&1 && echo 1)
ifeq ($(DEPS_OK),1)
test: test-run
else
test:
	@echo "make test: build dependencies missing (Criterion, jansson, PCRE2, libmicrohttpd or Open MPI): make deps first"
	$(MAKE) deps
	$(MAKE) test-run
endif
test-run: $(BUILD)/gpt2 $(BUILD)/test_gpt2 $(BUILD)/libgpt2.a $(BUILD)/libgpt2.so
	@rm -rf $(TEST_PREFIX)
	@$(MAKE) --no-print-directory install PREFIX=$(TEST_PREFIX) >/dev/null
	GPT2_BIN=$(BUILD)/gpt2 GPT2_LIB_DIR=$(BUILD) GPT2_PREFIX=$(TEST_PREFIX) GPT2_CC="$(CC) $(SAN)" \
	    $(BUILD)/test_gpt2 --json=$(BUILD)/test-report.json $(TEST_ARGS); rc=$$?; \
	python3 tools/test_summary.py $(BUILD)/test-report.json && exit $$rc

# Per-kernel microbenchmarks on the GPU (bench/bench_kernels.c): copy bandwidth, GEMV vs cuBLAS and its
# crossover, the decode step's breakdown. Without a GPU it says so and exits 0.
BENCH_ARGS ?=
ifeq ($(CUDA),1)
$(BUILD)/bench_kernels: $(BUILD)/bench/bench_kernels.o $(BUILD)/libgpt2_internal.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
bench-kernels: $(BUILD)/bench_kernels
	$(BUILD)/bench_kernels --commit "$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" $(BENCH_ARGS)
else
bench-kernels:
	@echo "bench-kernels: built without CUDA (nvcc not found, or CUDA=0): nothing to measure"
endif
# Benchmarks that are programs of their own (timing lives in bench/, never in tests/).
.PHONY: bench-tokenizer
bench-tokenizer: $(BUILD)/bench_tokenizer
	$(BUILD)/bench_tokenizer
$(BUILD)/bench_tokenizer: bench/bench_tokenizer.c $(BUILD)/libgpt2.a
	$(CC) -std=c11 $(OPT) -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude $(LDFLAGS) -o $@ $< $(BUILD)/libgpt2.a $(LDLIBS)

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
# sources a target needs besides the library (the server's request parser is the CLI's, not the library's)
build-fuzz/fuzz_serve: FUZZ_EXTRA = src/serve_req.c
build-fuzz/fuzz_serve: src/serve_req.c
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB) $(wildcard src/*.h)
	@mkdir -p build-fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_LIB) $(FUZZ_EXTRA) -ljansson -lpcre2-8 -lm
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
	    build-essential clang libclang-rt-14-dev libcriterion-dev libjansson-dev libpcre2-dev pkgconf python3 \
	    libopenmpi-dev openmpi-bin libmicrohttpd-dev
	@# optional: lets the loader tests compare with the reference safetensors reader (they skip without it)
	-python3 -m pip install -q safetensors numpy 2>/dev/null
	@# the official OpenAI client: the `gpt2 serve` tests talk to the server through it (they skip without it)
	-python3 -m pip install -q openai 2>/dev/null

# On a machine with an NVIDIA GPU: build for it, run everything, sanitizers, compare with PyTorch.
gpu-check:
	bash tools/gpu_check.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-gpu

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(BUILD)/bench/bench_cpu.d $(BUILD)/bench/bench_kernels.d
