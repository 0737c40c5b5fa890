# Two commands on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv from the pinned requirements.txt first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

repro: setup
	dvc repro

lint: setup
	ruff check .
	ruff format --check .

test: lint
	python -m pytest

bench: setup
	python -m benchmarks.run
