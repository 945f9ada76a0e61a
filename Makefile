# Two commands: `make demo` runs the demo, `make test` runs the tests.
# Each creates the Python environment in .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-browser test-slurm bench env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run: make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	# the package itself, editable: `python -m hbr...` and the hbr-* commands work from any folder
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: env
	PATH="$(CURDIR)/$(BIN):$$PATH" bash 0_pipeline.sh --demo --workdir demo_work

test: env
	$(BIN)/python -m pytest -q tests --ignore=tests/browser --ignore=tests/slurm

# The labelling page in a real headless browser: installs Debian's chromium when it is
# missing (needs root and the package registries, as in CI) and playwright into .venv.
test-browser: env
	bash scripts/install_browser.sh
	$(BIN)/pip install --quiet -r requirements-browser.txt
	$(BIN)/python -m pytest -q tests/browser

# slurm/submit.sh on a real single-node SLURM started for the test: installs Debian's
# slurm-wlm and munge when they are missing (needs root and the package registries, as in CI).
test-slurm: env
	bash scripts/install_slurm.sh
	$(BIN)/python -m pytest -q tests/slurm

bench: env
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo_work .pytest_cache
