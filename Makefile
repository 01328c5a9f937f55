# gosd: `make` builds the runtime libraries and the Go code, `make test` runs every C and
# Go test, `make sanitize` the C tests under ASan and UBSan, `make demo` draws a picture on
# the CPU. Missing build tools (cmake, ninja, a C compiler) are installed with apt-get on
# Debian/Ubuntu, and a Go toolchain is fetched from the Go module proxy when none new enough
# is installed (tools/ensure-go.sh).

SHELL := /bin/bash
.DEFAULT_GOAL := all

BUILD ?= build
# GO: the go command; by default found (or fetched) once, when a recipe first needs it.
ifeq ($(origin GO),undefined)
GO = $(eval GO := $$(shell tools/ensure-go.sh))$(or $(GO),$(error no Go toolchain, see above))
endif
GOFMT = $(if $(findstring /,$(GO)),$(dir $(GO))gofmt,gofmt)
# SD_CUDA=AUTO builds libsd-cuda too when a CUDA toolkit is found (ON requires it, OFF skips).
SD_CUDA ?= AUTO
CMAKE_FLAGS ?=

C_SOURCES = $(shell git ls-files 'csrc/*.c' 'csrc/*.h' 'cuda/*.cu' 'cuda/*.cuh' 2>/dev/null)

# make demo PROMPT="a slice of pizza" SEED=7: the bundled demo model, on the CPU.
PROMPT ?= a red apple
SEED ?= 1
DEMO_OUT ?= demo.png

.PHONY: all deps lib go test sanitize lint format bench demo clean

all: lib go

deps:
	@tools/ensure-build-tools.sh

lib: deps
	@cmake -S . -B $(BUILD) -G Ninja -DSD_CUDA=$(SD_CUDA) $(CMAKE_FLAGS) >$(BUILD).cmake.log 2>&1 \
		|| { cat $(BUILD).cmake.log; exit 1; }
	@cmake --build $(BUILD)

go:
	$(GO) build ./...

test: lib
	ctest --test-dir $(BUILD) --output-on-failure
	$(GO) vet ./...
	@unformatted=$$($(GOFMT) -l $$(git ls-files '*.go')); \
		if [[ -n $$unformatted ]]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) test ./...

# The CPU library and C tests under AddressSanitizer (leaks included) and UBSan.
SANITIZE_BUILD ?= build-asan
sanitize: deps
	@cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DSD_CUDA=OFF -DSD_SANITIZE=ON \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo >$(SANITIZE_BUILD).cmake.log 2>&1 \
		|| { cat $(SANITIZE_BUILD).cmake.log; exit 1; }
	@cmake --build $(SANITIZE_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --test-dir $(SANITIZE_BUILD) --output-on-failure

# Formatting of the C/CUDA sources (clang-format) and the Go vet/fmt checks.
lint: deps
	@tools/ensure-build-tools.sh clang-format
	clang-format --dry-run --Werror $(C_SOURCES)
	$(GO) vet ./...
	@test -z "$$($(GOFMT) -l $$(git ls-files '*.go'))"

format:
	clang-format -i $(C_SOURCES)
	$(GOFMT) -w $$(git ls-files '*.go')

# Op throughput on this CPU (GFLOP/s).
bench: lib
	$(BUILD)/csrc/tests/bench_ops

demo: lib
	$(GO) build -o $(BUILD)/sdcli ./cmd/sdcli
	$(BUILD)/sdcli txt2img --lib $(BUILD) --device cpu -p "$(PROMPT)" --seed $(SEED) --batch 4 -o $(DEMO_OUT)

clean:
	rm -rf $(BUILD) $(BUILD).cmake.log $(SANITIZE_BUILD) $(SANITIZE_BUILD).cmake.log
