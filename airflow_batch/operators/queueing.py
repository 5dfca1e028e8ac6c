"""Deferring a submit (round 0 or a retry round) while its next wave waits for queue room.

Both submit operators create what fits the processing queue and then defer on
:class:`~airflow_batch.triggers.queue.QueueRoomTrigger`; no worker slot is held while the
queue drains. The trigger creates each later wave itself from the job's spec, the ledger and
the installed chunk files (see :func:`airflow_batch.submit.creating.continue_round`) when it
can read the job folder, so the task resumes once, when every chunk has its batch; when it
cannot (a local job folder on another host) or a create fails, it hands the wave back: the
task resumes, creates the next wave, and defers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_batch import settings
from airflow_batch.exceptions import BatchPollError
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.submit.queue import QueueWaitNeeded

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
) -> None:
    """Defer ``operator`` until the round's remaining waves are created or it must create them
    itself (raises TaskDeferred). The trigger creates each wave that fits from the job folder's
    spec, ledger and chunk files when it can read them, so the task resumes once, at the end."""
    from airflow_batch.triggers.queue import QueueRoomTrigger

    operator.defer(
        trigger=QueueRoomTrigger(
            identity=identity.to_json(),
            batch_ids=pause.batch_ids,
            wait=pause.wait.to_json(),
            started_at=time.time(),
            poll_interval=poll_interval or settings.poll_interval(),
            round_number=round_number,
            job=str(job),
        ),
        method_name=RESUME_METHOD,
    )


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
        defer_for_room(operator, pause, identity, round_number, poll_interval, job=job)
        raise


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
