"""The one retry policy of every call to the API: which faults are worth another try, and when.

Every call a job makes (create, retrieve, list, cancel, delete, results download,
count_tokens, models, messages) goes through :func:`call` (sync) or :func:`acall` (async)
with a :class:`RetryPolicy`, so a fault is handled the same way whichever task meets it.

Transient, retried: HTTP 408, 409, 429 and every 5xx (529 ``overloaded_error`` included),
and connection errors, timeouts and cut streams. The server decides when it says so: an
``x-should-retry: true|false`` header overrides the status, and ``retry-after-ms`` /
``retry-after`` set the least wait before the next try. Between tries the wait grows
exponentially with jitter (``base``, doubling, capped at ``cap``), so many tasks meeting the
same outage do not return at once.

A **time budget**, not a count of attempts, bounds the retries: a call is retried until it
succeeds or ``budget_seconds`` have passed since its first try (several minutes by default),
which is what lets a job ride out a burst of faults on every endpoint. Permanent faults
(400, 401, 403, 404, 413, a 429 saying the spend limit is reached, anything else) are
raised at once, never retried. Either way the caller gets :class:`BatchesApiError`, naming
what was being done and the last cause, with the SDK's exception chained.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import importlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from airflow_batch.api.errors import error_cause, error_code, fix_hint, http_status, is_queue_full
from airflow_batch.exceptions import BatchesApiError, QueueFullError, SpendLimitReachedError

T = TypeVar("T")
FaultKind = Literal["transient", "permanent"]

DEFAULT_BUDGET_SECONDS = 300.0
#: 429 error codes that are not rate limits: the organisation (or its contract) may spend no more.
SPEND_LIMIT_CODES = frozenset(
    {
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "linked_organization_spend_limit_reached",
    }
)


@functools.cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Return what a dropped connection or cut stream raises: the SDK's, its HTTP library's, the OS's."""
    import anthropic

    errors: list[type[BaseException]] = [anthropic.APIConnectionError, ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):  # SDK 2.x streams through httpx2; 1.x through httpx
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)


def classify(exc: BaseException) -> FaultKind:
    """Return whether a failed call is worth another try (``transient``) or not (``permanent``)."""
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        should_retry = exc.response.headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            return "transient" if should_retry == "true" else "permanent"
        status = exc.status_code
        if status == 429 and error_code(exc) in SPEND_LIMIT_CODES:
            return "permanent"
        return "transient" if status in (408, 409, 429) or status >= 500 else "permanent"
    return "transient" if isinstance(exc, _transport_errors()) else "permanent"


def retry_after_seconds(exc: BaseException, cap: float) -> float | None:
    """Return the wait the server asked for (``retry-after-ms``, then ``retry-after``), at most ``cap``."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return min(max(float(millis) / 1000.0, 0.0), cap)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        return min(max(seconds, 0.0), cap)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How long a call may keep failing transiently, and how long to wait between its tries."""

    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    retry_after_cap_seconds: float = 300.0
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.budget_seconds < 0:
            raise ValueError(f"the API retry budget must be >= 0 seconds, got {self.budget_seconds}")

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Return the seconds before try ``attempt + 1`` (0-based): jittered, never below ``retry_after``."""
        ceiling = min(self.cap_seconds, self.base_seconds * (2**attempt))
        delay = ceiling / 2 + self.rng() * ceiling / 2
        if retry_after is not None:
            # Honour the server, plus up to 10% so many callers told the same do not return at once.
            return max(delay, retry_after * (1.0 + 0.1 * self.rng()))
        return delay

    def delay_after(self, exc: BaseException, attempt: int, elapsed: float, what: str) -> float:
        """Return how long to wait before retrying ``what`` after ``exc``, or raise if it must not be.

        Raises :class:`BatchesApiError` (chained to ``exc``) for a permanent fault, and for a
        transient one once the next try would start after the budget.
        """
        kind = classify(exc)
        if kind == "transient" and is_queue_full(exc):
            # Waiting out a full queue takes minutes to hours: the caller defers instead.
            raise QueueFullError(
                f"{what}: the organisation's processing queue is full ({error_cause(exc)})",
                retry_after=retry_after_seconds(exc, float("inf")),
                status_code=429,
            ) from exc
        if kind == "transient":
            delay = self.backoff(attempt, retry_after_seconds(exc, self.retry_after_cap_seconds))
            if elapsed + delay <= self.budget_seconds:
                return delay
        raise api_error(exc, what, kind, attempts=attempt + 1, elapsed=elapsed) from exc


def api_error(
    exc: BaseException, what: str, kind: FaultKind, *, attempts: int, elapsed: float
) -> BatchesApiError:
    """Return the error that ends a call: what was done, the last cause, and the likely fix."""
    cause = error_cause(exc)
    if kind == "transient":
        message = (
            f"{what} failed: still {cause} after {attempts} tries over {elapsed:.0f}s (the retry budget). "
            "The API kept answering with transient faults; re-run when it recovers, or raise the "
            "retry budget ([airflow_batch] api_retry_budget_seconds)."
        )
    else:
        message = f"{what} failed: {cause}.{fix_hint(exc)}"
    error_class = SpendLimitReachedError if error_code(exc) in SPEND_LIMIT_CODES else BatchesApiError
    return error_class(
        message,
        transient=kind == "transient",
        status_code=http_status(exc),
        error_code=error_code(exc),
    )


DEFAULT_POLICY = RetryPolicy()


def call(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Return ``fn()``, retried by ``policy``; raise :class:`BatchesApiError` naming ``what``."""
    started = clock()
    for attempt in itertools.count():
        try:
            return fn()
        except Exception as exc:
            sleep(policy.delay_after(exc, attempt, clock() - started, what))
    raise AssertionError("unreachable")  # pragma: no cover


async def acall(
    fn: Callable[[], Awaitable[T]],
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Return ``await fn()``, retried by ``policy`` without blocking the loop; raise as :func:`call`."""
    started = clock()
    for attempt in itertools.count():
        try:
            return await fn()
        except Exception as exc:
            await asyncio.sleep(policy.delay_after(exc, attempt, clock() - started, what))
    raise AssertionError("unreachable")  # pragma: no cover
