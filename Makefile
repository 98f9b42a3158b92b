# MysteryBox. `make run` starts a one-node dev region; `make test` runs every test.
GO        ?= go
BIN       := bin
PROTO_SRC := api/mysteryboxv1/mysterybox.proto fsm/fsmpb/fsm.proto

.PHONY: all build run test lint proto proto-check clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/mysteryboxd ./cmd/mysteryboxd
	$(GO) build -o $(BIN)/mbox ./cmd/mbox

run: build
	./scripts/dev.sh

test: build
	$(GO) test -race -timeout 9m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

proto:
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(BIN)/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc
	protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(BIN)/protoc-gen-go-grpc \
	  -I api/mysteryboxv1 -I fsm/fsmpb \
	  --go_out=paths=source_relative:api/mysteryboxv1 --go-grpc_out=paths=source_relative:api/mysteryboxv1 \
	  api/mysteryboxv1/mysterybox.proto
	protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go \
	  -I api/mysteryboxv1 -I fsm/fsmpb \
	  --go_out=paths=source_relative,Mmysterybox.proto=github.com/mysterybox/mysterybox/api/mysteryboxv1:fsm/fsmpb \
	  fsm/fsmpb/fsm.proto
	protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(BIN)/protoc-gen-go-grpc \
	  -I api/mysteryboxv1 -I api/nodepb \
	  --go_out=paths=source_relative,Mmysterybox.proto=github.com/mysterybox/mysterybox/api/mysteryboxv1:api/nodepb \
	  --go-grpc_out=paths=source_relative,Mmysterybox.proto=github.com/mysterybox/mysterybox/api/mysteryboxv1:api/nodepb \
	  api/nodepb/node.proto

# Fails when the committed generated code does not match the .proto files.
proto-check: proto
	@git diff --exit-code -- api/mysteryboxv1 api/nodepb fsm/fsmpb || { echo "generated code is stale: run make proto"; exit 1; }

# A chaos campaign against real processes (root: network namespaces; else
# loopback proxies), checked for linearizability, lost writes, replica
# divergence, plaintext at rest and crashes. See docs/reliability.md.
# make chaos DURATION=30m NODES=5 SEED=123 FAULTS=all CHAOS_ARGS="--raft-snapshot-threshold 2048"
# (CHAOS_ARGS: more mbchaos flags, see bin/mbchaos -h)
DURATION ?= 5m
NODES    ?= 3
.PHONY: chaos
chaos: build
	./scripts/chaos/run.sh --duration $(DURATION) --nodes $(NODES) $(if $(SEED),--seed $(SEED)) $(if $(FAULTS),--faults $(FAULTS)) $(if $(CHAOS_ARGS),-- $(CHAOS_ARGS))

clean:
	rm -rf $(BIN)

# Side-by-side benchmark of a 3-node region against a 3-member etcd v3.6.4
# cluster on this machine (not part of CI; builds etcd once into a cache
# folder outside the repository). BENCH_QUICK=1: smoke run, ~1 min of load.
# BENCH_ARGS passes flags to scripts/bench (e.g. --profile DIR, --json FILE).
.PHONY: bench
bench: build
	cd scripts/bench && $(GO) run . --repo ../.. --etcd "$$(./build-etcd.sh)" $(BENCH_ARGS)
