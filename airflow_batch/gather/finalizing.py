"""Finalize a batch job: its merged results and failures, and the job manifest.

Rounds are read from the job folder (``round-0/manifest.json``, ``round-1/...`` until the
first missing one), so retry rounds that were skipped need no special case. The rows of
every round are merged into one row per request, a success from any round winning over
failures and a request's latest failure reported, in the order of the input: from the sorted
runs each file got when it landed (:mod:`airflow_batch.gather.runs`: byte ranges copied, so
the tail after the last batch is seconds), or for a job of an older version, whose rows have no
row number, by :mod:`airflow_batch.gather.merging` with memory bounded by a partition of rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_batch.exceptions import FailureRateExceededError, IncompleteJobError
from airflow_batch.folder import JobFolder
from airflow_batch.gather.merging import merge_rows
from airflow_batch.gather.publishing import publish
from airflow_batch.gather.runs import job_runs, merge_runs
from airflow_batch.gather.tables import results_formats, write_tables
from airflow_batch.history import record_run
from airflow_batch.manifest import (
    MANIFEST_VERSION,
    CostFigures,
    JobManifest,
    RoundManifest,
    RoundSummary,
    Usage,
    empty_usage,
    round_started_at,
    sum_usages,
)
from airflow_batch.rules.costs import sum_costs
from airflow_batch.storage import as_path, iter_jsonl_lines

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)


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
        reused=manifest.get("reused", 0),
        canary=manifest.get("canary"),
        deleted_batches=sorted(manifest.get("deleted_batches") or {}),
        strays=list(manifest.get("strays") or []),
        usage=manifest.get("usage", empty_usage()),
        cost=manifest.get(
            "cost", CostFigures(batch_usd=0.0, standard_usd=0.0, priced=True, unpriced_models=[])
        ),
        submitted_at=manifest.get("submitted_at"),
        waited_at=manifest.get("waited_at"),
        gathered_at=manifest.get("gathered_at"),
        duration_seconds=_seconds_between(round_started_at(manifest), manifest.get("gathered_at")),
    )


def finalize_job(
    job: ObjectStoragePath | str,
    *,
    max_failure_rate: float | None = None,
    results_format: str | Sequence[str] = "jsonl",
    publish_path: ObjectStoragePath | str | None = None,
    publisher: str | None = None,
    retry_rounds: int | None = None,
    logger: logging.Logger | None = None,
) -> JobManifest:
    """Write ``results.jsonl``, ``failures.jsonl`` and ``manifest.json``; return the manifest.

    With ``"parquet"`` in ``results_format`` the merged files are also written as
    ``results.parquet`` and ``failures.parquet`` (:mod:`airflow_batch.gather.tables`); the
    JSONL files are what they are built from, so they are always there. ``publish_path``
    gets a copy of every file as a new version, switched to atomically as a whole, refused when
    another ``publisher`` publishes there (see :mod:`airflow_batch.gather.publishing`).
    ``max_failure_rate`` is recorded in the manifest; enforcing it is up to the caller
    (:func:`check_failure_rate`), so that every file exists before a run fails. So is a round
    that was due but did not complete (``incomplete_rounds``; ``retry_rounds`` is how many
    retry rounds the job has, see :func:`incomplete_rounds`).
    """
    formats = results_formats(results_format)
    logger = logger or log
    job = as_path(job)
    folder = JobFolder(job)
    if publish_path is not None and publisher is None:
        raise ValueError("publish_path needs a publisher (publishing.publisher(dag_id, task_id))")
    rounds = folder.read_rounds()
    if not rounds:
        raise FileNotFoundError(
            f"no gathered round in {job} (missing {folder.round_manifest_path(0)}): "
            "finalize runs after the gather of round 0"
        )
    results_path = folder.results_path
    failures_path = folder.failures_path
    runs = job_runs(job, rounds)
    with folder.final_writers() as (results_out, failures_out):
        if runs is not None:
            counts = merge_runs(runs, results_out, failures_out)
        else:  # rows without a row number (a job of an older version): merged whole
            counts = merge_rows(
                _lines(rounds, "results_paths"), _failure_lines(rounds), results_out, failures_out
            )
    succeeded, failed = counts.succeeded, counts.failed
    total = succeeded + failed
    spec = folder.read_spec()
    passthrough = list(spec.get("passthrough_fields") or [])
    tables: dict[str, str | None] = {"results": None, "failures": None}
    json_text_columns: dict[str, dict[str, str]] = {}
    if "parquet" in formats:
        tables = {name: str(folder.table_path(name)) for name in tables}
        json_text_columns = write_tables(
            results_path,
            failures_path,
            folder.table_path("results"),
            folder.table_path("failures"),
            output_schema=spec.get("output_schema"),
            passthrough=passthrough,
        )

    usage_by_model: dict[str, Usage] = {}
    for manifest in rounds:
        for model, usage in (manifest.get("usage_by_model") or {}).items():
            usage_by_model[model] = sum_usages([usage_by_model.get(model, {}), usage])
    finalized_at = datetime.now(UTC).isoformat()
    started_at = round_started_at(rounds[0])
    job_manifest = JobManifest(
        version=MANIFEST_VERSION,
        stage="finalized",
        job_dir=str(job),
        conn_id=rounds[0].get("conn_id"),
        betas=list(rounds[0].get("betas") or []),
        workspace_id=rounds[0].get("workspace_id"),
        results_path=str(results_path),
        failures_path=str(failures_path),
        manifest_path=str(folder.job_manifest_path),
        results_parquet_path=tables["results"],
        failures_parquet_path=tables["failures"],
        published_path=None,
        passthrough_fields=passthrough,
        json_text_columns=json_text_columns,
        requests=total,
        succeeded=succeeded,
        reused=sum(m.get("reused", 0) for m in rounds),
        canary_answered=sum(canary["answered"] for m in rounds if (canary := m.get("canary"))),
        failed=failed,
        failure_rate=round(failed / total, 6) if total else 0.0,
        max_failure_rate=max_failure_rate,
        failures_by_type=dict(sorted(counts.failures_by_type.items())),
        failures_by_error_type=dict(sorted(counts.failures_by_error_type.items())),
        retryable_left=counts.retryable_left,
        canceled_outside=counts.canceled_outside,
        rounds=[_round_summary(m) for m in rounds],
        usage=sum_usages(m.get("usage", empty_usage()) for m in rounds),
        usage_by_model=usage_by_model,
        cost=sum_costs(m["cost"] for m in rounds if "cost" in m),
        answers_stored=sum(m.get("answers_stored", 0) for m in rounds),
        deleted_batches=sum(len(m.get("deleted_batches") or {}) for m in rounds),
        started_at=started_at,
        finalized_at=finalized_at,
        duration_seconds=_seconds_between(started_at, finalized_at),
        refused_rounds=refused_rounds(job, len(rounds)),
        incomplete_rounds=incomplete_rounds(job, rounds, retry_rounds),
    )
    if publish_path is not None:
        assert publisher is not None
        target = as_path(publish_path)
        job_manifest["published_version"] = publish(job_manifest, target, publisher)
        job_manifest["published_path"] = str(target)
    folder.write_job_manifest(job_manifest)
    record_run(folder, job_manifest)
    if counts.canceled_outside:
        logger.warning(
            "%d request(s) were canceled outside this job (not by its wait deadline: in the Console, by "
            "another process or a trigger that cancelled its batches); see %s",
            counts.canceled_outside,
            failures_path,
        )
    for incomplete in job_manifest["incomplete_rounds"]:
        logger.error("%s", incomplete["reason"])
    for refusal in job_manifest["refused_rounds"]:
        logger.warning(
            "retry round %d was refused before any spend, so %d retryable failure(s) stay failures: %s",
            refusal["round"],
            counts.retryable_left,
            refusal["reason"],
        )
    logger.info(
        "job %s: %d succeeded (%d reused), %d failed (%.2f%%) over %d round(s); $%.4f at batch prices, "
        "$%.4f standard",
        job,
        succeeded,
        job_manifest["reused"],
        failed,
        100 * job_manifest["failure_rate"],
        len(rounds),
        job_manifest["cost"]["batch_usd"],
        job_manifest["cost"]["standard_usd"],
    )
    return job_manifest


def job_cost(job: ObjectStoragePath) -> CostFigures:
    """Return what the job's gathered rounds cost so far."""
    return sum_costs(manifest["cost"] for manifest in JobFolder(job).read_rounds() if "cost" in manifest)


