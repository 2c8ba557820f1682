# Two commands on a fresh machine:
#   make demo   install into .venv and run the default live gossip simulation
#   make test   install into .venv (with test tools) and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: install install-test demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU build, so the resolver keeps it (newer pulls CUDA)
install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,ray]'

demo: install
	$(BIN)/gossipser simulate --out runs/demo

test: install-test
	$(BIN)/ruff check gossipser tests scripts
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check gossipser tests scripts
