"""How a local Airflow deployment is configured: environment variables only, nothing else.

``airflow-batch dev``, ``make demo`` and the end-to-end tests run Airflow the same way: an
``AIRFLOW_HOME`` of its own with a SQLite database, LocalExecutor, the simple auth manager,
and the api-server, scheduler, dag-processor and triggerer as separate processes. Every
setting is an ``AIRFLOW__…`` variable built here, so no ``airflow.cfg`` needs editing, and
the ``AIRFLOW*`` variables of the caller's shell are dropped so a stray ``AIRFLOW_HOME``
cannot point the deployment at another database.

Airflow imports :data:`SQLITE_CONNECT_ARGS` by name while it sets up its database, so this
module imports nothing from Airflow or from the rest of the package.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
"""The Airflow processes of a deployment, each started as ``airflow <component>``."""

AIRFLOW_EXECUTABLE = str(Path(sys.executable).with_name("airflow"))
"""The ``airflow`` command of this Python environment."""


def example_dags_folder() -> Path:
    """Return the example DAGs: the copy a wheel ships (``airflow_batch/example_dags``), else the
    clone's ``dags/`` (an editable install, where the package sits in the clone)."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "example_dags"
    return shipped if shipped.is_dir() else package.parent / "dags"


SQLITE_CONNECT_ARGS: dict[str, Any] = {"timeout": 60}
"""SQLite connect arguments (``[database] sql_alchemy_connect_args``).

Four Airflow processes and the CLI share one SQLite file; a writer waits up to 60 s for the
lock instead of SQLite's default 5 s, which a loaded 2-core machine can exceed.
"""

FORKSERVER_PRELOAD = "airflow,airflow.executors.local_executor,airflow_batch.job"
"""Modules the executor's forkserver imports once: each task then skips ~5 s of imports
(Airflow, the providers, this package) and parses its DAG in ~0.3 s on a loaded machine."""

PASSWORDS_FILE = "simple_auth_manager_passwords.json"
DEFAULT_MODEL = "claude-haiku-4-5"
"""``[airflow_batch] model`` of a local deployment: the model of a job that names none."""
_HEALTH_KEYS = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag_processor"}


@dataclass(frozen=True)
class AdminLogin:
    """The admin user of a deployment's simple auth manager and the file holding its password."""

    username: str
    password: str
    passwords_file: Path


def admin_login(home: Path, username: str = "admin") -> AdminLogin:
    """Return the admin login of the deployment in ``home``, generating its password the first time.

    The password lives in the file the simple auth manager reads, so a deployment restarted on
    the same home keeps its login.
    """
    passwords_file = home / PASSWORDS_FILE
    passwords: dict[str, str] = {}
    if passwords_file.exists():
        passwords = json.loads(passwords_file.read_text() or "{}")
    if username not in passwords:
        passwords[username] = secrets.token_urlsafe(12)
        home.mkdir(parents=True, exist_ok=True)
        passwords_file.write_text(json.dumps(passwords))
        passwords_file.chmod(0o600)
    return AdminLogin(username, passwords[username], passwords_file)


def airflow_environment(
    home: Path, dags_folder: Path, *, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return a process environment for Airflow commands on ``home``: its own SQLite DB and DAGs.

    ``inherited`` (default: this process's environment) is kept without its ``AIRFLOW*``
    variables. Enough for ``airflow db migrate`` and ``airflow dags test``; a deployment with
    servers needs :func:`deployment_environment`.
    """
    base = os.environ if inherited is None else inherited
    env = {k: v for k, v in base.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def deployment_environment(
    home: Path,
    *,
    port: int,
    dags_folder: Path,
    login: AdminLogin,
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return the process environment of every component of a local deployment on ``home``.

    The api-server listens on ``127.0.0.1:port`` and also serves the execution API the task
    processes call; LocalExecutor runs tasks from a preloaded forkserver; ``login`` is the one
    user of the simple auth manager. Secrets (API secret key, JWT secret) are new on each call,
    so every component of one deployment must get the same environment.
    """
    base_url = f"http://127.0.0.1:{port}"
    env = airflow_environment(home, dags_folder, inherited=inherited)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__MP_START_METHOD": "forkserver",
            "AIRFLOW__CORE__MP_FORKSERVER_PRELOAD": FORKSERVER_PRELOAD,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{login.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(login.passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # New DAG files show up within seconds; unchanged ones are not re-parsed constantly.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # One-second heartbeats: a triggered run starts, and a fired trigger resumes, at once.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        }
    )
    return env


def example_dags_environment(
    output: Path, *, anthropic_url: str | None, poll_interval: float | None
) -> dict[str, str]:
    """Return the variables the DAGs of a deployment read: output folder, model, connection, poll interval.

    ``[airflow_batch] output_path`` is ``output`` and ``[airflow_batch] model`` is
    :data:`DEFAULT_MODEL`, so a DAG that sets neither parses and runs. ``anthropic_url`` points
    ``anthropic_default`` at an emulator (with a dummy key); None leaves the connection to the
    user (a real key in the UI or their own ``AIRFLOW_CONN_ANTHROPIC_DEFAULT``).
    ``poll_interval`` sets ``[airflow_batch] poll_interval`` for every job of the deployment;
    None keeps the default (60 s).
    """
    env = {
        "AIRFLOW_VAR_AIRFLOW_BATCH_OUTPUT": str(output),
        "AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH": str(output),
        "AIRFLOW__AIRFLOW_BATCH__MODEL": DEFAULT_MODEL,
    }
    if poll_interval is not None:
        env["AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL"] = f"{poll_interval:g}"
    if anthropic_url is not None:
        env["AIRFLOW_CONN_ANTHROPIC_DEFAULT"] = json.dumps(
            {"conn_type": "anthropic", "password": "emulator-key", "host": anthropic_url}
        )
    return env


def deployment_healthy(base_url: str, components: Iterable[str] = COMPONENTS) -> bool:
    """Return whether the api-server at ``base_url`` answers and reports ``components`` healthy."""
    try:
        response = httpx.get(f"{base_url}/api/v2/monitor/health", timeout=2)
    except httpx.TransportError:
        return False
    if response.status_code != 200:
        return False
    health = response.json()
    return all(
        health.get(_HEALTH_KEYS[component], {}).get("status") == "healthy"
        for component in components
        if component in _HEALTH_KEYS
    )
