"""``BatchesTrigger``: one trigger watches every batch of a round from the triggerer.

A round of a million requests (ten batches, or a thousand) costs one triggerer slot. The
loop and its decisions are the sensor's own (:mod:`airflow_batch.wait.loop`,
:class:`~airflow_batch.wait.policy.WaitState`); this class only carries the wait's state
across the triggerer boundary. The triggerer imports this module and builds the trigger on
its event loop, so the module imports nothing heavy: the SDK, the hook and the client are
loaded and built in a worker thread when :meth:`BatchesTrigger.run` starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_batch.manifest import JobIdentity
from airflow_batch.wait.kill import StallWatch, kill_verdict
from airflow_batch.wait.landing import LandingPolicy, landing_event
from airflow_batch.wait.loop import cancel_unfinished, connect, settle, triggerer_name, wait_for_round
from airflow_batch.wait.policy import DEFAULT_CANCEL_GRACE, WaitState
from airflow_batch.wait.progress import ProgressWriter

CLASSPATH = "airflow_batch.triggers.batches.BatchesTrigger"
#: on_kill work still running after its on_kill was interrupted (a reference keeps it alive).
_KILLS: set[asyncio.Future[None]] = set()
ON_KILL_BUDGET = 20.0  # seconds; the triggerer allows on_kill 30 s ([triggerer] on_kill_timeout)


class BatchesTrigger(BaseTrigger):
    """Poll every batch of a round until all have ``ended``, the deadline passes, or a permanent fault.

    Yields one event: ``{"status": "success" | "timeout" | "error", "message": str,
    "batch_status": {batch_id: BatchStatus}, "timed_out": bool, "canceled_by_timeout": [...]}``
    (plus ``batch_id`` on an error). With ``land_interval`` it may instead yield
    ``{"status": "landing", "message", "batch_status", "to_land": [...], "landed": [...],
    "state": {...}}`` (see :mod:`airflow_batch.wait.landing`): the sensor lands ``to_land`` and
    defers again with ``state``.

    :param identity: Who the round's calls go to (``JobIdentity.to_json()``: the connection's id,
        never its key; the job's ``anthropic-beta`` names; its workspace).
    :param batch_ids: Every batch of the round.
    :param end_time: Wall-clock deadline, epoch seconds (survives a triggerer restart).
    :param poll_interval: Seconds between polls.
    :param timeout_policy: ``cancel`` (default) cancels unfinished batches at the deadline;
        ``leave`` leaves them running for a later attempt to re-attach.
    :param wait_for_cancel: After canceling at the deadline, keep polling until the canceled
        batches reach ``ended`` (at most ``cancel_grace`` seconds), so the round can be gathered.
    :param cancel_grace: Seconds to wait for canceled batches to end.
    :param job_dir: Job folder URI; when set, the round's ``progress.json`` is rewritten each poll.
    :param round_number: The round whose ``progress.json`` to write.
    :param ended: Statuses of batches already ``ended``; they are never asked about again.
    :param timed_out: Whether the deadline already passed and its cancels were sent.
    :param canceled_by_timeout: Batches canceled by the deadline.
    :param started_at: When the wait began (epoch seconds), for the elapsed time and ETA shown.
    :param land_interval: When set, ended batches are handed to the worker to land while the
        others run (:mod:`airflow_batch.wait.landing`): a ``landing`` event at most every
        ``land_interval`` seconds, or as soon as ``land_min_batches`` wait.
    :param land_min_batches: Ended batches that trigger a landing at once.
    :param landed: Batches landed already (by earlier landings of this wait).
    """

    def __init__(
        self,
        *,
        identity: Mapping[str, Any],
        batch_ids: Sequence[str],
        end_time: float,
        poll_interval: float = 60.0,
        timeout_policy: str = "cancel",
        wait_for_cancel: bool = False,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        job_dir: str | None = None,
        round_number: int = 0,
        ended: Mapping[str, Mapping[str, Any]] | None = None,
        timed_out: bool = False,
        canceled_by_timeout: Sequence[str] = (),
        started_at: float | None = None,
        land_interval: float | None = None,
        land_min_batches: int = 1,
        landed: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.landing = LandingPolicy.of_trigger(land_interval, land_min_batches)
        self.landed = list(landed)
        self.identity = JobIdentity.from_json(identity)
        self.job_dir = job_dir
        self.round_number = round_number
        #: Seconds the event was held back (the stale-event guard), apart from the polls themselves.
        self.settle_held = 0.0
        #: When this copy's event loop last stood still: a copy frozen past the health threshold
        #: gets Airflow 3.3's reassignment cancel, which must cancel nothing.
        self.stall = StallWatch()
        self.state = WaitState.from_kwargs(
            batch_ids=list(batch_ids),
            end_time=float(end_time),
            poll_interval=float(poll_interval),
            timeout_policy=timeout_policy,
            wait_for_cancel=wait_for_cancel,
            cancel_grace=float(cancel_grace),
            ended=ended,
            timed_out=timed_out,
            canceled_by_timeout=list(canceled_by_timeout),
            started_at=started_at,
        )

    def _round(self) -> dict[str, Any]:
        """Return the kwargs naming the round (who its calls go to, its folder) and its landing."""
        kwargs: dict[str, Any] = {
            "identity": self.identity.to_json(),
            "job_dir": self.job_dir,
            "round_number": self.round_number,
        }
        if self.landing is not None:
            kwargs.update(
                land_interval=self.landing.interval,
                land_min_batches=self.landing.min_batches,
                landed=self.landed,
            )
        return kwargs

    @classmethod
    def for_state(cls, state: WaitState, **round_kwargs: Any) -> BatchesTrigger:
        """Return a trigger that carries on ``state`` (what a wait in the worker learned so far)."""
        return cls(**round_kwargs, **state.to_kwargs())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and kwargs; ``ended`` carries what this run already learned."""
        return CLASSPATH, {**self._round(), **self.state.to_kwargs()}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the wait ends and yield its one event."""
        self.log.info(
            "Watching %d batches (%d already ended) on %s; poll every %ss, policy %r.",
            len(self.state.batch_ids),
            len(self.state.ended_statuses()),
            triggerer_name(self),
            self.state.poll_interval,
            self.state.timeout_policy,
        )
        started = time.time()
        ticker = asyncio.create_task(self.stall.run())
        api = await connect(self.identity)
        try:
            writer = ProgressWriter(self.job_dir, self.round_number, self.log, landed=self.landed)
            event = await wait_for_round(
                api, self.state, log=self.log, on_poll=writer.write, interrupt=self._landing_due(started)
            )
        finally:
            ticker.cancel()
            await api.close()
        self.settle_held = await settle(started, self.state.poll_interval)
        yield TriggerEvent(event)

    def _landing_due(self, started: float) -> Callable[[WaitState, float], dict[str, Any] | None] | None:
        """Return the check that ends this trigger with a ``landing`` event, or None when landing is off."""
        landing = self.landing
        if landing is None:
            return None

        def due(state: WaitState, now: float) -> dict[str, Any] | None:
            batch_ids = landing.to_land(state, self.landed, started, now)
            return landing_event(state, batch_ids, self.landed) if batch_ids else None

        return due

    async def on_kill(self) -> None:
        """Cancel the unfinished batches when a user killed the deferred task (Airflow 3.3+).

        Airflow 3.3 also calls this on a copy of the trigger that another triggerer took over
        (a triggerer that stalled, then resumed): the stall itself, and else the task instance's
        state, tell the two apart (:mod:`airflow_batch.wait.kill`); only a user's kill cancels.
        """
        # Airflow 3.3.2 cancels the trigger again at every sync (about once a second) while
        # on_kill runs, and a second cancel cuts on_kill short: the work runs as a task of its
        # own, shielded, so the cancels are sent even when on_kill itself is interrupted.
        work = asyncio.ensure_future(self._kill())
        _KILLS.add(work)
        work.add_done_callback(_KILLS.discard)
        await asyncio.shield(work)

    async def _kill(self) -> None:
        verdict = await kill_verdict(getattr(self, "task_instance", None), self.stall)
        if not verdict.cancel:
            self.log.warning("on_kill on %s: cancelling nothing: %s.", triggerer_name(self), verdict.reason)
            return
        self.log.info("on_kill: %s; cancelling the round's unfinished batches.", verdict.reason)
        await cancel_unfinished(self.identity, self.state, log=self.log, within=ON_KILL_BUDGET)
