# pixelgate: `make serve` and `make test` set everything up on first use.
# Every target is idempotent; stamps under .venv/ record what is done.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
# On a GPU host, pre-install your CUDA build of torch in the venv (or set TORCH=torch).
TORCH   ?= torch==2.13.0
HOST    ?= 127.0.0.1
PORT    ?= 50051
PROMPT  ?= a lighthouse on a cliff at dusk
OUT     ?= image.png
CERTS   := certs/dev
PROTOS  := $(wildcard protos/pixelgate/v1/*.proto)
STUBS   := protos/pixelgate/v1/descriptor_set.binpb
INSTALLED := $(VENV)/.installed
# The API contract is checked with buf (npm @bufbuild/buf, pinned; lives in the venv, never committed).
BUF_VERSION := 1.75.0
BUF         := $(VENV)/buf/node_modules/.bin/buf
BUF_STAMP   := $(VENV)/buf/.installed-$(BUF_VERSION)
# The contract as last released: `buf breaking` compares protos/ with it.
BASELINE    := protos/baseline/pixelgate-v1.binpb

.PHONY: help install proto proto-baseline certs token model serve generate test prove wheels lint buf-lint clean

help:
	@echo "make serve     set up (venv, deps, stubs, dev PKI, tiny model) and serve on $(HOST):$(PORT)"
	@echo "make generate  ask the running server for an image: PROMPT='...' OUT=image.png"
	@echo "make test      set up and run the test suite"
	@echo "make prove     run the proof suite (not part of test); PROVE_ARGS=--short for CI's size"
	@echo "make token     print a dev access token: SUBJECT=alice SCOPES='models:read'"
	@echo "make wheels    build dist/: pixelgate-client (callers) and pixelgate (the server)"
	@echo "make proto | proto-baseline | certs | model | lint | clean"

# Two distributions, both editable here: the client (client/: stubs, library, CLI;
# its build generates the stubs in protos/) and the server (the root) that needs it.
$(INSTALLED): pyproject.toml client/pyproject.toml client/setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ./client -e '.[dev]'
	touch $@

install: $(INSTALLED)

# The client's wheel generates its stubs from protos/ as it is built; the server's
# wheel pins that client release. Callers install only pixelgate-client.
# setuptools keeps build/ between builds: a module moved away would ship again.
wheels: $(INSTALLED)
	rm -rf dist build client/build
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist ./client .

# Stubs (messages, service, their .pyi type stubs) and a descriptor set with the
# protos' comments (served by reflection) come from protos/ only, all in one go.
# client/setup.py runs the same protoc when it builds the client's wheel.
$(STUBS): $(PROTOS) $(INSTALLED)
	$(PY) -m grpc_tools.protoc -I protos \
		--python_out=protos --grpc_python_out=protos \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_out=protos --mypy_grpc_out=protos \
		--include_source_info --include_imports \
		--descriptor_set_out=$(STUBS) $(PROTOS)

proto: $(STUBS)

$(CERTS)/ca.crt: | $(STUBS)
	$(BIN)/pixelgate-dev certs --out $(CERTS)

certs: $(CERTS)/ca.crt

token: certs
	@$(BIN)/pixelgate-dev token $(if $(SUBJECT),--subject $(SUBJECT)) $(foreach s,$(SCOPES),--scope $(s))

model: $(STUBS)
	$(BIN)/pixelgate-server --prepare-model

serve: certs
	$(BIN)/pixelgate-server --host $(HOST) --port $(PORT)

generate: certs
	PIXELGATE_TOKEN="$$($(BIN)/pixelgate-dev token --scope images:generate)" \
		$(BIN)/pixelgate --target $(HOST):$(PORT) generate "$(PROMPT)" -o $(OUT)

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Not part of `make test`: real server processes, a real Redis, load, storms,
# fuzzing; one line per scenario, non-zero on any loss, hang, leak or leak of a secret.
prove: $(STUBS)
	$(PY) tests/prove $(PROVE_ARGS)

# --ignore-scripts: the package's bin shim finds its platform binary without the postinstall.
$(BUF_STAMP):
	rm -rf $(VENV)/buf
	npm install --no-save --no-audit --no-fund --ignore-scripts --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION)
	touch $@

buf-lint: $(BUF_STAMP)
	$(BUF) lint protos
	$(BUF) breaking protos --against $(BASELINE) --exclude-imports

# Run on purpose, at a release: from then on, breaking checks compare with this contract.
proto-baseline: $(BUF_STAMP)
	$(BUF) build protos --exclude-source-info -o $(BASELINE)

lint: $(STUBS) buf-lint
	$(BIN)/ruff check server client tests
	$(BIN)/ruff format --check server client tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) $(STUBS) protos/pixelgate/v1/*_pb2*.py* .pytest_cache .mypy_cache .ruff_cache \
		dist build client/build *.egg-info server/*.egg-info client/*.egg-info
