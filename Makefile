# loom — one static binary for every role. `make help` lists the targets.
GO      ?= go
BIN     ?= bin/loom
PKGS    ?= ./...
BENCHTIME ?= 1s
# The commit 'loom version' names, for builds where Go records no VCS stamp
# (GOFLAGS=-buildvcs=false, or a tree without git).
COMMIT  ?= $(shell git describe --always --dirty --abbrev=12 2>/dev/null)

# The Go standard library's source: the corpus of make demo-gpt, present
# wherever the Go that builds loom is.
GOSRC   ?= $(shell $(GO) env GOROOT)/src

.PHONY: help build test integ bench bench-link lint demo demo-bf16 demo-gpt clean test-deploy

help:
	@echo "make demo      train the MNIST MLP example end to end (embedded default)"
	@echo "make demo-gpt  tokenize the Go standard library, train a small GPT on it (~7 min on 2 cores), sample from it"
	@echo "make test      unit and multi-process tests with the race detector (< 15 min on 2 cores)"
	@echo "make integ     every test plus the slower multi-process suites (tag integ; no race detector)"
	@echo "make test-deploy  deploy/compose.yaml end to end in Docker (FROM scratch image, 3+3, a worker killed)"
	@echo "make bench     kernel and training-step benchmarks"
	@echo "make bench-link  data parallelism vs pipeline stages over 200 Mbit/s, 5 ms links (root: network namespaces, tc)"
	@echo "make lint      gofmt check and go vet"
	@echo "make build     build $(BIN)"

build:
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.buildCommit=$(COMMIT)" -o $(BIN) ./cmd/loom

demo: build
	$(BIN) launch examples/mnist-mlp.yaml --overwrite

demo-bf16: build
	$(BIN) launch examples/mnist-mlp-bf16.yaml --overwrite

# The token shards are prepared once (datasets/ is not tracked).
datasets/gosrc/dataset.json:
	$(MAKE) build
	$(BIN) data prepare $(GOSRC) --include '*.go' --exclude testdata --out datasets/gosrc --overwrite

demo-gpt: build datasets/gosrc/dataset.json
	$(BIN) launch examples/gpt-gosrc.yaml --overwrite
	$(BIN) generate checkpoints/gpt-gosrc/step-00000300 --prompt 'func (s *Server) Close() error {' --max-tokens 120 --temperature 0.8 --top-k 40 --seed 2

test:
	$(GO) test -race -timeout 12m $(PKGS)
	# A count, not a duration, and one worker: a timed run can end with a
	# spurious "context deadline exceeded" on a loaded machine.
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime 60000x -parallel 1 ./collective/

integ:
	$(GO) test -tags integ -timeout 40m $(PKGS)

# deploy/compose.yaml end to end in Docker (3 coordinators, 3 workers, a
# worker container killed, >= 98% accuracy, exactly-once ledgers).
test-deploy:
	scripts/test_deploy.sh

# Issue 19's constrained-link figure: 4 workers in network namespaces,
# links shaped with tc tbf, latency from a user-space relay
# (scripts/linkbench documents the harness). Needs root; ~6 min.
LINKBENCH ?= -modes dp,auto -rounds 1
bench-link: build
	$(GO) run ./scripts/linkbench -loom $(BIN) $(LINKBENCH)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./device/cpu ./train ./checkpoint
	$(GO) test -run '^$$' -bench AllReduceTCP -benchmem -benchtime 20x ./collective

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
