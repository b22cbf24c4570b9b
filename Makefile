# upgrader: `make demo` runs the main job on a local cluster; `make test` passes the tests.
SHELL := /bin/bash
GO ?= go
VERSION ?= 0.1.0-dev
LDFLAGS := -X github.com/upgrader-dev/upgrader/internal/buildinfo.Version=$(VERSION)
# Integration tests start real Consul clusters; the whole suite stays well inside CI's 90 minutes.
TEST_TIMEOUT ?= 40m

.PHONY: build testbin test unit vet demo bench cluster mirror clean

build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/upgrader ./cmd/upgrader

# Consul 1.16.0 and 1.16.1 built from the Go module proxy into ~/.cache/upgrader/testbin (skips what exists).
testbin:
	scripts/testbin.sh

vet:
	$(GO) vet ./...

# Unit tests only (no Consul processes).
unit:
	$(GO) test -short -count=1 ./...

# The README's test command: unit + integration tests on real Consul processes.
test: testbin vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

demo: testbin
	$(GO) run ./scripts/demo

bench: testbin
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 1x -timeout $(TEST_TIMEOUT) ./...

cluster: testbin
	scripts/cluster.sh up

# A signed local mirror of the cached test binaries, served on loopback (prints the release {} block).
mirror: testbin
	$(GO) run ./scripts/mirror -root .demo/mirror -serve 127.0.0.1:8600

clean:
	rm -rf bin .demo
