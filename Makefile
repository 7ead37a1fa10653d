# The two entry points (see README): `make run` and `make test`. Each one creates the
# virtual environment on first use, so a fresh clone needs nothing else.
# `make test-fast` runs the suite without the tests marked `slow` (the end-to-end pipeline runs,
# multi-process training, torch.compile, the Prefect server): about a minute instead of four.
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: run test test-fast setup
setup: $(VENV)/.installed

# torch first, pinned: on this CPU-only setup it comes as a local CPU build in seconds,
# and the project's `torch>=2.5` is then already satisfied (no multi-GB CUDA download).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: setup
	$(PY) -m flows.pipeline

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)
