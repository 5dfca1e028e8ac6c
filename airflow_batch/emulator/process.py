"""Start and stop the emulator as a subprocess on a loopback port, for tests and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

FAST_CONFIG: Mapping[str, Any] = {"throughput": 1_000_000_000, "start_delay_seconds": 0}
"""Settings for tests and demos: a batch ends right after it is created."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmulatorProcess:
    """Run the emulator as a subprocess on a free loopback port (tests, demo).

    The port is chosen once (``port=0`` picks a free one) and kept, so ``restart``
    comes back on the same base URL with the same data directory. Settings changed with
    ``configure`` are passed again on restart. With ``own_process_group`` the emulator leads a
    process group of its own, so a terminal's Ctrl-C reaches only the command that started it
    (``airflow-batch dev``), which stops it in turn.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Mapping[str, Any] | None = None,
        own_process_group: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or _free_port(host)
        self.base_url = f"http://{host}:{self.port}"
        self.config: dict[str, Any] = dict(config or {})
        self.own_process_group = own_process_group
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.base_url, timeout=30)

    @property
    def log_path(self) -> Path:
        """Return the file collecting the emulator's output."""
        return self.data_dir / "emulator.log"

    @property
    def pid(self) -> int | None:
        """Return the process id of the running emulator, or None."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Return whether the emulator process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30) -> EmulatorProcess:
        """Start the emulator and return once ``/_emulator/health`` answers 200."""
        if self._process is not None:
            return self
        command = [
            sys.executable,
            "-m",
            "airflow_batch.emulator",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data",
            str(self.data_dir),
            "--config",
            json.dumps(self.config),
        ]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.own_process_group
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                log_tail = self.log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"emulator exited before it was ready; {self.log_path}:\n{log_tail}")
            try:
                if self._http.get("/_emulator/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"emulator not ready on {self.base_url} within {timeout}s")

    def stop(self) -> None:
        """Stop the emulator (its process group, if it leads one): SIGTERM, then SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            self._signal(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait()

    def _signal(self, process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if self.own_process_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings at runtime (``POST /_emulator/config``); return the full config."""
        response = self._http.post("/_emulator/config", json=changes)
        response.raise_for_status()
        self.config.update(changes)
        config: dict[str, Any] = response.json()
        return config

    def stats(self) -> dict[str, int]:
        """Return ``/_emulator/stats``: batches created (since reset), stored, requests stored,
        cache entries, requests queued now (in unended batches) and the peak queued since reset."""
        response = self._http.get("/_emulator/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    def calls(self) -> dict[str, dict[str, int]]:
        """Return ``/_emulator/calls``: every API call since start or reset, whatever its answer, by
        workspace (``""``: the default) and route (``"GET /v1/messages/batches/{batch_id}"``)."""
        response = self._http.get("/_emulator/calls")
        response.raise_for_status()
        calls: dict[str, dict[str, int]] = response.json()
        return calls

    def billing(self) -> dict[str, Any]:
        """Return ``/_emulator/billing``: the succeeded requests billed so far (canceled batches'
        processed ones too) and their usage per model, in the job manifest's usage keys."""
        response = self._http.get("/_emulator/billing")
        response.raise_for_status()
        billing: dict[str, Any] = response.json()
        return billing

    def batch_count(self) -> int:
        """Return the number of batches created since start of the store or the last reset.

        Deleted batches still count: this answers "was anything submitted (paid for)?".
        """
        return self.stats()["batches_created"]

    def reset(self) -> None:
        """Forget every batch, result and cache entry."""
        self._http.post("/_emulator/reset").raise_for_status()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self._http.close()
