"""The wait for a round's batches: one poll step and one decision policy for both paths.

The sensor's non-deferrable mode (sync client, in a worker) and the deferred trigger (async
client, in the triggerer) run the same loop: poll the batches not yet ``ended``, fold the
answers into a :class:`WaitState`, and act on the :class:`Decision` it returns (sleep, cancel
on the deadline, or finish with an event). Everything that decides lives in pure functions
and in :class:`WaitState`; :func:`wait_sync` and :func:`wait_async` only do I/O, so the two
paths cannot drift.

Retries: the client used for polling is built with ``max_retries=0`` and a short request
timeout, and this module owns the backoff. A transient fault (408, 409, 429, 5xx, 529,
connection errors) is retried within the cycle up to ``POLL_ATTEMPTS`` times with jittered
exponential backoff, never sooner than the server's ``retry-after``/``retry-after-ms``; a
batch still failing is simply asked again next cycle. Only ``MAX_FAILED_CYCLES`` consecutive
cycles in which *no* batch could be read end the wait (an outage or a wrong base URL), so a
burst of faults or a restarting API never fails a healthy round. A permanent fault (401, 403,
404, any other 4xx) ends the wait at once with an error naming the batch and the cause.

Reading many batches: a round with more than ``LIST_THRESHOLD`` unfinished batches is read
from ``GET /v1/messages/batches?limit=1000`` pages (newest first) rather than one ``retrieve``
per batch: a cycle over 1,000 batches costs one or two calls instead of 1,000, which matters
under the Batches API's per-minute request limits and keeps the triggerer's CPU low (the
page is decoded with msgspec, not into 1,000 pydantic models). Paging stops once every
unfinished batch was seen or after ``ceil(batches / 1000) + LIST_EXTRA_PAGES`` pages;
batches not seen (a very busy workspace, or a batch that does not exist) are then retrieved
one by one, ``POLL_CONCURRENCY`` at a time, so a missing batch still ends in a 404 naming it.

Deadline: ``end_time`` is wall-clock epoch seconds so it survives serialization into a new
triggerer. When it passes, policy ``cancel`` (default) cancels every unfinished batch; policy
``leave`` leaves them running for a later attempt to re-attach. With ``wait_for_cancel`` the
wait then keeps polling (up to ``cancel_grace`` seconds) until the canceled batches reach
``ended``, so the round can still be gathered; ``canceling`` is not ``ended``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import msgspec

from airflow_batch.manifest import BatchStatus, RequestCounts, empty_counts

if TYPE_CHECKING:
    import anthropic

    from airflow_batch.manifest import RoundManifest

ENDED = "ended"
EVENT_STATUSES = frozenset({"success", "timeout", "error"})
TIMEOUT_POLICIES = ("cancel", "leave")

DEFAULT_POLL_INTERVAL = 60.0
MIN_POLL_INTERVAL = 0.1  # 1 s is the lowest sensible value against the real API; less is for tests
DEFAULT_TIMEOUT = 24 * 3600.0
DEFAULT_CANCEL_GRACE = 3600.0
POLL_CONCURRENCY = 32  # retrieve/cancel calls in flight at once
POLL_ATTEMPTS = 3  # tries per call within one cycle before leaving the batch for the next cycle
LIST_THRESHOLD = 10  # more unfinished batches than this are read from list pages, not one by one
LIST_PAGE_SIZE = 1000  # the API's largest page
LIST_EXTRA_PAGES = 5  # pages beyond the round's own size, for batches other jobs created meanwhile
MAX_FAILED_CYCLES = 10  # consecutive cycles in which no batch could be read end the wait
REQUEST_TIMEOUT = 30.0  # seconds per HTTP call of the wait, instead of the SDK's 10 minutes
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 300.0
EXPIRY_WARNING_SECONDS = 3 * 3600.0
IDS_IN_MESSAGES = 5

ErrorKind = Literal["transient", "permanent"]
_decoder = msgspec.json.Decoder()


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


# ---------------------------------------------------------------------------------------
# Pure functions over plain data
# ---------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def batch_status(batch: Any) -> BatchStatus:
    """Return the plain :class:`BatchStatus` of an SDK ``MessageBatch`` or of its JSON object."""
    if isinstance(batch, Mapping):
        counts = batch["request_counts"]
        return BatchStatus(
            processing_status=str(batch["processing_status"]),
            request_counts=RequestCounts(
                processing=int(counts.get("processing", 0)),
                succeeded=int(counts.get("succeeded", 0)),
                errored=int(counts.get("errored", 0)),
                canceled=int(counts.get("canceled", 0)),
                expired=int(counts.get("expired", 0)),
            ),
            expires_at=_iso(batch.get("expires_at")),
            ended_at=_iso(batch.get("ended_at")),
        )
    counts = batch.request_counts
    return BatchStatus(
        processing_status=str(batch.processing_status),
        request_counts=RequestCounts(
            processing=int(counts.processing),
            succeeded=int(counts.succeeded),
            errored=int(counts.errored),
            canceled=int(counts.canceled),
            expired=int(counts.expired),
        ),
        expires_at=_iso(batch.expires_at),
        ended_at=_iso(batch.ended_at),
    )


def is_ended(status: Mapping[str, Any] | None) -> bool:
    """Return whether a batch reached the terminal ``ended`` status (``canceling`` has not)."""
    return status is not None and status.get("processing_status") == ENDED


def next_to_poll(batch_ids: Iterable[str], statuses: Mapping[str, BatchStatus]) -> list[str]:
    """Return the batches still worth asking about: every one not yet ``ended``, in order."""
    return [batch_id for batch_id in batch_ids if not is_ended(statuses.get(batch_id))]


def sum_counts(statuses: Iterable[Mapping[str, Any]]) -> RequestCounts:
    """Return the request counts summed over ``statuses``."""
    total = empty_counts()
    for status in statuses:
        counts = status["request_counts"]
        for key in total:
            total[key] += int(counts.get(key, 0))  # type: ignore[literal-required]
    return total


def summarize(batch_ids: Sequence[str], statuses: Mapping[str, BatchStatus]) -> Progress:
    """Return the round's totals over ``batch_ids`` (batches never read count as unknown)."""
    known = [statuses[batch_id] for batch_id in batch_ids if batch_id in statuses]
    counts = sum_counts(known)
    total = sum(counts.values())  # type: ignore[arg-type]
    done = total - counts["processing"]
    return Progress(
        counts=counts,
        requests_total=total,
        requests_done=done,
        percent=round(100.0 * done / total, 1) if total else 0.0,
        batches_total=len(batch_ids),
        batches_ended=sum(1 for status in known if is_ended(status)),
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


def classify_poll_error(exc: BaseException) -> ErrorKind:
    """Return whether a failed API call is worth retrying (``transient``) or ends the wait."""
    import anthropic
    import httpx

    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        return "transient" if status in (408, 409, 429) or status >= 500 else "permanent"
    if isinstance(exc, (anthropic.APIConnectionError, httpx.TransportError, OSError, TimeoutError)):
        return "transient"
    return "permanent"


def retry_after_seconds(exc: BaseException) -> float | None:
    """Return the server's requested wait from ``retry-after-ms`` or ``retry-after``, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return min(max(float(millis) / 1000.0, 0.0), RETRY_AFTER_CAP)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            seconds = parsed.timestamp() - time.time()
        return min(max(seconds, 0.0), RETRY_AFTER_CAP)
    except (TypeError, ValueError):
        return None


def backoff_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    rng: Callable[[], float] = random.random,
) -> float:
    """Return the seconds before retry ``attempt`` (0-based): jittered, never below ``retry_after``."""
    ceiling = min(cap, base * (2**attempt))
    delay = ceiling / 2 + rng() * ceiling / 2
    if retry_after is not None:
        # Honour the server, plus up to 10% jitter so many waiters do not return at once.
        return max(delay, retry_after * (1.0 + 0.1 * rng()))
    return delay


def error_cause(exc: BaseException) -> str:
    """Return a short description of a failed API call: status, error type, message, request id."""
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        error_type = None
        body = exc.body
        if isinstance(body, Mapping):
            inner = body.get("error")
            if isinstance(inner, Mapping):
                error_type = inner.get("type")
        parts = [f"HTTP {exc.status_code}"]
        if error_type:
            parts.append(str(error_type))
        text = " ".join(parts) + f": {exc.message}"
        if exc.request_id:
            text += f" (request_id {exc.request_id})"
        return text
    return f"{type(exc).__name__}: {exc}"


def permanent_error_message(batch_id: str, cause: str) -> str:
    """Return the error that ends a wait on a permanent fault, with the likely fix."""
    hint = ""
    if cause.startswith("HTTP 401") or cause.startswith("HTTP 403"):
        hint = " Check the API key (password) of the Anthropic connection and its workspace."
    elif cause.startswith("HTTP 404"):
        hint = (
            " The batch does not exist for this API key/base URL: check that the connection "
            "points at the workspace (or emulator) that created it."
        )
    return f"Polling batch {batch_id} failed permanently: {cause}.{hint}"


def validate_poll_interval(value: float) -> float:
    """Return ``value`` as seconds between polls, or raise naming the setting and the fix."""
    seconds = float(value)
    if seconds < MIN_POLL_INTERVAL:
        raise ValueError(
            f"poll_interval={value!r}: must be at least {MIN_POLL_INTERVAL} seconds "
            "(1 s is the lowest sensible value against the real API; 60 is the default)."
        )
    return seconds


def validate_timeout_policy(value: str) -> str:
    """Return ``value`` if it is a known timeout policy, or raise naming the choices."""
    if value not in TIMEOUT_POLICIES:
        raise ValueError(f"timeout_policy={value!r}: must be one of {', '.join(TIMEOUT_POLICIES)}.")
    return value


def batch_ids_of(manifest: Mapping[str, Any]) -> list[str]:
    """Return the batch ids a submit manifest recorded, in chunk order, or raise if it has none."""
    batches = manifest.get("batches")
    if not isinstance(batches, list):
        raise ValueError(
            "manifest has no 'batches' list: pass the output of SubmitBatchesOperator "
            "(e.g. manifest=submit.output) to the sensor."
        )
    return [str(record["batch_id"]) for record in batches]


# ---------------------------------------------------------------------------------------
# Poll and cancel outcomes, and the decision policy
# ---------------------------------------------------------------------------------------


@dataclass
class CallOutcome:
    """What one round of calls (a poll or a cancel) over many batches returned."""

    statuses: dict[str, BatchStatus] = field(default_factory=dict)
    transient: dict[str, str] = field(default_factory=dict)  # batch id -> cause, retries exhausted
    permanent: dict[str, str] = field(default_factory=dict)  # batch id -> cause
    retry_after: float | None = None  # largest retry-after among exhausted transient faults
    calls: int = 0


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
    poll_interval: float = DEFAULT_POLL_INTERVAL
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

    def pending(self) -> list[str]:
        """Return the batches to poll next (not yet ``ended``)."""
        return next_to_poll(self.batch_ids, self.statuses)

    def progress(self) -> Progress:
        """Return the round's totals as last seen."""
        return summarize(self.batch_ids, self.statuses)

    def ended_statuses(self) -> dict[str, BatchStatus]:
        """Return the statuses of ended batches (what a restarted trigger need not ask again)."""
        return {batch_id: status for batch_id, status in self.statuses.items() if is_ended(status)}

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
        progress = self.progress()
        info = [progress_line(progress)]
        warnings = self._expiry_warnings(now)
        if outcome.transient:
            warnings.append(_transient_warning(outcome))
        if outcome.permanent:
            batch_id, cause = next(iter(outcome.permanent.items()))
            message = permanent_error_message(batch_id, cause)
            return Decision(
                "finish", event=self.event("error", message, batch_id=batch_id), info=info, warnings=warnings
            )
        if not self.pending():
            if self.timed_out:
                message = _timeout_message(self, "; every canceled batch has ended")
                return Decision("finish", event=self.event("timeout", message), info=info, warnings=warnings)
            message = f"All {len(self.batch_ids)} batches ended: {progress_line(progress)}."
            return Decision("finish", event=self.event("success", message), info=info, warnings=warnings)
        if outcome.transient and not outcome.statuses:
            self.failed_cycles += 1
        else:
            self.failed_cycles = 0
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
        return Decision("sleep", sleep=self._next_sleep(outcome, now), info=info, warnings=warnings)

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
        return Decision("sleep", sleep=self._next_sleep(outcome, now), info=info, warnings=warnings)

    def _next_sleep(self, outcome: CallOutcome, now: float) -> float:
        sleep = self.poll_interval
        if outcome.retry_after is not None and not outcome.statuses:
            sleep = max(sleep, outcome.retry_after)
        limit = self.end_time + (self.cancel_grace if self.timed_out else 0.0)
        return max(0.0, min(sleep, limit - now)) if limit > now else sleep

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
        f"{len(outcome.transient)} batch(es) could not be read this poll after {POLL_ATTEMPTS} tries "
        f"(e.g. {batch_id}: {cause}); asking again next poll."
    )


