"""What the batch jobs page shows: jobs and rounds assembled from the manifests in XCom.

Pure functions over plain data: the FastAPI app reads XCom rows and ``progress.json`` files
and hands them here; nothing in this module touches Airflow, a database or storage, so the
page's logic is tested without a server.

A job is one job folder (``manifest["job_dir"]``). Each of its tasks (submit, wait, gather,
retry, finalize) returns a manifest; for a round the most advanced one wins
(gathered > waited > submitted), and a live ``progress.json`` fills in while the wait is
deferred.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from airflow_batch.links.console import batch_console_url
from airflow_batch.manifest import RequestCounts, Usage, empty_counts, empty_usage

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
        total = empty_usage()
        for r in self.rounds:
            for key in total:
                total[key] += r.usage[key]  # type: ignore[literal-required]
        return total

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
    """Return how far a round manifest got: ``gathered``, ``waited`` or ``submitted``."""
    if "gathered_at" in value:
        return "gathered"
    if "waited_at" in value:
        return "waited"
    return "submitted"


_STAGE_RANK = {"submitted": 0, "waiting": 1, "waited": 2, "gathered": 3}


def is_final_manifest(value: Mapping[str, Any]) -> bool:
    """Return True for the job manifest finalize returns (it carries no single round)."""
    return (
        "job_dir" in value and ("finalized_at" in value or "results_path" in value) and "round" not in value
    )


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
            or _STAGE_RANK[manifest_stage(value)] >= _STAGE_RANK[manifest_stage(current.value)]
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


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light dark; --fg: #1a202c; --muted: #4a5568; --line: #e2e8f0; --bg: #fff; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e2e8f0; --muted: #a0aec0; --line: #2d3748; --bg: #1a202c; }
}
body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 16px; }
h1 { font-size: 18px; margin: 0 0 4px; } p.sub { color: var(--muted); margin: 0 0 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); white-space: nowrap; }
tr.round td { color: var(--muted); font-size: 13px; } tr.round td.indent { padding-left: 24px; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { display: flex; width: 220px; height: 12px; border-radius: 3px; overflow: hidden;
  background: var(--line); }
.bar span { display: block; height: 100%; }
.bar .succeeded { background: #38a169; } .bar .errored { background: #e53e3e; }
.bar .expired { background: #dd6b20; } .bar .canceled { background: #a0aec0; }
.bar .processing { background: #4299e1; opacity: .6; }
.legend { color: var(--muted); font-size: 12px; margin-top: 2px; white-space: nowrap; }
.status { white-space: nowrap; } a { color: #3182ce; } .empty { color: var(--muted); padding: 24px 0; }
code { font-size: 12px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def progress_bar(counts: Mapping[str, Any]) -> str:
    """Return a stacked bar of the request counts, one ``span`` per kind with its share as width."""
    total = sum(int(counts.get(kind, 0)) for kind in COUNT_KINDS)
    spans = []
    for kind in COUNT_KINDS:
        n = int(counts.get(kind, 0))
        share = 100.0 * n / total if total else 0.0
        spans.append(
            f'<span class="{kind}" data-kind="{kind}" data-count="{n}" '
            f'style="width: {share:.1f}%" title="{n} {kind}"></span>'
        )
    legend = ", ".join(f"{int(counts.get(kind, 0))} {kind}" for kind in COUNT_KINDS if counts.get(kind))
    return (
        f'<div class="bar" data-total="{total}">{"".join(spans)}</div><div class="legend">{_e(legend)}</div>'
    )


def _tokens(usage: Usage) -> str:
    cache = usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"]
    text = f"{usage['input_tokens']:,} in / {usage['output_tokens']:,} out"
    if cache:
        text += f" / {usage['cache_read_input_tokens']:,} cache read"
    return text


def _cost(batch_usd: float | None, standard_usd: float | None) -> str:
    if batch_usd is None:
        return "&ndash;"
    standard = f'<div class="legend">${standard_usd or 0:,.4f} standard</div>'
    return f'<span class="cost">${batch_usd:,.4f}</span>{standard}'


def _file_links(
    base: str, owner: ManifestRecord | JobView, results: Sequence[str], failures: Sequence[str]
) -> str:
    links = []
    for label, paths in (("results", results), ("failures", failures)):
        if len(paths) == 1:
            links.append(f'<a class="{label}" href="{_e(file_href(base, owner, paths[0]))}">{label}</a>')
        elif paths:
            parts = ", ".join(
                f'<a class="{label}" href="{_e(file_href(base, owner, p))}">{i + 1}</a>'
                for i, p in enumerate(paths)
            )
            links.append(f"{label}: {parts}")
    return " ".join(links)


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


def console_links(batch_ids: Sequence[str]) -> str:
    """Return links to each batch in the Anthropic Console."""
    return " ".join(
        f'<a class="console" target="_blank" rel="noopener" '
        f'href="{_e(batch_console_url(b))}">{_e(b[-8:])}</a>'
        for b in batch_ids
    )


def render_page(
    jobs: Sequence[JobView],
    *,
    base: str,
    title: str,
    subtitle: str,
    ui_base: str = "",
    show_rounds: bool = False,
) -> str:
    """Return the HTML page listing ``jobs``; rounds get their own rows when ``show_rounds``."""
    rows = []
    for job in jobs:
        batch_usd, standard_usd = job.cost
        job_links = _file_links(base, job, job.results_paths, job.failures_paths)
        run_href = f"{ui_base}/dags/{job.dag_id}/runs/{job.run_id}"
        rows.append(
            f'<tr class="job" data-dag-id="{_e(job.dag_id)}" data-run-id="{_e(job.run_id)}" '
            f'data-job-dir="{_e(job.job_dir)}">'
            f'<td><a href="{_e(ui_base)}/dags/{_e(job.dag_id)}" target="_top">{_e(job.dag_id)}</a></td>'
            f'<td><a href="{_e(run_href)}" target="_top">{_e(job.run_id)}</a><div class="legend">'
            f"{_e(job.name)}</div></td>"
            f'<td class="num">{job.latest.number if job.latest else "&ndash;"}</td>'
            f'<td class="num batches">{job.batch_count}</td>'
            f'<td class="status">{_e(job.status)}</td>'
            f'<td class="num">{job.requests:,}</td>'
            f"<td>{progress_bar(job.counts)}</td>"
            f'<td class="tokens">{_tokens(job.usage)}</td>'
            f'<td class="num">{_cost(batch_usd, standard_usd)}</td>'
            f'<td class="links">{job_links}</td>'
            "</tr>"
        )
        if show_rounds:
            for r in job.rounds:
                links = _file_links(base, r.source, r.results_paths, r.failures_paths)
                rows.append(
                    f'<tr class="round" data-round="{r.number}">'
                    f'<td class="indent" colspan="2">round {r.number} &middot; {_e(r.source.task_id)}</td>'
                    f'<td class="num">{r.number}</td>'
                    f'<td class="num">{len(r.batch_ids)}'
                    f'<div class="legend">{console_links(r.batch_ids)}</div></td>'
                    f'<td class="status">{_e(r.status)}</td>'
                    f'<td class="num">{r.requests:,}</td>'
                    f"<td>{progress_bar(r.counts)}</td>"
                    f"<td>{_tokens(r.usage)}</td>"
                    f'<td class="num">{_cost(r.cost_batch_usd, r.cost_standard_usd)}</td>'
                    f"<td>{links}</td>"
                    "</tr>"
                )
    live = any(j.final is None and (j.latest is None or j.latest.stage != "gathered") for j in jobs)
    refresh = '<meta http-equiv="refresh" content="15">' if live else ""
    body = (
        "<table><thead><tr><th>DAG</th><th>Run / job</th><th>Round</th><th>Batches</th><th>Status</th>"
        "<th>Requests</th><th>Progress</th><th>Tokens</th><th>Cost (batch)</th><th>Files</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No batch jobs yet. Runs of DAGs that use airflow_batch appear here.</p>'
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"{refresh}<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="sub">{_e(subtitle)}</p>{body}</body></html>'
    )
