"""What a job's own page shows: its charts, built from the manifests of the batch jobs page.

Pure functions over :class:`~airflow_batch.plugins.views.JobView` objects (no Airflow, no storage):

- **progress over time**: requests ended per minute since the job's first submit, per round. The
  API moves a batch's counts only when the batch ends, so the wait's polls see requests end in
  steps, at each batch's ``ended_at`` with its ``request_counts``; the chart bins those.
- **failures by type per round**: each gathered round's ``result_counts`` other than succeeded.
- **cost by model, and the estimate beside the actual**: each model's usage priced at batch
  prices, then the job's estimate (at most, and expected when known) beside what it cost.
- **the DAG's trend**: cost, tokens and failure rate of the same job in the last 30 finished runs.

The markup is ``templates/job.html``; the geometry is :mod:`airflow_batch.plugins.charts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_batch.plugins.charts import Chart, bar_chart, bin_minutes, line_chart
from airflow_batch.plugins.views import JobView

#: How many finished runs of a job the trend shows.
TREND_RUNS = 30


def usd(amount: float) -> str:
    """Return an amount as the page prints money: ``$0.0042``."""
    return f"${amount:,.4f}"


@dataclass(frozen=True)
class JobCharts:
    """The charts of one job's page."""

    job: JobView
    progress: Chart
    failures: Chart
    cost: Chart
    trend: list[Chart]


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def progress_chart(job: JobView) -> Chart:
    """Return requests ended per minute (or per wider bin on a long job) since the first submit."""
    start = _moment(job.rounds[0].source.value.get("submitted_at")) if job.rounds else None
    ended: list[tuple[str, float, int]] = []  # (round, seconds since start, requests)
    for view in job.rounds:
        for status in (view.source.value.get("batch_status") or {}).values():
            moment = _moment(status.get("ended_at"))
            counts = status.get("request_counts") or {}
            done = sum(int(n or 0) for kind, n in counts.items() if kind != "processing")
            if start is not None and moment is not None and done:
                ended.append((f"round {view.number}", max((moment - start).total_seconds(), 0.0), done))
    if not ended:
        return bar_chart("progress", "Requests ended per minute", [])
    minutes = bin_minutes(max(seconds for _, seconds, _ in ended))
    bins: dict[int, dict[str, int]] = {}
    for round_name, seconds, done in ended:
        per_round = bins.setdefault(int(seconds // (minutes * 60)), {})
        per_round[round_name] = per_round.get(round_name, 0) + done
    rounds = sorted({name for name, _, _ in ended})
    groups = [
        (
            f"+{index * minutes}m",
            [
                (name, float(bins.get(index, {}).get(name, 0)), str(bins.get(index, {}).get(name, 0)))
                for name in rounds
            ],
        )
        for index in range(max(bins) + 1)
    ]
    unit = "minute" if minutes == 1 else f"{minutes} minutes"
    return bar_chart("progress", f"Requests ended per {unit}", groups)


def failures_chart(job: JobView) -> Chart:
    """Return each gathered round's failed requests by type."""
    groups = []
    for view in job.rounds:
        if view.failures is not None and view.failures.by_type:
            bars = [(kind, float(n), str(n)) for kind, n in sorted(view.failures.by_type.items())]
            groups.append((f"round {view.number}", bars))
    return bar_chart("failures", "Failures by type per round", groups)


def cost_chart(job: JobView, cost_by_model: Mapping[str, float]) -> Chart:
    """Return the cost of each model at batch prices, then the job's estimate beside its actual cost."""
    groups: list[tuple[str, Sequence[tuple[str, float, str]]]] = [
        (model, [("actual", amount, usd(amount))]) for model, amount in sorted(cost_by_model.items())
    ]
    actual, _ = job.cost
    estimate: list[tuple[str, float, str]] = []
    if job.estimate_usd is not None:
        estimate.append(("at most", job.estimate_usd, usd(job.estimate_usd)))
    if job.expected_usd is not None:
        estimate.append(("expected", job.expected_usd, usd(job.expected_usd)))
    if actual is not None:
        estimate.append(("actual", actual, usd(actual)))
    if estimate:
        groups.append(("job: estimate and actual", estimate))
    return bar_chart(
        "cost",
        "Cost by model (batch prices), and the estimate beside the actual",
        groups,
        value_format="${:,.4f}",
    )


def trend_charts(runs: Sequence[JobView]) -> list[Chart]:
    """Return cost, tokens and failure rate of finished runs of a job, oldest first (at most 30)."""
    finished = [run for run in runs if run.final is not None][:TREND_RUNS][::-1]
    cost, tokens, rate = [], [], []
    for run in finished:
        final = run.final.value if run.final is not None else {}
        when = _moment(final.get("finalized_at"))
        label = when.strftime("%m-%d %H:%M") if when else run.run_id[-8:]
        batch_usd = float((final.get("cost") or {}).get("batch_usd", 0.0) or 0.0)
        usage = final.get("usage") or {}
        used = int(usage.get("input_tokens", 0) or 0) + int(usage.get("output_tokens", 0) or 0)
        failure_rate = float(final.get("failure_rate", 0.0) or 0.0)
        cost.append((label, batch_usd, usd(batch_usd)))
        tokens.append((label, float(used), f"{used:,}"))
        rate.append((label, failure_rate, f"{failure_rate:.1%}"))
    return [
        line_chart("trend-cost", "Cost per run (batch prices)", cost, kind="cost", value_format="${:,.4f}"),
        line_chart(
            "trend-tokens", "Tokens per run (input + output)", tokens, kind="tokens", value_format="{:,.0f}"
        ),
        line_chart("trend-failure-rate", "Failure rate per run", rate, kind="failed", value_format="{:.0%}"),
    ]


def job_charts(
    job: JobView, same_job_runs: Sequence[JobView], cost_by_model: Mapping[str, float]
) -> JobCharts:
    """Return the charts of ``job``'s page; ``same_job_runs`` are the DAG's runs of it, newest first."""
    return JobCharts(
        job,
        progress_chart(job),
        failures_chart(job),
        cost_chart(job, cost_by_model),
        trend_charts(same_job_runs),
    )


def cost_by_model(job: JobView, prices: Any = None) -> dict[str, float]:
    """Return the job's cost per model at batch prices (its usage priced with the shipped table)."""
    from airflow_batch.manifest import sum_usages
    from airflow_batch.rules.costs import price_table, split_usage_key

    table = price_table(prices)
    usage: dict[str, Any] = {}
    final = job.final.value if job.final is not None else None
    sources = [final] if final else [r.source.value for r in job.rounds if r.stage == "gathered"]
    for value in sources:
        for key, used in (value.get("usage_by_model") or {}).items():
            keys = usage.setdefault(split_usage_key(key)[0], {})
            keys[key] = sum_usages([keys.get(key, {}), used])
    return {model: table.cost(keys)["batch_usd"] for model, keys in usage.items()}


def job_href(base: str, job: JobView) -> str:
    """Return the URL of a job's own page (its charts), linked from its row on the jobs page."""
    from urllib.parse import urlencode

    return f"{base}/job?{urlencode({'dag_id': job.dag_id, 'run_id': job.run_id, 'job_dir': job.job_dir})}"
