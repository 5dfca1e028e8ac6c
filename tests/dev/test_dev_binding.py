"""Two ``airflow-batch dev`` deployments on one host: both start, and nothing listens beyond loopback.

Rule (issue 23, class 9): the dev command's processes, Airflow's log servers included, listen
on 127.0.0.1 only and on ports chosen free, so a second deployment on the same host does not
collide with the first.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from airflow_cluster import free_port, wait_for

from airflow_batch.dev.processes import ProcessGroupsFile, stop_process_groups

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AIRFLOW_BATCH = str(Path(sys.executable).with_name("airflow-batch"))
LOOPBACK = {"127.0.0.1", "::1"}


def _ready(process: subprocess.Popen[bytes], output: Path) -> bool:
    text = output.read_text(errors="replace")
    if process.poll() is not None:
        raise AssertionError(f"airflow-batch dev exited {process.returncode} before it was ready:\n{text}")
    return "Ctrl-C stops everything." in text


@contextlib.contextmanager
def _dev(tmp_path: Path, name: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    workdir, output = tmp_path / name, tmp_path / f"{name}.out"
    command = [AIRFLOW_BATCH, "dev", "--port", str(free_port()), "--workdir", str(workdir)]
    with output.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, workdir, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if (groups := workdir / "processes.json").exists():
            stop_process_groups(ProcessGroupsFile.read(groups).values(), grace=5)


def _listening(groups: set[int]) -> dict[tuple[str, int], str]:
    """Return ``(address, port) -> process`` of every listening socket of the process groups."""
    members = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) in groups:
                members[process.pid] = " ".join(process.info["cmdline"] or [])[:80]
    return {
        (connection.laddr.ip, connection.laddr.port): members[connection.pid]
        for connection in psutil.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.pid in members
    }


def test_two_dev_deployments_start_side_by_side_and_listen_on_loopback_only(tmp_path: Path) -> None:
    with _dev(tmp_path, "first") as first, _dev(tmp_path, "second") as second:
        for process, _, output in (first, second):
            wait_for(
                lambda p=process, o=output: _ready(p, o), timeout=300, interval=1, what="airflow-batch dev"
            )
        sockets = []
        for _, workdir, _ in (first, second):
            groups = ProcessGroupsFile.read(workdir / "processes.json")
            assert {"worker-log-server", "trigger-log-server"} <= set(groups)
            listening = _listening(set(groups.values()))
            outside = {address: who for address, who in listening.items() if address[0] not in LOOPBACK}
            assert outside == {}, f"listening beyond the loopback interface: {outside}"
            sockets.append(set(listening))
        assert not sockets[0] & sockets[1]
        # Each deployment's log servers listen where it said, and answer (no token: refused).
        for (_, _, output), listening in zip((first, second), sockets, strict=True):
            said = re.search(r"log servers \(127\.0\.0\.1:(\d+), 127\.0\.0\.1:(\d+)\)", output.read_text())
            assert said, output.read_text()
            for port in map(int, said.groups()):
                assert ("127.0.0.1", port) in listening and port not in (8793, 8794)  # Airflow's fixed ports
                assert httpx.get(f"http://127.0.0.1:{port}/log/x", timeout=10).status_code in (401, 403)