def incomplete_rounds(
    job: ObjectStoragePath, rounds: list[RoundManifest], retry_rounds: int | None
) -> list[dict[str, Any]]:
    """Return the round after the last gathered one if it was due but did not complete.

    Due: it was started (its ledger exists), or the job has a retry round left and the last
    round has retryable failures. Not incomplete: refused before any spend (``refusal.json``).
    A retry, wait or gather task that failed (a crash, a permanent API error) leaves such a
    round; finalize still merges what landed, then fails the run so it does not pass unseen.
    """
    following = len(rounds)
    folder = JobFolder(job)
    if folder.has_refusal(following):
        return []
    started = folder.has_ledger(following)
    retryable = int(rounds[-1].get("retryable", 0) or 0)
    due = retry_rounds is not None and following <= retry_rounds and retryable > 0
    if not (started or due):
        return []
    return [
        {
            "round": following,
            "reason": (
                f"round {following} was started but never gathered"
                if started
                else f"round {following} was due to retry {retryable} failure(s) but did not run"
            )
            + f": a task of the round failed (retry_{following}, wait_{following} or gather_{following}); "
            "its log says why. The results of the earlier rounds are merged; clear the failed task to "
            "finish the round, then finalize again.",
        }
    ]


def refused_rounds(job: ObjectStoragePath, gathered: int) -> list[dict[str, Any]]:
    """Return the refusal of the round after the last gathered one, if it was refused (budget, model)."""
    refusal = JobFolder(job).read_refusal(gathered)
    return [refusal] if refusal is not None else []


