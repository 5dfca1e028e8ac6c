"""What the batch jobs page shows: jobs and rounds assembled from the manifests in XCom.

Pure functions over plain data: the FastAPI app reads XCom rows and ``progress.json`` files
and hands them here; nothing in this module touches Airflow, a database or storage, so the
page's logic is tested without a server. The markup lives in ``templates/jobs.html``
(:mod:`airflow_batch.plugins.rendering`).

A job is one job folder (``manifest["job_dir"]``). Each of its tasks (submit, wait, gather,
retry, finalize) returns a manifest; for a round the most advanced one wins
(gathered > waited > submitted), and a live ``progress.json`` fills in while the wait is
deferred. Each manifest names its stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from airflow_batch.links.urls import batch_console_url
from airflow_batch.manifest import STAGE_ORDER, RequestCounts, Usage, empty_counts, empty_usage, sum_usages

COUNT_KINDS: tuple[str, ...] = ("succeeded", "errored", "expired", "canceled", "processing")


@dataclass(frozen=True)
class ManifestRecord:
    """One XCom return value of a task of a batch job, with the task instance it came from."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    value: Mapping[str, Any]


@dataclass
class RoundView:
    """One round of a job as the page shows it."""

    number: int
    stage: str  # submitted | waiting | waited | gathered
    status: str
    batch_ids: list[str]
    requests: int
    counts: RequestCounts
    usage: Usage
    cost_batch_usd: float | None
    cost_standard_usd: float | None
    results_paths: list[str]
    failures_paths: list[str]
    source: ManifestRecord


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
    def batch_count(self) -> int:
        """Return the number of batches over every round."""
        return sum(len(r.batch_ids) for r in self.rounds)

    @property
    def requests(self) -> int:
        """Return the number of requests of the first submission."""
        return self.rounds[0].requests if self.rounds else int(self._final_value.get("requests", 0))

    @property
    def _final_value(self) -> Mapping[str, Any]:
        return self.final.value if self.final else {}

    @property
    def status(self) -> str:
        """Return the job's status: the finalize outcome, else the latest round's."""
        if self.final is not None:
            final = self._final_value
            limit = final.get("max_failure_rate")
            rate = float(final.get("failure_rate", 0.0) or 0.0)
            if limit is not None and rate > float(limit):
                return f"failed: {rate:.1%} of requests failed (max {float(limit):.1%})"
            failed = int(final.get("failed", 0) or 0)
            return f"finished, {failed} failed" if failed else "finished"
        latest = self.latest
        if latest is None:
            return "unknown"
        if latest.number > 0:
            return f"retry round {latest.number}: {latest.status}"
        return latest.status

    @property
    def counts(self) -> RequestCounts:
        """Return the counts the job's progress bar shows.

        After finalize: the final outcome. Before: requests that succeeded in any gathered
        round, plus the latest round's counts for what is still open.
        """
        final_counts = _final_counts(self._final_value)
        if final_counts is not None:
            return final_counts
        latest = self.latest
        if latest is None:
            return empty_counts()
        counts = RequestCounts(**latest.counts)
        counts["succeeded"] += sum(r.counts["succeeded"] for r in self.rounds[:-1])
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
    def results_paths(self) -> list[str]:
        """Return the merged results file after finalize, else every round's result parts."""
        final = self._final_value.get("results_path")
        if isinstance(final, str):
            return [final]
        return [p for r in self.rounds for p in r.results_paths]

    @property
    def failures_paths(self) -> list[str]:
        """Return the final failures file after finalize, else the latest round's failure parts."""
        final = self._final_value.get("failures_path")
        if isinstance(final, str):
            return [final]
        latest = self.latest
        return list(latest.failures_paths) if latest else []


def manifest_stage(value: Mapping[str, Any]) -> str:
    """Return the stage a manifest names (``submitted``, ``waited``, ``gathered``, ``finalized``)."""
    stage = value.get("stage")
    return stage if stage in STAGE_ORDER else "submitted"


def is_final_manifest(value: Mapping[str, Any]) -> bool:
    """Return True for the job manifest finalize returns (it carries no single round)."""
    return manifest_stage(value) == "finalized"


def is_batch_manifest(value: Any) -> bool:
    """Return True if an XCom value is one of this package's manifests."""
    return isinstance(value, Mapping) and isinstance(value.get("job_dir"), str)


def _usage(raw: Mapping[str, Any] | None) -> Usage:
    usage = empty_usage()
    for key in usage:
        usage[key] = int((raw or {}).get(key, 0) or 0)  # type: ignore[literal-required]
    return usage


