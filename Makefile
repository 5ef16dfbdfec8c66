# The README's two commands. Each builds what it needs into .venv from nothing but Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; an unpinned
# torch pulled in by a dependency would fetch gigabytes of CUDA packages.
TORCH := torch==2.13.0

# Debian packages the tests drive for real: a headless browser, Prometheus (promtool) and
# Alertmanager (amtool) for tests/deploy.
SYSTEM_PACKAGES := chromium prometheus prometheus-alertmanager

.PHONY: demo test lint typecheck pytest clean system-deps gpu-check

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-all
	$(VENV)/bin/entmon demo $(DEMO_ARGS)

test: $(VENV)/.installed-dev system-deps
	$(MAKE) lint typecheck pytest

# The client on CUDA (bench/gpu_check.py): the CUDA-marked tests, 200+ steps under CUDA's sync
# debug mode, bench_loss and bench_entropy on the GPU beside verl, two NCCL ranks. Without CUDA
# it says so, runs what runs on CPU and exits 0.
gpu-check: $(VENV)/.installed-dev
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

# Installs what is missing (as root, as on these machines); otherwise says what to install.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing system packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy client monitor dashboard entmon

pytest:
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
