"""Merge the rounds of a batch job into its final results, failures and manifest.

Rounds are read from the job folder (``round-0/manifest.json``, ``round-1/...`` until the
first missing one), so retry rounds that were skipped need no special case. Rounds are
processed newest first: a ``custom_id``'s first row seen wins, which makes a success from
any round win over failures (retries only resubmit failures, so an id succeeds at most
once) and makes a request's latest failure the one reported.

Memory: one set of the job's ``custom_id`` strings (about 100 bytes each: ~1 GB for ten
million requests). Rows themselves are stream-copied, never held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch import layout
from airflow_batch.costs import sum_costs
from airflow_batch.exceptions import FailureRateExceededError
from airflow_batch.gather.rows import FailureRow, custom_id_decoder, row_encoder
from airflow_batch.manifest import (
    MANIFEST_VERSION,
    CostFigures,
    JobManifest,
    RoundManifest,
    RoundSummary,
    Usage,
    empty_usage,
    sum_usages,
)
from airflow_batch.storage import as_path, atomic_writer, iter_jsonl, iter_jsonl_lines, read_json, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

_failure_decoder = msgspec.json.Decoder(FailureRow)


def read_rounds(job: ObjectStoragePath) -> list[RoundManifest]:
    """Return the manifests of the job's gathered rounds, round 0 first."""
    rounds: list[RoundManifest] = []
    while True:
        path = layout.round_manifest_path(job, len(rounds))
        if not path.exists():
            return rounds
        rounds.append(read_json(path))


def _invalid_input_rows(manifest: RoundManifest) -> Iterator[FailureRow]:
    """Yield the rows submission skipped as invalid input, as failure rows."""
    path = manifest.get("invalid_path")
    if not manifest.get("invalid") or not path or not as_path(path).exists():
        return
    for row in iter_jsonl(as_path(path)):
        message = row.get("message")
        yield FailureRow(
            custom_id=str(row.get("custom_id") or ""),
            batch_id=None,
            round=row.get("round", manifest.get("round", 0)),
            result_type="invalid_input",
            error_type=row.get("error_type") or "invalid_input",
            message=None if message is None else str(message),
            request_id=None,
            retryable=False,
        )


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    first, last = _parse_time(start), _parse_time(end)
    if first is None or last is None:
        return None
    return round((last - first).total_seconds(), 3)


def _round_summary(manifest: RoundManifest) -> RoundSummary:
    return RoundSummary(
        round=manifest["round"],
        batches=[b["batch_id"] for b in manifest.get("batches", [])],
        requests=manifest.get("requests", 0),
        result_counts=manifest.get("result_counts", {}),
        error_types=manifest.get("error_types", {}),
        retryable=manifest.get("retryable", 0),
        usage=manifest.get("usage", empty_usage()),
        cost=manifest.get(
            "cost", CostFigures(batch_usd=0.0, standard_usd=0.0, priced=True, unpriced_models=[])
        ),
        submitted_at=manifest.get("submitted_at"),
        waited_at=manifest.get("waited_at"),
        gathered_at=manifest.get("gathered_at"),
        duration_seconds=_seconds_between(manifest.get("submitted_at"), manifest.get("gathered_at")),
    )


