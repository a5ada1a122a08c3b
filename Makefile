# ecsmesh: the README's two commands are `make demo` and `make test`.

# Builds live outside the clone so that CI runs and sessions on one machine
# reuse them (the AWS SDK crates take minutes to build).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ecsmesh/target
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo
VENV ?= $(HOME)/.cache/ecsmesh/venv
export ECSMESH_VENV := $(VENV)
FUZZ_SECONDS ?= 60

.PHONY: all deps test lint deny images fmt bench bench-dtab bench-proxy bench-control bench-profile bench-ab fuzz demo demo-down clean-venv

all: test

## deps: install what the tests need (Debian packages, Python tools) from deps/.
deps:
	bash scripts/deps.sh

## test: everything the tests need, then the whole test suite.
# The binaries for the Python suites are built with the same package set as
# the demo's debug build (scripts/demo.sh): one build, not two feature sets.
test: deps
	$(VENV)/bin/python -m pytest tests/harness -q
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	$(CARGO) build -p ecsmesh-controller -p ecsmesh-agent -p ecsmesh-cli -p ecsmesh-hello-world
	ECSMESH_BIN_DIR=$(CARGO_TARGET_DIR)/debug $(VENV)/bin/python -m pytest tests/grpc -q
	ECSMESH_BIN_DIR=$(CARGO_TARGET_DIR)/debug $(VENV)/bin/python -m pytest tests/protocols -q
	DEMO_PROFILE=debug $(VENV)/bin/python -m pytest tests/e2e -q
	IMAGES_PROFILE=dev IMAGES_DIR=$(CARGO_TARGET_DIR)/images-dev bash scripts/images.sh
	IMAGES_DIR=$(CARGO_TARGET_DIR)/images-dev $(VENV)/bin/python -m pytest tests/images -q

## lint: formatting check and clippy with warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## images: the agent, controller and helloworld OCI images without Docker (scripts/images.sh; push with `bash scripts/images.sh push REGISTRY`).
images: deps
	bash scripts/images.sh

## deny: cargo-deny's supply-chain checks (deny.toml): licenses, duplicate versions, sources, advisories.
deny:
	bash scripts/deny.sh

fmt:
	$(CARGO) fmt --all

## bench-proxy: the agent (one hop, two, two with mTLS, under a delta every 100 ms) against a direct connection, haproxy (one hop and two) and nginx.
bench-proxy:
	bash bench/proxy.sh

## bench-control: the controller with 10,000 ECS tasks (moto) and 100, then 1,000 simulated agents; then ECS events: event → all ACK, steady ECS+EC2 calls of 1 vs 3 replicas (BENCH_STEADY_WINDOW=600 for the 10-minute window).
bench-control:
	bash bench/control.sh

## bench: deps, then bench-proxy and bench-control; prints both tables and the wall time.
bench:
	bash bench/all.sh

## bench-profile: perf profile of the agent under wrk load (bench/results/profile-*.txt).
bench-profile:
	bash bench/profile.sh

## bench-ab: two agent binaries side by side under alternating wrk runs (make bench-ab A=path B=path).
bench-ab:
	bash bench/ab.sh $(A) $(B)

## bench-dtab: criterion benchmarks of dtab parsing and delegation.
bench-dtab:
	$(CARGO) bench -p ecsmesh-dtab --bench dtab

## fuzz: run the dtab parser fuzz target for FUZZ_SECONDS (needs cargo-fuzz).
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

## demo: the whole mesh on one machine (moto's ECS, the controller, two agents, hello/world);
## stays up until Ctrl-C. DEMO_NO_WAIT=1 runs the walkthrough, tears down and exits.
## TLS=1 (make demo TLS=1) puts TLS on every hop: agent to agent (mTLS), agents and ecsmeshctl
## to the controller, with certificates from `ecsmeshctl certs init`.
demo:
	bash scripts/demo.sh

## demo-down: stop a running demo from another shell.
demo-down:
	bash scripts/demo.sh down
