"""What the wait decides: one pure policy for the trigger and the sensor's in-worker mode.

Both paths run the same loop (:mod:`airflow_batch.wait.loop`): read the batches not yet
``ended``, fold the answers into a :class:`WaitState`, and act on the :class:`Decision` it
returns (sleep, cancel on the deadline, or finish with an event). Everything that decides
lives here, over plain data, so it is tested without a server or Airflow.

Faults: every call is retried by the one API retry policy (:mod:`airflow_batch.api.retry`)
within its time budget. A batch whose status still could not be read is asked again next
cycle; only ``MAX_FAILED_CYCLES`` consecutive cycles in which *no* batch could be read end
the wait (an outage longer than the budgets, or a wrong base URL). A permanent fault (401,
403, 404, any other 4xx) ends the wait at once with an error naming the batch and the cause.

Deadline: ``end_time`` is wall-clock epoch seconds, so it survives serialization into a new
triggerer. When it passes, policy ``cancel`` (default) cancels every unfinished batch; policy
``leave`` leaves them running for a later attempt to re-attach. With ``wait_for_cancel`` the
wait then keeps polling (up to ``cancel_grace`` seconds) until the canceled batches reach
``ended``, so the round can still be gathered; ``canceling`` is not ``ended``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from airflow_batch.manifest import BatchStatus, RequestCounts
from airflow_batch.wait.progress import Progress, eta_text, log_key, progress_line, summarize

if TYPE_CHECKING:
    from airflow_batch.api.status import BatchPage

ENDED = "ended"
TIMEOUT_POLICIES = ("cancel", "leave")

DEFAULT_TIMEOUT = 24 * 3600.0
DEFAULT_CANCEL_GRACE = 3600.0
#: Below this many seconds between polls only a local base URL (the emulator) is accepted.
MIN_POLL_INTERVAL = 1.0
#: Consecutive cycles in which no batch could be read, each after the retry budget, that end the wait.
MAX_FAILED_CYCLES = 3
#: Seconds after which an unchanged progress line is logged again (it is logged at each change).
PROGRESS_LOG_EVERY = 300.0
#: More unfinished batches than this are read from list pages, not one retrieve each.
LIST_THRESHOLD = 10
#: List pages read per cycle beyond the round's own size, for batches other jobs created meanwhile.
LIST_EXTRA_PAGES = 5
EXPIRY_WARNING_SECONDS = 3 * 3600.0
IDS_IN_MESSAGES = 5


def status_record(record: Mapping[str, Any]) -> BatchStatus:
    """Return a batch's state read back from a trigger's kwargs, checked (a stranger may have written it)."""
    counts = record["request_counts"]
    return BatchStatus(
        processing_status=str(record["processing_status"]),
        request_counts=RequestCounts(
            processing=int(counts.get("processing", 0)),
            succeeded=int(counts.get("succeeded", 0)),
            errored=int(counts.get("errored", 0)),
            canceled=int(counts.get("canceled", 0)),
            expired=int(counts.get("expired", 0)),
        ),
        expires_at=None if record.get("expires_at") is None else str(record["expires_at"]),
        ended_at=None if record.get("ended_at") is None else str(record["ended_at"]),
    )


def statuses_in_page(page: BatchPage, wanted: set[str]) -> dict[str, BatchStatus]:
    """Return the statuses of the ``wanted`` batches found in one list page."""
    return {batch.id: batch.record() for batch in page.data if batch.id in wanted}


def list_page_budget(round_batches: int, page_size: int) -> int:
    """Return how many list pages one cycle may read for a round of ``round_batches`` batches."""
    return -(-round_batches // page_size) + LIST_EXTRA_PAGES


def is_ended(status: Mapping[str, Any] | None) -> bool:
    """Return whether a batch reached the terminal ``ended`` status (``canceling`` has not)."""
    return status is not None and status.get("processing_status") == ENDED


def next_to_poll(batch_ids: Iterable[str], statuses: Mapping[str, BatchStatus]) -> list[str]:
    """Return the batches still worth asking about: every one not yet ``ended``, in order."""
    return [batch_id for batch_id in batch_ids if not is_ended(statuses.get(batch_id))]


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expiring_batches(
    statuses: Mapping[str, BatchStatus], now: float, within: float = EXPIRY_WARNING_SECONDS
) -> dict[str, float]:
    """Return ``{batch_id: seconds left}`` of unfinished batches that expire within ``within``."""
    expiring: dict[str, float] = {}
    for batch_id, status in statuses.items():
        if is_ended(status) or not status.get("expires_at"):
            continue
        left = _parse_time(str(status["expires_at"])).timestamp() - now
        if left <= within:
            expiring[batch_id] = left
    return expiring


def expiry_warning(expiring: Mapping[str, float]) -> str:
    """Return the warning line for batches close to ``expires_at`` (their unfinished requests expire)."""
    ordered = sorted(expiring.items(), key=lambda item: item[1])
    shown = ", ".join(
        f"{batch_id} in {_duration(max(left, 0.0))}" for batch_id, left in ordered[:IDS_IN_MESSAGES]
    )
    more = f" and {len(ordered) - IDS_IN_MESSAGES} more" if len(ordered) > IDS_IN_MESSAGES else ""
    return (
        f"{len(ordered)} unfinished batch(es) near expires_at: {shown}{more}. Requests still "
        "processing then end as 'expired' (retryable by a retry round)."
    )


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def validate_poll_interval(value: float, *, local: bool | None = None) -> float:
    """Return ``value`` as seconds between polls, or raise naming the setting and the fix.

    ``local`` says whether the API is on this machine (the emulator): only then may polls come
    faster than once a second. ``None`` (not known yet, at DAG parse time) checks only > 0.
    """
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(
            f"poll_interval={value!r}: must be a positive number of seconds (60 is the default)."
        )
    if local is False and seconds < MIN_POLL_INTERVAL:
        raise ValueError(
            f"poll_interval={value!r}: at least {MIN_POLL_INTERVAL:g} second(s) against the real API "
            "(shorter intervals only spend the Batches API's request rate limit); shorter ones are "
            "for a local emulator. 60 is the default."
        )
    return seconds


def validate_timeout_policy(value: str) -> str:
    """Return ``value`` if it is a known timeout policy, or raise naming the choices."""
    if value not in TIMEOUT_POLICIES:
        raise ValueError(f"timeout_policy={value!r}: must be one of {', '.join(TIMEOUT_POLICIES)}.")
    return value


@dataclass
class CallOutcome:
    """What one round of calls (a poll or a cancel) over many batches returned."""

    statuses: dict[str, BatchStatus] = field(default_factory=dict)
    transient: dict[str, str] = field(default_factory=dict)  # batch id -> cause, retry budget spent
    permanent: dict[str, str] = field(default_factory=dict)  # batch id -> cause

    def merge(self, other: CallOutcome) -> CallOutcome:
        """Return this outcome with ``other``'s answers added."""
        self.statuses.update(other.statuses)
        self.transient.update(other.transient)
        self.permanent.update(other.permanent)
        return self


