"""A job's folder as one object: every path in it, and every read and write of its files.

:class:`JobFolder` is the one place that opens a job's files (modelled on dlt's
``PackageStorage``): the round ledgers (fenced writes), the round manifests, the job's spec,
progress, refusals, each landed batch's stats sidecar, the job manifest and the parts that hold
rows. The folder's shape and file names are in :mod:`airflow_batch.layout`, beneath it; no
other module builds a job-folder path. It is one class in three modules: the files of the job
(here), a round's own files (:mod:`airflow_batch.round_files`) and the files that hold a round's
rows (:mod:`airflow_batch.part_files`).

What is read back is checked as if a stranger wrote it (:mod:`airflow_batch.job_files`): a file
that cannot be used is missing, unreadable or damaged, each its own error naming the file and
what to do. Files whose absence is a normal state (a round not started yet, a job without a
spec) have readers that answer None or an empty document for "missing" instead; unreadable and
damaged still raise.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Mapping
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.exceptions import JobFileMissingError
from airflow_batch.job_files import damaged, read_object
from airflow_batch.part_files import PartFiles
from airflow_batch.round_files import RoundFiles
from airflow_batch.storage import (
    FenceLost,
    as_path,
    atomic_writer,
    read_json,
    replace_json_fenced,
    write_json,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.manifest import JobManifest


#: Fenced appends to a task's history tried before giving up (the file is shared by map indexes).
HISTORY_WRITE_ATTEMPTS = 20


class JobFolder(RoundFiles, PartFiles):
    """The folder of one job (one task instance): its paths, and every read and write of its files.

    Constructed from the folder's path (a URI or an ``ObjectStoragePath``); building one does no I/O.
    """

    def __init__(self, root: str | ObjectStoragePath) -> None:
        self.root: ObjectStoragePath = as_path(root)

    @classmethod
    def of_task(
        cls, output_path: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> JobFolder:
        """Return the folder of one task instance's job under ``output_path``."""
        return cls(layout.job_dir(output_path, dag_id, run_id, task_id, map_index))

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"JobFolder({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------

    @property
    def spec_path(self) -> ObjectStoragePath:
        """Return the job's spec file (``job.json``), written by submit."""
        return layout.job_spec_path(self.root)

    @property
    def results_path(self) -> ObjectStoragePath:
        """Return the merged results file written by finalize."""
        return layout.final_results_path(self.root)

    @property
    def failures_path(self) -> ObjectStoragePath:
        """Return the merged failures file written by finalize."""
        return layout.final_failures_path(self.root)

    def table_path(self, name: str) -> ObjectStoragePath:
        """Return the Parquet table ``results`` or ``failures`` written by finalize."""
        return layout.final_table_path(self.root, name)

    @property
    def job_manifest_path(self) -> ObjectStoragePath:
        """Return the job manifest written by finalize."""
        return layout.final_manifest_path(self.root)

    @property
    def uploads_dir(self) -> ObjectStoragePath:
        """Return the folder recording a documents job's uploads."""
        return layout.uploads_dir(self.root)

    def answer_receipt_path(self, segment: str) -> ObjectStoragePath:
        """Return the receipt this job keeps of an answer store segment it wrote."""
        return layout.answer_receipt_path(self.root, segment)

    # -- states -----------------------------------------------------------------------------

    def is_finalized(self) -> bool:
        """Return whether finalize wrote the job manifest."""
        return bool(self.job_manifest_path.exists())

    # -- the job's spec ---------------------------------------------------------------------

    def read_spec(self) -> dict[str, Any]:
        """Return the job's spec (output schema, passthrough fields...); empty for a job without one."""
        path = self.spec_path
        what = f"the spec of job {self.root}"
        fix = "Clear the job's submit task: it writes the spec again before it sends anything"
        try:
            return read_object(path, what, fix)
        except JobFileMissingError:
            return {}

    def write_spec(self, spec: Mapping[str, Any]) -> None:
        """Store the job's spec."""
        write_json(self.spec_path, spec)

    # -- answer store receipts ----------------------------------------------------------------

    def write_answer_receipt(self, segment: str, digest: str) -> None:
        """Keep the receipt of an answer store segment this job wrote: its SHA-256 (hex)."""
        with atomic_writer(self.answer_receipt_path(segment)) as out:
            out.write(digest.encode())

    def read_answer_receipt(self, segment: str) -> str | None:
        """Return the digest this job vouches for a segment with, or None when it vouches for none.

        A store is shared: a receipt that cannot be read vouches for nothing, whatever the reason.
        """
        try:
            return str(self.answer_receipt_path(segment).read_bytes().strip().decode())
        except (OSError, UnicodeDecodeError, ValueError):
            return None

    # -- what finalize writes -----------------------------------------------------------------

    @contextlib.contextmanager
    def final_writers(self) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
        """Yield the merged (results, failures) files, which appear only if the block completes."""
        with atomic_writer(self.results_path) as results, atomic_writer(self.failures_path) as failures:
            yield results, failures

    def read_job_manifest(self) -> JobManifest:
        """Return the job manifest finalize wrote."""
        path = self.job_manifest_path
        what = f"the job manifest of {self.root}"
        fix = (
            "Give a finalized job's folder, its manifest.json or its publish_path (finalize writes the "
            "manifest last, so a job still running has none); else clear the job's finalize"
        )
        document = read_object(path, what, fix)
        if "results_path" not in document:
            raise damaged(path, what, "it has no results_path", fix)
        return document  # type: ignore[return-value]

    def write_job_manifest(self, manifest: JobManifest) -> None:
        """Store the job manifest (finalize's last write)."""
        write_json(self.job_manifest_path, manifest)

    # -- the task's history -----------------------------------------------------------------

    @staticmethod
    def task_history_path(output_path: str, dag_id: str, task_id: str) -> ObjectStoragePath:
        """Return the history of a task's finished jobs, shared by its runs and map indexes."""
        return layout.task_history_path(output_path, dag_id, task_id)

    def append_history(self, entry: Mapping[str, Any], keep: int) -> None:
        """Append ``entry`` to the history named in the job's spec (fenced: map indexes share it).

        An earlier entry of this job is replaced; only the last ``keep`` entries are kept. A job
        whose spec names no history records nothing.
        """
        history = self.read_spec().get("history_path")
        if not history:
            return
        path = as_path(str(history))
        for _ in range(HISTORY_WRITE_ATTEMPTS):
            stored = _stored_history(path)
            entries = [old for old in history_entries(stored) if old.get("job_dir") != entry.get("job_dir")]
            try:
                replace_json_fenced(path, [*entries, dict(entry)][-keep:], partial(operator.eq, stored))
                return
            except FenceLost:
                continue
        raise FenceLost(f"{path}: {HISTORY_WRITE_ATTEMPTS} writers in a row changed the history first")


def read_task_history(path: ObjectStoragePath) -> list[dict[str, Any]]:
    """Return the entries of a task's history, oldest first (none when it is missing or unusable).

    The history only refines an estimate: a file that cannot be used counts as no history.
    """
    return history_entries(_stored_history(path))


def history_entries(stored: Any) -> list[dict[str, Any]]:
    """Return the entries of a stored history document (a list of objects; anything else: none)."""
    if isinstance(stored, list):
        return [entry for entry in stored if isinstance(entry, dict)]
    return []


def _stored_history(path: ObjectStoragePath) -> Any:
    """Return the history file's document as stored (None when it is missing or unreadable)."""
    with contextlib.suppress(FileNotFoundError, ValueError, OSError):
        return read_json(path)
    return None
