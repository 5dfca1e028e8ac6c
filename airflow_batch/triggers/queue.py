"""``QueueRoomTrigger``: wait in the triggerer until a round's next wave fits the processing queue.

The submit task defers on it when the round's next chunks would overflow the organisation's
processing queue (see :mod:`airflow_batch.submit.queue`): it watches the round's batches
created so far until enough of their requests have been processed. Then, when it can read the
job folder, it creates the next wave itself (the task's own code,
:func:`~airflow_batch.submit.creating.continue_round`, run in a thread with a sync client:
the ledger records each intent and batch, so a wave is never created twice) and goes on
watching; it fires once every chunk has its batch, so a job of a hundred waves resumes its
task once instead of a hundred times. It hands a wave back to the task (fires ``room``)
when the job folder is not readable here (a local folder on another host) or creating
fails in any way: the task then creates it, with its own error handling, and defers again.

With ``land_interval`` it also hands the round's ended batches to the task while later waves
wait (a ``landing`` event, grouped as the wait groups them: :mod:`airflow_batch.wait.landing`),
so the first wave's rows are readable long before the last wave is created. The task lands them
in the worker and defers again on this wait, with the landed batches, so none is handed back.
Like ``BatchesTrigger`` this module imports nothing heavy; the client is built in a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_batch.manifest import JobIdentity
from airflow_batch.metrics import queue_gauge
from airflow_batch.submit.queue import QueueWait, QueueWaitNeeded, queued_requests, room_ready
from airflow_batch.wait.landing import LANDING, LandingPolicy
from airflow_batch.wait.loop import connect, read_statuses, settle, triggerer_name
from airflow_batch.wait.policy import is_ended

CLASSPATH = "airflow_batch.triggers.queue.QueueRoomTrigger"
#: Creating a wave in the trigger ended in neither the next wait nor the round: the task creates it.
HAND_BACK = "hand_back"


class QueueRoomTrigger(BaseTrigger):
    """Poll a round's created batches until its next wave has queue room; yield one event.

    Events: ``{"status": "created", "waves": int, "batches": {chunk: batch_id}}`` (every chunk
    has its batch),
    ``{"status": "room", "queued": int, "waited": float, "landed": [...]}`` (the task creates the
    next wave), ``{"status": "landing", "to_land": [...], "landed": [...], "batch_ids": [...],
    "wait": {...}, "started_at": float}`` (with ``land_interval``: the task lands ``to_land`` and
    waits again) or ``{"status": "error", "message": str}`` (a batch could not be read: 401, 403, 404).

    :param identity: Who the job's calls go to (``JobIdentity.to_json()``: the connection's id,
        never its key; betas; workspace).
    :param batch_ids: The round's batches created so far.
    :param wait: The recorded :class:`~airflow_batch.submit.queue.QueueWait` (``to_json``).
    :param started_at: When the wait began (epoch seconds; survives a triggerer restart).
    :param poll_interval: Seconds between polls.
    :param round_number: The round, for the log.
    :param job: The job folder (its URL), whose ``spec.json`` holds the batch settings of the
        waves; None: never create here, fire ``room``.
    :param land_interval: When set, ended batches are handed to the task to land while the next
        wave waits: at most every ``land_interval`` seconds, or as soon as ``land_min_batches`` wait.
    :param land_min_batches: Ended batches that are handed over at once.
    :param landed: Batches of the round landed already (never handed over again).
    """

    def __init__(
        self,
        *,
        identity: Mapping[str, Any],
        batch_ids: Sequence[str],
        wait: Mapping[str, Any],
        started_at: float,
        poll_interval: float = 60.0,
        round_number: int = 0,
        job: str | None = None,
        land_interval: float | None = None,
        land_min_batches: int = 1,
        landed: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.landing = LandingPolicy.of_trigger(land_interval, land_min_batches)
        self.landed = list(landed)
        self.identity = JobIdentity.from_json(identity)
        self.batch_ids = list(batch_ids)
        self.wait = QueueWait.from_json(wait)
        self.started_at = float(started_at)
        self.poll_interval = float(poll_interval)
        self.round_number = round_number
        self.job = job
        #: Set when run() is cancelled: the create thread (which cancellation does not stop)
        #: checks it before each create.
        self._stopped = threading.Event()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and kwargs."""
        return CLASSPATH, {
            "identity": self.identity.to_json(),
            "batch_ids": self.batch_ids,
            "wait": self.wait.to_json(),
            "started_at": self.started_at,
            "poll_interval": self.poll_interval,
            "round_number": self.round_number,
            "job": self.job,
            "land_interval": self.landing.interval if self.landing else None,
            "land_min_batches": self.landing.min_batches if self.landing else 1,
            "landed": self.landed,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the next wave fits, and yield its one event."""
        self.log.info(
            "Round %d waits for queue room for %d requests (%s) on %s; watching %d batches.",
            self.round_number,
            self.wait.need,
            self.wait.reason,
            triggerer_name(self),
            len(self.batch_ids),
        )
        try:
            async for event in self._watch():
                yield event
        finally:  # cancelled (a user's kill, a move to another triggerer) or done: no create after this
            self._stopped.set()

    async def _watch(self) -> AsyncIterator[TriggerEvent]:
        started = time.time()
        waves = 0
        if self.job:  # a restarted trigger carries the batches of its deferral, not of its own waves
            self.batch_ids = await asyncio.to_thread(self._recorded_batches)
        api = await connect(self.identity)
        try:
            while True:
                outcome = await read_statuses(api, self.batch_ids, round_batches=len(self.batch_ids))
                if outcome.permanent:
                    batch_id, cause = next(iter(outcome.permanent.items()))
                    yield TriggerEvent({"status": "error", "message": f"batch {batch_id}: {cause}"})
                    return
                queued = queued_requests(outcome.statuses)
                queue_gauge(self, queued)
                waited = time.time() - self.started_at
                if room_ready(self.wait, queued, waited):
                    # A wave created here is no event: only an event is held (settle), so a wait
                    # resumed after a landing fills the room at once instead of after the hold.
                    wave = await asyncio.to_thread(self._create_wave, queued) if self.job else HAND_BACK
                    if isinstance(wave, QueueWaitNeeded):  # created what fits; watch for the next
                        waves += 1
                        self.wait, self.batch_ids = wave.wait, list(wave.batch_ids)
                        self.started_at = time.time()
                        continue
                    held = await settle(started, self.poll_interval)
                    if isinstance(wave, dict):  # every chunk has its batch
                        batches = {str(b["chunk"]): b["batch_id"] for b in wave["batches"]}
                        yield TriggerEvent({"status": "created", "waves": waves + 1, "batches": batches})
                    else:  # the task creates it, sized from the count after the hold
                        queued = await self._fresher(api, queued) if held else queued
                        yield TriggerEvent(
                            {"status": "room", "queued": queued, "waited": waited, "landed": self.landed}
                        )
                    return
                to_land = self._to_land(outcome.statuses, started)
                if to_land:  # the task lands them (CPU work, not for this loop) and waits again
                    await settle(started, self.poll_interval)
                    yield TriggerEvent(self._landing_event(to_land))
                    return
                self.log.info(
                    "queue: %d of the round's requests still processing; the next wave needs room for %d%s "
                    "(waited %.0f s)",
                    queued,
                    self.wait.need,
                    self._under(),
                    waited,
                )
                await asyncio.sleep(self.poll_interval)
        finally:
            await api.close()

    def _to_land(self, statuses: Mapping[str, Mapping[str, Any]], since: float) -> list[str]:
        """Return the round's ended batches to hand to the task now (none when landing is off)."""
        if self.landing is None:
            return []
        ended = [batch_id for batch_id in self.batch_ids if is_ended(statuses.get(batch_id))]
        return self.landing.due(ended, self.landed, since, time.time())

    def _landing_event(self, to_land: list[str]) -> dict[str, Any]:
        """Return the event handing ``to_land`` to the task, with what its next deferral needs."""
        return {
            "status": LANDING,
            "message": f"{len(to_land)} ended batch(es) to land while {self.wait.pending_chunks} chunk(s) "
            "wait for queue room.",
            "to_land": to_land,
            "landed": sorted({*self.landed, *to_land}),
            "batch_ids": self.batch_ids,
            "wait": self.wait.to_json(),
            "started_at": self.started_at,
        }

    def _under(self) -> str:
        """Return the limit the next wave waits under, for the log."""
        if self.wait.limit is None:
            return ""
        if self.wait.reason == "max_queued_requests":
            return f" under max_queued_requests={self.wait.limit:,}"
        return f" under the {self.wait.limit:,} the queue held when it was last full"

    def _recorded_batches(self) -> list[str]:
        """Return the round's batches as its ledger records them (the given ones if unreadable)."""
        from airflow_batch.storage import as_path
        from airflow_batch.submit.ledger import LedgerStore

        try:
            ledger = LedgerStore(as_path(str(self.job)), self.round_number).load()
        except Exception:  # unreadable here: the task's view is all there is
            return self.batch_ids
        if ledger is None:
            return self.batch_ids
        recorded = [entry["batch_id"] for _, entry in sorted(ledger.batches.items())]
        known = set(recorded)
        return recorded + [batch_id for batch_id in self.batch_ids if batch_id not in known]

    def _create_wave(self, queued: int) -> QueueWaitNeeded | dict[str, Any] | str:
        """Create the next wave (in a thread); return the next wait, the round's manifest when
        every chunk has its batch, or ``HAND_BACK`` (the task creates the wave).

        The thread checks before each create whether this trigger was cancelled (cancelling
        the coroutine does not stop a thread), and its ledger saves are fenced: beside another
        copy of this trigger it creates no chunk twice (see ``submit.creating.create_round``)."""
        from airflow_batch.spec.job_spec import read_job_spec
        from airflow_batch.storage import as_path
        from airflow_batch.submit.creating import CreatesStopped, create_wave

        assert self.job is not None
        try:
            job = as_path(self.job)
            manifest = create_wave(
                self.identity,
                job,
                self.round_number,
                read_job_spec(job).settings,
                queued,
                log=self.log,  # type: ignore[arg-type]
                should_stop=self._stopped.is_set,
            )
        except QueueWaitNeeded as pause:
            return pause
        except CreatesStopped as stop:  # this copy was cancelled: nobody reads what it returns
            self.log.info("Creating the next wave here stopped: %s", stop)
            return HAND_BACK
        except FileNotFoundError as missing:
            self.log.info("The task creates the next wave: %s is not readable from this triggerer.", missing)
            return HAND_BACK
        except Exception as error:  # the task's own path reports it, with its retries and errors
            self.log.warning("Creating the next wave here failed (%s: %s); the task creates it.",
                             type(error).__name__, error)  # fmt: skip
            return HAND_BACK
        return dict(manifest)

    async def _fresher(self, api: Any, queued: int) -> int:
        """Return the round's queued requests read again (a count only falls: ended stays ended).

        The next wave is sized from this count, so a count from before a hold would leave the
        room freed during it unused until the next wait.
        """
        outcome = await read_statuses(api, self.batch_ids, round_batches=len(self.batch_ids))
        return queued if outcome.permanent else min(queued, queued_requests(outcome.statuses))
