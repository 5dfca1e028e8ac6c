"""What the batch jobs page shows: every job, its rounds and its outcome, from the manifests in XCom.

Pure functions over plain data: the FastAPI app reads XCom rows and ``progress.json`` files
and hands them here; nothing in this module touches Airflow, a database or storage, so the
page's logic is tested without a server. The markup lives in ``templates/jobs.html``
(:mod:`airflow_batch.plugins.rendering`).

Requests answered without a batch show beside the others: ``reused`` (from the answer store, no
cost) as a bar segment of their own, canary answers as succeeded, and the canary's figures and
batches deleted after landing under the status.

A job is one job folder (``manifest["job_dir"]``). Each of its tasks (submit, wait, gather,
retry, finalize) returns a manifest; for a round the most advanced one wins
(gathered > waited > submitted), and a live ``progress.json`` fills in while the wait is
deferred. Each manifest names its stage. A task that fails with an outcome to show has no
return value and leaves its manifest under ``FAILED_MANIFEST_KEY`` instead: a round refused
before any spend (stage ``refused``: the reason, and the estimate against the budget) and a
job finalized above its failure-rate limit. The page reads manifests only, never a result
file, so a page of many jobs stays quick.

This module builds the rows (:func:`build_jobs`: a :class:`JobView` per job, a :class:`RoundView`
per round). Which XCom values are manifests lives in :mod:`~airflow_batch.plugins.manifests`, the
details under a status (refusal, failures, wait, canary, budget) in
:mod:`~airflow_batch.plugins.details`, and how bars, durations and links are drawn in
:mod:`~airflow_batch.plugins.display`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_batch.manifest import STAGE_ORDER, Usage, empty_usage, round_started_at, sum_usages
from airflow_batch.plugins.details import (
    Budget,
    CanaryView,
    Failures,
    FileLink,
    Refusal,
    WaitProgress,
    int_map,
    optional_float,
    round_failures,
    seconds_between,
    wait_progress,
)
from airflow_batch.plugins.display import BarCounts, empty_counts
from airflow_batch.plugins.manifests import (
    ManifestRecord,
    final_files,
    is_batch_manifest,
    is_final_manifest,
    manifest_stage,
)


@dataclass
class RoundView:
    """One round of a job as the page shows it.

    ``requests`` are those sent in the round's batches; ``reused`` were answered from the answer
    store and ``canary`` answered some before any batch (neither is in ``requests``).
    """

    number: int
    stage: str  # refused | submitted | waiting | waited | gathered
    status: str
    batch_ids: list[str]
    requests: int
    counts: BarCounts
    usage: Usage
    cost_batch_usd: float | None
    cost_standard_usd: float | None
    estimate_usd: float | None
    expected_usd: float | None
    results_paths: list[str]
    failures_paths: list[str]
    invalid_path: str | None
    source: ManifestRecord
    refusal: Refusal | None = None
    failures: Failures | None = None
    duration_seconds: float | None = None
    wait: WaitProgress | None = None
    reused: int = 0
    canary: CanaryView | None = None
    deleted: int = 0
    budget: Budget | None = None

    @property
    def files(self) -> list[FileLink]:
        """Return the round's part files (one per batch) and its invalid rows, if any."""
        links = []
        for kind, paths in (("results", self.results_paths), ("failures", self.failures_paths)):
            for index, path in enumerate(paths, 1):
                label = kind if len(paths) == 1 else f"{kind} {index}"
                links.append(FileLink(f"{kind}-part", label, path))
        if self.invalid_path:
            links.append(FileLink("invalid", "invalid input", self.invalid_path))
        return links


