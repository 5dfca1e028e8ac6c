"""Where a batch job keeps its files: one folder per (dag, run, task, map index).

Everything a job writes lives under its job folder, so runs, backfills and mapped task
instances never collide, and a retry or a clear of the same task instance finds the files
(and the ledger) of its earlier attempts::

    {output_path}/{dag_id}/{run_id}/{task_id}[/map-{i}]/
        round-0/chunks/chunk-00000.jsonl     prepared requests, as submitted (removed once the
                                             round has landed, unless keep_chunks=True)
        round-0/chunks/shared/{sha256}.json  a long prompt the round's requests share, stored once
        round-0/inputs/chunk-00000.jsonl     each request's input row and passthrough fields
        round-0/ledger.json                  chunk -> batch id, written as each batch is created
        round-0/invalid_input.jsonl          rows skipped as invalid (skip_invalid=True)
        round-0/reused.jsonl                 result rows answered without a batch: from the answer
                                             store (reuse_answers) or by the canary
        round-0/results/{batch_id}.jsonl     succeeded rows of one batch
        round-0/failures/{batch_id}.jsonl    failed rows of one batch
        round-0/results/{batch_id}.stats.json   counts and usage of a batch, written once it is gathered
        round-0/progress.json                latest counts while waiting (written by the trigger)
        round-1/refusal.json                 why a round was refused before any spend (budget, model)
        round-0/manifest.json                the round's manifest after gather
        round-0/retry_requests.jsonl         the requests of its retryable failures, kept by gather
                                             for the next round before the chunks go
        round-1/...                          retry rounds, same shape
        job.json                             the job's output schema, passthrough fields, answer store
        files/uploads-*.jsonl                documents= jobs: each file uploaded (path, hash, file_id, bytes)
        files/deleted-*.jsonl                ... and the file ids deleted once the job landed
        results.jsonl  failures.jsonl  manifest.json    written by finalize
        results.parquet  failures.parquet    written by finalize with results_format parquet
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: Rows skipped as invalid input, in a round folder (and in submit's staging folder).
INVALID_INPUT_FILE = "invalid_input.jsonl"
#: Result rows a round answered without a batch (reused answers, canary answers), in staging too.
REUSED_FILE = "reused.jsonl"
#: The job manifest finalize writes in the job folder, next to the merged results.
FINAL_MANIFEST_FILE = "manifest.json"
#: Folder of the prompts a round's chunk files share, beside them (see submit.shared_prompts).
SHARED_PROMPTS_DIR = "shared"
#: Folder of the answer store under ``output_path`` when ``answer_store`` is not given.
DEFAULT_ANSWER_STORE = "_answers"
#: Folder under ``output_path`` recording the uploads kept for later jobs (``delete_files="keep"``).
DEFAULT_FILES_STORE = "_files"
#: File name suffix of an answer store segment's keys file (what a lookup lists).
ANSWER_KEYS_SUFFIX = ".keys"
#: Folder of a ``publish_path`` holding its published versions.
PUBLISHED_VERSIONS = "versions"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def path_segment(value: str) -> str:
    """Return ``value`` with characters that are awkward in object keys replaced by ``_``."""
    return _UNSAFE.sub("_", value)


def job_dir(
    output_path: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1
) -> ObjectStoragePath:
    """Return the job folder of one task instance under ``output_path``."""
    from airflow_batch.storage import as_path

    path = as_path(output_path) / path_segment(dag_id) / path_segment(run_id) / path_segment(task_id)
    if map_index >= 0:
        path = path / f"map-{map_index}"
    return path


def task_history_path(output_path: str, dag_id: str, task_id: str) -> ObjectStoragePath:
    """Return the history of a task's finished jobs (output lengths), shared by its runs."""
    from airflow_batch.storage import as_path

    return as_path(output_path) / path_segment(dag_id) / ".history" / f"{path_segment(task_id)}.json"


