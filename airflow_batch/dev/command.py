"""``airflow-batch dev``: the emulator and a local Airflow on the example DAGs, until Ctrl-C.

Starts, each as the leader of its own process group: the emulator (unless ``--emulator-url``
or ``--real-api``), ``airflow db migrate``, then ``airflow api-server``, ``scheduler``,
``dag-processor`` and ``triggerer`` on an Airflow home in the workdir, configured as
:mod:`airflow_batch.dev.deployment` describes. Once the api-server reports every component
healthy it prints the UI address, the login and where the logs are, and waits. Ctrl-C,
SIGTERM or SIGHUP (or a component exiting on its own) stops every group it started, Airflow
first and the emulator last, with everything they spawned; while they run, the groups are
listed in ``<workdir>/processes.json``.

Signals only set a flag that the waits check, so a stop never lands between starting a
process and recording it.

``airflow-batch dev airflow <args>`` runs the Airflow CLI on the deployment of a workdir (its
home, SQLite settings, DAG folder, ``[airflow_batch]`` defaults and connection), read from the
``deployment.json`` the last ``dev`` start wrote: ``backfill create``, ``tasks clear`` and
``dags test`` then reach the same database as the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import httpx

from airflow_batch.dev.deployment import (
    AIRFLOW_EXECUTABLE,
    COMPONENTS,
    DEFAULT_MODEL,
    admin_login,
    airflow_environment,
    deployment_environment,
    deployment_healthy,
    example_dags_environment,
    example_dags_folder,
)
from airflow_batch.dev.processes import ProcessGroupsFile, start_in_own_group, stop_process_groups

if TYPE_CHECKING:
    from airflow_batch.emulator.process import EmulatorProcess

DEFAULT_PORT = 8080
DEFAULT_WORKDIR = ".dev"
EMULATOR_CONFIG = {"throughput": 20.0, "start_delay_seconds": 2.0}
"""Batches start 2 s after creation and process 20 requests a second: slow enough to watch a
run's progress on the Batch jobs page (200 reviews take ~12 s), fast enough not to wait."""
EMULATOR_POLL_INTERVAL = 2.0
READY_TIMEOUT = 300.0
STOP_GRACE = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Variables of the caller's shell a real-API deployment keeps: the connection and poll interval.
REAL_API_PASSTHROUGH = ("AIRFLOW_CONN_ANTHROPIC_DEFAULT", "AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL")
DEPLOYMENT_FILE = "deployment.json"
"""What ``airflow-batch dev airflow`` needs to rebuild a deployment's environment (no secret)."""


class DevStopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived: stop everything and exit 0."""


class DevFailed(Exception):
    """The deployment could not start or a process of it exited; the message says which and why."""


class DevDeployment:
    """The processes of one ``airflow-batch dev`` run and the workdir they keep their state in.

    Layout of ``workdir``: ``airflow-home/`` (``AIRFLOW_HOME``: SQLite DB, admin password,
    task logs), ``emulator/`` (the emulator's store and log), ``logs/`` (one log per Airflow
    command), ``output/`` (job folders of the example DAGs), ``processes.json``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = DEFAULT_PORT,
        dags_folder: Path | None = None,
        emulator_url: str | None = None,
        real_api: bool = False,
        emulator_config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.dags_folder = (dags_folder or example_dags_folder()).resolve()
        self.emulator_url = emulator_url.rstrip("/") if emulator_url else None
        self.real_api = real_api
        self.emulator_config = {**EMULATOR_CONFIG, **(emulator_config or {})}
        self.home = self.workdir / "airflow-home"
        self.logs = self.workdir / "logs"
        self.output = output_folder(self.workdir)
        self.login = admin_login(self.home)
        self.process_groups = ProcessGroupsFile(self.workdir / "processes.json")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.emulator: EmulatorProcess | None = None
        self.stop_signal: int | None = None

    # -- starting ------------------------------------------------------------------------------

    def request_stop(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: note the signal; the next wait raises :class:`DevStopRequested`."""
        self.stop_signal = signum

    def start(self) -> None:
        """Start the emulator, migrate the database and start every component; return once healthy."""
        self._check_startable()
        self._stop_leftovers()
        anthropic_url = self._anthropic_url()
        env = deployment_environment(
            self.home, port=self.port, dags_folder=self.dags_folder, login=self.login
        )
        recorded = record_deployment(
            self.workdir, dags_folder=self.dags_folder, anthropic_url=anthropic_url, real_api=self.real_api
        )
        env.update(jobs_environment(self.workdir, recorded))

        say(f"migrating the Airflow database in {self.home} ...")
        started = time.monotonic()
        migrate = self._start("migrate", [AIRFLOW_EXECUTABLE, "db", "migrate"], env)
        self._wait(lambda: migrate.poll() is not None, READY_TIMEOUT, "airflow db migrate")
        if migrate.returncode != 0:
            raise DevFailed(f"airflow db migrate exited {migrate.returncode}\n{self._log_tail('migrate')}")
        del self.processes["migrate"]
        say(f"  done in {time.monotonic() - started:.0f} s")

        say(f"starting {', '.join(COMPONENTS)} ...")
        for component in COMPONENTS:
            self._start(component, [AIRFLOW_EXECUTABLE, component], env)
        self._wait(lambda: deployment_healthy(self.base_url), READY_TIMEOUT, "every component healthy")

    def _check_startable(self) -> None:
        if not self.dags_folder.is_dir():
            raise DevFailed(f"no DAG folder at {self.dags_folder}: pass --dags with your DAG folder")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                raise DevFailed(
                    f"port {self.port} is in use (another Airflow?): stop it or pass --port"
                ) from None
        if (owner := self.process_groups.live_owner()) is not None and owner != os.getpid():
            raise DevFailed(
                f"airflow-batch dev (pid {owner}) is already running on {self.workdir}: "
                "stop it first, or pass another --workdir"
            )

    def _stop_leftovers(self) -> None:
        # A previous run that was killed outright (SIGKILL, a crash) left its groups running.
        if leftovers := self.process_groups.leftover_groups():
            say(f"stopping what a previous run left running: {', '.join(leftovers)}")
            stop_process_groups(leftovers.values(), STOP_GRACE)
        self.process_groups.remove()

    def _anthropic_url(self) -> str | None:
        if self.real_api:
            return None
        if self.emulator_url is not None:
            try:
                healthy = httpx.get(f"{self.emulator_url}/_emulator/health", timeout=5).status_code == 200
            except httpx.TransportError:
                healthy = False
            if not healthy:
                raise DevFailed(f"no emulator answers at {self.emulator_url} (GET /_emulator/health)")
            return self.emulator_url
        from airflow_batch.emulator.process import EmulatorProcess

        emulator = EmulatorProcess(
            self.workdir / "emulator", config=self.emulator_config, own_process_group=True
        )
        self.emulator = emulator.start()
        self.process_groups.add("emulator", emulator.pid or 0)
        say(f"emulator started at {emulator.base_url}")
        return emulator.base_url

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = start_in_own_group(command, env=env, log=self.logs / f"{name}.log")
        self.processes[name] = process
        self.process_groups.add(name, process.pid)
        return process

    # -- running -------------------------------------------------------------------------------

    def watch(self) -> None:
        """Wait until a stop is requested (raises :class:`DevStopRequested`) or a process exits."""
        self._wait(lambda: False, None, "a stop")

    def _wait(self, condition: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.stop_signal is not None:
                raise DevStopRequested(signal.Signals(self.stop_signal).name)
            self._check_running()
            if condition():
                return
            if deadline is not None and time.monotonic() > deadline:
                raise DevFailed(f"{what}: not reached within {timeout:.0f} s\n{self.log_tails()}")
            time.sleep(0.5)

    def _check_running(self) -> None:
        for name, process in self.processes.items():
            if name != "migrate" and process.poll() is not None:
                raise DevFailed(f"airflow {name} exited with {process.returncode}\n{self._log_tail(name)}")
        if self.emulator is not None and not self.emulator.running:
            raise DevFailed(f"the emulator exited; its log: {self.emulator.log_path}")

    def _log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"
        return f"--- {path} ---\n{text}"

    def log_tails(self) -> str:
        """Return the end of every Airflow component's log, for failure messages."""
        return "\n".join(self._log_tail(name) for name in COMPONENTS if name in self.processes)

    # -- stopping ------------------------------------------------------------------------------

    def stop(self) -> list[int]:
        """Stop every process group started, Airflow first, the emulator last; return pids left."""
        names = [*self.processes, *(["emulator"] if self.emulator is not None else [])]
        if names:
            say(f"stopping {', '.join(names)} (SIGTERM, then SIGKILL after {STOP_GRACE:.0f} s) ...")
        left = stop_process_groups([p.pid for p in self.processes.values()], STOP_GRACE)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
        self.processes.clear()
        if self.emulator is not None:
            if self.emulator.pid is not None:
                left += stop_process_groups([self.emulator.pid], STOP_GRACE)
            self.emulator.stop()
            self.emulator = None
        if names and not left:
            self.process_groups.remove()
        return left

    # -- reporting -----------------------------------------------------------------------------

    def ready_lines(self, seconds: float) -> list[str]:
        """Return what the command prints once the deployment is up: where to go, how to log in."""
        if self.real_api:
            connection = (
                "from your AIRFLOW_CONN_ANTHROPIC_DEFAULT (the real API; keep poll intervals >= 60 s)"
                if "AIRFLOW_CONN_ANTHROPIC_DEFAULT" in os.environ
                else "not set: add it in Admin > Connections (type Anthropic, API key in Password)"
            )
        elif self.emulator is not None:
            connection = f"{self.emulator.base_url} (the emulator started here; a dummy key)"
        else:
            connection = f"{self.emulator_url} (your emulator; a dummy key)"
        emulator_log = f"{self.emulator.log_path}; " if self.emulator is not None else ""
        return [
            f"Airflow is up ({seconds:.0f} s).",
            f"  UI                 {self.base_url}",
            f"  login              {self.login.username} / {self.login.password}",
            f"  Batch jobs page    {self.base_url}/airflow-batch/jobs (Browse > Batch jobs in the UI)",
            f"  DAGs               {self.dags_folder} (paused: unpause one, then trigger it)",
            f"  anthropic_default  {connection}",
            f"  output             {self.output} ([airflow_batch] output_path)",
            f"  model              {DEFAULT_MODEL} ([airflow_batch] model, for jobs that name none)",
            f"  Airflow CLI        airflow-batch dev --workdir {self.workdir} airflow <command>",
            f"  logs               {self.logs}/<name>.log ({', '.join(COMPONENTS)}, migrate)",
            f"                     {emulator_log}task logs: in the UI, files under {self.home / 'logs'}",
            f"  processes          {self.process_groups.path}",
            "Ctrl-C stops everything.",
        ]


def say(line: str) -> None:
    """Print one line of the command's progress at once (the output may be a pipe)."""
    print(line, flush=True)


def output_folder(workdir: Path) -> Path:
    """Return where the jobs of the deployment in ``workdir`` write their folders."""
    return workdir / "output"


def jobs_environment(workdir: Path, recorded: dict[str, Any]) -> dict[str, str]:
    """Return what the jobs of the deployment in ``workdir`` read: output folder, model, connection,
    poll interval (a real-API deployment keeps the caller's connection and poll interval)."""
    real_api = bool(recorded.get("real_api"))
    env = example_dags_environment(
        output_folder(workdir),
        anthropic_url=recorded.get("anthropic_url"),
        poll_interval=None if real_api else EMULATOR_POLL_INTERVAL,
    )
    if real_api:
        env.update({name: os.environ[name] for name in REAL_API_PASSTHROUGH if name in os.environ})
    return env


def record_deployment(
    workdir: Path, *, dags_folder: Path, anthropic_url: str | None, real_api: bool
) -> dict[str, Any]:
    """Write ``workdir/deployment.json`` (what ``dev airflow`` rebuilds the environment from); return it."""
    recorded = {"dags_folder": str(dags_folder), "anthropic_url": anthropic_url, "real_api": real_api}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DEPLOYMENT_FILE).write_text(json.dumps(recorded))
    return recorded


