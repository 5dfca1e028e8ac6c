"""The wait's event across the triggerer/worker boundary: checked on resume, folded into the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from airflow_batch.manifest import RoundManifest, sum_counts

EVENT_STATUSES = frozenset({"success", "timeout", "error"})


def batch_ids_of(manifest: Mapping[str, Any]) -> list[str]:
    """Return the batch ids a submit manifest recorded, in chunk order, or raise if it has none."""
    batches = manifest.get("batches")
    if not isinstance(batches, list):
        raise ValueError(
            "manifest has no 'batches' list: pass the output of SubmitBatchesOperator "
            "(e.g. manifest=submit.output) to the sensor."
        )
    return [str(record["batch_id"]) for record in batches]


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
        stage="waited",
        batch_status=statuses,
        counts=sum_counts(status["request_counts"] for status in statuses.values()),
        timed_out=bool(event.get("timed_out", False)),
        canceled_by_timeout=list(event.get("canceled_by_timeout", [])),
        waited_at=datetime.fromtimestamp(now, UTC).isoformat(),
    )
    return result  # type: ignore[return-value]
