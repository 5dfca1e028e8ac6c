"""Servers a distributed Airflow needs, each on a free loopback port: PostgreSQL, Redis, S3 (moto).

Each server is one process started in its own process group and stopped by that group and
its descendants (``airflow_batch.dev.processes.stop_process_groups``: SIGTERM, then SIGKILL
after a grace period): nothing else on the machine is touched. Readiness
is polled with a deadline, never slept for. Used by the distributed end-to-end test and by
``bench/bench_s3_read.py``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from airflow_cluster import free_port, wait_for

from airflow_batch.dev.processes import stop_process_groups

BIN = Path(sys.executable).parent


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ServerProcess:
    """One server process in its own process group, with a log file and a readiness check."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Return the file collecting the server's output."""
        return self.root / f"{self.name}.log"

    def command(self) -> Sequence[str]:
        """Return the command line that runs the server in the foreground."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Return whether the server answers."""
        raise NotImplementedError

    def popen_kwargs(self) -> dict[str, Any]:
        """Return extra ``subprocess.Popen`` arguments (user, environment)."""
        return {}

    def start(self, timeout: float = 60) -> ServerProcess:
        """Start the server and return once it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.command()),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen_kwargs(),
            )

        def answered() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            return self.ready()

        try:
            wait_for(answered, timeout=timeout, interval=0.1, what=f"{self.name} on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10) -> None:
        """Stop the server's process group and what it spawned: SIGTERM, then SIGKILL after ``grace`` s."""
        process, self.process = self.process, None
        if process is None:
            return
        stop_process_groups([process.pid], grace=grace)
        process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the server's log."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- S3 ----------------------------------------------------------------------------------------

#: Dummy credentials: moto accepts any. Never a real key.
S3_TEST_KEY_ID = "testing-key-id"
S3_TEST_SECRET = "testing-secret"


class MotoS3(ServerProcess):
    """``moto_server``: an S3 API on loopback, objects in memory."""

    name = "moto"

    @property
    def endpoint_url(self) -> str:
        """Return the server's URL, the ``endpoint_url`` of an S3 client."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> Sequence[str]:
        return [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.endpoint_url}/moto-api/", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def connection_env(self, conn_id: str = "aws_default") -> dict[str, str]:
        """Return the environment defining Airflow connection ``conn_id`` to this server.

        The ``aws`` connection's ``endpoint_url`` extra is what the Amazon provider's S3
        filesystem (``ObjectStoragePath("s3://conn_id@bucket/key")``) and hooks connect to.
        ``AWS_EC2_METADATA_DISABLED`` keeps botocore from asking the cloud metadata address
        for credentials, whatever happens.
        """
        connection = {
            "conn_type": "aws",
            "login": S3_TEST_KEY_ID,
            "password": S3_TEST_SECRET,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }
        return {
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """Return a boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_TEST_KEY_ID,
            aws_secret_access_key=S3_TEST_SECRET,
            region_name="us-east-1",
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Return every key under ``prefix`` in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


# -- Redis -------------------------------------------------------------------------------------


class RedisServer(ServerProcess):
    """``redis-server`` on loopback with no persistence: the Celery broker."""

    name = "redis"

    @property
    def url(self) -> str:
        """Return the broker URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> Sequence[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server is not installed (Debian package redis-server; `make test`)"
            )
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        options |= {"daemonize": "no", "dir": str(self.root)}
        return [binary, *(arg for key, value in options.items() for arg in (f"--{key}", value))]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


# -- PostgreSQL --------------------------------------------------------------------------------


def postgres_binary(name: str) -> str:
    """Return the path of a PostgreSQL server program: on PATH, else Debian's newest version."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key, reverse=True)), None
    )
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install PostgreSQL (Debian package postgresql; `make test`)"
        )
    return found


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parts[-3]
    return tuple(int(part) for part in version.split(".") if part.isdigit())


class PostgresServer(ServerProcess):
    """A throwaway PostgreSQL cluster (``initdb`` in a temp dir) on loopback, trust authentication.

    PostgreSQL refuses to run as root, so under root the cluster belongs to, and the server
    runs as, the unprivileged ``nobody``. Its data lives in its own ``/tmp`` directory (a
    pytest temp dir is private to root), removed by :meth:`stop`. Durability is off (a test
    database): no fsync, no synchronous commit.
    """

    name = "postgres"
    user = "airflow"
    database = "airflow"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data_root = Path(tempfile.mkdtemp(prefix="airflow-batch-pg-"))
        self.data = self.data_root / "data"
        self._account = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """Return the SQLAlchemy URL of the ``airflow`` database."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def popen_kwargs(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {
            "user": self._account.pw_uid,
            "group": self._account.pw_gid,
            "extra_groups": [],
            "cwd": str(self.data_root),
            "env": {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
        }

    def start(self, timeout: float = 60) -> PostgresServer:
        """Create the cluster, start the server and create the ``airflow`` database."""
        if self._account is not None:
            os.chown(self.data_root, self._account.pw_uid, self._account.pw_gid)
        initdb = [postgres_binary("initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust"]
        initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(
            initdb, capture_output=True, text=True, timeout=120, check=False, **self.popen_kwargs()
        )
        if result.returncode != 0:
            output = result.stdout[-2000:] + result.stderr[-2000:]
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{output}")
        super().start(timeout)
        with contextlib.closing(self._connect("postgres")) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def command(self) -> Sequence[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data_root),
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [postgres_binary("postgres"), "-D", str(self.data), *options]

    def _connect(self, database: str | None = None) -> Any:
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            dbname=database or self.database,
            connect_timeout=2,
        )

    def ready(self) -> bool:
        import psycopg2

        try:
            self._connect("postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    def query(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement on the ``airflow`` database; return its rows."""
        with contextlib.closing(self._connect()) as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def stop(self, grace: float = 10) -> None:
        """Stop the server and delete the cluster's files."""
        try:
            super().stop(grace)
        finally:
            shutil.rmtree(self.data_root, ignore_errors=True)
