# The two set-up commands: `make run` runs the pipeline, `make test` runs the tests.
# Both create the virtual environment in .venv first when it is missing or out of date,
# which `make install` does alone.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: install run test lint

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	$(PYTHON) -m pytest
