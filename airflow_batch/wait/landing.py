"""When the wait hands ended batches to the worker to land, while the round's others still run.

The trigger only decides (no landing on the triggerer's event loop: turning a results stream
into rows is CPU work). When the decision says so, it ends with a ``landing`` event naming the
ended batches not landed yet; the sensor resumes in a worker, lands them with the gather's own
per-batch function (:func:`airflow_batch.gather.gathering.gather_batch`: part files, then a
sidecar, so a batch is never landed twice), and defers again with the same wait state.

Each resume costs a task start, so ended batches are grouped: the trigger fires when
``min_batches`` ended batches wait to be landed, or when any waits and ``interval`` seconds
have passed since the trigger started (the last landing). A batch's rows are thus readable
within ``interval`` plus one poll and its landing time. Once every batch has ended the wait
ends as before, and the gather lands what is left.

The same rule serves a round created in queue waves before its wait starts: the queue trigger
(:class:`~airflow_batch.triggers.queue.QueueRoomTrigger`) hands the ended batches to the submit,
which lands them the same way (:mod:`airflow_batch.wait.landing_worker`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_batch.wait.policy import WaitState, is_ended

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: The status of the event that hands ended batches to the worker (the wait goes on after).
LANDING = "landing"
#: ``anthropic_batch_job``'s ``land_interval``: a landing every 5 minutes at most, so a 24-hour round
#: resumes its wait at most 288 times (a task start each), while its rows are readable within minutes.
DEFAULT_LAND_INTERVAL = 300.0


def validate_land_interval(land_interval: float | None) -> float | None:
    """Return ``land_interval`` if it is seconds > 0 or None, else raise ``ValueError`` naming the fix."""
    if land_interval is not None and land_interval <= 0:
        raise ValueError(f"land_interval={land_interval!r}: give seconds > 0, or None to land nothing early.")
    return land_interval


@dataclass(frozen=True)
class LandingPolicy:
    """How ended batches are grouped into landings: every ``interval`` s, or ``min_batches`` at once."""

    interval: float
    min_batches: int = 1

    @classmethod
    def for_round(cls, interval: float, min_batches: int | None, batches: int) -> LandingPolicy:
        """Return the policy of a round of ``batches`` batches (``min_batches`` default: a tenth of them)."""
        return cls(interval, min_batches or max(1, -(-batches // 10)))

    @classmethod
    def of_trigger(cls, land_interval: float | None, land_min_batches: int) -> LandingPolicy | None:
        """Return the policy a trigger's serialized arguments name (None: ``land_interval`` off)."""
        return cls(float(land_interval), int(land_min_batches)) if land_interval else None

    def to_land(self, state: WaitState, landed: Collection[str], since: float, now: float) -> list[str]:
        """Return the ended batches to land now (empty: keep waiting).

        Nothing is landed mid-way once the deadline passed (the gather lands a timed-out round)
        or when every batch has ended (the wait's own event comes next).
        """
        if state.timed_out or not state.pending():
            return []
        ended = [
            batch_id
            for batch_id in state.batch_ids
            if batch_id in state.statuses and is_ended(state.statuses[batch_id])
        ]
        return self.due(ended, landed, since, now)

    def due(self, ended: Iterable[str], landed: Collection[str], since: float, now: float) -> list[str]:
        """Return the ``ended`` batches not ``landed`` when enough of them wait, or ``interval`` s
        passed ``since`` the last landing with any waiting; else nothing (keep waiting)."""
        waiting = [batch_id for batch_id in ended if batch_id not in landed]
        if len(waiting) >= self.min_batches or (waiting and now - since >= self.interval):
            return waiting
        return []


def landing_event(state: WaitState, batch_ids: list[str], landed: Collection[str]) -> dict[str, Any]:
    """Return the event that hands ``batch_ids`` to the worker, with what re-deferring needs."""
    return {
        "status": LANDING,
        "message": f"{len(batch_ids)} ended batch(es) to land while {len(state.pending())} still run.",
        "batch_status": dict(state.statuses),
        "to_land": list(batch_ids),
        "landed": sorted({*landed, *batch_ids}),
        "state": state.to_kwargs(),
    }


def validate_landing(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return a landing event if well formed, else raise ``ValueError`` naming what is wrong."""
    if not isinstance(event.get("to_land"), list) or not isinstance(event.get("state"), Mapping):
        raise ValueError(f"landing event without 'to_land' list and 'state' mapping: {dict(event)!r}")
    return dict(event)


def record_landed(job: ObjectStoragePath, round_number: int, landed: Iterable[str]) -> dict[str, Any]:
    """Write and return what the round has landed so far: batches, result rows and failure rows.

    Read back from the landed batches' sidecars (each batch's own record), so a landing run
    again writes the same figures. The batch jobs page shows them while the round still runs.
    """
    from datetime import UTC, datetime

    from airflow_batch.folder import JobFolder

    folder = JobFolder(job)
    batches = results = failures = 0
    for batch_id in landed:
        stats = folder.read_batch_stats(round_number, batch_id)
        if stats is None:
            continue
        counts = stats.result_counts
        batches += 1
        results += counts.get("succeeded", 0)
        failures += sum(counts.values()) - counts.get("succeeded", 0)
    document = {
        "round": round_number,
        "batches": batches,
        "results": results,
        "failures": failures,
        "updated_at": datetime.now(UTC).isoformat(),
    }
    folder.write_landed(round_number, document)
    return document
