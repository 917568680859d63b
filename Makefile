# One entry point for newcomers and CI. `make demo` sets up and runs the main job,
# `make test` sets up and runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; the dev and CI machines hold this exact wheel on disk.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/prunekit search --force

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