def cli_environment(workdir: Path) -> dict[str, str]:
    """Return the environment of an ``airflow`` command on the deployment ``dev`` last started in
    ``workdir``: its home and SQLite settings, DAG folder and the variables its jobs read."""
    workdir = workdir.resolve()
    recorded_file = workdir / DEPLOYMENT_FILE
    if not recorded_file.exists():
        raise DevFailed(
            f"no deployment in {workdir} ({DEPLOYMENT_FILE} is missing): start `airflow-batch dev` "
            "there first, or pass the --workdir it runs on"
        )
    recorded = json.loads(recorded_file.read_text())
    env = airflow_environment(workdir / "airflow-home", Path(recorded["dags_folder"]))
    env.update(jobs_environment(workdir, recorded))
    return env


def run_airflow_cli(args: argparse.Namespace) -> int:
    """Run ``airflow <args>`` on the dev deployment of ``--workdir``; return its exit code."""
    try:
        env = cli_environment(Path(args.workdir))
    except DevFailed as failure:
        print(f"airflow-batch dev airflow: {failure}", file=sys.stderr, flush=True)
        return 1
    arguments = args.airflow_args[1:] if args.airflow_args[:1] == ["--"] else args.airflow_args
    return subprocess.run([AIRFLOW_EXECUTABLE, *arguments], env=env, check=False).returncode


