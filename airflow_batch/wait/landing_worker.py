"""Landing the ended batches a ``landing`` event names, in the worker the event resumes.

Two tasks defer while some of a round's batches have ended and others still run: the wait
(``BatchesSensor`` on ``BatchesTrigger``) and, while the round's later waves wait for room in
the processing queue, the submit (on ``QueueRoomTrigger``). Their triggers only decide
(:mod:`airflow_batch.wait.landing`); the task resumes here, lands, and defers again. One
function for both, so a batch lands the same whichever task lands it, and the same as the
gather would: :func:`~airflow_batch.gather.gathering.gather_batch` writes its part files, then
its sidecar, so a batch is never landed twice (a landing run again, by a stale event or a
cleared task, finds the sidecar and keeps the files), and the gather and the wait skip it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_batch.gather.gathering import gather_batch, gather_config
from airflow_batch.gather.retention import find_gone
from airflow_batch.hooks import job_api
from airflow_batch.wait.landing import record_landed

if TYPE_CHECKING:
    import logging

    from airflow.sdk import ObjectStoragePath

    from airflow_batch.manifest import JobIdentity


def land_ended(
    identity: JobIdentity,
    job: ObjectStoragePath,
    round_number: int,
    records: Mapping[str, Mapping[str, Any]],
    to_land: Sequence[str],
    *,
    landed: Sequence[str],
    gather_settings: Mapping[str, Any],
    log: logging.Logger,
    meanwhile: str,
) -> None:
    """Land the batches ``to_land`` (``records``: batch id -> the round's batch record) and record
    ``landed`` (every batch landed so far, these included) for ``read_results`` and the page.

    ``gather_settings`` are the round's gather arguments; ``meanwhile`` ends the log line (what the
    task goes on waiting for).
    """
    config = gather_config(job, **gather_settings)
    started = time.monotonic()
    rows = 0
    with job_api(identity) as api:
        # Results the API no longer holds are left to the gather, whose on_results_gone decides.
        gone = find_gone(api, job, round_number, [records[batch_id] for batch_id in to_land])
        for batch_id in to_land:
            if batch_id in gone:
                log.warning("Not landing batch %s: %s; the gather decides", batch_id, gone[batch_id].reason)
                continue
            stats = gather_batch(
                api, records[batch_id], job=job, round_number=round_number, config=config, logger=log
            )
            rows += sum(stats.result_counts.values())
    log.info(
        "Landed %d ended batch(es) (%d rows) in %.1fs %s.",
        len(to_land),
        rows,
        time.monotonic() - started,
        meanwhile,
    )
    record_landed(job, round_number, landed)
