"""What earlier runs of the same task produced: the output length an estimate can expect.

Finalize appends one entry per finished job to the task's history file
(:meth:`airflow_batch.folder.JobFolder.task_history_path`, shared by the task's runs and map
indexes; read and written by :mod:`airflow_batch.folder`);
submit reads the latest entries to price an *expected* output length beside the upper bound
(every request's ``max_tokens``). Only the last :data:`KEEP` entries are kept; the expected
length is the output tokens per answered request over the last :data:`RECENT` of them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from airflow_batch.folder import read_task_history

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.folder import JobFolder
    from airflow_batch.manifest import JobManifest

KEEP = 20
RECENT = 5


def record_run(folder: JobFolder, job_manifest: JobManifest) -> None:
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
    folder.append_history(entry, keep=KEEP)


def observed_output_tokens(path: ObjectStoragePath) -> tuple[int, int] | None:
    """Return (output tokens per answered request, runs it is drawn from) of the latest runs, or None."""
    recent = read_task_history(path)[-RECENT:]
    answered = sum(int(entry.get("answered", 0)) for entry in recent)
    if not answered:
        return None
    tokens = sum(int(entry.get("output_tokens", 0)) for entry in recent)
    return max(1, math.ceil(tokens / answered)), len(recent)