def _timeout_message(state: WaitState, suffix: str) -> str:
    unfinished = state.not_ended_at_deadline or state.canceled_by_timeout or state.pending()
    shown = ", ".join(unfinished[:IDS_IN_MESSAGES]) + (" ..." if len(unfinished) > IDS_IN_MESSAGES else "")
    return (
        f"Wait deadline passed with {len(unfinished)} of {len(state.batch_ids)} batches not ended "
        f"({shown}){suffix}."
    )


def progress_document(state: WaitState, round_number: int, now: float) -> dict[str, Any]:
    """Return the JSON the wait writes to the round's ``progress.json`` each poll."""
    progress = state.progress()
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
        "end_time": datetime.fromtimestamp(state.end_time, UTC).isoformat(),
        "updated_at": datetime.fromtimestamp(now, UTC).isoformat(),
    }


def validate_event(event: Any) -> dict[str, Any]:
    """Return the trigger event if well formed, else raise ``ValueError`` naming what is wrong."""
    if not isinstance(event, Mapping):
        raise ValueError(f"wait event must be a mapping, got {event!r}")
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise ValueError(
            f"unknown wait event status {status!r} "
            f"(expected one of {sorted(EVENT_STATUSES)}): {dict(event)!r}"
        )
    if not isinstance(event.get("batch_status"), Mapping):
        raise ValueError(f"wait event without a 'batch_status' mapping: {dict(event)!r}")
    return dict(event)