def _counts(raw: Mapping[str, Any] | None) -> RequestCounts:
    counts = empty_counts()
    for key in counts:
        counts[key] = int((raw or {}).get(key, 0) or 0)  # type: ignore[literal-required]
    return counts


def _final_counts(value: Mapping[str, Any]) -> RequestCounts | None:
    """Return the bar counts of a finalized job (``succeeded`` + ``failures_by_type``)."""
    if "succeeded" not in value:
        return None
    counts = empty_counts()
    counts["succeeded"] = int(value.get("succeeded", 0) or 0)
    by_type = value.get("failures_by_type") or {}
    for kind, n in by_type.items():
        # Failure kinds the bar has no colour for (missing, invalid input) show as errored.
        key = kind if kind in ("errored", "expired", "canceled") else "errored"
        counts[key] += int(n or 0)  # type: ignore[literal-required]
    unaccounted = int(value.get("failed", 0) or 0) - sum(int(n or 0) for n in by_type.values())
    counts["errored"] += max(unaccounted, 0)
    return counts


def _gathered_counts(result_counts: Mapping[str, Any]) -> RequestCounts:
    counts = _counts(result_counts)
    counts["processing"] = 0
    counts["errored"] += int(result_counts.get("missing", 0) or 0) + int(
        result_counts.get("invalid_input", 0) or 0
    )
    return counts


def _round_view(record: ManifestRecord, progress: Mapping[str, Any] | None) -> RoundView:
    value = record.value
    stage = manifest_stage(value)
    batch_ids = [str(b["batch_id"]) for b in value.get("batches", []) if "batch_id" in b]
    requests = int(value.get("requests", 0) or 0)
    counts: RequestCounts
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
    cost = value.get("cost") if stage == "gathered" else None
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
        results_paths=[str(p) for p in value.get("results_paths", [])],
        failures_paths=[str(p) for p in value.get("failures_paths", [])],
        source=record,
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
    return "submitted" if batches else "no batches"


def build_jobs(
    records: Iterable[ManifestRecord],
    read_progress: Callable[[str, int], Mapping[str, Any] | None] = lambda job_dir, number: None,
) -> list[JobView]:
    """Group manifests into jobs, newest first; ``read_progress(job_dir, round)`` reads live counts.

    For each round the most advanced manifest wins; ``read_progress`` is only called for
    rounds that have not finished waiting, so a finished job costs no storage read.
    """
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
            rounds.append(_round_view(record, progress))
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


# -- what the template shows ------------------------------------------------------------------


@dataclass(frozen=True)
class BarSegment:
    """One part of a stacked progress bar: a kind of outcome, its count and its share in percent."""

    kind: str
    count: int
    share: float

    @property
    def label(self) -> str:
        """Return the segment as the legend names it: ``"75 succeeded"``."""
        return f"{self.count} {self.kind}"


def bar_segments(counts: Mapping[str, Any]) -> list[BarSegment]:
    """Return the stacked bar of request counts, one segment per kind, widths as shares of the total."""
    total = sum(int(counts.get(kind, 0)) for kind in COUNT_KINDS)
    return [
        BarSegment(kind, n, round(100.0 * n / total, 1) if total else 0.0)
        for kind in COUNT_KINDS
        for n in (int(counts.get(kind, 0)),)
    ]


def is_live(jobs: Sequence[JobView]) -> bool:
    """Return whether any job is still running (the page then refreshes itself)."""
    return any(j.final is None and (j.latest is None or j.latest.stage != "gathered") for j in jobs)


def file_href(base: str, record: ManifestRecord | JobView, path: str) -> str:
    """Return the download URL of ``path`` through the page's app (it checks access per DAG run)."""
    query = urlencode({"dag_id": record.dag_id, "run_id": record.run_id, "path": path})
    return f"{base}/files?{query}"


def manifest_paths(value: Mapping[str, Any]) -> set[str]:
    """Return every results/failures/invalid-input file a manifest names (what may be downloaded)."""
    paths = {str(p) for key in ("results_paths", "failures_paths") for p in value.get(key, []) or []}
    for key in ("results_path", "failures_path", "invalid_path"):
        if isinstance(value.get(key), str):
            paths.add(value[key])
    return paths


def console_links(batch_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Return (short label, Anthropic Console URL) of each batch."""
    return [(batch_id[-8:], batch_console_url(batch_id)) for batch_id in batch_ids]
