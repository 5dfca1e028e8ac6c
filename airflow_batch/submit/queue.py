"""How many requests a job may add to the organisation's processing queue now, and when to ask again.

The Batches API limits the requests waiting in an organisation's processing queue (all jobs,
all workspaces together: 200,000 to 500,000 by tier). A create past it is answered 429. A
round larger than the queue is therefore created in **waves**: the chunks that fit are
created, the rest stay pending in the ledger, and the submit task defers (no worker slot)
until enough of the job's queued requests have been processed; then the next wave goes.

Two ways to know the room:

- ``max_queued_requests`` (the user's share of the queue): the job keeps at most that many of
  its own requests queued. Several jobs sharing an organisation each get a share whose sum
  stays under the organisation's limit, so none of them is ever refused (see docs/deployment.md).
- Learned from the API (no ``max_queued_requests``): chunks are created until a create is
  answered "queue full"; the job then waits until as many of its own queued requests as the
  refused chunk holds have been processed (or, with none of its own queued, until the
  ``retry-after`` the API gave), and tries again. A queue-full answer never fails the task.
  What the queue held of the job at the refusal becomes the round's learned limit: later
  waves fill up to it without a refused create (each costs a whole upload), and once it is
  ten minutes old one chunk more probes whether the queue has room again.

A request counts as queued until its batch ends. The API frees a request's place once it is
processed, a little earlier, but a batch's counts do not say precisely when; counting to the
end never overflows a share (at worst a wave goes a little later). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Seconds to wait before trying again when the queue is full and none of the job's own
#: requests are queued (other jobs hold it) and the API named no retry-after.
DEFAULT_QUEUE_RETRY_SECONDS = 60.0
#: Longest wait for the job's own requests to free room before trying the queue again anyway
#: (other jobs' batches end too).
MAX_QUEUE_WAIT_SECONDS = 900.0


def queued_requests(statuses: Mapping[str, Mapping[str, Any]]) -> int:
    """Return the requests of the batches of ``statuses`` (``batch_id -> BatchStatus``) not ended yet."""
    total = 0
    for status in statuses.values():
        if status.get("processing_status") != "ended":
            total += sum(int(count) for count in (status.get("request_counts") or {}).values())
    return total


def wave(chunk_sizes: Sequence[int], queued: int, limit: int | None) -> int:
    """Return how many of the pending chunks (their request counts, in order) fit the queue now.

    Chunks go in order, so a job's batches keep their input order; with no limit all fit.
    """
    if limit is None:
        return len(chunk_sizes)
    room = limit - queued
    fitted = 0
    for size in chunk_sizes:
        if size > room:
            break
        room -= size
        fitted += 1
    return fitted


@dataclass(frozen=True)
class QueueWait:
    """Why a round's creates paused and what room the next wave needs.

    :param reason: ``"max_queued_requests"`` (our share is full), ``"learned_queue_limit"`` (as
        much as the queue held at its last refusal) or ``"queue_full"`` (the API refused a create).
    :param need: Requests of the next pending chunk.
    :param queued: The job's own requests processing when the wave stopped.
    :param limit: ``max_queued_requests``, or None when learned from the API.
    :param retry_after: Seconds the API asked to wait (queue full), if it said.
    :param pending_chunks: Chunks still without a batch.
    """

    reason: str
    need: int
    queued: int
    limit: int | None
    retry_after: float | None
    pending_chunks: int

    def to_json(self) -> dict[str, Any]:
        """Return the wait as it is recorded in the round manifest (``queue_wait``)."""
        return {
            "reason": self.reason,
            "need": self.need,
            "queued": self.queued,
            "limit": self.limit,
            "retry_after": self.retry_after,
            "pending_chunks": self.pending_chunks,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueueWait:
        """Return the wait recorded in ``data``."""
        return cls(
            reason=str(data["reason"]),
            need=int(data["need"]),
            queued=int(data["queued"]),
            limit=None if data.get("limit") is None else int(data["limit"]),
            retry_after=None if data.get("retry_after") is None else float(data["retry_after"]),
            pending_chunks=int(data.get("pending_chunks", 0)),
        )


class QueueWaitNeeded(Exception):
    """The round's next chunks wait for queue room; the caller defers (or waits) and continues.

    :param wait: Why, and what room the next wave needs.
    :param batch_ids: The round's batches created so far: the ones whose progress frees room.
    """

    def __init__(self, wait: QueueWait, batch_ids: Sequence[str]) -> None:
        super().__init__(f"{wait.pending_chunks} chunk(s) wait for queue room ({wait.reason})")
        self.wait = wait
        self.batch_ids = list(batch_ids)


def room_ready(wait: QueueWait, queued: int, waited: float) -> bool:
    """Return whether the next wave may go: ``queued`` of the job's requests process now, after ``waited`` s.

    With a limit: when the next chunk fits under it. Learned from a queue-full answer: when the
    job's own processed requests freed the room of the refused chunk, after the API's
    ``retry-after``; with none of its own queued, once that ``retry-after`` (or a minute) has
    passed; and in any case after :data:`MAX_QUEUE_WAIT_SECONDS`, because other jobs free room too.
    """
    if wait.limit is not None:
        return wait.limit - queued >= wait.need
    not_before = wait.retry_after if wait.retry_after is not None else 0.0
    if waited < not_before:
        return False
    if queued == 0:
        return waited >= (wait.retry_after or DEFAULT_QUEUE_RETRY_SECONDS)
    return wait.queued - queued >= wait.need or waited >= MAX_QUEUE_WAIT_SECONDS
