"""``BatchesTrigger``: one trigger watches every batch of a round from the triggerer.

A round of a million requests (ten batches, or a thousand) costs one triggerer slot. Each
poll asks only about batches not yet ``ended``, at most ``polling.POLL_CONCURRENCY`` at a
time, with the async SDK client; nothing in :meth:`BatchesTrigger.run` blocks the event
loop (the connection is read with ``AnthropicHook.get_async_conn``, the progress file is
written in a thread). The decisions (retry, deadline, cancel, events) are
:class:`airflow_batch.polling.WaitState`'s, shared with the sensor's non-deferrable mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from airflow.providers.common.compat.connection import get_async_connection
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_batch import polling
from airflow_batch.manifest import BatchStatus

if TYPE_CHECKING:
    import anthropic

ON_KILL_BUDGET = 20.0  # seconds; the triggerer allows on_kill 30 s ([triggerer] on_kill_timeout)


async def async_clients(conn_id: str) -> tuple[anthropic.AsyncAnthropic, anthropic.AsyncAnthropic]:
    """Return the connection's async SDK client and its polling twin, without blocking the loop.

    The connection is read on the loop the way ``AnthropicHook.get_async_conn`` reads it
    (``get_async_connection``); the client is then built in a worker thread, because
    creating its TLS context takes ~100 ms of CPU, longer than a triggerer should block.
    The polling twin shares the client's connection pool, with ``max_retries=0`` (the wait
    owns retries and backoff, see :mod:`airflow_batch.polling`) and a 30 s request timeout
    instead of the SDK's ten minutes. Close the first one when done.
    """
    from airflow.providers.anthropic.hooks.anthropic import AnthropicHook

    hook = AnthropicHook(conn_id=conn_id)
    # Fill the hook's cached connection, as get_async_conn() itself does, so that building
    # the client in the thread below performs no connection lookup.
    hook._connection = await get_async_connection(conn_id, hook=hook)

    def build() -> tuple[anthropic.AsyncAnthropic, anthropic.AsyncAnthropic]:
        client = cast("anthropic.AsyncAnthropic", asyncio.run(hook.get_async_conn()))
        return client, client.with_options(max_retries=0, timeout=polling.REQUEST_TIMEOUT)

    return await asyncio.to_thread(build)


class BatchesTrigger(BaseTrigger):
    """Poll every batch of a round until all have ``ended``, the deadline passes, or a permanent fault.

    Yields one event: ``{"status": "success" | "timeout" | "error", "message": str,
    "batch_status": {batch_id: BatchStatus}, "timed_out": bool, "canceled_by_timeout": [...]}``
    (plus ``batch_id`` on an error).

    :param conn_id: The Anthropic connection (API key and base URL); never the key itself.
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
    """

    def __init__(
        self,
        *,
        conn_id: str,
        batch_ids: Sequence[str],
        end_time: float,
        poll_interval: float = polling.DEFAULT_POLL_INTERVAL,
        timeout_policy: str = "cancel",
        wait_for_cancel: bool = False,
        cancel_grace: float = polling.DEFAULT_CANCEL_GRACE,
        job_dir: str | None = None,
        round_number: int = 0,
        ended: Mapping[str, BatchStatus] | None = None,
        timed_out: bool = False,
        canceled_by_timeout: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.job_dir = job_dir
        self.round_number = round_number
        self.state = polling.WaitState(
            batch_ids=list(batch_ids),
            end_time=float(end_time),
            poll_interval=polling.validate_poll_interval(poll_interval),
            timeout_policy=polling.validate_timeout_policy(timeout_policy),
            wait_for_cancel=wait_for_cancel,
            cancel_grace=float(cancel_grace),
            statuses={batch_id: BatchStatus(**status) for batch_id, status in (ended or {}).items()},  # type: ignore[typeddict-item]
            timed_out=timed_out,
            canceled_by_timeout=list(canceled_by_timeout),
        )

    @classmethod
    def for_state(
        cls, state: polling.WaitState, *, conn_id: str, job_dir: str | None, round_number: int
    ) -> BatchesTrigger:
        """Return a trigger that carries on ``state`` (what a wait in the worker learned so far)."""
        return cls(conn_id=conn_id, job_dir=job_dir, round_number=round_number, **_state_kwargs(state))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and kwargs; ``ended`` carries what this run already learned."""
        return (
            "airflow_batch.triggers.batches.BatchesTrigger",
            {
                "conn_id": self.conn_id,
                "job_dir": self.job_dir,
                "round_number": self.round_number,
                **_state_kwargs(self.state),
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the wait ends and yield its one event."""
        client, poller = await async_clients(self.conn_id)
        try:
            self.log.info(
                "Watching %d batches (%d already ended); poll every %ss, deadline %s, policy %r.",
                len(self.state.batch_ids),
                len(self.state.ended_statuses()),
                self.state.poll_interval,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.state.end_time)),
                self.state.timeout_policy,
            )
            event = await polling.wait_async(poller, self.state, log=self.log, on_poll=self._write_progress)
        finally:
            await client.close()
        yield TriggerEvent(event)

    async def _write_progress(self, state: polling.WaitState, now: float) -> None:
        if not self.job_dir:
            return
        document = polling.progress_document(state, self.round_number, now)
        try:
            await asyncio.to_thread(polling.write_progress, self.job_dir, self.round_number, document)
        except Exception as exc:  # progress is informational; the wait goes on
            self.log.warning("Could not write the progress file of round %s: %s", self.round_number, exc)

    async def on_kill(self) -> None:
        """Cancel the unfinished batches when a user kills the deferred task (Airflow 3.3+).

        Not called when the triggerer restarts or moves the trigger: those keep the batches.
        """
        pending = self.state.pending()
        if not pending or self.state.phase != "waiting":
            return
        client, poller = await async_clients(self.conn_id)
        try:
            outcome = await asyncio.wait_for(
                polling.call_many_async(poller, "cancel", pending, attempts=2), timeout=ON_KILL_BUDGET
            )
        finally:
            await client.close()
        self.log.info("on_kill: canceled %d of %d unfinished batches.", len(outcome.statuses), len(pending))
        for batch_id, cause in {**outcome.permanent, **outcome.transient}.items():
            self.log.warning("on_kill: could not cancel batch %s: %s", batch_id, cause)


def _state_kwargs(state: polling.WaitState) -> dict[str, Any]:
    """Return the constructor kwargs that rebuild ``state`` (its settings and the ended batches)."""
    return {
        "batch_ids": list(state.batch_ids),
        "end_time": state.end_time,
        "poll_interval": state.poll_interval,
        "timeout_policy": state.timeout_policy,
        "wait_for_cancel": state.wait_for_cancel,
        "cancel_grace": state.cancel_grace,
        "ended": state.ended_statuses(),
        "timed_out": state.timed_out,
        "canceled_by_timeout": list(state.canceled_by_timeout),
    }
