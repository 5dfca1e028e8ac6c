"""What the wait shows while it runs: a round's totals, its progress line, and ``progress.json``.

The sensor (in the worker) and the trigger (in the triggerer) write the same document
through one :class:`ProgressWriter`, so the page and the task log read the same figures.
Request counts of a batch stay ``processing`` until it ends (the API's semantics), so the
ETA is known once some batches have ended: the rate at which requests ended so far, applied
to those still processing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from airflow_batch.manifest import BatchStatus, RequestCounts, sum_counts

if TYPE_CHECKING:
    import logging

    from airflow_batch.wait.policy import WaitState


class Progress(TypedDict):
    """The totals of a round at one poll: what the progress line and progress file show."""

    counts: RequestCounts
    requests_total: int
    requests_done: int
    percent: float
    batches_total: int
    batches_ended: int
    batches_canceling: int
    batches_unknown: int


def summarize(batch_ids: Sequence[str], statuses: Mapping[str, BatchStatus]) -> Progress:
    """Return the round's totals over ``batch_ids`` (batches never read count as unknown)."""
    known = [statuses[batch_id] for batch_id in batch_ids if batch_id in statuses]
    counts = sum_counts(status["request_counts"] for status in known)
    total = sum(counts.values())  # type: ignore[arg-type]
    done = total - counts["processing"]
    return Progress(
        counts=counts,
        requests_total=total,
        requests_done=done,
        percent=round(100.0 * done / total, 1) if total else 0.0,
        batches_total=len(batch_ids),
        batches_ended=sum(1 for status in known if status["processing_status"] == "ended"),
        batches_canceling=sum(1 for status in known if status["processing_status"] == "canceling"),
        batches_unknown=len(batch_ids) - len(known),
    )


def progress_line(progress: Progress) -> str:
    """Return the one log line a poll prints about the round's totals."""
    counts = progress["counts"]
    line = (
        f"{progress['batches_ended']}/{progress['batches_total']} batches ended, "
        f"{progress['percent']:.1f}% of {progress['requests_total']:,} requests done "
        f"(processing {counts['processing']:,}, succeeded {counts['succeeded']:,}, "
        f"errored {counts['errored']:,}, canceled {counts['canceled']:,}, "
        f"expired {counts['expired']:,})"
    )
    if progress["batches_canceling"]:
        line += f", {progress['batches_canceling']} canceling"
    if progress["batches_unknown"]:
        line += f", {progress['batches_unknown']} not read yet"
    return line


def eta_seconds(progress: Progress, elapsed: float) -> float | None:
    """Return the seconds left at the rate requests ended so far, or None before any ended."""
    done, total = progress["requests_done"], progress["requests_total"]
    if done <= 0 or elapsed <= 0 or done >= total:
        return None
    return round((total - done) * elapsed / done, 1)


def eta_text(progress: Progress, elapsed: float) -> str:
    """Return what the log says of the time left: ``ETA ~4 min`` once requests have ended (in
    ended batches, or in a batch the API reports progress of), else why there is none yet."""
    eta = eta_seconds(progress, elapsed)
    if eta is not None:
        return f"ETA ~{_duration(eta)} at the rate so far ({_duration(elapsed)} elapsed)"
    if progress["requests_done"] >= progress["requests_total"]:
        return f"{_duration(elapsed)} elapsed"
    return f"{_duration(elapsed)} elapsed; an ETA once a batch ends (requests count as processing until then)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def log_key(progress: Progress) -> tuple[int, ...]:
    """Return what a progress line is logged again for when it changes: the counts and batch states."""
    counts = progress["counts"]
    return (
        progress["batches_ended"],
        progress["batches_canceling"],
        progress["batches_unknown"],
        counts["processing"],
        counts["succeeded"],
        counts["errored"],
        counts["canceled"],
        counts["expired"],
    )


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def progress_document(state: WaitState, round_number: int, now: float) -> dict[str, Any]:
    """Return the JSON the wait writes to the round's ``progress.json`` each poll."""
    progress = state.progress()
    elapsed = now - state.started_at if state.started_at is not None else 0.0
    return {
        "round": round_number,
        "phase": state.phase,
        "batches_total": progress["batches_total"],
        "batches_ended": progress["batches_ended"],
        "percent": progress["percent"],
        "requests_total": progress["requests_total"],
        "counts": progress["counts"],
        "batch_status": state.statuses,
        "timed_out": state.timed_out,
        "canceled_by_timeout": state.canceled_by_timeout,
        "end_time": _iso(state.end_time),
        "started_at": _iso(state.started_at),
        "elapsed_seconds": round(elapsed, 1),
        "last_poll_at": _iso(state.last_poll),
        "eta_seconds": eta_seconds(progress, elapsed),
        "updated_at": _iso(now),
    }


class ProgressWriter:
    """Rewrites a round's ``progress.json`` after each poll; a failed write is logged, never fatal."""

    def __init__(
        self,
        job_dir: str | None,
        round_number: int,
        log: logging.Logger | Any,
        *,
        landed: Sequence[str] | None = None,
    ) -> None:
        self.job_dir = job_dir
        self.round_number = round_number
        self.log = log
        #: Batches whose rows are landed already (landing as they end), shown as ``batches_landed``.
        self.landed = landed

    def write(self, state: WaitState, now: float) -> None:
        """Write the document of ``state`` (blocking: call it in a thread from an event loop)."""
        if not self.job_dir:
            return
        from airflow_batch.folder import JobFolder

        try:
            document = progress_document(state, self.round_number, now)
            if self.landed is not None:
                document["batches_landed"] = len(self.landed)
            JobFolder(self.job_dir).write_progress(self.round_number, document)
        except Exception as exc:  # progress is informational; the wait goes on
            self.log.warning("Could not write the progress file of round %s: %s", self.round_number, exc)
