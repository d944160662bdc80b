# rdsproxy: `make demo` and `make test` set up everything they need on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STAMP   = $(VENV)/.rdsproxy-installed

.PHONY: demo test test-pure lint deps system-deps build clean

demo: $(STAMP)
	$(PY) -m rdsproxy demo --engine $(or $(ENGINE),postgres)

test: $(STAMP)
	$(VENV)/bin/ruff check rdsproxy tests benchmarks
	$(VENV)/bin/ruff format --check rdsproxy tests benchmarks
	$(VENV)/bin/pytest -q tests
	RDSPROXY_NO_EXTENSIONS=1 $(VENV)/bin/pytest -q tests/test_codec_*.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rdsproxy tests benchmarks
	$(VENV)/bin/ruff format --check rdsproxy tests benchmarks
	$(VENV)/bin/ruff format --check rdsproxy tests benchmarks

system-deps:
	bash scripts/install_system_deps.sh

$(STAMP): pyproject.toml setup.py $(wildcard rdsproxy/_codec/*.pyx)
	bash scripts/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cython
	$(PIP) install -q -e '.[test]'
	$(PY) setup.py -q build_ext --inplace
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

clean:
	rm -rf build $(VENV) *.egg-info rdsproxy/_codec/*.so rdsproxy/_codec/*.c