def waited_manifest(manifest: Mapping[str, Any], event: Mapping[str, Any], now: float) -> RoundManifest:
    """Return ``manifest`` plus the wait's keys: final statuses, summed counts, timeout facts."""
    batch_ids = batch_ids_of(manifest)
    statuses = {
        batch_id: event["batch_status"][batch_id]
        for batch_id in batch_ids
        if batch_id in event["batch_status"]
    }
    result: dict[str, Any] = dict(manifest)
    result.update(
        batch_status=statuses,
        counts=sum_counts(statuses.values()),
        timed_out=bool(event.get("timed_out", False)),
        canceled_by_timeout=list(event.get("canceled_by_timeout", [])),
        waited_at=datetime.fromtimestamp(now, UTC).isoformat(),
    )
    return result  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Thin I/O wrappers: the same calls with the sync and the async client
# ---------------------------------------------------------------------------------------

_Call = Literal["retrieve", "cancel"]


def _record(outcome: CallOutcome, batch_id: str, result: BatchStatus | BaseException) -> None:
    if isinstance(result, BaseException):
        cause = error_cause(result)
        if classify_poll_error(result) == "permanent":
            outcome.permanent[batch_id] = cause
        else:
            outcome.transient[batch_id] = cause
            after = retry_after_seconds(result)
            if after is not None:
                outcome.retry_after = max(outcome.retry_after or 0.0, after)
    else:
        outcome.statuses[batch_id] = result


