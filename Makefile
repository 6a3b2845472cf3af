# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
# Settings fail closed (production) unless told otherwise: every local target says development.
DEV := WORLDGEN_ENV=development
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install lock lock-check system-packages demo test test-fast lint bench bench-web eval check clean proto

# Installs exactly what was tested: requirements-dev.lock pins every package, transitive ones included, with
# hashes (production images install requirements.lock the same way).
$(STAMP): requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $(STAMP)

install: $(STAMP)

# After editing requirements*.txt: compile both locks again (pip-tools), then commit them. The runtime lock
# is constrained by the dev lock, so production gets the versions the tests ran.
PIP_COMPILE = $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	$(PIP_COMPILE) --output-file requirements-dev.lock requirements-dev.txt
	$(PIP_COMPILE) --constraint requirements-dev.lock --output-file requirements.lock requirements.txt
	$(PYTHON) .ci/check_lock.py

# Fails when a lock is stale against requirements*.txt (standard library only: runs before any install).
lock-check:
	$(PYTHON) .ci/check_lock.py

demo: $(STAMP)
	$(DEV) $(PY) -m localstack $(DEMO_ARGS)

# Debian packages for `make test`: Chromium for the browser tests (Playwright cannot download browsers here)
# and PostgreSQL, production's database, which the suite starts on a free port (tests/postgres_server.py).
system-packages:
	@missing=""; [ -x $(CHROMIUM) ] || missing="chromium"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: $(STAMP) system-packages
	$(DEV) WORLDGEN_TEST_DATABASE=postgresql $(PY) -m pytest

# For every change: everything but end-to-end, chaos, browser and benchmark tests, on SQLite (about a minute).
test-fast: $(STAMP)
	$(DEV) $(PY) -m pytest -m "not e2e and not chaos and not browser and not bench"

# Lint, format, types and the layer contracts (configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Figures in docs/PERFORMANCE.md; BENCH_ARGS="--worlds 100 --llm-latency 1" etc.
BENCH_ARGS ?= --worlds 20
bench: $(STAMP)
	$(DEV) $(PY) -m benchmarks.generation $(BENCH_ARGS) --json test-artifacts/bench.json

# Admin world list and feed API latency over seeded fake worlds (default 10,000 worlds, 100,000 posts);
# BENCH_WEB_ARGS="--worlds 1000 --posts 10000 --requests 50" etc.
BENCH_WEB_ARGS ?=
bench-web: $(STAMP)
	$(DEV) $(PY) -m benchmarks.web $(BENCH_WEB_ARGS) --json test-artifacts/bench-web.json

# Content quality with a real small model (Qwen2.5 0.5B on llama.cpp; not part of `make test`); see
# docs/QUALITY.md. EVAL_ARGS="--worlds 2 --label v2" etc.; LLM_BASE_URL=... LLM_MODEL=... make eval
# evaluates that server's model instead.
EVAL_STAMP := $(VENV)/.installed-eval
EVAL_ARGS ?=
$(EVAL_STAMP): $(STAMP) requirements-eval.txt
	$(PY) -m pip install --quiet -r requirements-eval.txt
	touch $(EVAL_STAMP)

eval: $(EVAL_STAMP)
	$(DEV) $(PY) -m benchmarks.quality --json test-artifacts/eval.json $(EVAL_ARGS)

proto: $(STAMP)
	$(PY) generation/protos/generate.py

check: $(STAMP)
	$(DEV) $(PY) manage.py check

clean:
	rm -rf $(VENV) .localdata .pytest_cache test-artifacts
