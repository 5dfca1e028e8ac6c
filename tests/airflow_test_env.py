"""Pytest plugin (loaded with ``-p`` before any conftest): an isolated Airflow for the tests.

Airflow reads its configuration when first imported, so the environment is set here, at
plugin import, before any test module or conftest imports ``airflow``. Each pytest process
gets its own ``AIRFLOW_HOME`` and SQLite database, so parallel runs never share state.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from dag_runner import run_dag

if TYPE_CHECKING:
    from airflow_batch.emulator.process import EmulatorProcess

# pytest caches each test module's assertion-rewritten bytecode (tests/**/__pycache__, ignored by
# git) unless the environment forbids writing bytecode, as this image's PYTHONDONTWRITEBYTECODE
# does; then every worker of every run rewrites and compiles all 240 test modules again (~5 CPU
# seconds each). Only this process writes; the processes the tests start keep the environment's
# setting (the package and its dependencies are compiled when .venv is synced: see the Makefile).
sys.dont_write_bytecode = False

_HOME = tempfile.mkdtemp(prefix="airflow-batch-tests-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(_HOME, "dags")
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], exist_ok=True)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
os.environ.pop("AIRFLOW_CONN_ANTHROPIC_DEFAULT", None)
# A key of the recommended length (64 bytes) for the in-process API's tokens (no weak-key warnings).
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = os.urandom(64).hex()
# Fail fast in tests rather than wait out the SDK's default backoff against a dead server.
os.environ.setdefault("AIRFLOW__CORE__DEFAULT_TASK_RETRIES", "0")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate this process's Airflow SQLite database once; return the ``AIRFLOW_HOME``."""
    from airflow.utils import db

    db.initdb()
    return _HOME


#: The API key of the test connection: distinctive, so a test can prove it leaked nowhere.
ANTHROPIC_TEST_KEY = "sk-ant-test-4f1c9e-never-in-xcom-logs-or-files"


@pytest.fixture
def anthropic_conn(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the ``anthropic_default`` connection at the test's emulator; yield its conn_id."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_ANTHROPIC_DEFAULT",
        json.dumps({"conn_type": "anthropic", "password": ANTHROPIC_TEST_KEY, "host": emulator.base_url}),
    )
    yield "anthropic_default"


__all__ = ["ANTHROPIC_TEST_KEY", "run_dag"]