@dataclass
class JobView:
    """One batch job (one job folder) with its rounds and, once finalized, its totals."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    job_dir: str
    rounds: list[RoundView] = field(default_factory=list)
    final: ManifestRecord | None = None

    @property
    def name(self) -> str:
        """Return the job's name: the submit task id of its folder, with the map index if mapped."""
        parts = self.job_dir.rstrip("/").split("/")
        if parts[-1].startswith("map-") and len(parts) > 1:
            return f"{parts[-2]}[{parts[-1][4:]}]"
        return parts[-1]

    @property
    def latest(self) -> RoundView | None:
        """Return the highest-numbered round."""
        return self.rounds[-1] if self.rounds else None

    @property
    def budget(self) -> Budget | None:
        """Return the budget and the spend as of the latest round that landed under one."""
        return next((r.budget for r in reversed(self.rounds) if r.budget is not None), None)

    @property
    def batch_count(self) -> int:
        """Return the number of batches over every round."""
        return sum(len(r.batch_ids) for r in self.rounds)

    @property
    def requests(self) -> int:
        """Return the number of requests of the first submission, reused and canary ones included
        (0 when it was refused)."""
        if not self.rounds:
            return int(self._final_value.get("requests", 0))
        first = self.rounds[0]
        return first.requests + first.reused + (first.canary.answered if first.canary else 0)

    @property
    def reused(self) -> int:
        """Return how many requests were answered from the answer store (no batch, no cost)."""
        if "reused" in self._final_value:
            return int(self._final_value.get("reused", 0) or 0)
        return sum(r.reused for r in self.rounds)

    @property
    def canaries(self) -> list[CanaryView]:
        """Return the canaries of the job's rounds."""
        return [r.canary for r in self.rounds if r.canary is not None]

    @property
    def deleted(self) -> int:
        """Return how many of the job's batches were deleted from the API after landing."""
        if "deleted_batches" in self._final_value:
            return int(self._final_value.get("deleted_batches", 0) or 0)
        return sum(r.deleted for r in self.rounds)

    @property
    def _final_value(self) -> Mapping[str, Any]:
        return self.final.value if self.final else {}

    @property
    def outcome(self) -> str:
        """Return ``finished``, ``failed`` (above the failure-rate limit), ``refused`` or ``running``."""
        if self.final is not None:
            failures = self.failures
            return "failed" if failures is not None and failures.over_limit else "finished"
        latest = self.latest
        if latest is not None and latest.stage == "refused":
            return "refused"
        return "running"

    @property
    def status(self) -> str:
        """Return the job's status: its outcome once it has one, else the latest round's."""
        outcome = self.outcome
        if outcome == "failed":
            return "failed"
        if outcome == "finished":
            failed = int(self._final_value.get("failed", 0) or 0)
            return f"finished, {failed} failed" if failed else "finished"
        latest = self.latest
        if latest is None:
            return "unknown"
        if latest.number > 0:
            return f"retry round {latest.number}: {latest.status}"
        return latest.status

    @property
    def refusals(self) -> list[Refusal]:
        """Return the job's refused rounds: from their manifests, and those finalize recorded."""
        refusals = {r.number: r.refusal for r in self.rounds if r.refusal is not None}
        for record in self._final_value.get("refused_rounds") or ():
            refusal = Refusal.of(record)
            refusals.setdefault(refusal.round, refusal)
        return [refusals[number] for number in sorted(refusals)]

    @property
    def failures(self) -> Failures | None:
        """Return what failed: the final outcome after finalize, else the latest gathered round's."""
        final = self._final_value
        if "failed" in final:
            limit = final.get("max_failure_rate")
            return Failures(
                failed=int(final.get("failed", 0) or 0),
                by_type=int_map(final.get("failures_by_type")),
                by_error_type=int_map(final.get("failures_by_error_type")),
                retryable=int(final.get("retryable_left", 0) or 0),
                rate=float(final.get("failure_rate", 0.0) or 0.0),
                limit=None if limit is None else float(limit),
            )
        gathered = [r for r in self.rounds if r.failures is not None]
        return gathered[-1].failures if gathered else None

    @property
    def counts(self) -> BarCounts:
        """Return the counts the job's progress bar shows.

        After finalize: the final outcome. Before: requests that succeeded (or were reused) in any
        earlier round, plus the latest round's counts for what is still open.
        """
        final_counts = _final_counts(self._final_value)
        if final_counts is not None:
            return final_counts
        latest = self.latest
        if latest is None:
            return empty_counts()
        counts = dict(latest.counts)
        for kind in ("succeeded", "reused"):
            counts[kind] += sum(r.counts[kind] for r in self.rounds[:-1])
        return counts

    @property
    def usage(self) -> Usage:
        """Return the token totals of every gathered round (or finalize's totals)."""
        final_usage = self._final_value.get("usage")
        if isinstance(final_usage, Mapping):
            return _usage(final_usage)
        return sum_usages(r.usage for r in self.rounds)

    @property
    def cost(self) -> tuple[float | None, float | None]:
        """Return (batch USD, standard USD) over the gathered rounds, None when nothing is priced yet."""
        final_cost = self._final_value.get("cost")
        if isinstance(final_cost, Mapping) and "batch_usd" in final_cost:
            return float(final_cost["batch_usd"]), float(final_cost.get("standard_usd", 0.0))
        priced = [r for r in self.rounds if r.cost_batch_usd is not None]
        if not priced:
            return None, None
        return (
            sum(r.cost_batch_usd or 0.0 for r in priced),
            sum(r.cost_standard_usd or 0.0 for r in priced),
        )

    @property
    def estimate_usd(self) -> float | None:
        """Return the estimates of the job's rounds added up (batch prices), None without any."""
        estimates = [r.estimate_usd for r in self.rounds if r.estimate_usd is not None]
        return sum(estimates) if estimates else None

    @property
    def expected_usd(self) -> float | None:
        """Return the rounds' expected estimates added up, None unless every estimated round has one."""
        estimated = [r for r in self.rounds if r.estimate_usd is not None]
        expected = [r.expected_usd for r in estimated if r.expected_usd is not None]
        return sum(expected) if estimated and len(expected) == len(estimated) else None

    @property
    def duration_seconds(self) -> float | None:
        """Return the time from the first submit to finalize, once finalized."""
        return optional_float(self._final_value.get("duration_seconds"))

    @property
    def wait(self) -> WaitProgress | None:
        """Return the wait progress of the latest round while it waits."""
        return self.latest.wait if self.latest is not None else None

    @property
    def file_groups(self) -> list[tuple[str, list[FileLink]]]:
        """Return the files to link, as (title, links) groups.

        Once finalize ran (successfully or above its failure-rate limit): the merged files
        (results, failures, the job manifest, and the Parquet files when finalize wrote them).
        Before: each round's part files under a "round N parts" title, so a part is never
        taken for the job's results.
        """
        final = self._final_value
        if isinstance(final.get("results_path"), str):
            return [("", [FileLink(kind, _file_name(path), path) for kind, path in final_files(final)])]
        return [(f"round {r.number} parts", r.files) for r in self.rounds if r.files]


