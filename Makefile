# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed

# Project-local state and no telemetry (never touches global config or the home folder).
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast lint bench clean retrain flows-server flows-deploy flows-worker doctor

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# `slim promote` moves alias `champion` to the newly registered version if it passes the gate
# (docs/registry.md); a refused challenger is a decision, not an error (exit 0).
demo: install
	dvc repro
	slim promote
	@echo
	@dvc metrics show --precision 3
	@echo
	@echo "Results: Parquet datasets in data/parquet/<dataset>/ (quarantine.jsonl beside each),"
	@echo "         train/test splits in data/splits/<protocol>.json,"
	@echo "         encoders in models/<method>/encoder.pt (loss curves: models/<method>/plots.csv),"
	@echo "         evaluations in reports/<protocol>/<encoder>/ (metrics.json, confusion.png, embedding.png)."
	@echo "         'dvc metrics show' tabulates them, 'dvc plots show' renders the plots, 'dvc dag' draws the DAG."

# Two pytest workers: most tests are single-threaded, and the tests that share the session's built
# project (tests/project.py) stay together on one worker (xdist group `built_project`).
PYTEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test-fast: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

lint: install
	$(BIN)/ruff check slim pipeline flows tests benchmarks

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/efficiency.py
	$(BIN)/python benchmarks/views.py

# Prefect flows (docs/flows.md). `retrain` runs the flow directly (ephemeral API, no server); the
# others talk to a local server on 127.0.0.1:$(PREFECT_PORT): start it, deploy, one worker per pool.
PREFECT_PORT ?= 4200
POOL ?= gpu
FLOWS_API := PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api

retrain: install
	python -m flows.retrain

flows-server: install
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

flows-deploy: install
	$(FLOWS_API) python -m flows.deploy

flows-worker: install
	$(FLOWS_API) prefect worker start --pool $(POOL)

doctor: install
	$(FLOWS_API) slim doctor

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
