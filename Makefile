# trackd — see README.md. Every target works on a fresh machine with Go.
GO      ?= go
# go.mod asks for Go 1.27.3: 1.26.8's net/http, crypto/tls and crypto/x509 have
# known vulnerabilities (govulncheck). With GOTOOLCHAIN=auto a machine whose Go
# is older fetches go1.27.3 through the module proxy on first use (~80 MB, once);
# Go's own default on some machines is "local", which would refuse instead.
export GOTOOLCHAIN ?= auto
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/trackd/trackd/agent.Version=$(VERSION)
BIN     := bin
CONFIG  ?= config.example.yaml
FUZZTIME ?= 15s

.PHONY: all build run test test-gomaxprocs1 fuzz bench bench-load demo fmt fmt-check vulncheck clean test-reliability

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/trackd ./cmd/trackd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/trackd-bench ./cmd/trackd-bench

## run: trackd in the foreground on the example config (spool under ./data/).
run: build
	$(BIN)/trackd run -config $(CONFIG)

## test: vet, then every test with the race detector.
test:
	$(GO) vet ./...
	$(GO) vet -tags reliability ./test/reliability/
	$(GO) test -race -count=1 ./...

## test-gomaxprocs1: the suite once more on one P, to shake out ordering assumptions.
test-gomaxprocs1:
	GOMAXPROCS=1 $(GO) test -count=1 ./...

## fuzz: a short run of every fuzz target (FUZZTIME each); corpora live in testdata/.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzPrepare$$' -fuzztime $(FUZZTIME) ./agent/event
	$(GO) test -run '^$$' -fuzz '^FuzzTimestamp$$' -fuzztime $(FUZZTIME) ./agent/event
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./agent/config
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZTIME) ./spool
	# Whole spool files are large inputs: minimizing each new one fully would eat the run.
	$(GO) test -run '^$$' -fuzz '^FuzzSpoolFile$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./spool

## bench: micro-benchmarks, then the load tool against a real trackd.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./spool ./agent/event ./forwarder
	$(BIN)/trackd-bench ingest -duration 10s
	$(BIN)/trackd-bench forward -events 20000

demo: build
	bash packaging/demo.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

## fmt-check: fails when gofmt would change a file.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## test-reliability: the fault, load and hostile-input suite, CI-sized (~2 min on 2 cores).
## The soak: go test -race -tags reliability -count=1 -timeout 0 -v -run TestSoak ./test/reliability/ -args -profile=long -soak=10m -report=soak.md
test-reliability:
	$(GO) test -race -tags reliability -count=1 -timeout 10m ./test/reliability/ -args -profile=short

## vulncheck: govulncheck ./... against a vulnerability database built locally
## from the golang.org/x/vulndb module (no network beyond the module proxy).
vulncheck:
	bash .ci/vulncheck

clean:
	rm -rf $(BIN) data .demo
