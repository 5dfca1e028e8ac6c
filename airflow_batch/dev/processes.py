"""Process groups started by one command, and stopping them with everything they spawned.

Each process is started as the leader of its own process group, so a terminal's Ctrl-C
reaches only the command that started them, which then stops them itself. Airflow's
components fork executor workers, task supervisors, DAG-file parsers and trigger runners,
and task runners move to process groups of their own; stopping a leader alone would leave
those behind. :func:`stop_process_groups` therefore signals whole groups and, before killing,
every descendant it has seen, wherever its group.

While they run, the groups are listed in a JSON file (:class:`ProcessGroupsFile`): tests read
it to check that nothing is left after a stop, and a command started again on the same
directory stops what a crashed predecessor left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil


def start_in_own_group(
    command: Sequence[str], *, env: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` as the leader of a new process group, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command), env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process_groups(leaders: Iterable[int], grace: float = 10.0) -> list[int]:
    """Stop the process groups led by ``leaders`` and all their descendants; return the pids left.

    SIGTERM to every group; once all have exited, or after ``grace`` seconds, SIGKILL to every
    group and to every descendant seen before the wait or still under a survivor after it,
    whatever group it moved to. The list returned is empty unless a process survived SIGKILL
    for 5 s (unkillable, or not ours to kill).
    """
    leaders = list(leaders)
    family = _with_descendants(_existing(leaders))
    for pid in leaders:
        _signal_group(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=grace)
    # Anything spawned during the wait (a task started just before the SIGTERM) goes too.
    family = _with_descendants(alive)
    for pid in leaders:
        _signal_group(pid, signal.SIGKILL)
    own_group = os.getpgrp()
    for process in family:
        with contextlib.suppress(psutil.Error, OSError):
            group = os.getpgid(process.pid)
            if group != own_group:
                _signal_group(group, signal.SIGKILL)
            process.kill()
    _, alive = psutil.wait_procs(family, timeout=5)
    return sorted(p.pid for p in alive)


def _existing(pids: Iterable[int]) -> list[psutil.Process]:
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    return processes


def _with_descendants(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    family = {p.pid: p for p in processes}
    for process in list(family.values()):
        with contextlib.suppress(psutil.Error):
            family.update({child.pid: child for child in process.children(recursive=True)})
    return list(family.values())


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_Entry = dict[str, Any]


class ProcessGroupsFile:
    """A JSON file naming the process groups a command started (``name -> leader pid``).

    Every entry, and the command itself, is recorded with its start time, so a pid reused by
    an unrelated process is never mistaken for one of ours.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._groups: dict[str, _Entry] = {}

    def add(self, name: str, pid: int) -> None:
        """Record the group led by ``pid`` under ``name`` and rewrite the file."""
        with contextlib.suppress(psutil.Error):
            self._groups[name] = _entry(pid)
        content = {"command": _entry(os.getpid()), "process_groups": self._groups}
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(content, indent=2))
        partial.replace(self.path)

    def remove(self) -> None:
        """Delete the file: everything it named has been stopped."""
        self.path.unlink(missing_ok=True)

    def live_owner(self) -> int | None:
        """Return the pid of the command that wrote the file, if that command is still running."""
        command = self._previous().get("command")
        return command["pid"] if command and _is_alive(command) else None

    def leftover_groups(self) -> dict[str, int]:
        """Return ``name -> leader pid`` of the groups in the file whose leaders still run."""
        groups = self._previous().get("process_groups", {})
        return {name: entry["pid"] for name, entry in groups.items() if _is_alive(entry)}

    def _previous(self) -> dict[str, Any]:
        try:
            content: dict[str, Any] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return content

    @staticmethod
    def read(path: Path) -> dict[str, int]:
        """Return ``name -> leader pid`` of the groups listed in the file at ``path``."""
        groups = json.loads(path.read_text())["process_groups"]
        return {name: int(entry["pid"]) for name, entry in groups.items()}


def _entry(pid: int) -> _Entry:
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def _is_alive(entry: _Entry) -> bool:
    try:
        return bool(psutil.Process(entry["pid"]).create_time() == entry["create_time"])
    except psutil.Error:
        return False
