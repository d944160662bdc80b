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
	# asyncio's own transports (where epoll is missing, or RDSPROXY_RELAY=0) under both engines' pooling and failures
	RDSPROXY_RELAY=0 $(VENV)/bin/pytest -q tests/test_pg_pooling.py tests/test_pg_failures.py tests/test_my_pooling.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rdsproxy tests benchmarks
	$(VENV)/bin/ruff format --check rdsproxy tests benchmarks

system-deps:
	bash scripts/install_system_deps.sh

$(STAMP): pyproject.toml setup.py $(wildcard rdsproxy/_codec/*.pyx) $(wildcard rdsproxy/_codec/*.pxd)
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

# Wheels for every CPython 3.9-3.13 found (WHEEL_PYTHONS=all), or the default one only (WHEEL_PYTHONS=default),
# and the sdist, into wheels/; each wheel is smoke-tested in a fresh venv without a compiler.
WHEEL_PYTHONS ?= all
.PHONY: wheel
wheel: system-deps
	WHEEL_PYTHONS="$(WHEEL_PYTHONS)" PYTHON="$(PYTHON)" bash scripts/build_wheels.sh

# Benchmarks (not part of `make test`): pytest-benchmark tables, then the throughput runner in quick mode.
# Full throughput run: $(PY) -m benchmarks.throughput --json bench.json ; idle clients: $(PY) -m benchmarks.idle_clients
# Instructions per login and per transaction (callgrind, deterministic): $(PY) -m benchmarks.work_per_unit
.PHONY: bench
bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks -p no:cacheprovider --benchmark-warmup=on --benchmark-group-by=group \
		--benchmark-sort=name --benchmark-columns=median,iqr,mean,min,ops,rounds
	$(PY) -m benchmarks.throughput --quick
