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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from airflow_batch.layout import FINAL_MANIFEST_FILE
from airflow_batch.links.urls import batch_console_url
from airflow_batch.manifest import STAGE_ORDER, Usage, empty_usage, round_started_at, sum_usages

#: The kinds of a progress bar, in order: the API's request counts, and ``reused`` (answered
#: from the answer store: no batch, no cost) after ``succeeded``.
COUNT_KINDS: tuple[str, ...] = ("succeeded", "reused", "errored", "expired", "canceled", "processing")
#: Request counts by kind (:data:`COUNT_KINDS`), as a bar shows them.
BarCounts = dict[str, int]


def empty_counts() -> BarCounts:
    """Return all-zero bar counts."""
    return dict.fromkeys(COUNT_KINDS, 0)


#: The files finalize writes, by job-manifest key, in the order the page links them.
FINAL_FILE_KEYS: tuple[tuple[str, str], ...] = (
    ("results_path", "results"),
    ("failures_path", "failures"),
    ("manifest_path", "manifest"),
    ("results_parquet_path", "results-parquet"),
    ("failures_parquet_path", "failures-parquet"),
)


@dataclass(frozen=True)
class ManifestRecord:
    """One manifest a task of a batch job left in XCom, with the task instance it came from."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    value: Mapping[str, Any]


@dataclass(frozen=True)
class Refusal:
    """A round refused before any spend: why, and when the budget refused it, its figures (USD)."""

    round: int
    reason: str
    estimate_usd: float | None = None
    budget_usd: float | None = None
    spent_usd: float | None = None

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
            estimate_usd=_optional_float(record.get("estimate_usd")),
            budget_usd=_optional_float(record.get("budget_usd")),
            spent_usd=_optional_float(record.get("spent_usd")),
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
    #: Rows of the batches landed so far (readable with ``read_results``, partial), when it lands early.
    landed: Mapping[str, Any] | None = None


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
                by_type=_int_map(final.get("failures_by_type")),
                by_error_type=_int_map(final.get("failures_by_error_type")),
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
        return _optional_float(self._final_value.get("duration_seconds"))

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


def manifest_stage(value: Mapping[str, Any]) -> str:
    """Return the stage a manifest names (``refused``, ``submitted`` ... ``finalized``)."""
    stage = value.get("stage")
    return stage if stage in STAGE_ORDER else "submitted"


def is_final_manifest(value: Mapping[str, Any]) -> bool:
    """Return True for the job manifest finalize writes (it carries no single round)."""
    return manifest_stage(value) == "finalized"


def is_batch_manifest(value: Any) -> bool:
    """Return True if an XCom value is one of this package's manifests."""
    return isinstance(value, Mapping) and isinstance(value.get("job_dir"), str)


def final_files(value: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (kind, URI) of each file a finalized job manifest names, the job manifest included."""
    job_dir = str(value.get("job_dir", "")).rstrip("/")
    paths = {**value, "manifest_path": f"{job_dir}/{FINAL_MANIFEST_FILE}"}
    return [(kind, paths[key]) for key, kind in FINAL_FILE_KEYS if isinstance(paths.get(key), str)]


def _file_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_map(raw: Any) -> dict[str, int]:
    return {str(k): int(v or 0) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


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


def _round_failures(value: Mapping[str, Any]) -> Failures:
    by_type = {k: n for k, n in _int_map(value.get("result_counts")).items() if k != "succeeded" and n}
    return Failures(
        failed=sum(by_type.values()),
        by_type=by_type,
        by_error_type=_int_map(value.get("error_types")),
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


def _seconds_between(start: Any, end: Any) -> float | None:
    first, last = _time(start), _time(end)
    return None if first is None or last is None else max((last - first).total_seconds(), 0.0)


def _wait_progress(
    value: Mapping[str, Any], progress: Mapping[str, Any] | None, now: datetime
) -> WaitProgress:
    """Return the wait's progress: ``progress.json`` figures taken forward from its poll to ``now``."""
    progress = progress or {}
    last_poll = progress.get("last_poll_at") or progress.get("updated_at")
    eta = _optional_float(progress.get("eta_seconds"))
    since_written = _seconds_between(progress.get("updated_at"), now)
    if eta is not None and since_written is not None:
        eta = max(eta - since_written, 0.0)
    return WaitProgress(
        elapsed_seconds=_seconds_between(round_started_at(value), now),
        last_poll_at=last_poll if isinstance(last_poll, str) else None,
        last_poll_seconds_ago=_seconds_between(last_poll, now),
        eta_seconds=eta,
        landed=progress.get("landed") if isinstance(progress.get("landed"), Mapping) else None,
    )


def _refused_round_view(record: ManifestRecord) -> RoundView:
    refusal = Refusal.of(record.value)
    return RoundView(
        number=refusal.round,
        stage="refused",
        status="refused",
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
        expected_usd=_optional_float(estimate.get("expected_batch_usd"))
        if isinstance(estimate, Mapping)
        else None,
        results_paths=[str(p) for p in value.get("results_paths", [])],
        failures_paths=[str(p) for p in value.get("failures_paths", [])],
        invalid_path=invalid_path if isinstance(invalid_path, str) and value.get("invalid") else None,
        source=record,
        failures=_round_failures(value) if stage == "gathered" else None,
        duration_seconds=_seconds_between(round_started_at(value), ended_at),
        wait=_wait_progress(value, progress, now) if stage in ("submitted", "waiting") else None,
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


def duration(seconds: float) -> str:
    """Return a duration as people read it: ``"42s"``, ``"3m 07s"``, ``"2h 05m"``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def is_live(jobs: Sequence[JobView]) -> bool:
    """Return whether any job is still running (the page then refreshes itself)."""
    return any(j.outcome == "running" and (j.latest is None or j.latest.stage != "gathered") for j in jobs)


def file_href(base: str, record: ManifestRecord | JobView, path: str) -> str:
    """Return the download URL of ``path`` through the page's app (it checks access per DAG run)."""
    query = urlencode({"dag_id": record.dag_id, "run_id": record.run_id, "path": path})
    return f"{base}/files?{query}"


def manifest_paths(value: Mapping[str, Any]) -> set[str]:
    """Return every file a manifest names, which the page may serve for download.

    A round's results, failures and invalid-input files; a finalized job's merged files,
    its Parquet files and the job manifest itself.
    """
    paths = {str(p) for key in ("results_paths", "failures_paths") for p in value.get(key, []) or []}
    for key in ("results_path", "failures_path", "invalid_path"):
        if isinstance(value.get(key), str):
            paths.add(value[key])
    if is_final_manifest(value):
        paths.update(path for _, path in final_files(value))
    return paths


def console_links(batch_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Return (short label, Anthropic Console URL) of each batch."""
    return [(batch_id[-8:], batch_console_url(batch_id)) for batch_id in batch_ids]
