# The commands of the README: `make demo`, `make up` and `make test`. All work on a fresh machine
# with only Python and pip: uv is installed with pip when missing, then .venv is synced
# from the committed uv.lock, with bytecode compiled once at install: where the environment
# sets PYTHONDONTWRITEBYTECODE, every Airflow process would otherwise compile thousands of
# modules at each start (seconds each, and a triggerer's event loop blocked meanwhile). uv
# installs this project itself editable and does not compile it, so compileall does: the
# triggerer imports the trigger module on its event loop (8 ms from bytecode, 18-31 from source).
SHELL := /bin/bash
PYTHON ?= python3
UV = $(if $(shell command -v uv 2>/dev/null),uv,$(PYTHON) -m uv)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo up test check lint typecheck pytest docs venv browser services redis postgres bench clean

venv: $(VENV)/.synced

$(VENV)/.synced: uv.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	$(BIN)/python -m compileall -q airflow_batch
	@touch $@

# Headless Chromium for the UI test; installed from Debian's packages when missing and we are root.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver for the UI test"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# Servers of the distributed end-to-end test (tests/distributed): Redis (the Celery broker) and
# PostgreSQL (the metadata DB; the test runs initdb in a temp dir). Installed from Debian's
# packages when missing and we are root, like Chromium; the test starts and stops its own.
services: redis postgres

redis:
	@if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing redis-server for the distributed test"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	fi

postgres:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
			&& command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing postgresql for the distributed test"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

demo: venv
	$(BIN)/python -m airflow_batch.dev.demo

# The emulator and a local Airflow (UI on http://127.0.0.1:8080) on dags/, until Ctrl-C.
# Flags: make up ARGS="--port 8081", or run .venv/bin/airflow-batch dev --help.
up: venv
	$(BIN)/airflow-batch dev $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check airflow_batch

typecheck: venv
	$(BIN)/mypy airflow_batch

# The tests that start no Airflow deployment, browser or cluster run on parallel workers (each
# with its own Airflow home and database): about a third of their time is spent waiting on an
# emulator or a poll, so more workers than cores pays (on 2 cores: 2 workers 189 s, 3 workers
# 157-175 s). The deployments run after them, one at a time.
FAST_TESTS := not e2e and not browser and not distributed and not wheel
TEST_WORKERS ?= 3

pytest: venv browser services
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "$(FAST_TESTS)"
	$(BIN)/pytest -q -m "not ($(FAST_TESTS))"

# The documentation site (mkdocs.yml, docs/) into site/ (git-ignored); --strict fails on any
# warning: a link to a missing page or anchor, a page left out of the nav.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint typecheck docs pytest

# The fast tier: lint, types and every test that starts no Airflow deployment, browser or cluster.
check: lint typecheck docs
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "$(FAST_TESTS)"

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
