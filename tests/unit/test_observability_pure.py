"""The pure parts of lineage, metrics and the job page's charts, over plain manifests."""

from __future__ import annotations

import pytest

from airflow_batch.lineage.figures import dataset_name, reuse_savings, run_figures, token_kinds
from airflow_batch.metrics import METRICS, points_of
from airflow_batch.plugins.charts import HEIGHT, bar_chart, bin_minutes, line_chart
from airflow_batch.rules.costs import price_table

USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_creation_input_tokens": 300,
    "cache_creation_1h_input_tokens": 100,
    "cache_read_input_tokens": 50,
}
GATHERED = {
    "stage": "gathered",
    "job_dir": "/jobs/j",
    "round": 0,
    "requests": 10,
    "batches": [{"chunk": 0, "batch_id": "msgbatch_a", "requests": 10, "bytes": 1, "chunk_path": "/x"}],
    "result_counts": {"succeeded": 7, "errored": 2, "expired": 1},
    "usage": USAGE,
    "usage_by_model": {"claude-haiku-4-5": USAGE},
    "cost": {"batch_usd": 0.5, "standard_usd": 1.0},
    "deleted_batches": {"msgbatch_a": "2026-01-01T00:00:00+00:00"},
}


@pytest.mark.parametrize(
    ("uri", "namespace", "name"),
    [
        ("/data/jobs/results.jsonl", "file", "/data/jobs/results.jsonl"),
        ("file:///data/jobs/", "file", "/data/jobs"),
        ("file:/data/jobs/round-0/results", "file", "/data/jobs/round-0/results"),
        ("s3://bucket/prefix/results.parquet", "s3://bucket", "prefix/results.parquet"),
        ("gcs://bucket/a/b", "gs://bucket", "a/b"),
    ],
)
def test_datasets_are_named_as_openlineage_names_files(uri: str, namespace: str, name: str) -> None:
    assert (dataset_name(uri).namespace, dataset_name(uri).name) == (namespace, name)


def test_token_kinds_split_the_1h_cache_writes_out_of_all_cache_writes() -> None:
    assert token_kinds(USAGE) == {
        "input": 1000,
        "output": 200,
        "cache_read": 50,
        "cache_write_5m": 200,
        "cache_write_1h": 100,
    }


def test_run_figures_price_each_model_and_keep_the_manifests_counts() -> None:
    table = price_table()
    figures = run_figures(GATHERED, table)
    assert (figures["succeeded"], figures["failed"], figures["failedByType"]) == (
        7,
        3,
        {"errored": 2, "expired": 1},
    )
    assert figures["batchIds"] == ["msgbatch_a"]
    [(model, per_model)] = figures["models"].items()
    assert model == "claude-haiku-4-5"
    assert per_model["batchUsd"] == table.cost({"claude-haiku-4-5": USAGE})["batch_usd"] > 0
    assert per_model["standardUsd"] == pytest.approx(2 * per_model["batchUsd"], abs=2e-6)


def test_reuse_savings_price_the_usage_of_the_run_that_paid_for_each_answer() -> None:
    rows = [
        {"model": "claude-haiku-4-5", "reused_from": {"usage": USAGE}},
        {"model": "claude-haiku-4-5", "reused_from": {"usage": USAGE}},
        {"model": "claude-haiku-4-5"},  # a row of this job's own batches
    ]
    saved = reuse_savings(rows, price_table())
    assert saved["answers"] == 2
    assert saved["savedBatchUsd"] == pytest.approx(
        2 * price_table().cost({"claude-haiku-4-5": USAGE})["batch_usd"], abs=2e-6
    )


def test_a_gathered_manifest_counts_requests_tokens_cost_and_deleted_batches() -> None:
    points = points_of(GATHERED, {"dag_id": "d", "task_id": "job.gather"}, task_seconds=2.0)
    by_name = {(p.name, p.tags.get("failure_type")): p for p in points}
    assert by_name[("requests.succeeded", None)].value == 7
    assert by_name[("requests.failed", "errored")].value == 2
    assert by_name[("tokens.cache_write_1h", None)].tags["model"] == "claude-haiku-4-5"
    assert by_name[("batches.deleted", None)].value == 1
    assert by_name[("gather.duration", None)].value == 2000.0
    assert all(p.name in METRICS and p.tags["dag_id"] == "d" for p in points)


def test_the_wait_is_timed_from_the_manifest_not_the_task() -> None:
    waited = {
        "stage": "waited",
        "submitted_at": "2026-01-01T00:00:00+00:00",
        "waited_at": "2026-01-01T00:05:00+00:00",
    }
    [timer] = points_of(waited, {}, task_seconds=1.0)
    assert (timer.name, timer.value) == ("wait.duration", 300_000.0)


def test_bars_are_as_tall_as_their_share_of_the_largest_value() -> None:
    chart = bar_chart("c", "t", [("a", [("x", 10.0, "10")]), ("b", [("x", 5.0, "5")])])
    tall, short = chart.marks
    assert tall.height == pytest.approx(2 * short.height)
    assert tall.y + tall.height == pytest.approx(short.y + short.height)
    assert tall.y + tall.height <= HEIGHT
    assert [t.text for t in chart.x_ticks] == ["a", "b"] and [m.label for m in chart.marks] == ["10", "5"]


def test_a_trend_joins_its_points_and_labels_each_with_its_value() -> None:
    chart = line_chart("c", "t", [("r1", 1.0, "$1"), ("r2", 3.0, "$3")], kind="cost", value_format="${:.0f}")
    assert [m.label for m in chart.marks] == ["$1", "$3"]
    assert chart.marks[1].y < chart.marks[0].y and chart.line.count(",") == 2


def test_progress_bins_widen_so_a_long_wait_stays_readable() -> None:
    assert [bin_minutes(s) for s in (30, 3600, 6 * 3600, 24 * 3600)] == [1, 1, 15, 60]


def test_nothing_to_draw_is_an_empty_chart() -> None:
    assert bar_chart("c", "t", []).empty and line_chart("c", "t", [], kind="k", value_format="{}").empty