def _call_sync(
    client: anthropic.Anthropic, call: _Call, batch_id: str, attempts: int
) -> tuple[BatchStatus | BaseException, int]:
    method = getattr(client.messages.batches, call)
    for attempt in range(attempts):
        try:
            return batch_status(method(batch_id)), attempt + 1
        except Exception as exc:  # classified below; unknown kinds end the wait
            if classify_poll_error(exc) == "permanent" or attempt + 1 == attempts:
                return exc, attempt + 1
            time.sleep(backoff_delay(attempt, retry_after_seconds(exc)))
    raise AssertionError("unreachable")  # pragma: no cover


async def _call_async(
    client: anthropic.AsyncAnthropic, call: _Call, batch_id: str, attempts: int, slots: asyncio.Semaphore
) -> tuple[BatchStatus | BaseException, int]:
    method = getattr(client.messages.batches, call)
    for attempt in range(attempts):
        try:
            async with slots:  # held only while a request is in flight, not while backing off
                batch = await method(batch_id)
            return batch_status(batch), attempt + 1
        except Exception as exc:  # classified below; unknown kinds end the wait
            if classify_poll_error(exc) == "permanent" or attempt + 1 == attempts:
                return exc, attempt + 1
            await asyncio.sleep(backoff_delay(attempt, retry_after_seconds(exc)))
    raise AssertionError("unreachable")  # pragma: no cover


