# dsocr: one plain Makefile.
#   make            build ./dsocr (CPU; CUDA too when nvcc is found, CUDA=0 turns it off, CUDA_ARCH picks targets)
#   make test       build and run every test (C unit tests, fuzz corpus replays, Python reference tests)
#   make fuzz       build libFuzzer targets with clang (build/fuzz/fuzz_*)
#   make bench      build the benchmarks (build/bench/*)
#   make deps       install the Debian packages the build and tests need (as root)
#   make run        install what is missing, build, and serve the model in $DSOCR_MODEL (or ./models/deepseek-ocr)

CC      ?= cc
PYTHON  ?= /usr/bin/python3
OPT     ?= -O2
CFLAGS  += -std=c17 $(OPT) -g -Wall -Wextra -Werror -Wno-unused-parameter -Wno-format-truncation -D_GNU_SOURCE -pthread -fopenmp \
           -Iinclude -Isrc
LDLIBS  += -lmicrohttpd -lcurl -lcrypto -lcjson -lpng -ljpeg -lwebp -lgif -ltiff -lpcre2-8 -lopenblas -lm -lpthread -fopenmp
BUILD   := build

NVCC    ?= $(shell command -v nvcc 2>/dev/null)
CUDA    ?= $(if $(NVCC),1,0)
CUDA_ARCH ?= 75 80 86 89 90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

HDRS     := $(wildcard include/*.h src/*.h src/*/*.h)
LIB_SRC  := $(wildcard src/*.c src/cpu/*.c src/serve/*.c)
CPU_LIB_SRC := $(LIB_SRC) src/nocuda/cuda_stub.c
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_SRC  := $(wildcard src/cli/*.c)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
CU_SRC   := $(wildcard src/cuda/*.cu)
CPU_CFLAGS := $(CFLAGS)
CPU_LDLIBS := $(LDLIBS)
ifeq ($(CUDA),1)
CFLAGS   += -DDSOCR_CUDA=1
LIB_OBJ  += $(CU_SRC:%.cu=$(BUILD)/%.o)
LDLIBS   += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcublas -lcublasLt -lcudart -lstdc++
NVFLAGS  := -O3 -std=c++17 -Iinclude -Isrc -Xcompiler -Wall,-Werror -DDSOCR_CUDA=1 \
            $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a))
else
LIB_OBJ  += $(BUILD)/src/nocuda/cuda_stub.o
endif

TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TOOL_SRC   := $(wildcard tests/tools/*.c)
TOOL_BIN   := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/tools/%)
FUZZ_SRC   := $(wildcard fuzz/fuzz_*.c)
REPLAY_BIN := $(FUZZ_SRC:fuzz/fuzz_%.c=$(BUILD)/fuzz/replay_%)
FUZZ_BIN   := $(FUZZ_SRC:fuzz/fuzz_%.c=$(BUILD)/fuzz/fuzz_%)
BENCH_SRC  := $(wildcard bench/bench_*.c)
BENCH_BIN  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all test test-bins fuzz bench deps run clean format
all: dsocr

dsocr: $(CLI_OBJ) $(BUILD)/libdsocr.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libdsocr.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cu $(HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c tests/check.h $(BUILD)/libdsocr.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libdsocr.a $(LDLIBS)

$(BUILD)/tests/tools/%: tests/tools/%.c $(BUILD)/libdsocr.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libdsocr.a $(LDLIBS)

# Corpus replays run under AddressSanitizer and UBSan with gcc, against a sanitized CPU-only copy of the
# library; the libFuzzer builds need clang.
SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all
ASAN_OBJ := $(CPU_LIB_SRC:%.c=$(BUILD)/asan/%.o)
$(BUILD)/asan/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CPU_CFLAGS) -O1 $(SAN) -c -o $@ $<

$(BUILD)/asan/libdsocr.a: $(ASAN_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/replay_%: fuzz/fuzz_%.c fuzz/replay.c $(BUILD)/asan/libdsocr.a
	@mkdir -p $(dir $@)
	$(CC) $(CPU_CFLAGS) -O1 $(SAN) -o $@ $< fuzz/replay.c $(BUILD)/asan/libdsocr.a $(CPU_LDLIBS)

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c $(CPU_LIB_SRC)
	@mkdir -p $(dir $@)
	clang $(filter-out -Werror,$(CPU_CFLAGS)) -O1 -fsanitize=fuzzer,address,undefined -o $@ $< $(CPU_LIB_SRC) $(CPU_LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libdsocr.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libdsocr.a $(LDLIBS)

test: deps
	$(MAKE) dsocr test-bins
	tests/run.sh

test-bins: $(TEST_BIN) $(TOOL_BIN) $(REPLAY_BIN) $(BUILD)/tests/header_c99.o

# The public header on its own, as strict C99 (no GNU extensions, no other headers).
$(BUILD)/tests/header_c99.o: include/dsocr.h
	@mkdir -p $(dir $@)
	$(CC) -x c -std=c99 -pedantic-errors -Wall -Wextra -Werror -c -o $@ include/dsocr.h

# GPU tests (need a CUDA GPU, so not part of `make test`): every tests/cuda/*.c, run one after another.
CUDA_TEST_BIN := $(patsubst tests/cuda/%.c,$(BUILD)/tests/cuda/%,$(wildcard tests/cuda/*.c))
.PHONY: test-cuda test-cuda-bins
test-cuda-bins: $(CUDA_TEST_BIN)
test-cuda: test-cuda-bins
	@set -e; for t in $(CUDA_TEST_BIN); do echo "== $$t"; $$t; done

fuzz: $(FUZZ_BIN)
bench: dsocr $(BENCH_BIN)

deps:
	scripts/install-deps.sh

run: deps
	$(MAKE) dsocr
	scripts/run.sh

# make install PREFIX=/usr/local (default) [DESTDIR=staging]: the dsocr binary, which needs no other file
# (models live in the per-user cache `dsocr pull` fills, or wherever --model / $DSOCR_MODEL point).
PREFIX  ?= /usr/local
.PHONY: install uninstall
install: dsocr
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 dsocr $(DESTDIR)$(PREFIX)/bin/dsocr

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/dsocr

format:
	clang-format -i $(wildcard src/*.c src/*.h src/*/*.c src/*/*.h include/*.h tests/*.c tests/*.h fuzz/*.c bench/*.c)

clean:
	rm -rf $(BUILD) dsocr
