# The two Quickstart commands: `make run` (install + demo + search page) and `make test` (install + test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench bench-ann clean

# The browser tests drive Debian's Chromium with Playwright (its own browser download cannot work offline).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# torch is pinned and installed first: 2.13.0 is the local CPU wheel; letting a dependency resolve torch on its
# own pulls a multi-GB CUDA build. foolbox is installed without its dependencies: we only read its sample photos.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[demo,test]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps foolbox==3.3.4
	touch $(STAMP)

install: $(STAMP)

PORT ?= 8000
run: install
	$(BIN)/pixsearch demo --serve --port $(PORT)

$(CHROMIUM):
	$(SUDO) apt-get install -y chromium \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

test: install $(CHROMIUM)
	PIXSEARCH_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/ingest.py

# ANN benchmark (pgvector HNSW vs hnswlib vs exact numpy on 400k GloVe vectors); BENCH_ARGS='--rows 50000' for a quick one.
bench-ann: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/ann.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
