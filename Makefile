# Two commands: `make demo` runs the demo, `make test` runs the tests.
# Each creates the Python environment in .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run: make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

demo: env
	PATH="$(CURDIR)/$(BIN):$$PATH" bash 0_pipeline.sh --demo --workdir demo_work

test: env
	$(BIN)/python -m pytest -q tests

bench: env
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo_work .pytest_cache