def call_many_sync(
    client: anthropic.Anthropic,
    call: _Call,
    batch_ids: Sequence[str],
    *,
    concurrency: int = 16,
    attempts: int = POLL_ATTEMPTS,
) -> CallOutcome:
    """Retrieve (or cancel) every batch in ``batch_ids`` with the sync client, on a few threads."""
    outcome = CallOutcome()
    if not batch_ids:
        return outcome
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(batch_ids)))) as pool:
        results = list(pool.map(lambda batch_id: _call_sync(client, call, batch_id, attempts), batch_ids))
    for batch_id, (result, calls) in zip(batch_ids, results, strict=True):
        outcome.calls += calls
        _record(outcome, batch_id, result)
    return outcome


async def call_many_async(
    client: anthropic.AsyncAnthropic,
    call: _Call,
    batch_ids: Sequence[str],
    *,
    concurrency: int = POLL_CONCURRENCY,
    attempts: int = POLL_ATTEMPTS,
) -> CallOutcome:
    """Retrieve (or cancel) every batch in ``batch_ids`` with the async client, ``concurrency`` at a time."""
    outcome = CallOutcome()
    slots = asyncio.Semaphore(concurrency)
    results = await asyncio.gather(
        *(_call_async(client, call, batch_id, attempts, slots) for batch_id in batch_ids)
    )
    for batch_id, (result, calls) in zip(batch_ids, results, strict=True):
        outcome.calls += calls
        _record(outcome, batch_id, result)
    return outcome


def statuses_in_page(page: Mapping[str, Any], wanted: set[str]) -> dict[str, BatchStatus]:
    """Return the statuses of the ``wanted`` batches found in one decoded list page."""
    return {str(item["id"]): batch_status(item) for item in page.get("data", ()) if item.get("id") in wanted}