@dataclass
class Decision:
    """What the loop does next: ``sleep`` then poll, ``cancel`` the unfinished, or ``finish``."""

    action: Literal["sleep", "cancel", "finish"]
    sleep: float = 0.0
    event: dict[str, Any] | None = None
    info: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class WaitState:
    """Everything the wait knows and decides; both loops feed it outcomes and obey its decisions.

    ``statuses`` holds the last status read of each batch; only batches not yet ``ended``
    are polled again.
    """

    batch_ids: list[str]
    end_time: float
    poll_interval: float = 60.0
    timeout_policy: str = "cancel"
    wait_for_cancel: bool = False
    cancel_grace: float = DEFAULT_CANCEL_GRACE
    statuses: dict[str, BatchStatus] = field(default_factory=dict)
    timed_out: bool = False
    canceled_by_timeout: list[str] = field(default_factory=list)
    not_ended_at_deadline: list[str] = field(default_factory=list)
    failed_cycles: int = 0
    warned_expiry: set[str] = field(default_factory=set)
    phase: str = "waiting"  # then the final event's status
    started_at: float | None = None  # wall clock of the wait's first poll, for elapsed time and ETA
    last_poll: float | None = None
    # The progress last logged, and when: a poll that changed nothing logs again only after
    # PROGRESS_LOG_EVERY seconds (a day-long wait polled each minute is not 1,440 identical lines).
    logged_key: tuple[int, ...] | None = None
    logged_at: float = 0.0

    def pending(self) -> list[str]:
        """Return the batches to poll next (not yet ``ended``)."""
        return next_to_poll(self.batch_ids, self.statuses)

    def progress(self) -> Progress:
        """Return the round's totals as last seen."""
        return summarize(self.batch_ids, self.statuses)

    def ended_statuses(self) -> dict[str, BatchStatus]:
        """Return the statuses of ended batches (what a restarted trigger need not ask again)."""
        return {batch_id: status for batch_id, status in self.statuses.items() if is_ended(status)}

    def to_kwargs(self) -> dict[str, Any]:
        """Return the plain values that rebuild this state (its settings and the ended batches)."""
        return {
            "batch_ids": list(self.batch_ids),
            "end_time": self.end_time,
            "poll_interval": self.poll_interval,
            "timeout_policy": self.timeout_policy,
            "wait_for_cancel": self.wait_for_cancel,
            "cancel_grace": self.cancel_grace,
            "ended": self.ended_statuses(),
            "timed_out": self.timed_out,
            "canceled_by_timeout": list(self.canceled_by_timeout),
            "started_at": self.started_at,
        }

    @classmethod
    def from_kwargs(
        cls, *, ended: Mapping[str, Mapping[str, Any]] | None = None, **settings: Any
    ) -> WaitState:
        """Return the state :meth:`to_kwargs` described (what a trigger is rebuilt from)."""
        statuses = {batch_id: status_record(status) for batch_id, status in (ended or {}).items()}
        state = cls(statuses=statuses, **settings)
        state.poll_interval = validate_poll_interval(state.poll_interval)
        validate_timeout_policy(state.timeout_policy)
        return state

    def event(self, status: str, message: str, **extra: Any) -> dict[str, Any]:
        """Return the event that ends the wait (crosses the triggerer/worker boundary)."""
        self.phase = status
        return {
            "status": status,
            "message": message,
            "batch_status": dict(self.statuses),
            "timed_out": self.timed_out,
            "canceled_by_timeout": list(self.canceled_by_timeout),
            **extra,
        }

    def record_poll(self, outcome: CallOutcome, now: float) -> Decision:
        """Fold one poll's answers in and return what to do next."""
        self.statuses.update(outcome.statuses)
        if self.started_at is None:
            self.started_at = now
        self.last_poll = now
        progress = self.progress()
        info = self._progress_info(progress, now)
        warnings = self._expiry_warnings(now)
        if outcome.transient:
            warnings.append(_transient_warning(outcome))
        if outcome.permanent:
            batch_id, cause = next(iter(outcome.permanent.items()))
            message = f"Polling batch {batch_id} failed permanently: {cause}"
            return Decision(
                "finish", event=self.event("error", message, batch_id=batch_id), info=info, warnings=warnings
            )
        if not self.pending():
            if self.timed_out:
                message = _timeout_message(self, "; every canceled batch has ended")
                return Decision("finish", event=self.event("timeout", message), info=info, warnings=warnings)
            message = f"All {len(self.batch_ids)} batches ended: {progress_line(progress)}."
            return Decision("finish", event=self.event("success", message), info=info, warnings=warnings)
        self.failed_cycles = self.failed_cycles + 1 if outcome.transient and not outcome.statuses else 0
        if self.failed_cycles >= MAX_FAILED_CYCLES:
            batch_id, cause = next(iter(outcome.transient.items()))
            message = (
                f"No batch could be read in {self.failed_cycles} consecutive polls; last error for "
                f"{batch_id}: {cause}. Check the base URL of the connection and the API status."
            )
            return Decision(
                "finish", event=self.event("error", message, batch_id=batch_id), info=info, warnings=warnings
            )
        if now >= self.end_time and not self.timed_out:
            if self.timeout_policy == "cancel":
                return Decision("cancel", info=info, warnings=warnings)
            self.timed_out = True
            self.not_ended_at_deadline = self.pending()
            message = _timeout_message(
                self, "; policy 'leave': they keep running for a later attempt to re-attach"
            )
            return Decision("finish", event=self.event("timeout", message), info=info, warnings=warnings)
        if self.timed_out and now >= self.end_time + self.cancel_grace:
            message = _timeout_message(
                self, f"; {len(self.pending())} still not ended {self.cancel_grace:.0f}s after cancel"
            )
            return Decision("finish", event=self.event("timeout", message), info=info, warnings=warnings)
        return Decision("sleep", sleep=self._next_sleep(now), info=info, warnings=warnings)

    def _progress_info(self, progress: Progress, now: float) -> list[str]:
        """Return the progress line (with the ETA) when it changed or was last logged long ago."""
        key = log_key(progress)
        if key == self.logged_key and now - self.logged_at < PROGRESS_LOG_EVERY:
            return []
        self.logged_key, self.logged_at = key, now
        elapsed = now - self.started_at if self.started_at is not None else 0.0
        return [f"{progress_line(progress)}; {eta_text(progress, elapsed)}"]

    def record_cancel(self, outcome: CallOutcome, now: float) -> Decision:
        """Fold the answers of the deadline's cancel calls in and return what to do next."""
        unfinished = self.pending()
        self.timed_out = True
        self.not_ended_at_deadline = unfinished
        self.statuses.update(outcome.statuses)
        self.canceled_by_timeout = [batch_id for batch_id in unfinished if batch_id in outcome.statuses]
        info = [
            f"Deadline passed: canceled {len(self.canceled_by_timeout)} of {len(unfinished)} "
            "unfinished batches."
        ]
        warnings = [
            f"Could not cancel batch {batch_id}: {cause}"
            for batch_id, cause in {**outcome.permanent, **outcome.transient}.items()
        ][:IDS_IN_MESSAGES]
        if not self.wait_for_cancel or not self.pending():
            suffix = "" if self.pending() else "; every canceled batch has ended"
            return Decision(
                "finish",
                event=self.event("timeout", _timeout_message(self, suffix)),
                info=info,
                warnings=warnings,
            )
        return Decision("sleep", sleep=self._next_sleep(now), info=info, warnings=warnings)

    def _next_sleep(self, now: float) -> float:
        limit = self.end_time + (self.cancel_grace if self.timed_out else 0.0)
        return max(0.0, min(self.poll_interval, limit - now)) if limit > now else self.poll_interval

    def _expiry_warnings(self, now: float) -> list[str]:
        expiring = {
            batch_id: left
            for batch_id, left in expiring_batches(self.statuses, now).items()
            if batch_id not in self.warned_expiry
        }
        self.warned_expiry.update(expiring)
        return [expiry_warning(expiring)] if expiring else []


def _transient_warning(outcome: CallOutcome) -> str:
    batch_id, cause = next(iter(outcome.transient.items()))
    return (
        f"{len(outcome.transient)} batch(es) could not be read this poll within the retry budget "
        f"(e.g. {batch_id}: {cause}); asking again next poll."
    )


def _timeout_message(state: WaitState, suffix: str) -> str:
    unfinished = state.not_ended_at_deadline or state.canceled_by_timeout or state.pending()
    shown = ", ".join(unfinished[:IDS_IN_MESSAGES]) + (" ..." if len(unfinished) > IDS_IN_MESSAGES else "")
    return (
        f"Wait deadline passed with {len(unfinished)} of {len(state.batch_ids)} batches not ended "
        f"({shown}){suffix}."
    )