def emulator_config_argument(value: str) -> dict[str, Any]:
    """Parse ``--emulator-config``: a JSON object or the path of a JSON file, checked by the emulator's
    own rules so a bad setting fails before anything starts."""
    from airflow_batch.emulator.faults import EmulatorConfig

    text = Path(value).read_text() if not value.lstrip().startswith("{") else value
    try:
        changes = json.loads(text)
        if not isinstance(changes, dict):
            raise ValueError("not a JSON object")
        EmulatorConfig().updated(changes)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return changes


def add_dev_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``airflow-batch dev`` to ``parser``."""
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"UI and API port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
        help=f"where the Airflow home, emulator store, logs and outputs live (default ./{DEFAULT_WORKDIR})",
    )
    parser.add_argument(
        "--dags",
        default=None,
        help="DAG folder to load (default: the example DAGs: the clone's dags/, or those the package ships)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--emulator-url",
        default=None,
        help="use the emulator already running at this URL instead of starting one",
    )
    parser.add_argument(
        "--emulator-config",
        type=emulator_config_argument,
        default=None,
        help="emulator settings at start, over the defaults: a JSON object or a JSON file, e.g. "
        '\'{"error_rate": 0.05, "error_types": ["overloaded_error"]}\' (faults, throughput...)',
    )
    target.add_argument(
        "--real-api",
        action="store_true",
        help="start no emulator and leave anthropic_default to you: your AIRFLOW_CONN_ANTHROPIC_DEFAULT "
        "(and AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL) pass through, or set the connection in the UI",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``airflow-batch dev`` with parsed flags until it is stopped; return the exit code."""
    if args.emulator_config is not None and (args.emulator_url or args.real_api):
        print(
            "airflow-batch dev: --emulator-config configures the emulator dev starts; with --emulator-url "
            "configure yours, with --real-api there is none",
            file=sys.stderr,
        )
        return 1
    deployment = DevDeployment(
        Path(args.workdir),
        port=args.port,
        dags_folder=Path(args.dags) if args.dags else None,
        emulator_url=args.emulator_url,
        real_api=args.real_api,
        emulator_config=args.emulator_config,
    )
    for signum in STOP_SIGNALS:
        signal.signal(signum, deployment.request_stop)
    say(f"airflow-batch dev: a local Airflow in {deployment.workdir}")
    started = time.monotonic()
    code = 0
    try:
        deployment.start()
        for line in deployment.ready_lines(time.monotonic() - started):
            say(line)
        deployment.watch()
    except DevStopRequested as stop:
        say(f"{stop} received")
    except DevFailed as failure:
        print(f"airflow-batch dev: {failure}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C must not cut the stop short and leave processes behind.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        stopping = time.monotonic()
        left = deployment.stop()
    if left:
        print(f"airflow-batch dev: processes still running after SIGKILL: {left}", file=sys.stderr)
        return 1
    say(f"stopped in {time.monotonic() - stopping:.0f} s; no process left running")
    return code
