"""Metrics of batch jobs through Airflow's ``Stats`` (StatsD or OpenTelemetry, per ``[metrics]``).

Every name is under :data:`PREFIX` and listed in :data:`METRICS` (the metrics table of
docs/monitoring.md is that list). Tags are few and low-cardinality: ``dag_id``, ``task_id``
and, on tokens and cost, ``model``; failed requests add ``failure_type``. StatsD drops tags unless
``[metrics] statsd_influxdb_enabled`` (or Datadog / OpenTelemetry) carries them.

What a task counts comes from the manifest it returns (:func:`points_of`, pure), so a metric
and the manifest can never disagree; the plugin's listener
(:mod:`airflow_batch.plugins.listener`) emits them when a task of a job succeeds, and the queue
trigger sets the gauge of queued requests on each poll (:func:`queue_gauge`). A task that runs
again (a retry, a clear) counts again: counters count task runs, the manifests count the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from airflow_batch.lineage.figures import token_kinds

if TYPE_CHECKING:
    from airflow_batch.rules.costs import PriceTable

PREFIX = "airflow_batch"

#: Every metric (without the prefix): its type and what it measures.
METRICS: dict[str, tuple[str, str]] = {
    "requests.submitted": ("counter", "requests sent in batches by a submit or retry round"),
    "requests.succeeded": ("counter", "requests gathered as results"),
    "requests.failed": ("counter", "requests gathered as failures; tag failure_type"),
    "requests.reused": ("counter", "requests answered from the answer store, not sent"),
    "tokens.input": ("counter", "input tokens billed; tag model"),
    "tokens.output": ("counter", "output tokens billed; tag model"),
    "tokens.cache_read": ("counter", "cache read tokens billed; tag model"),
    "tokens.cache_write_5m": ("counter", "5-minute cache write tokens billed; tag model"),
    "tokens.cache_write_1h": ("counter", "1-hour cache write tokens billed; tag model"),
    "cost.micro_usd": ("counter", "cost at batch prices in millionths of a dollar; tag model"),
    "cost.standard_micro_usd": ("counter", "the same usage at standard prices; tag model"),
    "batches.created": ("counter", "batches created by a submit or retry round"),
    "batches.cancelled": ("counter", "batches cancelled at the wait's deadline"),
    "batches.deleted": ("counter", "batches deleted from the API after landing"),
    "queue.queued_requests": ("gauge", "a round's requests in the organisation queue (queue trigger)"),
    "submit.duration": ("timer", "the submit task's run"),
    "wait.duration": ("timer", "submit's end to every batch of the round ended"),
    "gather.duration": ("timer", "the gather task"),
    "retry.duration": ("timer", "a retry round's submit task"),
    "finalize.duration": ("timer", "the finalize task"),
}

Kind = Literal["counter", "gauge", "timer"]


@dataclass(frozen=True)
class Point:
    """One value to emit: a metric of :data:`METRICS` (without the prefix), its value and tags."""

    name: str
    value: float
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        """Return the metric's type."""
        return METRICS[self.name][0]  # type: ignore[return-value]

    @property
    def stat(self) -> str:
        """Return the full metric name."""
        return f"{PREFIX}.{self.name}"


def _seconds(start: Any, end: Any) -> float | None:
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except ValueError:
        return None


def points_of(
    manifest: Mapping[str, Any],
    tags: Mapping[str, str],
    task_seconds: float | None = None,
    table: PriceTable | None = None,
) -> list[Point]:
    """Return what a task's manifest counts, by the stage it names.

    ``task_seconds`` is how long the task ran (its stage's timer); the wait's timer is measured
    from the manifest (submit's end to the wait's), because a deferred wait spans many processes.
    Costs per model are priced with ``table`` (the task's price overrides; default: the shipped
    table).
    """
    from airflow_batch.rules.costs import price_table, split_usage_key

    base = dict(tags)
    stage = manifest.get("stage")
    points: list[Point] = []

    def count(name: str, value: float, **extra: str) -> None:
        if value:
            points.append(Point(name, value, {**base, **extra}))

    if stage == "submitted":
        count("requests.submitted", int(manifest.get("requests", 0) or 0))
        count("requests.reused", int(manifest.get("reused", 0) or 0))
        count("batches.created", len(manifest.get("batches") or ()))
        timer = "retry.duration" if int(manifest.get("round", 0) or 0) else "submit.duration"
    elif stage == "waited":
        count("batches.cancelled", len(manifest.get("canceled_by_timeout") or ()))
        task_seconds = _seconds(manifest.get("submitted_at"), manifest.get("waited_at"))
        timer = "wait.duration"
    elif stage == "gathered":
        counts = manifest.get("result_counts") or {}
        count("requests.succeeded", int(counts.get("succeeded", 0) or 0))
        for failure_type, n in sorted(counts.items()):
            if failure_type != "succeeded":
                count("requests.failed", int(n or 0), failure_type=str(failure_type))
        table = table or price_table()
        for key, usage in sorted((manifest.get("usage_by_model") or {}).items()):
            model = split_usage_key(key)[0]
            for kind, tokens in token_kinds(usage).items():
                count(f"tokens.{kind}", tokens, model=model)
            cost = table.cost({key: usage})
            count("cost.micro_usd", round(cost["batch_usd"] * 1_000_000), model=model)
            count("cost.standard_micro_usd", round(cost["standard_usd"] * 1_000_000), model=model)
        count("batches.deleted", len(manifest.get("deleted_batches") or ()))
        timer = "gather.duration"
    elif stage == "finalized":
        timer = "finalize.duration"
    else:
        return points
    if task_seconds is not None and task_seconds >= 0:
        points.append(Point(timer, task_seconds * 1000.0, base))
    return points


def emit(points: list[Point]) -> None:
    """Send ``points`` through Airflow's ``Stats`` (timers in milliseconds)."""
    from datetime import timedelta

    from airflow.sdk.observability.stats import Stats

    for point in points:
        if point.kind == "counter":
            Stats.incr(point.stat, int(point.value), tags=point.tags)
        elif point.kind == "gauge":
            Stats.gauge(point.stat, point.value, tags=point.tags)
        else:
            Stats.timing(point.stat, timedelta(milliseconds=point.value), tags=point.tags)


def task_tags(task_instance: Any) -> dict[str, str]:
    """Return the ``dag_id`` and ``task_id`` tags of a task instance (or of a trigger's)."""
    return {"dag_id": str(task_instance.dag_id), "task_id": str(task_instance.task_id)}


def queue_gauge(trigger: Any, queued: int) -> None:
    """Set the gauge of the round's queued requests, as a queue trigger's poll sees them.

    Never raises: a metric must not end a wait.
    """
    try:
        task_instance = getattr(trigger, "task_instance", None)
        tags = task_tags(task_instance) if task_instance is not None else {}
        emit([Point("queue.queued_requests", queued, tags)])
    except Exception:  # metrics are best effort
        trigger.log.debug("queue gauge not sent", exc_info=True)
