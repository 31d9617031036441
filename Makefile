# The two commands of the README are `make demo` and `make test`; both build the venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all bench lint clean compile-pipelines

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the local CPU wheel; otherwise a dependency pulls the CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hfcast demo

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m "slow and not gpu" $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5 = no slow tests selected

test-all: $(STAMP)
	$(VENV)/bin/pytest -m "not gpu" $(PYTEST_ARGS)

compile-pipelines: $(STAMP)
	$(PY) -m pipelines.compile

clean:
	rm -rf .hfcast .pytest_cache
