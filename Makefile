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

# make demo PROMPT="a penguin" SEED=7: the bundled demo model, on the CPU.
PROMPT ?= a red apple
SEED ?= 1
DEMO_OUT ?= demo.png

# make demo-control CONTROL_SHAPE=star CONTROL_PROMPT="a yellow star": the edges of a drawn shape
# (tools/train/shapes/, or CONTROL_IMAGE=any.png) -> pictures that follow them, by the demo ControlNet.
CONTROLNET ?= models/gosd-emoji-canny
CONTROL_SHAPE ?= heart
CONTROL_IMAGE ?= tools/train/shapes/$(CONTROL_SHAPE).png
CONTROL_PROMPT ?= a red heart
CONTROL_OUT ?= demo-control.png

.PHONY: all deps lib go test sanitize lint format bench demo demo-control clean

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

demo-control:
	@test -f $(CONTROLNET)/config.json || { echo "demo-control: no ControlNet at $(CONTROLNET) yet: train and export it first," \
		"make -C tools/train canny controlnet export-controlnet (tools/train/README.md, \"The Canny ControlNet\")" >&2; exit 1; }
	@test -f $(CONTROL_IMAGE) || { echo "demo-control: control image $(CONTROL_IMAGE) not found" >&2; exit 1; }
	@$(MAKE) --no-print-directory lib
	$(GO) build -o $(BUILD)/sdcli ./cmd/sdcli
	$(BUILD)/sdcli txt2img --lib $(BUILD) --device cpu -m models/gosd-emoji --controlnet $(CONTROLNET) \
		--control-image $(CONTROL_IMAGE) --control-preprocess canny -p "$(CONTROL_PROMPT)" --seed $(SEED) --batch 4 -o $(CONTROL_OUT)

clean:
	rm -rf $(BUILD) $(BUILD).cmake.log $(SANITIZE_BUILD) $(SANITIZE_BUILD).cmake.log
