"""What ``airflow-batch dev`` builds on, with real processes but no Airflow: seconds, not minutes.

Stopping process groups (including a descendant that moved to a group of its own and ignores
SIGTERM, as Airflow's task runners may), finding what a killed run left, the deployment's
environment, and the command's refusals before it starts anything.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from airflow_batch.dev.deployment import (
    SQLITE_CONNECT_ARGS,
    admin_login,
    deployment_environment,
    example_dags_environment,
)
from airflow_batch.dev.processes import ProcessGroupsFile, start_in_own_group, stop_process_groups

AIRFLOW_BATCH = str(Path(sys.executable).with_name("airflow-batch"))

# A leader that starts a child in a new session; the child ignores SIGTERM and writes its pid.
_LEADER = """
import subprocess, sys, time
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()):
            return text
        time.sleep(0.05)
    raise TimeoutError(f"{path} not written within {timeout} s")


def test_stop_process_groups_kills_a_descendant_that_left_the_group_and_ignores_sigterm(
    tmp_path: Path,
) -> None:
    leader = start_in_own_group(
        [sys.executable, "-c", _LEADER, str(tmp_path / "child.pid")], env={}, log=tmp_path / "leader.log"
    )
    child = psutil.Process(int(_wait_for_file(tmp_path / "child.pid")))
    assert os.getpgid(child.pid) != leader.pid  # out of the group a killpg reaches

    started = time.monotonic()
    left = stop_process_groups([leader.pid], grace=1)

    assert left == []
    assert leader.wait(timeout=5) is not None
    assert not child.is_running()
    assert time.monotonic() - started < 8


def test_a_new_run_finds_the_groups_a_killed_run_left_running(tmp_path: Path) -> None:
    path = tmp_path / "processes.json"
    # The "previous run": records a sleeping group, then dies without stopping it.
    previous = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; from pathlib import Path;"
            "from airflow_batch.dev.processes import ProcessGroupsFile;"
            "p = subprocess.Popen(['sleep', '600'], start_new_session=True);"
            "ProcessGroupsFile(Path(sys.argv[1])).add('scheduler', p.pid)",
            str(path),
        ],
        check=True,
    )
    assert previous.returncode == 0
    groups = ProcessGroupsFile(path)
    leftovers = groups.leftover_groups()

    assert groups.live_owner() is None
    assert list(leftovers) == ["scheduler"]
    assert stop_process_groups(leftovers.values(), grace=1) == []
    assert ProcessGroupsFile(path).leftover_groups() == {}


def test_deployment_environment_drops_the_callers_airflow_settings_and_names_importable_connect_args(
    tmp_path: Path,
) -> None:
    login = admin_login(tmp_path / "home")
    inherited = {"PATH": "/bin", "AIRFLOW_HOME": "/elsewhere", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}

    env = deployment_environment(
        tmp_path / "home", port=8123, dags_folder=tmp_path / "dags", login=login, inherited=inherited
    )

    assert env["PATH"] == "/bin"
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    module, _, name = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is SQLITE_CONNECT_ARGS
    # The same home keeps its login across restarts.
    assert admin_login(tmp_path / "home") == login


def test_example_dags_environment_leaves_the_connection_alone_for_the_real_api(tmp_path: Path) -> None:
    real = example_dags_environment(tmp_path, anthropic_url=None, poll_interval=None)
    emulated = example_dags_environment(tmp_path, anthropic_url="http://127.0.0.1:9", poll_interval=2)

    assert "AIRFLOW_CONN_ANTHROPIC_DEFAULT" not in real
    # The defaults dev prints are the deployment's config: a DAG that sets neither parses.
    assert real["AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH"] == str(tmp_path)
    assert real["AIRFLOW__AIRFLOW_BATCH__MODEL"] == "claude-haiku-4-5"
    assert '"host": "http://127.0.0.1:9"' in emulated["AIRFLOW_CONN_ANTHROPIC_DEFAULT"]
    assert emulated["AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL"] == "2"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--emulator-url", "http://127.0.0.1:9"], "no emulator answers at http://127.0.0.1:9"),
        (["--dags", "/nonexistent/dags"], "no DAG folder at /nonexistent/dags"),
        (["--emulator-config", "{}", "--real-api"], "--emulator-config configures the emulator dev starts"),
    ],
)
def test_dev_refuses_before_starting_anything(tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run(
        [AIRFLOW_BATCH, "dev", "--workdir", str(tmp_path / "dev"), "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "dev" / "processes.json").exists()
    assert not (tmp_path / "dev" / "logs").exists()


def test_a_bad_emulator_config_is_refused_with_the_emulators_own_rule(tmp_path: Path) -> None:
    result = subprocess.run(
        [AIRFLOW_BATCH, "dev", "--workdir", str(tmp_path / "dev"), "--emulator-config", '{"error_rate": 2}'],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2  # a usage error, before anything starts
    assert "argument --emulator-config: setting error_rate: 2 is not valid" in result.stderr
    assert not (tmp_path / "dev").exists()


def test_dev_refuses_a_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = subprocess.run(
        [AIRFLOW_BATCH, "dev", "--workdir", str(tmp_path / "dev"), "--port", str(busy_port)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert f"port {busy_port} is in use" in result.stderr
    assert not (tmp_path / "dev" / "logs").exists()
