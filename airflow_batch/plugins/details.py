"""The details under a row's status on the batch jobs page: a refusal, failures, the wait, files,
the canary and the budget, each read from a manifest's figures.

Pure data (no Airflow, no storage), built by :mod:`airflow_batch.plugins.views` and printed by
``templates/jobs.html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_batch.manifest import round_started_at


def optional_float(value: Any) -> float | None:
    """Return a manifest's number as a float, None when it is absent."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class Refusal:
    """A round refused before any spend: why, and when the budget refused it, its figures (USD).

    ``failed``: not a refusal but an error the submit met before the round was submitted.
    """

    round: int
    reason: str
    estimate_usd: float | None = None
    budget_usd: float | None = None
    spent_usd: float | None = None
    failed: bool = False

    @property
    def left_usd(self) -> float | None:
        """Return what was left of the budget when the round was refused."""
        if self.budget_usd is None:
            return None
        return max(self.budget_usd - (self.spent_usd or 0.0), 0.0)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Refusal:
        """Return the refusal a refused manifest or a ``refusal.json`` record describes."""
        return cls(
            round=int(record.get("round", 0) or 0),
            reason=str(record.get("reason", "")),
            estimate_usd=optional_float(record.get("estimate_usd")),
            budget_usd=optional_float(record.get("budget_usd")),
            spent_usd=optional_float(record.get("spent_usd")),
            failed=bool(record.get("failed")),
        )


@dataclass(frozen=True)
class Failures:
    """What failed: counts by result type and by error type, and how many can be retried.

    For a finalized job also the failure rate and its limit (``max_failure_rate``).
    """

    failed: int
    by_type: dict[str, int]
    by_error_type: dict[str, int]
    retryable: int
    rate: float | None = None
    limit: float | None = None

    @property
    def over_limit(self) -> bool:
        """Return whether the failure rate is above its limit (finalize then failed the task)."""
        return self.rate is not None and self.limit is not None and self.rate > self.limit


@dataclass(frozen=True)
class WaitProgress:
    """How a round's wait is going: time since submit, the last poll, and the time left."""

    elapsed_seconds: float | None
    last_poll_at: str | None
    last_poll_seconds_ago: float | None
    #: Left at the rate requests ended so far; None until some did (counts move when a batch ends).
    eta_seconds: float | None


@dataclass(frozen=True)
class FileLink:
    """A file the page links for download: its kind (the link's class), label and URI."""

    kind: str
    label: str
    path: str


@dataclass(frozen=True)
class CanaryView:
    """What a round's canary did: answers kept, answers unusable (sent in the batch), its cost."""

    requests: int
    answered: int
    failed: int
    cost_usd: float

    @classmethod
    def of(cls, record: Any) -> CanaryView | None:
        """Return the canary a round manifest records, or None."""
        if not isinstance(record, Mapping):
            return None
        cost = record.get("cost")
        cost = cost if isinstance(cost, Mapping) else {}
        return cls(
            requests=int(record.get("requests", 0) or 0),
            answered=int(record.get("answered", 0) or 0),
            failed=int(record.get("failed", 0) or 0),
            cost_usd=float(cost.get("standard_usd", 0.0) or 0.0),
        )


@dataclass(frozen=True)
class Budget:
    """The job's budget (``max_cost_usd``) and what it had spent once a round landed (USD, batch prices)."""

    budget_usd: float
    spent_usd: float

    @classmethod
    def of(cls, figures: Any) -> Budget | None:
        """Return the budget line of a gathered round manifest (``budget``), None without a budget."""
        if not isinstance(figures, Mapping) or figures.get("max_cost_usd") is None:
            return None
        return cls(float(figures["max_cost_usd"]), float(figures.get("spent_usd") or 0.0))


def int_map(raw: Any) -> dict[str, int]:
    return {str(k): int(v or 0) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def round_failures(value: Mapping[str, Any]) -> Failures:
    by_type = {k: n for k, n in int_map(value.get("result_counts")).items() if k != "succeeded" and n}
    return Failures(
        failed=sum(by_type.values()),
        by_type=by_type,
        by_error_type=int_map(value.get("error_types")),
        retryable=int(value.get("retryable", 0) or 0),
    )


def _time(value: Any) -> datetime | None:
    """Return an ISO timestamp (or a datetime) as an aware datetime; None when it is not one."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_between(start: Any, end: Any) -> float | None:
    first, last = _time(start), _time(end)
    return None if first is None or last is None else max((last - first).total_seconds(), 0.0)


def wait_progress(
    value: Mapping[str, Any], progress: Mapping[str, Any] | None, now: datetime
) -> WaitProgress:
    """Return the wait's progress: ``progress.json`` figures taken forward from its poll to ``now``."""
    progress = progress or {}
    last_poll = progress.get("last_poll_at") or progress.get("updated_at")
    eta = optional_float(progress.get("eta_seconds"))
    since_written = seconds_between(progress.get("updated_at"), now)
    if eta is not None and since_written is not None:
        eta = max(eta - since_written, 0.0)
    return WaitProgress(
        elapsed_seconds=seconds_between(round_started_at(value), now),
        last_poll_at=last_poll if isinstance(last_poll, str) else None,
        last_poll_seconds_ago=seconds_between(last_poll, now),
        eta_seconds=eta,
    )
