"""Whether the organisation's limits let a create through, and the 429 that says why not.

Three limits, decided before anything is stored (pure functions of the queue, the clock and
the settings):

- the **processing queue** (``queue_limit``): the requests of every batch not yet ended, all
  workspaces together. A create that would take it past the limit gets 429
  ``rate_limit_error`` with ``retry-after``: the seconds until enough queued requests are
  expected to end (from the batches' schedules), at least 1. The API counts a request until
  it is processed; the emulator counts it until its batch ends, which is what a client can see
  (``request_counts.processing`` drops when the batch ends) and never less. A batch larger
  than the whole queue can never fit: 429 without ``retry-after`` and ``x-should-retry:
  false``.
- the **create rate** (``create_rate_per_minute``): creates accepted in the last 60 seconds;
  429 with ``retry-after`` until the oldest of them leaves the window.
- the **spend limit** (``spend_limit_reached``): 429 ``rate_limit_error`` with
  ``error.details.error_code = "enforced_spend_limit_reached"``, no ``retry-after``, and the
  API's message naming 00:00 UTC on the first day of next month, when access comes back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Refusal:
    """A 429 ``rate_limit_error``: its message, headers and error details."""

    message: str
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] | None = None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def queue_refusal(
    queue: Sequence[tuple[float, int]], requests: int, limit: int | None, now: float
) -> Refusal | None:
    """Return why a batch of ``requests`` does not fit the processing queue, or None if it fits.

    :param queue: ``(ends_at, requests)`` of every batch not ended at ``now``.
    """
    if limit is None:
        return None
    queued = sum(count for _, count in queue)
    if queued + requests <= limit:
        return None
    if requests > limit:
        return Refusal(
            f"This batch of {requests:,} requests is larger than your organization's processing queue "
            f"({limit:,} requests) and can never be queued; split it into smaller batches",
            {"x-should-retry": "false"},
        )
    freed = queued
    wait = 0.0
    for end, count in sorted(queue):
        freed -= count
        wait = end - now
        if freed + requests <= limit:
            break
    seconds = max(1, math.ceil(wait))  # every batch ends by its expiry at the latest
    return Refusal(
        f"Number of batch requests in your organization's processing queue would exceed its limit: "
        f"{queued:,} queued + {requests:,} in this batch > {limit:,} (queue_limit); the processing "
        f"queue is full, retry after {seconds} s, when enough queued requests are expected to end",
        _retry_after(seconds),
    )


def rate_refusal(recent_creates: Sequence[float], limit: int | None, now: float) -> Refusal | None:
    """Return why one more create now exceeds the create rate, or None.

    :param recent_creates: times of the creates accepted so far, oldest first.
    """
    if limit is None:
        return None
    window = [t for t in recent_creates if t > now - RATE_WINDOW_SECONDS]
    if len(window) < limit:
        return None
    seconds = window[-limit] + RATE_WINDOW_SECONDS - now
    return Refusal(
        f"Number of requests has exceeded your rate limit of {limit:,} batch creates per minute "
        f"(create_rate_per_minute); retry after {max(1, math.ceil(seconds))} s",
        _retry_after(seconds),
    )


def spend_limit_refusal(now: float) -> Refusal:
    """Return the API's 429 for an organisation past its monthly spend cap."""
    today = datetime.fromtimestamp(now, UTC)
    resume = datetime(today.year + today.month // 12, today.month % 12 + 1, 1, tzinfo=UTC)
    return Refusal(
        "You have reached your API usage limits: your organization has crossed its monthly API usage "
        "threshold, set based on your organization's API tier. You will regain access on "
        f"{resume:%Y-%m-%d} at 00:00 UTC.",
        details={"error_code": "enforced_spend_limit_reached"},
    )