def list_page_budget(round_batches: int) -> int:
    """Return how many list pages one cycle may read for a round of ``round_batches`` batches."""
    return -(-round_batches // LIST_PAGE_SIZE) + LIST_EXTRA_PAGES


def _list_params(after_id: str | None) -> dict[str, Any]:
    return {"limit": LIST_PAGE_SIZE, **({"after_id": after_id} if after_id else {})}


def _list_page_sync(
    client: anthropic.Anthropic, after_id: str | None, attempts: int
) -> tuple[dict[str, Any] | BaseException, int]:
    for attempt in range(attempts):
        try:
            raw = client.messages.batches.with_raw_response.list(**_list_params(after_id))
            return _decoder.decode(raw.http_response.read()), attempt + 1
        except Exception as exc:  # classified below; unknown kinds end the wait
            if classify_poll_error(exc) == "permanent" or attempt + 1 == attempts:
                return exc, attempt + 1
            time.sleep(backoff_delay(attempt, retry_after_seconds(exc)))
    raise AssertionError("unreachable")  # pragma: no cover


async def _list_page_async(
    client: anthropic.AsyncAnthropic, after_id: str | None, attempts: int
) -> tuple[dict[str, Any] | BaseException, int]:
    for attempt in range(attempts):
        try:
            raw = await client.messages.batches.with_raw_response.list(**_list_params(after_id))
            # Decoded with msgspec: building 1,000 pydantic models would block the loop ~150 ms.
            return _decoder.decode(await raw.read()), attempt + 1
        except Exception as exc:  # classified below; unknown kinds end the wait
            if classify_poll_error(exc) == "permanent" or attempt + 1 == attempts:
                return exc, attempt + 1
            await asyncio.sleep(backoff_delay(attempt, retry_after_seconds(exc)))
    raise AssertionError("unreachable")  # pragma: no cover


def _fold_page(
    outcome: CallOutcome, result: dict[str, Any] | BaseException, wanted: set[str], pending: Sequence[str]
) -> str | None:
    """Fold one list page into ``outcome``; return the cursor of the next page, or None to stop."""
    if isinstance(result, BaseException):
        cause = f"listing batches: {error_cause(result)}"
        if classify_poll_error(result) == "permanent":
            outcome.permanent[pending[0]] = cause
        else:
            unseen = [batch_id for batch_id in pending if batch_id not in outcome.statuses]
            _record_many(outcome, unseen, cause, retry_after_seconds(result))
        return None
    outcome.statuses.update(statuses_in_page(result, wanted))
    if wanted <= outcome.statuses.keys() or not result.get("has_more"):
        return None
    return str(result.get("last_id") or "") or None


def _record_many(
    outcome: CallOutcome, batch_ids: Iterable[str], cause: str, retry_after: float | None
) -> None:
    for batch_id in batch_ids:
        outcome.transient[batch_id] = cause
    if retry_after is not None:
        outcome.retry_after = max(outcome.retry_after or 0.0, retry_after)


def poll_sync(
    client: anthropic.Anthropic, pending: Sequence[str], *, round_batches: int, attempts: int = POLL_ATTEMPTS
) -> CallOutcome:
    """Read the status of every ``pending`` batch with the sync client (list pages, then retrieves)."""
    if len(pending) <= LIST_THRESHOLD:
        return call_many_sync(client, "retrieve", pending, attempts=attempts)
    outcome, wanted, after = CallOutcome(), set(pending), None
    for _ in range(list_page_budget(round_batches)):
        result, calls = _list_page_sync(client, after, attempts)
        outcome.calls += calls
        after = _fold_page(outcome, result, wanted, pending)
        if after is None:
            break
    if outcome.permanent or outcome.transient:
        return outcome
    unseen = [batch_id for batch_id in pending if batch_id not in outcome.statuses]
    return _merge(outcome, call_many_sync(client, "retrieve", unseen, attempts=attempts))


async def poll_async(
    client: anthropic.AsyncAnthropic,
    pending: Sequence[str],
    *,
    round_batches: int,
    attempts: int = POLL_ATTEMPTS,
) -> CallOutcome:
    """Read the status of every ``pending`` batch with the async client (list pages, then retrieves)."""
    if len(pending) <= LIST_THRESHOLD:
        return await call_many_async(client, "retrieve", pending, attempts=attempts)
    outcome, wanted, after = CallOutcome(), set(pending), None
    for _ in range(list_page_budget(round_batches)):
        result, calls = await _list_page_async(client, after, attempts)
        outcome.calls += calls
        after = _fold_page(outcome, result, wanted, pending)
        if after is None:
            break
    if outcome.permanent or outcome.transient:
        return outcome
    unseen = [batch_id for batch_id in pending if batch_id not in outcome.statuses]
    return _merge(outcome, await call_many_async(client, "retrieve", unseen, attempts=attempts))


def _merge(first: CallOutcome, second: CallOutcome) -> CallOutcome:
    first.statuses.update(second.statuses)
    first.transient.update(second.transient)
    first.permanent.update(second.permanent)
    if second.retry_after is not None:
        first.retry_after = max(first.retry_after or 0.0, second.retry_after)
    first.calls += second.calls
    return first


def _emit(log: logging.Logger | Any, decision: Decision) -> None:
    for line in decision.info:
        log.info("%s", line)
    for line in decision.warnings:
        log.warning("%s", line)


def wait_sync(
    client: anthropic.Anthropic,
    state: WaitState,
    *,
    log: logging.Logger | Any,
    on_poll: Callable[[WaitState, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll with the sync client until the wait ends; return the final event (sensor, non-deferrable)."""
    while True:
        outcome = poll_sync(client, state.pending(), round_batches=len(state.batch_ids))
        decision = state.record_poll(outcome, time.time())
        while decision.action == "cancel":
            _emit(log, decision)
            decision = state.record_cancel(call_many_sync(client, "cancel", state.pending()), time.time())
        _emit(log, decision)
        if on_poll is not None:
            on_poll(state, time.time())
        if decision.event is not None:
            return decision.event
        sleep(decision.sleep)


async def wait_async(
    client: anthropic.AsyncAnthropic,
    state: WaitState,
    *,
    log: logging.Logger | Any,
    on_poll: Callable[[WaitState, float], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Poll with the async client until the wait ends; return the final event (trigger)."""
    while True:
        outcome = await poll_async(client, state.pending(), round_batches=len(state.batch_ids))
        decision = state.record_poll(outcome, time.time())
        while decision.action == "cancel":
            _emit(log, decision)
            decision = state.record_cancel(
                await call_many_async(client, "cancel", state.pending()), time.time()
            )
        _emit(log, decision)
        if on_poll is not None:
            await on_poll(state, time.time())
        if decision.event is not None:
            return decision.event
        await asyncio.sleep(decision.sleep)


def write_progress(job_dir: str, round_number: int, document: Mapping[str, Any]) -> None:
    """Write ``document`` to the round's ``progress.json`` atomically (blocking: run off the loop)."""
    from airflow_batch import layout, storage

    storage.write_json(layout.progress_path(storage.as_path(job_dir), round_number), document)