def _file_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _usage(raw: Mapping[str, Any] | None) -> Usage:
    usage = empty_usage()
    for key in usage:
        usage[key] = int((raw or {}).get(key, 0) or 0)  # type: ignore[literal-required]
    return usage


def _counts(raw: Mapping[str, Any] | None) -> BarCounts:
    counts = empty_counts()
    for key in counts:
        counts[key] = int((raw or {}).get(key, 0) or 0)
    return counts


def _final_counts(value: Mapping[str, Any]) -> BarCounts | None:
    """Return the bar counts of a finalized job (``succeeded``, ``reused`` + ``failures_by_type``)."""
    if "succeeded" not in value:
        return None
    counts = empty_counts()
    counts["reused"] = int(value.get("reused", 0) or 0)
    counts["succeeded"] = int(value.get("succeeded", 0) or 0) - counts["reused"]
    by_type = value.get("failures_by_type") or {}
    for kind, n in by_type.items():
        # Failure kinds the bar has no colour for (missing, invalid input) show as errored.
        key = kind if kind in ("errored", "expired", "canceled") else "errored"
        counts[key] += int(n or 0)
    unaccounted = int(value.get("failed", 0) or 0) - sum(int(n or 0) for n in by_type.values())
    counts["errored"] += max(unaccounted, 0)
    return counts


def _gathered_counts(result_counts: Mapping[str, Any]) -> BarCounts:
    counts = _counts(result_counts)
    counts["processing"] = 0
    counts["errored"] += int(result_counts.get("missing", 0) or 0) + int(
        result_counts.get("invalid_input", 0) or 0
    )
    return counts


def _refused_round_view(record: ManifestRecord) -> RoundView:
    refusal = Refusal.of(record.value)
    return RoundView(
        number=refusal.round,
        stage="refused",
        status="submit failed" if refusal.failed else "refused",
        batch_ids=[],
        requests=0,
        counts=empty_counts(),
        usage=empty_usage(),
        cost_batch_usd=None,
        cost_standard_usd=None,
        estimate_usd=refusal.estimate_usd,
        expected_usd=None,
        results_paths=[],
        failures_paths=[],
        invalid_path=None,
        source=record,
        refusal=refusal,
    )


