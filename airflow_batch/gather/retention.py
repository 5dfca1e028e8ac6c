"""Batches whose results the API no longer holds: found before a round is gathered, never mid-stream.

The API keeps a batch's results 29 days after its creation; then it sets ``archived_at`` and a
download of the results fails. A batch may also be gone altogether (deleted in the Console or by
another process: a 404). A gather or a re-run of a round weeks later would otherwise meet that
as a 404 in the middle of streaming the round, after landing part of it, without saying which
requests have no answer.

So before landing anything, :func:`find_gone` asks the API for every batch of the round not yet
landed (one small ``retrieve`` each; a landed batch, with its sidecar, is never asked about).
What then happens to the requests of a batch whose results are gone is the gather's
``on_results_gone``:

- ``"retry"`` (the job's gathers while a retry round is left): each request becomes a
  ``missing`` failure row (``error_type`` ``results_archived`` or ``batch_deleted``), retryable
  by default, so the next retry round resubmits exactly those requests; the batch's sidecar
  records why, so a re-run does not ask again. Their usage is unknown (the results are gone):
  the round's cost leaves them out and the manifest's ``results_gone`` names them.
- ``"fail"`` (the last round, and the operator's default): the gather fails at once with
  :class:`~airflow_batch.exceptions.ResultsGoneError`, naming each batch, why, and its
  requests (``custom_id`` and input row), before landing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_batch.exceptions import BatchNotFoundError, ResultsGoneError
from airflow_batch.folder import JobFolder
from airflow_batch.gather.batch_parts import chunk_inputs
from airflow_batch.gather.stats import BatchGatherStats
from airflow_batch.rows.failure_rows import missing_rows

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.gather.batch_parts import GatherConfig

#: What a gather does with a batch whose results are gone: fail naming it, or land its
#: requests as retryable failures for the next round.
RESULTS_GONE_POLICIES = ("fail", "retry")
ARCHIVED = "results_archived"
DELETED = "batch_deleted"
#: Requests named per batch in the error; the chunk file holds them all.
NAMED_REQUESTS = 5


@dataclass(frozen=True)
class GoneResults:
    """Why the API no longer holds one batch's results."""

    error_type: str  # ARCHIVED or DELETED
    reason: str


def validate_results_gone(value: str) -> str:
    """Return ``value`` if it is an ``on_results_gone`` policy, else raise naming the choices."""
    if value not in RESULTS_GONE_POLICIES:
        raise ValueError(f"on_results_gone={value!r}: must be one of {', '.join(RESULTS_GONE_POLICIES)}.")
    return value


def find_gone(
    api: BatchesApi, job: ObjectStoragePath, round_number: int, records: Iterable[Mapping[str, Any]]
) -> dict[str, GoneResults]:
    """Return the batches of ``records`` not yet landed whose results the API no longer holds."""
    gone: dict[str, GoneResults] = {}
    folder = JobFolder(job)
    for record in records:
        batch_id = str(record["batch_id"])
        if folder.is_landed(round_number, batch_id):
            continue
        try:
            batch = api.retrieve(batch_id)
        except BatchNotFoundError:
            gone[batch_id] = GoneResults(DELETED, "the batch is no longer on the API (deleted)")
            continue
        if batch.archived_at is not None:
            gone[batch_id] = GoneResults(
                ARCHIVED, f"archived at {batch.archived_at.isoformat()}: the API keeps results 29 days"
            )
    return gone


def land_gone(
    job: ObjectStoragePath,
    round_number: int,
    record: Mapping[str, Any],
    gone: GoneResults,
    config: GatherConfig,
) -> BatchGatherStats:
    """Write the batch's requests as ``missing`` failure rows and an empty results part; return its stats."""
    batch_id = str(record["batch_id"])
    settings = config.block_settings(batch_id, round_number, chunk_inputs(job, round_number, record))
    rows = missing_rows(
        list(settings.inputs),
        settings,
        error_type=gone.error_type,
        message=f"the results of batch {batch_id} are gone: {gone.reason}",
    )
    folder = JobFolder(job)
    with folder.part_writers(round_number, batch_id) as (_, failures_out):
        failures_out.write(rows.failures)
    stats = BatchGatherStats(
        batch_id=batch_id,
        results_path=str(folder.results_part(round_number, batch_id)),
        failures_path=str(folder.failures_part(round_number, batch_id)),
        results_gone=gone.reason,
    )
    stats.add(rows)
    folder.write_batch_stats(round_number, stats)
    return stats


def gone_error(
    job: ObjectStoragePath,
    round_number: int,
    records: Iterable[Mapping[str, Any]],
    gone: Mapping[str, GoneResults],
) -> ResultsGoneError:
    """Return the error naming each batch whose results are gone, why, and its requests."""
    lines = []
    total = 0
    for record in records:
        batch_id = str(record["batch_id"])
        if batch_id not in gone:
            continue
        inputs = list(chunk_inputs(job, round_number, record).values())
        total += len(inputs)
        named = ", ".join(
            meta.custom_id + (f" (row {meta.row})" if meta.row is not None else "")
            for meta in inputs[:NAMED_REQUESTS]
        )
        more = f" and {len(inputs) - NAMED_REQUESTS} more" if len(inputs) > NAMED_REQUESTS else ""
        lines.append(
            f"batch {batch_id} ({gone[batch_id].reason}): {len(inputs)} request(s) of chunk "
            f"{record['chunk']}: {named}{more}; every one is in {record['chunk_path']}"
        )
    message = (
        f"round {round_number}: the API no longer holds the results of {len(gone)} batch(es), so "
        f"{total} request(s) have no answer to land; nothing more of the round was landed. "
        + "; ".join(lines)
        + ". No retry round is left to resubmit them: run the job again (a new run submits them "
        "afresh), or give the job max_retry_rounds >= 1 so that a retry round resubmits exactly "
        "these requests."
    )
    return ResultsGoneError(message, batches={batch_id: why.reason for batch_id, why in gone.items()})


def log_gone(logger: logging.Logger, round_number: int, gone: Mapping[str, GoneResults]) -> None:
    """Say which batches' results are gone and that their requests go to the next round."""
    for batch_id, why in gone.items():
        logger.warning(
            "round %d: the results of batch %s are gone (%s): its requests are landed as retryable "
            "'missing' failures (error_type %s) for the next retry round; their usage is unknown and "
            "left out of the round's cost",
            round_number,
            batch_id,
            why.reason,
            why.error_type,
        )
