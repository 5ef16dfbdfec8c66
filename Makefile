# The README's two commands. Each builds what it needs into .venv from nothing but Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; an unpinned
# torch pulled in by a dependency would fetch gigabytes of CUDA packages.
TORCH := torch==2.13.0

# Debian programs some tests run, as command:package pairs. `system-deps` installs the packages
# of the missing commands when it can (root with apt-get); otherwise it says what is missing, and
# those tests skip locally or fail under CI (CI=true). Add pairs here, e.g. chromium:chromium.
SYSTEM_DEPS ?= promtool:prometheus prometheus:prometheus amtool:prometheus-alertmanager

.PHONY: demo test lint typecheck pytest clean system-deps

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-all
	$(VENV)/bin/entmon demo $(DEMO_ARGS)

test: system-deps $(VENV)/.installed-dev
	$(MAKE) lint typecheck pytest

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 && continue; \
	  case " $$missing " in *" $${pair#*:} "*) ;; *) missing="$$missing $${pair#*:}" ;; esac; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "system-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "system-deps: missing Debian packages:$$missing (as root: make system-deps)"; \
	fi

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy client monitor dashboard

pytest:
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
