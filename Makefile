# One command for the main job, one for the tests; each makes its own
# virtual environment and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint format bench

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[examples,hub,test]"
	touch $@

demo: install
	$(PY) -m examples.demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# One pytest worker per CPU (pytest-xdist), at most four: the tests are
# mostly single-threaded TensorFlow tracing of tiny models. About 9
# minutes of tests on two idle cores without AVX-512 (11 with a fresh
# install), less with it.
test: lint
	$(PY) -m pytest -n logical --maxprocesses=4 $(PYTEST_ARGS)

# The slower checks too.
test-all: lint
	$(PY) -m pytest -n logical --maxprocesses=4 --run-slow $(PYTEST_ARGS)

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# About ten minutes on two cores; the PyTorch rows where torch is installed.
bench: install
	$(PY) -m benchmarks.throughput
	$(PY) -m benchmarks.throughput --input=arrays
	$(PY) -m benchmarks.whole_fit --epochs=10
