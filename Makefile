# Two commands matter (see README.md):
#   make book   build the HTML book into _build/html from the stored, executed notebooks
#   make test   lint, unit tests, and nbval re-execution of every notebook in book/
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export COMPANION_DATA ?= $(CURDIR)/data
export PYTHONHASHSEED := 0

NOTEBOOKS := $(sort $(wildcard book/[0-9][0-9]_*.ipynb))

.PHONY: help venv data book test lint unit nbval execute clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the package with its book and test extras

data: $(STAMP)  ## provision MNIST (verified by SHA-256) into $(COMPANION_DATA)
	$(BIN)/python -m companion.data fetch --root "$(COMPANION_DATA)"

book: data  ## build the HTML book into _build/html (strict: warnings are errors)
	$(BIN)/jupyter-book build . --path-output . -W -n --keep-going
	@echo "Book built: $(CURDIR)/_build/html/index.html"

lint: $(STAMP)  ## ruff lint and format check over the package, tests, benchmarks and notebooks
	$(BIN)/ruff check companion tests benchmarks tools book
	$(BIN)/ruff format --check companion tests benchmarks tools book

unit: data  ## unit, property and doctest tests
	MPLBACKEND=Agg $(BIN)/python -m pytest tests companion --doctest-modules -q

nbval: data  ## re-execute every notebook and compare with its stored outputs (strict)
	# The kernel must use the inline backend (figures are outputs), whatever MPLBACKEND says.
	env -u MPLBACKEND $(BIN)/python -m pytest --nbval --nbval-current-env --nbval-cell-timeout=900 \
	    --nbval-sanitize-with book/nbval_sanitize.cfg -p no:cacheprovider $(NOTEBOOKS) -q

test: lint unit nbval  ## everything CI runs: lint, unit tests, notebooks

execute: data  ## (authors) re-execute every notebook in place and store its outputs
	env -u MPLBACKEND $(BIN)/python tools/execute_notebooks.py $(NOTEBOOKS)

clean:  ## remove build output (keeps .venv and data)
	rm -rf _build .pytest_cache .ruff_cache
