# Two commands on a fresh machine: `make demo` and `make test`.
# Debian's own /usr/bin/python3 when it is 3.11 or newer and can make a venv: it is
# built with profile-guided and link-time optimization and linked statically, and a
# request costs about 10 % fewer instructions on it than on a build without them, such
# as pyenv's default (docs/performance.md). Else the python3 on PATH. `PYTHON=` overrides.
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import sys, ensurepip, venv; \
	sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $(SYSTEM_PYTHON) || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench bench-all stress clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/bench_vault.py

# every benchmark behind docs/performance.md (about 15 minutes on 2 cores)
bench-all: bench
	$(BIN)/python bench/bench_erasure.py
	$(BIN)/python bench/bench_scan.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_governance.py
	$(BIN)/python bench/bench_instructions.py
	$(BIN)/python bench/bench_switches.py
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_keyring.py

# the kill -9 stress harness for a few minutes, in a new directory (docs/architecture.md)
SEED ?= 1
stress: venv
	$(BIN)/python scripts/stress.py --seed $(SEED) --minutes 3 --workers 3 --maints 2 \
		--dir "$$(mktemp -d -t shardvault-stress.XXXXXX)"

clean:
	rm -rf $(VENV) .venv-system .venv-path build dist .pytest_cache .hypothesis
