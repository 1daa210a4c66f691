# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
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
	rm -rf $(VENV) .venv-system build dist .pytest_cache .hypothesis
