# Two entry points for newcomers: `make serve` (the main job) and `make test` (the suite CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 7860

.PHONY: install serve test test-xla test-space-venvs lint format bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs the pinned stack (CPU torch where no GPU is present) and hubkit itself, editable.
install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt -e .

serve: install
	$(BIN)/hubkit serve --port $(PORT)

test: install
	$(BIN)/python -m pytest -q -m "not xla and not space_venv"

# The TPU path on the CPU: torch_xla pins its own torch, so it gets an environment outside the clone.
test-xla: install
	HUBKIT_XLA_ENV="$$(bash scripts/xla_env.sh)" $(BIN)/python -m pytest -q -m xla

# Each exported Space in a fresh venv holding only its own requirements (cached under ~/.cache/hubkit-ci/space-venvs:
# about 40 min to build them all the first time, 1-4 min per Space after).
test-space-venvs: install
	$(BIN)/python -m pytest -q -m space_venv

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: install
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done
