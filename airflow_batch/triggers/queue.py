"""``QueueRoomTrigger``: wait in the triggerer until a round's next wave fits the processing queue.

The submit task defers on it when the round's next chunks would overflow the organisation's
processing queue (see :mod:`airflow_batch.submit.queue`): it watches the round's batches
created so far and fires once enough of their requests have been processed. Like
``BatchesTrigger`` this module imports nothing heavy; the client is built in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_batch.submit.queue import QueueWait, queued_requests, room_ready
from airflow_batch.wait.loop import connect, read_statuses, settle, triggerer_name

CLASSPATH = "airflow_batch.triggers.queue.QueueRoomTrigger"


class QueueRoomTrigger(BaseTrigger):
    """Poll a round's created batches until its next wave has queue room; yield one event.

    Event: ``{"status": "room", "queued": int, "waited": float}`` or ``{"status": "error",
    "message": str}`` (a batch could not be read: 401, 403, 404).

    :param conn_id: The Anthropic connection (never the key itself).
    :param batch_ids: The round's batches created so far.
    :param wait: The recorded :class:`~airflow_batch.submit.queue.QueueWait` (``to_json``).
    :param started_at: When the wait began (epoch seconds; survives a triggerer restart).
    :param poll_interval: Seconds between polls.
    :param round_number: The round, for the log.
    :param betas: The job's ``anthropic-beta`` names.
    :param workspace_id: The job's workspace.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        batch_ids: Sequence[str],
        wait: Mapping[str, Any],
        started_at: float,
        poll_interval: float = 60.0,
        round_number: int = 0,
        betas: Sequence[str] = (),
        workspace_id: str | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.batch_ids = list(batch_ids)
        self.wait = QueueWait.from_json(wait)
        self.started_at = float(started_at)
        self.poll_interval = float(poll_interval)
        self.round_number = round_number
        self.betas = list(betas)
        self.workspace_id = workspace_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and kwargs."""
        return CLASSPATH, {
            "conn_id": self.conn_id,
            "batch_ids": self.batch_ids,
            "wait": self.wait.to_json(),
            "started_at": self.started_at,
            "poll_interval": self.poll_interval,
            "round_number": self.round_number,
            "betas": self.betas,
            "workspace_id": self.workspace_id,
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
        started = time.time()
        api = await connect(self.conn_id, betas=self.betas, workspace_id=self.workspace_id)
        try:
            while True:
                outcome = await read_statuses(api, self.batch_ids, round_batches=len(self.batch_ids))
                if outcome.permanent:
                    batch_id, cause = next(iter(outcome.permanent.items()))
                    yield TriggerEvent({"status": "error", "message": f"batch {batch_id}: {cause}"})
                    return
                queued = queued_requests(outcome.statuses)
                waited = time.time() - self.started_at
                if room_ready(self.wait, queued, waited):
                    if await settle(started, self.poll_interval):
                        queued = await self._fresher(api, queued)  # batches ended during the hold
                    yield TriggerEvent({"status": "room", "queued": queued, "waited": waited})
                    return
                self.log.info(
                    "queue: %d of the round's requests still processing; the next wave needs room for %d%s "
                    "(waited %.0f s)",
                    queued,
                    self.wait.need,
                    f" under max_queued_requests={self.wait.limit:,}" if self.wait.limit is not None else "",
                    waited,
                )
                await asyncio.sleep(self.poll_interval)
        finally:
            await api.close()

    async def _fresher(self, api: Any, queued: int) -> int:
        """Return the round's queued requests read again (a count only falls: ended stays ended).

        The next wave is sized from this count, so a count from before a hold would leave the
        room freed during it unused until the next wait.
        """
        outcome = await read_statuses(api, self.batch_ids, round_batches=len(self.batch_ids))
        return queued if outcome.permanent else min(queued, queued_requests(outcome.statuses))
