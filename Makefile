# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: install demo test check clean proto

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m localstack $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest

proto: $(STAMP)
	$(PY) generation/protos/generate.py

check: $(STAMP)
	$(PY) manage.py check

clean:
	rm -rf $(VENV) .localdata .pytest_cache test-artifacts