def _lines(rounds: list[RoundManifest], key: str) -> Iterator[bytes]:
    for manifest in rounds:
        for part in manifest.get(key, []):  # type: ignore[attr-defined]
            yield from iter_jsonl_lines(as_path(part))


def _failure_lines(rounds: list[RoundManifest]) -> Iterator[bytes]:
    """Yield the failure rows of every round, the rows refused as invalid input included."""
    yield from _lines(rounds, "failures_paths")
    for manifest in rounds:
        path = manifest.get("invalid_path")
        if manifest.get("invalid") and path and as_path(path).exists():
            yield from iter_jsonl_lines(as_path(path))


def check_complete(job_manifest: JobManifest | dict[str, Any]) -> None:
    """Raise :class:`IncompleteJobError` when a round that was due did not complete."""
    incomplete = job_manifest.get("incomplete_rounds") or []
    if incomplete:
        raise IncompleteJobError(
            "; ".join(item["reason"] for item in incomplete)
            + f" Files written: {job_manifest.get('results_path')}, {job_manifest.get('failures_path')}."
        )


def check_failure_rate(job_manifest: JobManifest | dict[str, Any]) -> None:
    """Raise :class:`FailureRateExceededError` when the job failed more than allowed."""
    limit = job_manifest.get("max_failure_rate")
    rate = job_manifest.get("failure_rate", 0.0)
    if limit is not None and rate > limit:
        by_type = ", ".join(f"{n} {t}" for t, n in job_manifest.get("failures_by_error_type", {}).items())
        outside = job_manifest.get("canceled_outside") or 0
        raise FailureRateExceededError(
            f"{job_manifest.get('failed')} of {job_manifest.get('requests')} requests failed "
            f"({rate:.2%}) which is above max_failure_rate={limit:.2%}"
            + (f" ({by_type})" if by_type else "")
            + (f"; {outside} of them canceled outside this job (not by its deadline)" if outside else "")
            + f"; see {job_manifest.get('failures_path')}. Results and manifest are written; "
            "raise max_failure_rate or fix the failing requests and re-run."
        )
