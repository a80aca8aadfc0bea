# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv and are idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# The CPU wheel of torch 2.13.0; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= out/demo

.PHONY: demo test bench fuzz venv clean help

help:
	@echo "make demo   - set up .venv and run the Deep Compression demo on embedded MNIST digits"
	@echo "make test   - set up .venv with dev extras and run the test suite"
	@echo "make bench  - run benchmarks/ and rewrite benchmarks/RESULTS.md"
	@echo "make fuzz   - the long fuzz run of the artifact reader (benchmarks/results/fuzz.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-base: pyproject.toml | $(PY)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp-base

demo: $(VENV)/.stamp-base
	$(VENV)/bin/deepshrink demo --out $(OUT) --threads 1

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

$(VENV)/.stamp-bench: $(VENV)/.stamp-dev pyproject.toml
	$(PIP) install -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.stamp-bench
	$(PY) benchmarks/run_all.py

fuzz: $(VENV)/.stamp-dev
	$(PY) benchmarks/run_all.py fuzz_artifact.py

clean:
	rm -rf $(VENV) out
