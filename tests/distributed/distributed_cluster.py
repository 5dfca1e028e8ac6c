"""A production-shaped Airflow on one machine: PostgreSQL, several triggerers, Celery or local tasks.

:class:`DistributedCluster` is an :class:`airflow_cluster.AirflowCluster` (same isolated home,
environment-only configuration, process groups, REST helpers) whose metadata DB is a
PostgreSQL server and which runs two triggerers as separate processes beside the api-server,
scheduler and dag-processor. With a Redis broker its executor is Celery and it runs two Celery
workers too; without one it keeps the LocalExecutor (tasks run under the scheduler), which is
all a test of the triggerers needs. :class:`DistributedDeployment` starts every server it needs
(PostgreSQL, then Redis and moto S3 when asked, the emulator) and stops exactly those, in
reverse order.

The settings that make a dead worker or triggerer recoverable within a test's minutes are
the ones a production deployment tunes the same way (see docs/deployment.md, "Production
deployment"): ``[scheduler] task_instance_heartbeat_timeout`` (a task whose worker died is
failed, then retried, after this many seconds without a heartbeat) and ``[triggerer]
triggerer_health_check_threshold`` (a trigger whose triggerer stopped heartbeating is taken
over by another after this many seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from airflow_cluster import AirflowCluster, wait_for
from local_services import MotoS3, PostgresServer, RedisServer, ServerProcess, signal_group

if TYPE_CHECKING:
    from airflow_batch.emulator.process import EmulatorProcess

#: Seconds without a heartbeat after which the scheduler fails a running task (then retries it).
TASK_HEARTBEAT_TIMEOUT = 20
#: Seconds without a heartbeat after which a triggerer's triggers go to another triggerer.
TRIGGERER_HEALTH_THRESHOLD = 10


class DistributedCluster(AirflowCluster):
    """api-server, scheduler, dag-processor, ``triggerers`` triggerers and, with ``redis``,
    ``workers`` Celery workers (without it, the LocalExecutor)."""

    def __init__(
        self,
        home: Path,
        *,
        postgres: PostgresServer,
        redis: RedisServer | None,
        dags_folder: Path,
        extra_env: Mapping[str, str] | None = None,
        workers: int = 2,
        triggerers: int = 2,
        worker_concurrency: int = 2,
    ) -> None:
        self.postgres = postgres
        self.worker_names = [f"worker-{n}" for n in range(1, workers + 1)] if redis else []
        self.triggerer_names = [f"triggerer-{n}" for n in range(1, triggerers + 1)]
        self.worker_concurrency = worker_concurrency
        celery = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres.url.replace("+psycopg2", ""),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        } if redis else {}  # fmt: skip
        env = {
            **celery,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url,
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_THRESHOLD),
            "AIRFLOW__TRIGGERER__CAPACITY": "100",
            **(extra_env or {}),
        }
        super().__init__(
            home,
            dags_folder=dags_folder,
            extra_env=env,
            components=("api-server", "scheduler", "dag-processor"),
        )
        # The base environment tunes SQLite (a lock timeout psycopg2 does not know).
        self.env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)
        #: Triggerer job id (the ``triggerer_id`` of the ``trigger`` table) -> component name.
        self.triggerer_jobs: dict[int, str] = {}

    def start(self, timeout: float = 240) -> DistributedCluster:
        """Migrate PostgreSQL, start every component, and wait until all of them are ready.

        The triggerers start one after the other, each once the previous one has its job row,
        so that each triggerer job id is known to belong to one process.
        """
        started = time.monotonic()
        self.run_cli("db", "migrate", timeout=300)
        self.timings["migrate_s"] = time.monotonic() - started
        for name in self.components:
            self.spawn(name)
        for name in self.worker_names:
            worker = ["celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
            worker += ["--concurrency", str(self.worker_concurrency), "--pid", str(self.home / f"{name}.pid")]
            self.spawn(name, *worker)
        for name in self.triggerer_names:
            self.spawn(name, "triggerer", "--skip-serve-logs", "--pid", str(self.home / f"{name}.pid"))
            job_id = wait_for(self._new_triggerer_job, timeout=timeout, what=f"{name}'s triggerer job")
            self.triggerer_jobs[job_id] = name
        wait_for(self._healthy, timeout=timeout, interval=0.5, what="api-server, scheduler, dag-processor")
        if self.worker_names:
            wait_for(self._workers_ready, timeout=timeout, interval=0.5, what="Celery workers ready")
        self.timings["ready_s"] = time.monotonic() - started
        return self

    def _new_triggerer_job(self) -> int | None:
        self._check_alive()
        rows = self.postgres.query("SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
        new = sorted(row[0] for row in rows if row[0] not in self.triggerer_jobs)
        return new[0] if new else None

    def _workers_ready(self) -> bool:
        self._check_alive()
        # Celery logs "<hostname> ready." once the worker consumes from the broker.
        return all(" ready." in self._log(name) for name in self.worker_names)

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {process.returncode}\n{self.log_tails()}")

    def _log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL component ``name`` as a host failure would: its process and every descendant.

        Killing the component's process group is not enough: Airflow puts each task runner
        (and a triggerer its trigger runner) in a process group of its own.
        """
        process = self.processes.pop(name)
        for pgid in _tree_groups(process.pid):
            signal_group(pgid, signal.SIGKILL)
        process.wait(timeout=30)

    def pause(self, name: str) -> None:
        """SIGSTOP component ``name`` and every descendant, as a long GC pause or a VM freeze would."""
        for pgid in _tree_groups(self.processes[name].pid):
            signal_group(pgid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT component ``name`` and every descendant (after :meth:`pause`)."""
        for pgid in _tree_groups(self.processes[name].pid):
            signal_group(pgid, signal.SIGCONT)

    def trigger_owner(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        """Return the triggerer now running the trigger of task ``task_id``, or None (not deferred)."""
        rows = self.postgres.query(
            "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
            "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s",
            (dag_id, run_id, task_id),
        )
        if not rows or rows[0][0] is None:
            return None
        return self.triggerer_jobs.get(rows[0][0], f"job {rows[0][0]}")

    def component_of_pid(self, pid: int) -> str | None:
        """Return the component whose process is ``pid`` or one of its ancestors, if any."""
        try:
            lineage = {pid, *(parent.pid for parent in psutil.Process(pid).parents())}
        except psutil.NoSuchProcess:
            return None
        return next((name for name, process in self.processes.items() if process.pid in lineage), None)


def _tree_groups(pid: int) -> set[int]:
    """Return the process groups of process ``pid`` and of all its descendants."""
    groups = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        for member in (pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(member))
    return groups


@dataclass
class DistributedDeployment:
    """Every server of a distributed test, started in order and stopped in reverse."""

    root: Path
    dags_folder: Path
    emulator_config: Mapping[str, Any]
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Celery workers with a Redis broker (else the LocalExecutor), and a moto S3 server.
    celery: bool = True
    s3_server: bool = True
    postgres: PostgresServer = field(init=False)
    redis: RedisServer | None = field(init=False, default=None)
    s3: MotoS3 = field(init=False)
    emulator: EmulatorProcess = field(init=False)
    cluster: DistributedCluster = field(init=False)
    _started: list[Any] = field(default_factory=list, init=False)

    def start(self) -> DistributedDeployment:
        """Start PostgreSQL, Redis and moto S3 (when asked), the emulator, then the Airflow cluster."""
        from airflow_batch.emulator.process import EmulatorProcess

        try:
            self.postgres = self._start(PostgresServer(self.root / "postgres"))
            if self.celery:
                self.redis = self._start(RedisServer(self.root / "redis"))
            if self.s3_server:
                self.s3 = self._start(MotoS3(self.root / "moto"))
            self.emulator = self._start(EmulatorProcess(self.root / "emulator", config=self.emulator_config))
            env = {
                "AIRFLOW_CONN_ANTHROPIC_DEFAULT": json.dumps(
                    {"conn_type": "anthropic", "password": "test-key", "host": self.emulator.base_url}
                ),
                **(self.s3.connection_env("aws_default") if self.s3_server else {}),
                **self.extra_env,
            }
            self.cluster = DistributedCluster(
                self.root / "airflow",
                postgres=self.postgres,
                redis=self.redis,
                dags_folder=self.dags_folder,
                extra_env=env,
            )
            self._started.append(self.cluster)
            self.cluster.start()
        except BaseException:
            with contextlib.suppress(Exception):
                print(self.cluster.log_tails())
            self.stop()
            raise
        return self

    def _start(self, server: Any) -> Any:
        self._started.append(server)
        return server.start()

    def stop(self) -> None:
        """Stop everything this deployment started, the Airflow cluster first."""
        while self._started:
            server = self._started.pop()
            with contextlib.suppress(Exception):
                server.stop()

    def log_tails(self) -> str:
        """Return the end of every log: Airflow components and servers."""
        parts = [self.cluster.log_tails(2000)]
        for server in self._started:
            if isinstance(server, ServerProcess):
                parts.append(f"--- {server.log_path} ---\n{server.log_tail(1000)}")
        return "\n".join(parts)
