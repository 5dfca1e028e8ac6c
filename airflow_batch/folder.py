"""A job's folder as one object: every path in it, and every read and write of its files.

:class:`JobFolder` is the one place that opens a job's files (modelled on dlt's
``PackageStorage``): the round ledgers (fenced writes), the round manifests, the job's spec,
progress, refusals, each landed batch's stats sidecar, the job manifest and the parts that hold
rows. The folder's shape and file names are in :mod:`airflow_batch.layout`, beneath it; no
other module builds a job-folder path.

What is read back is checked as if a stranger wrote it: another version of the package, a
process that died mid-write on a store without atomic renames, a person with an editor. A file
that cannot be used is one of three answers, each naming the file and what to do:

- :class:`~airflow_batch.exceptions.JobFileMissingError`: it is not there (a ``FileNotFoundError``);
- :class:`~airflow_batch.exceptions.JobFileUnreadableError`: the store would not give it (I/O,
  permissions; an ``OSError``);
- :class:`~airflow_batch.exceptions.JobFileDamagedError`: it is there but not what it should be
  (not JSON, another shape, an unknown version; a ``ValueError``).

Files whose absence is a normal state (a round not started yet, a job without a spec) have
readers that answer None or an empty document for "missing" instead; unreadable and damaged
still raise.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import IO, TYPE_CHECKING, Any

import msgspec

from airflow_batch import layout
from airflow_batch.exceptions import (
    JobFileDamagedError,
    JobFileMissingError,
    JobFileUnreadableError,
)
from airflow_batch.manifest import LEDGER_VERSION, MANIFEST_VERSION
from airflow_batch.storage import (
    FenceLost,
    as_path,
    atomic_writer,
    iter_jsonl_lines,
    read_json,
    replace_json_fenced,
    write_json,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.gather.stats import BatchGatherStats
    from airflow_batch.manifest import JobManifest, RoundManifest

#: Fenced appends to a task's history tried before giving up (the file is shared by map indexes).
HISTORY_WRITE_ATTEMPTS = 20


def read_document(path: ObjectStoragePath, what: str, fix: str) -> Any:
    """Return the JSON document at ``path``, or raise the error that says why it cannot be had.

    ``what`` names the file for a person ("the ledger of round 2"), ``fix`` what to do about it.
    """
    try:
        return read_json(path)
    except FileNotFoundError as error:
        raise JobFileMissingError(f"{what} is missing: no file at {path}. {fix}", path=str(path)) from error
    except OSError as error:
        raise JobFileUnreadableError(
            f"{what} at {path} could not be read ({type(error).__name__}: {error}): check that this "
            "worker can reach the store and has read access to the file, then run the task again",
            path=str(path),
        ) from error
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise damaged(path, what, f"it is not JSON ({error})", fix) from error


def damaged(path: ObjectStoragePath | str, what: str, problem: str, fix: str) -> JobFileDamagedError:
    """Return the error of a file that is there but not what it should be."""
    return JobFileDamagedError(f"{what} at {path} is damaged: {problem}. {fix}", path=str(path))


def read_object(path: ObjectStoragePath, what: str, fix: str) -> dict[str, Any]:
    """Return the JSON object at ``path`` (see :func:`read_document`); any other JSON value is damage."""
    document = read_document(path, what, fix)
    if not isinstance(document, dict):
        raise damaged(path, what, f"expected a JSON object, found {type(document).__name__}", fix)
    return document


class JobFolder:
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

    def round_dir(self, round_number: int) -> ObjectStoragePath:
        """Return the folder of one round (0 is the first submission, 1.. are retry rounds)."""
        return layout.round_dir(self.root, round_number)

    def staging_dir(self, round_number: int, token: str) -> ObjectStoragePath:
        """Return a private folder where a submit prepares a round's chunks before installing them."""
        return self.round_dir(round_number) / f".staging-{token}"

    def chunks_dir(self, round_number: int) -> ObjectStoragePath:
        """Return the folder of a round's prepared chunks."""
        return layout.chunks_dir(self.root, round_number)

    def inputs_dir(self, round_number: int) -> ObjectStoragePath:
        """Return the folder of the inputs twins of a round's chunks."""
        return layout.inputs_dir(self.root, round_number)

    def chunk_path(self, round_number: int, chunk: int) -> ObjectStoragePath:
        """Return the prepared-requests file of one chunk."""
        return layout.chunk_path(self.root, round_number, chunk)

    def shared_prompt_path(self, round_number: int, digest: str) -> ObjectStoragePath:
        """Return the file of a long prompt the round's requests share, stored once."""
        return layout.shared_prompt_path(self.chunks_dir(round_number), digest)

    def landed_path(self, round_number: int) -> ObjectStoragePath:
        """Return the file the wait's landing rewrites with the rows of the round landed so far."""
        return layout.landed_path(self.root, round_number)

    def run_marker_path(self, round_number: int, source: ObjectStoragePath) -> ObjectStoragePath:
        """Return the marker of a landed file's sorted run, written last."""
        return layout.run_marker_path(self.root, round_number, source)

    def run_index_path(self, round_number: int, source: ObjectStoragePath) -> ObjectStoragePath:
        """Return the index of a landed file's sorted run: each line's input row, then its byte offset."""
        return layout.run_index_path(self.root, round_number, source)

    def sorted_run_path(self, round_number: int, source: ObjectStoragePath) -> ObjectStoragePath:
        """Return the copy of a landed file in input-row order, for a file whose rows came out of order."""
        return layout.sorted_run_path(self.root, round_number, source)

    def chunk_inputs_path(self, round_number: int, chunk: int) -> ObjectStoragePath:
        """Return the inputs twin of one chunk (each request's input row and passthrough fields)."""
        return layout.chunk_inputs_path(self.root, round_number, chunk)

    def ledger_path(self, round_number: int) -> ObjectStoragePath:
        """Return the ledger file of a round."""
        return layout.ledger_path(self.root, round_number)

    def retry_requests_path(self, round_number: int) -> ObjectStoragePath:
        """Return the requests of a gathered round's retryable failures, as the next round sends them."""
        return layout.retry_requests_path(self.root, round_number)

    def invalid_input_path(self, round_number: int) -> ObjectStoragePath:
        """Return the failures file of a round's rows skipped as invalid input."""
        return layout.invalid_input_path(self.root, round_number)

    def reused_path(self, round_number: int) -> ObjectStoragePath:
        """Return the result rows of a round's requests answered without a batch."""
        return layout.reused_path(self.root, round_number)

    def results_part(self, round_number: int, batch_id: str) -> ObjectStoragePath:
        """Return the succeeded-rows file of one batch."""
        return layout.results_part(self.root, round_number, batch_id)

    def failures_part(self, round_number: int, batch_id: str) -> ObjectStoragePath:
        """Return the failed-rows file of one batch."""
        return layout.failures_part(self.root, round_number, batch_id)

    def batch_stats_path(self, round_number: int, batch_id: str) -> ObjectStoragePath:
        """Return the stats sidecar whose presence marks a batch as completely gathered."""
        return layout.gather_stats_path(self.root, round_number, batch_id)

    def refusal_path(self, round_number: int) -> ObjectStoragePath:
        """Return the file recording why a round was refused before any spend."""
        return layout.refusal_path(self.root, round_number)

    def progress_path(self, round_number: int) -> ObjectStoragePath:
        """Return the file the wait rewrites with the round's latest counts."""
        return layout.progress_path(self.root, round_number)

    def round_manifest_path(self, round_number: int) -> ObjectStoragePath:
        """Return the manifest file a gather writes for its round."""
        return layout.round_manifest_path(self.root, round_number)

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

    # -- a round's prepared chunks ---------------------------------------------------------

    def install_chunks(
        self,
        round_number: int,
        staging: ObjectStoragePath,
        chunks: Mapping[int, Sequence[str]],
        invalid_file: ObjectStoragePath | None,
    ) -> None:
        """Move a submit's staged chunks, their inputs twins, invalid and reused rows into the round.

        ``chunks``: each chunk's index and the digests of the shared prompts it references (moved too).

        What an earlier preparation of the round installed is replaced: old chunk files go, and
        an invalid or reused file the new preparation has none of is deleted.
        """
        for target in (self.chunks_dir(round_number), self.inputs_dir(round_number)):
            remove_tree(target)
            target.mkdir(parents=True, exist_ok=True)
        for chunk, shared in chunks.items():
            self._move_chunk(round_number, staging, chunk, shared)
        invalid_path = self.invalid_input_path(round_number)
        if invalid_file is not None:
            invalid_file.rename(invalid_path)
        elif invalid_path.exists():
            invalid_path.unlink()
        reused_path = self.reused_path(round_number)
        staged_reused = staging / layout.REUSED_FILE
        if staged_reused.exists():
            staged_reused.rename(reused_path)
        elif reused_path.exists():
            reused_path.unlink()

    def restore_chunks(
        self, round_number: int, staging: ObjectStoragePath, chunks: Mapping[int, Sequence[str]]
    ) -> None:
        """Put back staged chunk files missing from the round (e.g. a local job folder on a new worker)."""
        for chunk, shared in chunks.items():
            if not self.has_chunk(round_number, chunk):
                self._move_chunk(round_number, staging, chunk, shared)
            else:
                self._move_shared(round_number, staging, shared)

    def chunk_inputs_lines(self, round_number: int, chunk: int) -> Iterator[bytes] | None:
        """Return the lines of a chunk's inputs twin, streamed; None for a chunk submitted without one."""
        path = self.chunk_inputs_path(round_number, chunk)
        return iter_jsonl_lines(path) if path.exists() else None

    def read_chunk_inputs(self, round_number: int, chunk: int) -> bytes | None:
        """Return a chunk's inputs twin whole (one decode call); None for a chunk submitted without one."""
        path = self.chunk_inputs_path(round_number, chunk)
        return bytes(path.read_bytes()) if path.exists() else None

    def _move_chunk(
        self, round_number: int, staging: ObjectStoragePath, chunk: int, shared: Sequence[str]
    ) -> None:
        """Move one staged chunk file, its inputs twin and the shared prompts it references into the round."""
        from airflow_batch.submit.chunk_files import INPUTS_DIR

        name = layout.chunk_file_name(chunk)
        for staged, target in (
            (staging / name, self.chunk_path(round_number, chunk)),
            (staging / INPUTS_DIR / name, self.chunk_inputs_path(round_number, chunk)),
        ):
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.rename(target)
        self._move_shared(round_number, staging, shared)

    def _move_shared(self, round_number: int, staging: ObjectStoragePath, shared: Sequence[str]) -> None:
        """Move the staged shared prompts a chunk references into the round, where they are missing."""
        for digest in shared:
            staged, target = (
                layout.shared_prompt_path(staging, digest),
                self.shared_prompt_path(round_number, digest),
            )
            if staged.exists() and not target.exists():  # a prompt shared by several chunks moves once
                target.parent.mkdir(parents=True, exist_ok=True)
                staged.rename(target)

    # -- states -----------------------------------------------------------------------------

    def has_round(self, round_number: int) -> bool:
        """Return whether the round's folder exists (its submit has started)."""
        return bool(self.round_dir(round_number).exists())

    def has_ledger(self, round_number: int) -> bool:
        """Return whether the round has a ledger (it was started)."""
        return bool(self.ledger_path(round_number).exists())

    def has_chunk(self, round_number: int, chunk: int) -> bool:
        """Return whether a chunk's prepared-requests file is in the round folder."""
        return bool(self.chunk_path(round_number, chunk).exists())

    def has_refusal(self, round_number: int) -> bool:
        """Return whether the round was refused before any spend (it has a refusal record)."""
        return bool(self.refusal_path(round_number).exists())

    def is_landed(self, round_number: int, batch_id: str) -> bool:
        """Return whether a batch's rows are landed (its stats sidecar exists)."""
        return bool(self.batch_stats_path(round_number, batch_id).exists())

    def is_finalized(self) -> bool:
        """Return whether finalize wrote the job manifest."""
        return bool(self.job_manifest_path.exists())

    # -- the ledger of a round (fenced) -----------------------------------------------------

    def read_ledger(self, round_number: int) -> dict[str, Any] | None:
        """Return the stored ledger document of a round, or None when the round has none yet."""
        path = self.ledger_path(round_number)
        what = f"the ledger of round {round_number} of {self.root}"
        fix = (
            "It records which batch carries each chunk: restore it (a backup, or an archived "
            "ledger.*.json beside it); moved aside, the next submit rebuilds it from Airflow's "
            "task_state_store where that holds the round, else submits the round again"
        )
        try:
            document = read_object(path, what, fix)
        except JobFileMissingError:
            return None

        version = document.get("version", LEDGER_VERSION)
        if version != LEDGER_VERSION:
            raise damaged(path, what, f"version {version!r} is not {LEDGER_VERSION}", fix)
        missing = [key for key in ("job_dir", "round", "fingerprint") if key not in document]
        if missing:
            raise damaged(path, what, f"it lacks {', '.join(missing)}", fix)
        return document

    def replace_ledger(
        self, round_number: int, document: Mapping[str, Any], holds: Callable[[Any | None], bool]
    ) -> None:
        """Write a round's ledger only if ``holds(stored)`` is true of the one stored (a fenced write).

        Raises :class:`~airflow_batch.storage.FenceLost` when another writer came first.
        """
        replace_json_fenced(self.ledger_path(round_number), document, holds)

    def archive_ledger(self, round_number: int) -> ObjectStoragePath | None:
        """Rename a round's ledger to ``ledger.<timestamp>.json``; return the new path (None: none)."""
        path = self.ledger_path(round_number)
        if not path.exists():
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        archived = path.parent / f"ledger.{stamp}.json"
        path.rename(archived)
        return archived

    # -- round manifests --------------------------------------------------------------------

    def read_round_manifest(self, round_number: int) -> RoundManifest:
        """Return the manifest the gather of a round wrote."""
        path = self.round_manifest_path(round_number)
        what = f"the manifest of round {round_number} of {self.root}"
        fix = (
            f"Clear the gather of round {round_number} so it writes the manifest again from the landed parts"
        )
        document = read_object(path, what, fix)
        version = document.get("version", MANIFEST_VERSION)
        if version != MANIFEST_VERSION:
            raise damaged(path, what, f"version {version!r} is not {MANIFEST_VERSION}", fix)
        if document.get("round") != round_number:
            raise damaged(path, what, f"it names round {document.get('round')!r}", fix)
        return document  # type: ignore[return-value]

    def write_round_manifest(self, manifest: RoundManifest) -> None:
        """Store the manifest of a gathered round (its ``round`` says which)."""
        write_json(self.round_manifest_path(manifest["round"]), manifest)

    def read_rounds(self) -> list[RoundManifest]:
        """Return the manifests of the job's gathered rounds, round 0 first, up to the first missing."""
        rounds: list[RoundManifest] = []
        while True:
            try:
                rounds.append(self.read_round_manifest(len(rounds)))
            except JobFileMissingError:
                return rounds

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

    # -- progress, refusals -----------------------------------------------------------------

    def read_progress(self, round_number: int) -> dict[str, Any]:
        """Return the wait's latest progress document of a round."""
        path = self.progress_path(round_number)
        what = f"the progress of round {round_number} of {self.root}"
        fix = "The wait rewrites it at its next poll; nothing needs to be done"
        return read_object(path, what, fix)

    def read_landed(self, round_number: int) -> dict[str, Any] | None:
        """Return the rows of a round landed so far by the wait (``landed.json``), None before any."""
        path = self.landed_path(round_number)
        if not path.exists():
            return None
        what = f"the rows landed so far of round {round_number} of {self.root}"
        return read_object(path, what, "The wait rewrites it at its next landing; nothing needs to be done")

    def write_landed(self, round_number: int, document: Mapping[str, Any]) -> None:
        """Replace the record of the rows of a round landed so far."""
        write_json(self.landed_path(round_number), document)

    def write_progress(self, round_number: int, document: Mapping[str, Any]) -> None:
        """Replace the progress document of a round."""
        write_json(self.progress_path(round_number), document)

    def read_refusal(self, round_number: int) -> dict[str, Any] | None:
        """Return why a round was refused before any spend, or None when it was not refused."""
        path = self.refusal_path(round_number)
        what = f"the refusal of round {round_number} of {self.root}"
        fix = f"Delete it and clear the submit of round {round_number} (it records a new one if it refuses)"
        try:
            document = read_object(path, what, fix)
        except JobFileMissingError:
            return None
        if not isinstance(document.get("reason"), str):
            raise damaged(path, what, "it has no reason", fix)
        return document

    def write_refusal(self, round_number: int, record: Mapping[str, Any]) -> None:
        """Record why a round was refused before any spend."""
        write_json(self.refusal_path(round_number), record)

    # -- landed batches ---------------------------------------------------------------------

    def read_batch_stats(self, round_number: int, batch_id: str) -> BatchGatherStats | None:
        """Return the stats of a landed batch, or None when it is not landed yet."""

        path = self.batch_stats_path(round_number, batch_id)
        try:
            return self._stats_at(path)
        except JobFileMissingError:
            return None

    def _stats_at(self, path: ObjectStoragePath) -> BatchGatherStats:
        from airflow_batch.gather.stats import BatchGatherStats

        what = f"the stats of landed batch {path.name.removesuffix('.stats.json')} of {self.root}"
        fix = "Delete it (and the batch's parts beside it) and clear the round's gather: it lands them again"
        document = read_object(path, what, fix)
        try:
            return BatchGatherStats.from_json(document)
        except TypeError as error:  # a required field is missing
            raise damaged(path, what, str(error), fix) from error

    def write_batch_stats(self, round_number: int, stats: BatchGatherStats) -> None:
        """Store a landed batch's stats: its presence marks the batch as completely landed."""
        write_json(self.batch_stats_path(round_number, stats.batch_id), stats.to_json())

    def landed_stats(self, round_number: int) -> list[BatchGatherStats]:
        """Return the stats of every batch of a round landed so far, in batch id order."""
        folder = self.round_dir(round_number) / "results"
        sidecars = sorted(folder.glob("*.stats.json")) if folder.exists() else []
        return [self._stats_at(sidecar) for sidecar in sidecars]

    def remove_part_leftovers(self, round_number: int, batch_id: str) -> None:
        """Delete the temporary files an interrupted write of a batch's parts left behind."""
        for path in (self.results_part(round_number, batch_id), self.failures_part(round_number, batch_id)):
            if not path.parent.exists():
                continue
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(Exception):
                    leftover.unlink()

    @contextlib.contextmanager
    def part_writers(self, round_number: int, batch_id: str) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
        """Yield (results, failures) part files of a batch that appear only if the block completes."""
        with (
            atomic_writer(self.results_part(round_number, batch_id)) as results,
            atomic_writer(self.failures_part(round_number, batch_id)) as failures,
        ):
            yield results, failures

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


def remove_tree(path: ObjectStoragePath) -> None:
    """Delete a folder and everything in it (nothing when it is not there)."""
    with contextlib.suppress(FileNotFoundError):
        if path.exists():
            path.rmdir(recursive=True)


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
