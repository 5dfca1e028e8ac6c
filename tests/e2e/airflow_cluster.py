"""A real Airflow deployment in a temp dir: api-server, scheduler, dag-processor, triggerer.

Each component is a separate ``airflow`` process in its own process group (LocalExecutor,
SQLite), configured only through environment variables, the same ones ``airflow-batch dev``
uses (:mod:`airflow_batch.dev.deployment`), so nothing leaks into or out of the test process.
``stop`` stops exactly the process groups ``start`` created and what they spawned: SIGTERM,
then SIGKILL after a grace period.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import pytest

from airflow_batch.dev.deployment import (
    AIRFLOW_EXECUTABLE,
    COMPONENTS,
    LogServers,
    admin_login,
    deployment_environment,
    deployment_healthy,
    example_dags_environment,
)
from airflow_batch.dev.processes import start_in_own_group, stop_process_groups

if TYPE_CHECKING:
    from airflow_batch.emulator.process import EmulatorProcess

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = AIRFLOW_EXECUTABLE
ALL_COMPONENTS = COMPONENTS


def free_port() -> int:
    """Return a TCP port free on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns a truthy value; return it or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last value: {last!r})")


class AirflowCluster:
    """An isolated Airflow home plus the component processes started on it."""

    def __init__(
        self,
        home: Path,
        *,
        dags_folder: Path = REPO / "dags",
        extra_env: Mapping[str, str] | None = None,
        components: Iterable[str] = ALL_COMPONENTS,
    ) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._login = admin_login(home)
        self.username = self._login.username
        self.password = self._login.password
        self.components = tuple(components)
        self.log_names = list(self.components)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self.env = self._environment(dags_folder, extra_env or {})
        self.timings: dict[str, float] = {}

    def _environment(self, dags_folder: Path, extra_env: Mapping[str, str]) -> dict[str, str]:
        # The deployment's settings live in the package (``airflow-batch dev`` uses the same);
        # nothing comes from the test process's AIRFLOW* variables.
        env = deployment_environment(
            self.home,
            port=self.port,
            dags_folder=dags_folder,
            login=self._login,
            log_servers=LogServers(worker_port=free_port(), trigger_port=free_port()),
        )
        env.update(extra_env)
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def run_cli(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow ARGS`` against this home and return the finished process."""
        result = subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
        return result

    def start(self, timeout: float = 120) -> AirflowCluster:
        """Migrate the database, start the components and wait until the API answers."""
        started = time.monotonic()
        self.run_cli("db", "migrate")
        self.timings["migrate_s"] = time.monotonic() - started
        for component in self.components:
            self.spawn(component)
        wait_for(self._healthy, timeout=timeout, interval=0.5, what="api-server health")
        self.timings["ready_s"] = time.monotonic() - started
        return self

    def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``airflow ARGS`` (default ``airflow NAME``) as component ``name``, logging to ``NAME.log``.

        ``env`` adds to the cluster's environment for this process only.
        """
        self.processes[name] = start_in_own_group(
            [AIRFLOW, *(args or (name,))], env={**self.env, **(env or {})}, log=self.home / f"{name}.log"
        )
        if name not in self.log_names:
            self.log_names.append(name)
        return self.processes[name]

    def restart_if_exited(self, name: str, *, because: str) -> bool:
        """Start component ``name`` again if it exited with ``because`` in its log, as a deployment's
        supervisor would; return whether it did. Any other exit raises, with the logs."""
        process = self.processes[name]
        if process.poll() is None:
            return False
        if because not in (self.home / f"{name}.log").read_text(errors="replace"):
            raise RuntimeError(f"airflow {name} exited with {process.returncode}\n{self.log_tails()}")
        self.spawn(name)
        return True

    def _healthy(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {process.returncode}\n{self.log_tails()}")
        return deployment_healthy(self.base_url, self.processes)

    def stop(self) -> None:
        """Stop the process groups this cluster started and all they spawned: SIGTERM, SIGKILL after 15 s."""
        stop_process_groups([process.pid for process in self.processes.values()], grace=15)
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()

    def log_tails(self, chars: int = 3000) -> str:
        """Return the end of every component log, for failure messages."""
        parts = []
        for component in self.log_names:
            path = self.home / f"{component}.log"
            if path.exists():
                parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # -- REST API --------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """Return a JWT for the admin user (``POST /auth/token``)."""
        if self._token is None:
            response = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the REST API as the admin user; ``path`` starts with ``/api/v2``."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)

    def api_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the REST API and return the decoded body, raising on an error status."""
        response = self.api(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; return its DAG record."""

        def parsed() -> dict[str, Any] | None:
            response = self.api("GET", f"/api/v2/dags/{dag_id}")
            return response.json() if response.status_code == 200 else None

        result: dict[str, Any] = wait_for(parsed, timeout=timeout, what=f"DAG {dag_id} parsed")
        return result

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 180, states: tuple[str, ...] = ("success",)
    ) -> dict[str, Any]:
        """Wait for a DAG run to reach a final state; fail with the task states if it is not ``states``."""
        finished = {"success", "failed"}

        def done() -> dict[str, Any] | None:
            run = self.api_json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in finished else None

        run: dict[str, Any] = wait_for(done, timeout=timeout, interval=1, what=f"run {run_id} finished")
        if run["state"] not in states:
            tis = self.api_json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
            summary = {ti["task_id"]: ti["state"] for ti in tis["task_instances"]}
            raise AssertionError(f"run {run_id} ended {run['state']}; tasks: {summary}\n{self.log_tails()}")
        return run

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """Return the text of one task try's log through the REST API."""
        response = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        content = response.json().get("content", [])
        if isinstance(content, str):
            return content
        return "\n".join(item.get("event", "") if isinstance(item, dict) else str(item) for item in content)


# -- pytest fixtures (imported by the e2e and ui conftests, shared by one session) ------------

OUTPUT_VARIABLE = "AIRFLOW_VAR_AIRFLOW_BATCH_OUTPUT"
REVIEW_DAG = "review_sentiment"


@dataclass
class ClusterDeployment:
    """A running cluster, the emulator it talks to and where its DAGs write."""

    cluster: AirflowCluster
    emulator: EmulatorProcess
    output: Path


@dataclass
class ObservedRun:
    """A DAG run triggered through the REST API, with what was seen while it ran."""

    dag_id: str
    run_id: str
    seconds: float
    deferred_tasks: set[str] = field(default_factory=set)
    links_while_deferred: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Shared:
    """One deployment per pytest session, even though two conftests (e2e, ui) declare the fixture.

    Each conftest gets its own fixture definition, so session scope alone would start two
    clusters; the fixtures share this one and the last to finish stops it.
    """

    deployment: ClusterDeployment | None = None
    users = 0
    runs: ClassVar[dict[str, ObservedRun]] = {}


def _start_deployment(root: Path) -> ClusterDeployment:
    from airflow_batch.emulator.process import EmulatorProcess

    # A few transient errors, so every job has a retry round. Every batch takes a few seconds:
    # a trigger that fires at once races Airflow 3.3's scheduler (the executor's report of the
    # deferring attempt can land after the resumed attempt started, which fails the task).
    config = {
        "throughput": 10_000.0,
        "start_delay_seconds": 4.0,
        "error_types": {"overloaded_error": 0.04},
        "seed": 11,
    }
    emulator = EmulatorProcess(root / "emulator", config=config).start()
    output = root / "output"
    cluster = AirflowCluster(
        root / "airflow",
        extra_env=example_dags_environment(output, anthropic_url=emulator.base_url, poll_interval=1),
    )
    try:
        cluster.start()
    except BaseException:
        print(cluster.log_tails())
        cluster.stop()
        emulator.stop()
        raise
    return ClusterDeployment(cluster, emulator, output)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    """Start an emulator and a real Airflow (four processes) on the repository's ``dags/``."""
    if _Shared.deployment is None:
        _Shared.deployment = _start_deployment(tmp_path_factory.mktemp("cluster"))
    _Shared.users += 1
    try:
        yield _Shared.deployment
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            shared, _Shared.deployment = _Shared.deployment, None
            _Shared.runs.clear()
            shared.cluster.stop()
            shared.emulator.stop()


def trigger_and_watch(
    cluster: AirflowCluster,
    dag_id: str,
    *,
    while_deferred: Callable[[str], None] | None = None,
    timeout: float = 300,
) -> ObservedRun:
    """Unpause and trigger ``dag_id`` through the REST API; wait for success, noting deferrals.

    Each task seen ``deferred`` is recorded with its extra links at that moment, so tests can
    check what the UI offers during a deferred wait; ``while_deferred(task_id)`` then runs
    once for it, while it is still deferred.
    """
    started = time.monotonic()
    cluster.wait_for_dag(dag_id)
    cluster.api_json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    run = cluster.api_json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
    observed = ObservedRun(dag_id, run["dag_run_id"], 0.0)
    base = f"/api/v2/dags/{dag_id}/dagRuns/{observed.run_id}"

    def finished() -> bool:
        tis = cluster.api_json("GET", f"{base}/taskInstances")["task_instances"]
        for ti in tis:
            task_id = ti["task_id"]
            if ti["state"] == "deferred" and task_id not in observed.deferred_tasks:
                observed.deferred_tasks.add(task_id)
                links = cluster.api("GET", f"{base}/taskInstances/{task_id}/links")
                observed.links_while_deferred[task_id] = links.json() if links.status_code == 200 else {}
                if while_deferred is not None:
                    while_deferred(task_id)
        return cluster.api_json("GET", base)["state"] in ("success", "failed")

    wait_for(finished, timeout=timeout, interval=0.5, what=f"{dag_id} run finished")
    cluster.wait_for_run(dag_id, observed.run_id, timeout=10)
    observed.seconds = time.monotonic() - started
    check_tries(cluster, dag_id, observed.run_id)
    return observed


def check_tries(cluster: AirflowCluster, dag_id: str, run_id: str) -> dict[str, int]:
    """Print every task's try number; fail if one needed more than one retry (a flaky step shows)."""
    tis = cluster.api_json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    tries = {ti["task_id"]: int(ti["try_number"]) for ti in tis}
    print(f"{dag_id} {run_id} tries: " + ", ".join(f"{task}={n}" for task, n in sorted(tries.items())))
    assert max(tries.values(), default=1) <= 2, f"a task of {dag_id} needed more than one retry: {tries}"
    return tries


@pytest.fixture(scope="session")
def review_run(deployment: ClusterDeployment) -> ObservedRun:
    """The review-sentiment DAG, triggered once through the REST API and finished successfully.

    The emulator starts the run nearly paused, so the first wait surely defers; once the
    trigger has written its first progress file the emulator goes back to full speed.
    """
    if REVIEW_DAG in _Shared.runs:
        return _Shared.runs[REVIEW_DAG]
    emulator = deployment.emulator
    emulator.configure(throughput=0.5)

    def release(task_id: str) -> None:
        if task_id != "sentiment.wait":
            return
        wait_for(
            lambda: list(deployment.output.glob(f"{REVIEW_DAG}/*/sentiment.submit/round-0/progress.json")),
            timeout=60,
            what="the trigger's first progress file",
        )
        emulator.configure(throughput=10_000.0)

    try:
        _Shared.runs[REVIEW_DAG] = trigger_and_watch(deployment.cluster, REVIEW_DAG, while_deferred=release)
    finally:
        emulator.configure(throughput=10_000.0)
    return _Shared.runs[REVIEW_DAG]
