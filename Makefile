# The two commands of the README: `make quickstart` and `make test` (both install first).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test bench

install:
	@bash scripts/install.sh

quickstart: install
	$(BIN)/lmcsweep run sweeps/quickstart.yaml
	$(BIN)/lmcsweep query --sweep quickstart

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/train_loop.py
