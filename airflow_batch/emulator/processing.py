"""Simulated batch progress as a pure function of stored timestamps and the clock.

A batch's ``Schedule`` holds when it was created, when its first request completes
(``start_at``), its pace (``rate`` requests/s from ``anchor_time``, with
``anchor_done`` requests already done then), its TTL deadline and any cancel. From
that, ``batch_state(schedule, now)`` derives the processing status, when it ended and
how many requests were done by then, without touching the requests. Because it is
wall-clock based, a restarted emulator resumes every batch where it would have been.

A batch ends at the earliest of: all requests done, the end of a cancel
(``cancel_end``; the rest are ``canceled``), or ``expires_at`` (the rest ``expired``).
Counts other than ``processing`` stay 0 until then, as in the real API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

ProcessingStatus = Literal["in_progress", "canceling", "ended"]
EndReason = Literal["completed", "canceled", "expired"]

#: How long a batch's results stay downloadable after its creation; then ``archived_at`` is set.
RESULTS_RETENTION_SECONDS = 29 * 86_400.0
# A batch is never ended in the response that creates it.
_MIN_DURATION = 1e-6


@dataclass(frozen=True)
class Schedule:
    """The timing facts of one batch (epoch seconds)."""

    num_requests: int
    created_at: float
    expires_at: float
    start_at: float
    anchor_time: float
    anchor_done: int
    rate: float
    cancel_initiated_at: float | None = None
    cancel_end: float | None = None


@dataclass(frozen=True)
class BatchState:
    """Where a batch stands at one instant."""

    status: ProcessingStatus
    ended_at: float | None
    done_at_end: int
    end_reason: EndReason | None


def new_schedule(
    *, num_requests: int, created_at: float, ttl_seconds: float, start_delay_seconds: float, rate: float
) -> Schedule:
    """Return the schedule of a batch created now."""
    return Schedule(
        num_requests=num_requests,
        created_at=created_at,
        expires_at=created_at + ttl_seconds,
        start_at=created_at + start_delay_seconds,
        anchor_time=created_at,
        anchor_done=0,
        rate=rate,
    )


def done_by(schedule: Schedule, t: float) -> int:
    """Return how many requests have been processed by time ``t``."""
    if schedule.rate <= 0:
        return min(schedule.anchor_done, schedule.num_requests)
    elapsed = t - max(schedule.anchor_time, schedule.start_at)
    if elapsed <= 0:
        return schedule.anchor_done
    return min(schedule.num_requests, schedule.anchor_done + math.floor(elapsed * schedule.rate))


def finish_time(schedule: Schedule) -> float:
    """Return when the last request completes at the current pace (``inf`` when paused)."""
    remaining = schedule.num_requests - schedule.anchor_done
    if remaining <= 0:
        return max(schedule.anchor_time, schedule.created_at + _MIN_DURATION)
    if schedule.rate <= 0:
        return math.inf
    finish = max(schedule.anchor_time, schedule.start_at) + remaining / schedule.rate
    return max(finish, schedule.created_at + _MIN_DURATION)


def processed_at(schedule: Schedule, index: int) -> float:
    """Return when request ``index`` (0-based, request order) is processed at the current pace.

    Request ``index`` is done once ``done_by`` reaches ``index + 1``. A paused batch (rate 0)
    has no such time: its requests are taken as processed at its start.
    """
    base = max(schedule.anchor_time, schedule.start_at)
    if index < schedule.anchor_done or schedule.rate <= 0:
        return base
    return base + (index + 1 - schedule.anchor_done) / schedule.rate


def ends_at(schedule: Schedule) -> float:
    """Return when the batch ends at the current pace: done, canceled or expired, whichever is first."""
    cancel_end = math.inf if schedule.cancel_end is None else schedule.cancel_end
    return min(finish_time(schedule), cancel_end, schedule.expires_at)


def batch_state(schedule: Schedule, now: float) -> BatchState:
    """Return the status of a batch at ``now``; when ended, also when and how many were done."""
    end = ends_at(schedule)
    if now < end:
        status: ProcessingStatus = "in_progress" if schedule.cancel_initiated_at is None else "canceling"
        return BatchState(status, None, 0, None)
    if end == finish_time(schedule):
        return BatchState("ended", end, schedule.num_requests, "completed")
    reason: EndReason = "canceled" if end == schedule.cancel_end else "expired"
    return BatchState("ended", end, done_by(schedule, end), reason)


def archived_at(schedule: Schedule, now: float) -> float | None:
    """Return when the batch was archived (its results gone), or None while they are kept."""
    archived = schedule.created_at + RESULTS_RETENTION_SECONDS
    return archived if now >= archived else None


def repaced(schedule: Schedule, now: float, rate: float) -> Schedule:
    """Return the schedule continuing at ``rate`` from ``now``, keeping the work already done."""
    return replace(schedule, anchor_time=now, anchor_done=done_by(schedule, now), rate=rate)


def restarted(schedule: Schedule, now: float, start_delay_seconds: float) -> Schedule:
    """Return the schedule with a new start delay, if the batch has not started by ``now``."""
    if now >= schedule.start_at or schedule.anchor_done > 0:
        return schedule
    return replace(schedule, start_at=schedule.created_at + start_delay_seconds)


def canceled(schedule: Schedule, now: float, cancel_delay_seconds: float) -> Schedule:
    """Return the schedule with a cancel initiated at ``now`` (unchanged if already canceling)."""
    if schedule.cancel_initiated_at is not None:
        return schedule
    # At least a moment of ``canceling``, so the cancel response itself never says ``ended``.
    return replace(schedule, cancel_initiated_at=now, cancel_end=now + max(cancel_delay_seconds, 0.001))


def rfc3339(timestamp: float | None) -> str | None:
    """Return an epoch time as RFC 3339 UTC with microseconds and ``Z``, as the API does."""
    if timestamp is None or math.isinf(timestamp):
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
