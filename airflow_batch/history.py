"""What earlier runs of the same task produced: the output length an estimate can expect.

Finalize appends one entry per finished job to the task's history file
(:func:`airflow_batch.layout.task_history_path`, shared by the task's runs and map indexes);
submit reads the latest entries to price an *expected* output length beside the upper bound
(every request's ``max_tokens``). Only the last :data:`KEEP` entries are kept; the expected
length is the output tokens per answered request over the last :data:`RECENT` of them.
"""

from __future__ import annotations

import contextlib
import math
import operator
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow_batch.storage import FenceLost, read_json, replace_json_fenced

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.manifest import JobManifest

KEEP = 20
RECENT = 5
WRITE_ATTEMPTS = 20


def read_history(path: ObjectStoragePath, stored: Any = None) -> list[dict[str, Any]]:
    """Return the entries of a history file, oldest first (none when it is missing or unreadable).

    ``stored``: the file's document already read (by a writer that must compare it again).
    """
    entries = stored if stored is not None else _stored(path)
    if isinstance(entries, list):
        return [entry for entry in entries if isinstance(entry, dict)]
    return []


def record_run(path: ObjectStoragePath, job_manifest: JobManifest) -> None:
    """Append a finished job's answered requests and output tokens to its task's history.

    Only the answers its batches produced count: reused and canary answers are not in its usage.
    """
    answered = (
        job_manifest["succeeded"] - job_manifest.get("reused", 0) - job_manifest.get("canary_answered", 0)
    )
    if answered <= 0:
        return
    entry = {
        "job_dir": job_manifest["job_dir"],
        "finalized_at": job_manifest["finalized_at"],
        "answered": answered,
        "output_tokens": job_manifest["usage"]["output_tokens"],
    }
    for _ in range(WRITE_ATTEMPTS):  # the file is shared by the task's map indexes: a fenced append
        stored = _stored(path)
        entries = [old for old in read_history(path, stored) if old.get("job_dir") != entry["job_dir"]]
        try:
            replace_json_fenced(path, [*entries, entry][-KEEP:], partial(operator.eq, stored))
            return
        except FenceLost:
            continue
    raise FenceLost(f"{path}: {WRITE_ATTEMPTS} writers in a row changed the history first")


def _stored(path: ObjectStoragePath) -> Any:
    """Return the history file's document as stored (None when it is missing or unreadable)."""
    with contextlib.suppress(FileNotFoundError, ValueError, OSError):
        return read_json(path)
    return None


def observed_output_tokens(path: ObjectStoragePath) -> tuple[int, int] | None:
    """Return (output tokens per answered request, runs it is drawn from) of the latest runs, or None."""
    recent = read_history(path)[-RECENT:]
    answered = sum(int(entry.get("answered", 0)) for entry in recent)
    if not answered:
        return None
    tokens = sum(int(entry.get("output_tokens", 0)) for entry in recent)
    return max(1, math.ceil(tokens / answered)), len(recent)
