# One entry point for newcomers and CI.
#   make demo         set up (locked versions) and run the main job
#   make lint         ruff: unused/undefined names, import order, likely bugs (pyproject.toml [tool.ruff])
#   make test         set up (locked versions), lint, and run the test suite (all of it, slow tests included)
#   make test-latest  set up the newest versions pyproject.toml's ranges allow, in .venv-latest, and run the suite
#   make lock         test-latest, then write what it installed to requirements.lock
VENV ?= .venv
PY := $(VENV)/bin/python
LATEST ?= .venv-latest
LOCK := requirements.lock
# A CPU build of torch: the dev and CI machines hold this exact wheel on disk (a plain `torch` from
# PyPI is a multi-GB CUDA build). test-latest keeps it too; `make test-latest TORCH_SPEC=torch` tries
# the newest torch the range allows.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo lint test test-latest lock clean

# Exact versions from the lock (a constraints file: it pins every package the resolver picks, and
# leaves a platform's own extras to pyproject.toml's ranges). The build runs without isolation so the
# locked setuptools builds the package, not whatever setuptools is newest that day.
$(VENV)/.installed: pyproject.toml $(LOCK) Makefile
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c $(LOCK) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e '.[dev]'
	$(PY) -m pip check
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/prunekit search --force

lint: setup
	$(VENV)/bin/ruff check .

# Lint first: it takes a second. The suite runs on TEST_WORKERS processes (pytest-xdist), each test
# file in one of them (--dist loadfile: a file's torchrun tests and session fixtures stay together).
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The newest of everything (torch excepted, see TORCH_SPEC), always from scratch: drift shows up here
# before a user meets it. When it passes, `make lock` records it.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager --no-build-isolation -e '.[dev]' "$(TORCH_SPEC)"
	$(LATEST)/bin/python -m pip check
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# torch's local label (+cpu) is dropped: `torch==X` matches the CPU build here and a platform's own build elsewhere.
lock: test-latest
	{ echo "# Exact versions \`make test\` installs (a pip constraints file). Written by \`make lock\` on $$(date -u +%F)"; \
	  echo "# after the suite passed with them: $$($(LATEST)/bin/python -c 'import platform as p; print("Python", p.python_version(), p.system(), p.machine())')."; \
	  $(LATEST)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/\+cpu$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) runs