def _round_view(record: ManifestRecord, progress: Mapping[str, Any] | None, now: datetime) -> RoundView:
    value = record.value
    stage = manifest_stage(value)
    if stage == "refused":
        return _refused_round_view(record)
    batch_ids = [str(b["batch_id"]) for b in value.get("batches", []) if "batch_id" in b]
    requests = int(value.get("requests", 0) or 0)
    reused = int(value.get("reused", 0) or 0)
    canary = CanaryView.of(value.get("canary"))
    counts: BarCounts
    if stage == "gathered" and isinstance(value.get("result_counts"), Mapping):
        counts = _gathered_counts(value["result_counts"])
    elif stage == "waited":
        counts = _counts(value.get("counts"))
    elif progress and isinstance(progress.get("counts"), Mapping):
        stage = "waiting"
        counts = _counts(progress["counts"])
    else:
        counts = empty_counts()
        counts["processing"] = requests
    # Answered at submit, before any batch: from the answer store (reused) or by the canary.
    counts["reused"] = reused
    counts["succeeded"] += canary.answered if canary is not None else 0
    cost = value.get("cost") if stage == "gathered" else None
    estimate = value.get("estimate")
    ended_at = value.get("gathered_at") if stage == "gathered" else value.get("waited_at")
    invalid_path = value.get("invalid_path")
    return RoundView(
        number=int(value.get("round", 0)),
        stage=stage,
        status=_round_status(stage, value, progress, len(batch_ids)),
        batch_ids=batch_ids,
        requests=requests,
        counts=counts,
        usage=_usage(value.get("usage")),
        cost_batch_usd=float(cost["batch_usd"]) if isinstance(cost, Mapping) else None,
        cost_standard_usd=float(cost.get("standard_usd", 0.0)) if isinstance(cost, Mapping) else None,
        estimate_usd=float(estimate["batch_usd"]) if isinstance(estimate, Mapping) else None,
        expected_usd=optional_float(estimate.get("expected_batch_usd"))
        if isinstance(estimate, Mapping)
        else None,
        results_paths=[str(p) for p in value.get("results_paths", [])],
        failures_paths=[str(p) for p in value.get("failures_paths", [])],
        invalid_path=invalid_path if isinstance(invalid_path, str) and value.get("invalid") else None,
        source=record,
        failures=round_failures(value) if stage == "gathered" else None,
        duration_seconds=seconds_between(round_started_at(value), ended_at),
        wait=wait_progress(value, progress, now) if stage in ("submitted", "waiting") else None,
        reused=reused,
        canary=canary,
        deleted=len(value.get("deleted_batches") or {}),
        budget=Budget.of(value.get("budget")) if stage == "gathered" else None,
    )


def _round_status(
    stage: str, value: Mapping[str, Any], progress: Mapping[str, Any] | None, batches: int
) -> str:
    if stage == "gathered":
        return "gathered"
    if stage == "waited":
        return "timed out" if value.get("timed_out") else "ended, gathering"
    if stage == "waiting" and progress is not None:
        ended = progress.get("batches_ended", 0)
        total = progress.get("batches_total", batches)
        return f"waiting ({ended}/{total} batches ended)"
    if not batches and (value.get("reused") or value.get("canary")):
        return "answered without a batch"
    return "submitted" if batches else "no batches"


def build_jobs(
    records: Iterable[ManifestRecord],
    read_progress: Callable[[str, int], Mapping[str, Any] | None] = lambda job_dir, number: None,
    now: datetime | None = None,
) -> list[JobView]:
    """Group manifests into jobs, newest first; ``read_progress(job_dir, round)`` reads live counts.

    For each round the most advanced manifest wins; ``read_progress`` is only called for
    rounds that have not finished waiting, so a finished job costs no storage read. ``now``
    (default: the current time) is what elapsed times and the ETA are measured against.
    """
    now = now or datetime.now(UTC)
    best: dict[str, dict[int, ManifestRecord]] = {}
    finals: dict[str, ManifestRecord] = {}
    order: list[str] = []
    for record in records:
        value = record.value
        if not is_batch_manifest(value):
            continue
        job_dir = str(value["job_dir"])
        if job_dir not in best:
            best[job_dir] = {}
            order.append(job_dir)
        if is_final_manifest(value):
            finals[job_dir] = record
            continue
        number = int(value.get("round", 0))
        current = best[job_dir].get(number)
        if (
            current is None
            or STAGE_ORDER[manifest_stage(value)] >= STAGE_ORDER[manifest_stage(current.value)]
        ):
            best[job_dir][number] = record

    jobs = []
    for job_dir in order:
        rounds = []
        for number in sorted(best[job_dir]):
            record = best[job_dir][number]
            progress = None
            if manifest_stage(record.value) == "submitted":
                progress = read_progress(job_dir, number)
            rounds.append(_round_view(record, progress, now))
        owner = best[job_dir][min(best[job_dir])] if best[job_dir] else finals[job_dir]
        jobs.append(
            JobView(
                dag_id=owner.dag_id,
                run_id=owner.run_id,
                task_id=owner.task_id,
                map_index=owner.map_index,
                job_dir=job_dir,
                rounds=rounds,
                final=finals.get(job_dir),
            )
        )
    return jobs
