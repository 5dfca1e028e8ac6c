"""A temporary Airflow of its own for a benchmark that runs jobs with ``dag.test()``.

Airflow reads its configuration when first imported: call :func:`use_temporary_airflow_home`
before anything imports ``airflow`` (as ``tests/airflow_test_env.py`` does for the tests).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def use_temporary_airflow_home(prefix: str, *paths: str) -> str:
    """Point Airflow at a new home with its own SQLite database; put ``tests/`` (and ``paths``,
    relative to the repository) on ``sys.path``; return the home."""
    home = tempfile.mkdtemp(prefix=prefix)
    os.environ.update(
        AIRFLOW_HOME=home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=os.path.join(home, "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(64).hex(),
        AIRFLOW__CORE__DEFAULT_TASK_RETRIES="0",
    )
    os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], exist_ok=True)
    sys.path[:0] = [*(str(REPO / path) for path in paths), str(REPO / "tests")]
    return home
