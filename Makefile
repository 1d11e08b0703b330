# One command from a fresh clone: `make test` creates .venv, installs duatm with its dev extra, lints and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test lint demo docs clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

venv: $(BIN)/activate
	$(BIN)/pip install -e ".[dev]"

test: venv
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/pytest

demo: venv
	$(BIN)/duatm demo

# The documentation site, built strict (any warning fails) into site/; the docs extra is not a
# runtime dependency. NO_MKDOCS_2_WARNING silences mkdocs-material's banner about MkDocs 2.0.
docs: $(BIN)/activate
	$(BIN)/pip install -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