def finalize_job(
    job: ObjectStoragePath | str,
    *,
    max_failure_rate: float | None = None,
    logger: logging.Logger | None = None,
) -> JobManifest:
    """Write ``results.jsonl``, ``failures.jsonl`` and ``manifest.json``; return the manifest.

    ``max_failure_rate`` is recorded in the manifest; enforcing it is up to the caller
    (:func:`check_failure_rate`), so that every file exists before a run fails.
    """
    logger = logger or log
    job = as_path(job)
    rounds = read_rounds(job)
    if not rounds:
        raise FileNotFoundError(
            f"no gathered round in {job} (missing {layout.round_manifest_path(job, 0)}): "
            "finalize runs after the gather of round 0"
        )
    seen: set[str] = set()
    decode_id = custom_id_decoder.decode
    succeeded = 0
    results_path = layout.final_results_path(job)
    with atomic_writer(results_path) as out:
        for manifest in reversed(rounds):
            for part in manifest.get("results_paths", []):
                for line in iter_jsonl_lines(as_path(part)):
                    custom_id = decode_id(line).custom_id
                    if custom_id in seen:
                        continue
                    seen.add(custom_id)
                    out.write(line + b"\n")
                    succeeded += 1

    failures_by_type: dict[str, int] = {}
    failures_by_error_type: dict[str, int] = {}
    retryable_left = 0
    failures_path = layout.final_failures_path(job)
    with atomic_writer(failures_path) as out:
        for manifest in reversed(rounds):
            for row in _failure_rows(manifest):
                # An invalid input row may have no usable custom_id: it is kept, never merged.
                if row.custom_id:
                    if row.custom_id in seen:
                        continue
                    seen.add(row.custom_id)
                out.write(row_encoder.encode(row) + b"\n")
                failures_by_type[row.result_type] = failures_by_type.get(row.result_type, 0) + 1
                if row.error_type is not None:
                    failures_by_error_type[row.error_type] = failures_by_error_type.get(row.error_type, 0) + 1
                retryable_left += row.retryable
    failed = sum(failures_by_type.values())
    total = succeeded + failed

    usage_by_model: dict[str, Usage] = {}
    for manifest in rounds:
        for model, usage in (manifest.get("usage_by_model") or {}).items():
            usage_by_model[model] = sum_usages([usage_by_model.get(model, {}), usage])
    finalized_at = datetime.now(UTC).isoformat()
    started_at = rounds[0].get("submitted_at")
    job_manifest = JobManifest(
        version=MANIFEST_VERSION,
        stage="finalized",
        job_dir=str(job),
        results_path=str(results_path),
        failures_path=str(failures_path),
        requests=total,
        succeeded=succeeded,
        failed=failed,
        failure_rate=round(failed / total, 6) if total else 0.0,
        max_failure_rate=max_failure_rate,
        failures_by_type=dict(sorted(failures_by_type.items())),
        failures_by_error_type=dict(sorted(failures_by_error_type.items())),
        retryable_left=retryable_left,
        rounds=[_round_summary(m) for m in rounds],
        usage=sum_usages(m.get("usage", empty_usage()) for m in rounds),
        usage_by_model=usage_by_model,
        cost=sum_costs(m["cost"] for m in rounds if "cost" in m),
        started_at=started_at,
        finalized_at=finalized_at,
        duration_seconds=_seconds_between(started_at, finalized_at),
        refused_rounds=refused_rounds(job, len(rounds)),
    )
    write_json(layout.final_manifest_path(job), job_manifest)
    for refusal in job_manifest["refused_rounds"]:
        logger.warning(
            "retry round %d was refused before any spend, so %d retryable failure(s) stay failures: %s",
            refusal["round"],
            retryable_left,
            refusal["reason"],
        )
    logger.info(
        "job %s: %d succeeded, %d failed (%.2f%%) over %d round(s); $%.4f at batch prices, $%.4f standard",
        job,
        succeeded,
        failed,
        100 * job_manifest["failure_rate"],
        len(rounds),
        job_manifest["cost"]["batch_usd"],
        job_manifest["cost"]["standard_usd"],
    )
    return job_manifest


def job_cost(job: ObjectStoragePath) -> CostFigures:
    """Return what the job's gathered rounds cost so far."""
    return sum_costs(manifest["cost"] for manifest in read_rounds(job) if "cost" in manifest)


def refused_rounds(job: ObjectStoragePath, gathered: int) -> list[dict[str, Any]]:
    """Return the refusal of the round after the last gathered one, if it was refused (budget, model)."""
    path = layout.refusal_path(job, gathered)
    return [read_json(path)] if path.exists() else []


def _failure_rows(manifest: RoundManifest) -> Iterator[FailureRow]:
    for part in manifest.get("failures_paths", []):
        for line in iter_jsonl_lines(as_path(part)):
            yield _failure_decoder.decode(line)
    yield from _invalid_input_rows(manifest)


def check_failure_rate(job_manifest: JobManifest | dict[str, Any]) -> None:
    """Raise :class:`FailureRateExceededError` when the job failed more than allowed."""
    limit = job_manifest.get("max_failure_rate")
    rate = job_manifest.get("failure_rate", 0.0)
    if limit is not None and rate > limit:
        by_type = ", ".join(f"{n} {t}" for t, n in job_manifest.get("failures_by_error_type", {}).items())
        raise FailureRateExceededError(
            f"{job_manifest.get('failed')} of {job_manifest.get('requests')} requests failed "
            f"({rate:.2%}) which is above max_failure_rate={limit:.2%}"
            + (f" ({by_type})" if by_type else "")
            + f"; see {job_manifest.get('failures_path')}. Results and manifest are written; "
            "raise max_failure_rate or fix the failing requests and re-run."
        )
