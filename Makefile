# The README's two commands. Each builds what it needs into .venv from nothing but Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; an unpinned
# torch pulled in by a dependency would fetch gigabytes of CUDA packages.
TORCH := torch==2.13.0

.PHONY: demo test lint typecheck pytest clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-all
	$(VENV)/bin/entmon demo $(DEMO_ARGS)

test: $(VENV)/.installed-dev
	$(MAKE) lint typecheck pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy client monitor dashboard

pytest:
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