def round_dir(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the folder of one round (0 is the first submission, 1.. are retry rounds)."""
    return job / f"round-{round_number}"


def chunk_file_name(chunk: int) -> str:
    """Return the file name of a chunk's prepared requests."""
    return f"chunk-{chunk:05d}.jsonl"


def chunks_dir(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the folder of a round's prepared chunks."""
    return round_dir(job, round_number) / "chunks"


def chunk_path(job: ObjectStoragePath, round_number: int, chunk: int) -> ObjectStoragePath:
    """Return the prepared-requests file of one chunk."""
    return chunks_dir(job, round_number) / chunk_file_name(chunk)


def shared_prompt_path(chunks: ObjectStoragePath, digest: str) -> ObjectStoragePath:
    """Return the file of a prompt shared by chunk files in ``chunks`` (a round's, or staging), by sha256."""
    return chunks / SHARED_PROMPTS_DIR / f"{digest}.json"


def inputs_dir(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the folder of the inputs twins of a round's chunks."""
    return round_dir(job, round_number) / "inputs"


def chunk_inputs_path(job: ObjectStoragePath, round_number: int, chunk: int) -> ObjectStoragePath:
    """Return what submit recorded of each request of a chunk: its input row and passthrough fields.

    One JSON line per request, in the order of the chunk file: ``{"custom_id", "row", "input"}``.
    Gather joins it to the results, so rows keep their input order and the record's columns.
    """
    return inputs_dir(job, round_number) / chunk_file_name(chunk)


def retry_requests_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the requests of a gathered round's retryable failures, as the next round sends them.

    One JSON line per request: ``{"request": <the request line>, "row": n, "input": ...}``.
    """
    return round_dir(job, round_number) / "retry_requests.jsonl"


def ledger_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the ledger file recording the batch id of every submitted chunk."""
    return round_dir(job, round_number) / "ledger.json"


def invalid_input_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the failures file of rows skipped as invalid input."""
    return round_dir(job, round_number) / INVALID_INPUT_FILE


def reused_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the result rows of a round's requests answered without a batch (reused, or by the canary)."""
    return round_dir(job, round_number) / REUSED_FILE


def results_part(job: ObjectStoragePath, round_number: int, batch_id: str) -> ObjectStoragePath:
    """Return the succeeded-rows file of one batch."""
    return round_dir(job, round_number) / "results" / f"{batch_id}.jsonl"


def failures_part(job: ObjectStoragePath, round_number: int, batch_id: str) -> ObjectStoragePath:
    """Return the failed-rows file of one batch."""
    return round_dir(job, round_number) / "failures" / f"{batch_id}.jsonl"


def gather_stats_path(job: ObjectStoragePath, round_number: int, batch_id: str) -> ObjectStoragePath:
    """Return the stats sidecar whose presence marks a batch as completely gathered."""
    return round_dir(job, round_number) / "results" / f"{batch_id}.stats.json"


def refusal_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the file recording why a round was refused before any spend (budget, unknown model)."""
    return round_dir(job, round_number) / "refusal.json"


def progress_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the file the wait rewrites on each poll with the round's latest counts."""
    return round_dir(job, round_number) / "progress.json"


def round_manifest_path(job: ObjectStoragePath, round_number: int) -> ObjectStoragePath:
    """Return the manifest file a gather writes for its round."""
    return round_dir(job, round_number) / "manifest.json"


def spec_path(job: ObjectStoragePath) -> ObjectStoragePath:
    """Return the job's :class:`~airflow_batch.spec.job_spec.JobSpec`, written once by submit."""
    return job / "spec.json"


def job_spec_path(job: ObjectStoragePath) -> ObjectStoragePath:
    """Return the job's spec: ``{"output_schema", "passthrough_fields"}``, written by submit.

    Gather validates answers against the output schema; finalize types the Parquet columns
    with it and with the passthrough field names.
    """
    return job / "job.json"


def final_results_path(job: ObjectStoragePath) -> ObjectStoragePath:
    """Return the merged results file (one row per ``custom_id``)."""
    return job / "results.jsonl"


def final_failures_path(job: ObjectStoragePath) -> ObjectStoragePath:
    """Return the merged file of final failures."""
    return job / "failures.jsonl"


def final_table_path(job: ObjectStoragePath, name: str) -> ObjectStoragePath:
    """Return the Parquet table ``results`` or ``failures`` written by finalize."""
    return job / f"{name}.parquet"


def final_manifest_path(job: ObjectStoragePath) -> ObjectStoragePath:
    """Return the job manifest written by finalize."""
    return job / FINAL_MANIFEST_FILE


def uploads_dir(job: ObjectStoragePath) -> ObjectStoragePath:
    """Return the folder recording a documents job's uploads (see :mod:`airflow_batch.submit.documents`)."""
    return job / "files"


def kept_files_dir(output_path: str) -> str:
    """Return the record of files kept for later jobs (``delete_files="keep"``) under ``output_path``."""
    return f"{output_path.rstrip('/')}/{DEFAULT_FILES_STORE}"


def default_answer_store(output_path: str) -> str:
    """Return the answer store of the jobs under ``output_path`` when none is named: ``_answers`` in it."""
    return f"{output_path.rstrip('/')}/{DEFAULT_ANSWER_STORE}"


def answer_segment_name(batch_id: str) -> str:
    """Return the name of the answer store segment holding the answers of one batch."""
    return f"batch-{batch_id}"


def canary_segment_name(job: str, round_number: int) -> str:
    """Return the name of the answer store segment holding a round's canary answers."""
    import hashlib

    return f"canary-{hashlib.blake2b(job.encode(), digest_size=8).hexdigest()}-r{round_number}"


def answer_segments_dir(store: ObjectStoragePath) -> ObjectStoragePath:
    """Return the folder of an answer store's segments (see :mod:`airflow_batch.reuse.store`)."""
    return store / "v2" / "segments"  # v1 segments had no checksums: never read


def published_manifest_path(target: ObjectStoragePath) -> ObjectStoragePath:
    """Return the manifest of a ``publish_path`` folder: the pointer to its current version."""
    return target / "manifest.json"


def published_version_dir(target: ObjectStoragePath, version: str) -> ObjectStoragePath:
    """Return the folder of one published version (every file of one job) in a ``publish_path``."""
    return target / PUBLISHED_VERSIONS / path_segment(version)


def answer_receipt_path(job: ObjectStoragePath, segment: str) -> ObjectStoragePath:
    """Return the receipt a job keeps of an answer store segment it wrote: the segment's SHA-256.

    A segment is served only while the job it names vouches for it with this receipt (see
    :mod:`airflow_batch.reuse.store`).
    """
    return job / "answer-receipts" / f"{path_segment(segment)}.sha256"


def answer_segment_paths(
    store: ObjectStoragePath, segment: str
) -> tuple[ObjectStoragePath, ObjectStoragePath]:
    """Return (answers file, keys file) of one segment of an answer store.

    The answers file holds the segment's answers grouped by shard (the fingerprint's first
    byte); the keys file its sorted 8-byte keys and where each shard starts in the answers file.
    The keys file is written last: a segment is complete when it exists.
    """
    folder = answer_segments_dir(store)
    name = path_segment(segment)
    return folder / f"{name}.answers", folder / f"{name}{ANSWER_KEYS_SUFFIX}"
