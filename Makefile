# crm-stream. `make demo` and `make test` work on a fresh machine: they build .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
# constraints.txt pins every package of the dev install to the versions CI tested
# (`make lock` rewrites it from .venv after a dependency change).
.PHONY: lock help install demo demo-once test test-fast test-bench test-browser lint format typecheck bench web-preview vendor-web clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install crm-stream with its dev tools

demo: $(STAMP) ## Embedded broker, every connector on the sample feeds, Faust worker, live stats and the web view (Ctrl-C stops)
	$(BIN)/crm-stream demo

demo-once: $(STAMP) ## The demo, run to completion, with a JSON summary in var/demo-summary.json
	$(BIN)/crm-stream demo --once --summary-json var/demo-summary.json

# make test runs pytest on TEST_WORKERS pytest-xdist workers; each worker starts its own embedded
# broker (tests/conftest.py). The integration tests mostly wait (on the broker, on child worker
# processes), so more workers than cores pay off. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 6

test: $(STAMP) ## Lint, typecheck and run every test in parallel (starts its own brokers)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS)

test-fast: $(STAMP) ## Unit tests only
	$(BIN)/pytest -m "not integration"

test-bench: $(STAMP) ## The benchmark harness end to end on a tiny input (make test runs it too)
	$(BIN)/pytest -m bench

test-browser: $(STAMP) ## The web view in headless Chromium (apt-get install chromium first)
	$(BIN)/pytest -m browser

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

web-preview: $(STAMP) ## The web view on fake, growing data at http://127.0.0.1:8089/ (no Kafka)
	$(BIN)/python -m tests.unit.processors.api.fake_source --port 8089

# The web view's chart library, vendored (no CDN: the page works offline). To upgrade, change
# both lines (`npm view uplot@VERSION dist.integrity`), run `make vendor-web`, commit the files.
UPLOT_VERSION := 1.6.32
UPLOT_INTEGRITY := sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
WEB_VENDOR := processors/api/static/vendor

vendor-web: ## Re-fetch the pinned chart library (uPlot) from the npm registry into the package
	@set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null); \
	got="sha512-$$(openssl dgst -sha512 -binary "$$tmp/uplot-$(UPLOT_VERSION).tgz" | base64 -w0)"; \
	if [ "$$got" != "$(UPLOT_INTEGRITY)" ]; then echo "uplot $(UPLOT_VERSION): integrity $$got, expected $(UPLOT_INTEGRITY)" >&2; exit 1; fi; \
	tar -xzf "$$tmp/uplot-$(UPLOT_VERSION).tgz" -C "$$tmp"; \
	mkdir -p $(WEB_VENDOR); \
	cp "$$tmp/package/dist/uPlot.iife.min.js" "$$tmp/package/dist/uPlot.min.css" $(WEB_VENDOR)/; \
	cp "$$tmp/package/LICENSE" $(WEB_VENDOR)/uPlot.LICENSE; \
	echo "uplot $(UPLOT_VERSION) -> $(WEB_VENDOR)"

clean: ## Remove local state and the virtualenv
	rm -rf var $(VENV)
