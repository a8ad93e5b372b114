# The two Quickstart commands: `make run` (install + demo + search page) and `make test` (install + test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench bench-ann bench-faces clean

# The browser tests drive Debian's Chromium with Playwright (its own browser download cannot work offline).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# torch and torchvision are pinned and installed first, as a pair that imports together: open-clip-torch needs
# torchvision, and PyPI's torchvision does not load beside the local 2.13.0 CPU wheel, so it is 2.14.1 + 0.29.1 (CUDA
# builds from the registry's local files; they run on the CPU). Letting a dependency resolve torch on its own could
# pull another multi-GB build. foolbox is installed without its dependencies: we only read its sample photos.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[demo,test,clip,ocr,faces]'
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

# Face detectors (dlib HOG and CNN, and BlazeFace from mediapipe installed into .bench-extra: mediapipe pins
# protobuf < 5, which the venv's other packages do not allow) on the composed face set, and ingest with --faces.
bench-faces: install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target .bench-extra mediapipe==0.10.14 'protobuf>=4.25.3,<5'
	$(BIN)/python bench/faces.py --blazeface .bench-extra $(BENCH_ARGS)

# ANN benchmark (pgvector HNSW vs hnswlib vs exact numpy on 400k GloVe vectors); BENCH_ARGS='--rows 50000' for a quick one.
bench-ann: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/ann.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
