# mdn-serve: `make install` once, then `make train export serve`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLIENTS_VENV ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
NODE_DIR := tests/clients/node
# Node's grpc-js is a second-language protocol check, installed only where node exists.
NODE_STAMP := $(if $(shell command -v node),$(NODE_DIR)/node_modules/.installed)
MODELS ?= models
RUNS ?= runs

.PHONY: install install-cuda train export serve loadtest bench test lint proto lock clean help
LOADTEST_ARGS ?= --model two_link_arm --rpc predict --batch 1 --concurrency 16 --duration 10
PROTO_OUT := server/mdn_serve/_proto
PROTOS := $(wildcard proto/mdn/v1/*.proto)

help:
	@echo "make install   build $(VENV) from requirements.lock (server, trainer and dev tools)"
	@echo "make train     train the default MDNs and least-squares baselines into $(RUNS)/"
	@echo "make export    export ONNX models to $(MODELS)/<name>/<version>/, evaluate them, plot"
	@echo "make serve     serve $(MODELS)/ over gRPC on :8001 and HTTP on :8000, Prometheus metrics on :8002"
	@echo "make loadtest  load-test a running server (LOADTEST_ARGS=...)"
	@echo "make bench     benchmark against the in-process and no-op ceilings -> $(RUNS)/bench/"
	@echo "make test      lint, type-check and run the test suite"
	@echo "make proto     regenerate $(PROTO_OUT) from proto/"
	@echo "make lint      ruff + mypy"
	@echo "make clean     remove $(VENV), $(RUNS)/ and caches (keeps $(MODELS)/)"

install: $(STAMP) $(CLIENTS_STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml requirements.lock
	@echo "[1/3] $(VENV): server, trainer (CPU torch) and dev tools, pinned by requirements.lock (1-2 min)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[train,dev,tracing]"
	@touch $@

# Third-party protocol clients (tritonclient needs protobuf<7): their own environment.
$(CLIENTS_STAMP): requirements-clients.lock
	@echo "[2/3] $(CLIENTS_VENV): third-party protocol clients for the tests (tritonclient, kserve; under a minute)"
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -r requirements-clients.lock
	@touch $@

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@echo "[3/3] $(NODE_DIR): Node's gRPC client for the tests (seconds)"
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# onnxruntime-gpu and onnxruntime both provide the `onnxruntime` module: swap one for the other.
install-cuda: $(STAMP)
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[cuda]"

train: $(STAMP)
	$(BIN)/mdn-train --all --runs $(RUNS)

export: $(STAMP)
	$(BIN)/mdn-export --all --runs $(RUNS) --models $(MODELS)

serve: $(STAMP)
	$(BIN)/mdn-serve --model-repository $(MODELS)

# Against a running `make serve` (or --target elsewhere): make loadtest LOADTEST_ARGS="--rpc modes --batch 64"
loadtest: $(STAMP)
	$(BIN)/mdn-loadtest $(LOADTEST_ARGS)

# Our server against in-process ONNX Runtime and a no-op gRPC server, same run: runs/bench/report.md
bench: $(STAMP)
	$(BIN)/mdn-bench --models $(MODELS) --out $(RUNS)/bench $(BENCH_ARGS)

# Generated code lives in $(PROTO_OUT) only; tests/test_proto.py fails if it drifts from proto/.
proto: $(STAMP)
	$(BIN)/python -m mdn_serve.protogen $(PROTO_OUT)

test: install
	$(MAKE) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check core server trainer tests
	$(BIN)/ruff format --check core server trainer tests
	$(BIN)/mypy

# Pin every installed package to the versions resolved now (run after changing pyproject.toml).
lock: $(STAMP)
	@echo "# Exact versions for \`make install\` (pip constraints). Regenerate with \`make lock\`." > requirements.lock
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' >> requirements.lock

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) $(NODE_DIR)/node_modules $(RUNS) .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
