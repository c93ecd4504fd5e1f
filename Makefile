# repsim_jax: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The tests simulate 8 CPU devices (tests/conftest.py sets
# XLA_FLAGS=--xla_force_host_platform_device_count=8) so sharded code paths run without a GPU.

.PHONY: all venv demo test test-fast bench clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned and installed first so that nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,torch]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/repsim demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20 tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

bench: $(VENV)/.installed
	for f in benchmarks/bench_*.py; do $(PY) $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
