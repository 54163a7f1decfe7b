# crm-stream. `make demo` and `make test` work on a fresh machine: they build .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
# constraints.txt pins every package of the dev install to the versions CI tested
# (`make lock` rewrites it from .venv after a dependency change).
.PHONY: lock help install demo demo-once test test-fast lint format typecheck bench clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install crm-stream with its dev tools

demo: $(STAMP) ## Embedded broker, every connector on the sample feeds, Faust worker, live stats (Ctrl-C stops)
	$(BIN)/crm-stream demo

demo-once: $(STAMP) ## The demo, run to completion, with a JSON summary in var/demo-summary.json
	$(BIN)/crm-stream demo --once --summary-json var/demo-summary.json

test: $(STAMP) ## Lint, typecheck and run every test (starts its own broker)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: $(STAMP) ## Unit tests only
	$(BIN)/pytest -m "not integration"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP) ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy
	$(BIN)/mypy

bench: $(STAMP) ## Throughput/latency/memory benchmark (see bench/README.md; BENCH_ARGS="--events 200000")
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lock: $(STAMP) ## Rewrite constraints.txt from the installed .venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^crm-stream' > constraints.txt

clean: ## Remove local state and the virtualenv
	rm -rf var $(VENV)
