"""Deferring a submit (round 0 or a retry round) while its next wave waits for queue room.

Both submit operators create what fits the processing queue and then defer on
:class:`~airflow_batch.triggers.queue.QueueRoomTrigger`; no worker slot is held while the
queue drains. The trigger creates each later wave itself from the job's spec, the ledger and
the installed chunk files (see :func:`airflow_batch.submit.creating.continue_round`) when it
can read the job folder, so the task resumes once, when every chunk has its batch; when it
cannot (a local job folder on another host) or a create fails, it hands the wave back: the
task resumes, creates the next wave, and defers again.

With the job's ``land_interval`` (in its spec) the round's ended batches are landed meanwhile: the
trigger hands them over (a ``landing`` event), the task lands them here, in the worker, as the
wait does (:func:`airflow_batch.wait.landing_worker.land_ended`), and defers again on the same
queue wait with the landed batches, so the first wave's rows are readable before the last wave
is created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_batch import settings
from airflow_batch.exceptions import BatchPollError
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.submit.queue import QueueWait, QueueWaitNeeded
from airflow_batch.wait.landing import LANDING, LandingPolicy

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context, ObjectStoragePath

    from airflow_batch.submit.round import SubmitSettings

#: The method an operator resumes in after a queue wait.
RESUME_METHOD = "resume_submit"


def defer_for_room(
    operator: BaseOperator,
    pause: QueueWaitNeeded,
    identity: JobIdentity,
    round_number: int,
    poll_interval: float | None,
    *,
    job: ObjectStoragePath,
    landed: list[str] | None = None,
    started_at: float | None = None,
) -> NoReturn:
    """Defer ``operator`` until the round's remaining waves are created or it must create them
    itself (raises TaskDeferred). The trigger creates each wave that fits from the job folder's
    spec, ledger and chunk files when it can read them, so the task resumes once, at the end
    (and between, to land ended batches, with the job's ``land_interval``).

    ``landed``: the round's batches landed so far (None: read from the job folder);
    ``started_at``: when this queue wait began (a wait resumed after a landing keeps its start).
    """
    from airflow_batch.triggers.queue import QueueRoomTrigger

    operator.defer(
        trigger=QueueRoomTrigger(
            identity=identity.to_json(),
            batch_ids=pause.batch_ids,
            wait=pause.wait.to_json(),
            started_at=time.time() if started_at is None else started_at,
            poll_interval=poll_interval or settings.poll_interval(),
            round_number=round_number,
            job=str(job),
            **_landing(job, round_number, pause, landed),
        ),
        method_name=RESUME_METHOD,
    )


def _landing(
    job: ObjectStoragePath, round_number: int, pause: QueueWaitNeeded, landed: list[str] | None
) -> dict[str, Any]:
    """Return the queue trigger's landing arguments from the job's spec (none: it lands nothing early)."""
    from airflow_batch.exceptions import JobSpecError
    from airflow_batch.gather.gathering import landed_batches
    from airflow_batch.spec.job_spec import read_job_spec

    try:
        spec = read_job_spec(job)
    except JobSpecError:  # not readable here: the wait lands the round's batches
        return {}
    if spec.land_interval is None:
        return {}
    batches = len(pause.batch_ids) + pause.wait.pending_chunks
    policy = LandingPolicy.for_round(spec.land_interval, spec.land_min_batches, batches)
    if landed is None:  # a cleared or retried submit: batches an earlier try landed are not handed back
        landed = sorted(landed_batches(job, round_number, pause.batch_ids))
    return {"land_interval": policy.interval, "land_min_batches": policy.min_batches, "landed": landed}


def resume_round(
    operator: BaseOperator,
    context: Context,
    event: Mapping[str, Any] | None,
    *,
    identity: JobIdentity,
    job: ObjectStoragePath,
    round_number: int,
    settings: SubmitSettings,
    poll_interval: float | None,
    start_over: Callable[[], RoundManifest],
) -> RoundManifest:
    """Create the round's next wave after a queue wait; defer again while more chunks wait."""
    from airflow_batch.submit.creating import create_wave
    from airflow_batch.submit.ledger import LedgerStore

    state_store = context.get("task_state_store")
    if event and event.get("batches"):  # created by the trigger: known to the mirror from now on
        LedgerStore(job, round_number, state_store).mirror_batches(event["batches"])
    if event and event.get("status") == LANDING:
        land_while_queued(operator, event, identity, job, round_number, poll_interval, state_store)
    try:
        return next_wave(
            event,
            lambda queued: create_wave(
                identity,
                job,
                round_number,
                settings,
                queued,
                state_store=state_store,
                log=operator.log,  # type: ignore[arg-type]
            ),
            start_over,
        )
    except QueueWaitNeeded as pause:
        so_far = event.get("landed") if event else None  # a hand-back carries the landed batches on
        defer_for_room(operator, pause, identity, round_number, poll_interval, job=job, landed=so_far)
        raise


def land_while_queued(
    operator: BaseOperator,
    event: Mapping[str, Any],
    identity: JobIdentity,
    job: ObjectStoragePath,
    round_number: int,
    poll_interval: float | None,
    state_store: Any | None,
) -> NoReturn:
    """Land the ended batches a queue trigger's ``landing`` event names, then defer again on the
    same queue wait with the round's batches landed so far (raises TaskDeferred)."""
    from airflow_batch.spec.job_spec import read_job_spec
    from airflow_batch.submit.ledger import LedgerStore
    from airflow_batch.wait.landing_worker import land_ended

    try:
        pause = QueueWaitNeeded(QueueWait.from_json(event["wait"]), list(event["batch_ids"]))
        to_land, landed = list(event["to_land"]), list(event["landed"])
        started_at = float(event["started_at"])  # the queue wait goes on: room_ready counts from its start
    except (KeyError, TypeError, ValueError) as exc:
        raise BatchPollError(
            f"{operator.task_id}: a malformed landing event ({exc!r}): {dict(event)!r}"
        ) from exc
    ledger = LedgerStore(job, round_number, state_store).load()
    records = {record["batch_id"]: record for record in ledger.batch_records(job)} if ledger else {}
    land_ended(
        identity,
        job,
        round_number,
        records,
        [batch_id for batch_id in to_land if batch_id in records],
        landed=landed,
        gather_settings=read_job_spec(job).gather_settings,
        log=operator.log,  # type: ignore[arg-type]
        meanwhile=f"while {pause.wait.pending_chunks} chunk(s) of round {round_number} wait for queue room; "
        "waiting again",
    )
    defer_for_room(
        operator, pause, identity, round_number, poll_interval, job=job, landed=landed, started_at=started_at
    )


def next_wave(
    event: Mapping[str, Any] | None,
    continue_round: Callable[[int | None], RoundManifest],
    start_over: Callable[[], RoundManifest],
) -> RoundManifest:
    """Return the round's manifest after creating the next wave (QueueWaitNeeded when more wait).

    ``continue_round(queued)`` works from the ledger; when the installed chunk files are gone
    (a local job folder on another worker) ``start_over()`` runs the whole submit again, which
    re-attaches to every recorded batch.
    """
    event = event or {}
    if event.get("status") == "error":
        raise BatchPollError(f"waiting for queue room failed: {event.get('message')}")
    queued = event.get("queued")
    try:
        return continue_round(None if queued is None else int(queued))
    except FileNotFoundError:
        return start_over()
