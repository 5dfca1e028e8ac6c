"""The batch jobs page's logic, without a server: manifests in, jobs and HTML out."""

from __future__ import annotations

import re
from typing import Any

from airflow_batch.plugins.rendering import render_page
from airflow_batch.plugins.views import ManifestRecord, bar_segments, build_jobs

JOB = "file:///out/dag_a/run_1/job.submit"
USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_creation_input_tokens": 0,
    "cache_creation_1h_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def submitted(round_number: int = 0, batches: int = 2, requests: int = 100) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "submitted",
        "job_dir": JOB,
        "round": round_number,
        "conn_id": "anthropic_default",
        "requests": requests,
        "batches": [{"chunk": i, "batch_id": f"msgbatch_r{round_number}_{i}"} for i in range(batches)],
        "submitted_at": "2026-01-01T00:00:00+00:00",
    }


def gathered(round_number: int = 0, succeeded: int = 95, errored: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        **submitted(round_number, requests=succeeded + errored),
        "stage": "gathered",
        "counts": {"processing": 0, "succeeded": succeeded, "errored": errored, "canceled": 0, "expired": 0},
        "waited_at": "2026-01-01T00:01:00+00:00",
        "result_counts": {"succeeded": succeeded, "errored": errored},
        "results_paths": [f"{JOB}/round-{round_number}/results/msgbatch_r{round_number}_0.jsonl"],
        "failures_paths": [f"{JOB}/round-{round_number}/failures/msgbatch_r{round_number}_0.jsonl"],
        "usage": USAGE,
        "cost": {"batch_usd": 0.001, "standard_usd": 0.002, "priced": True, "unpriced_models": []},
        "gathered_at": "2026-01-01T00:02:00+00:00",
        **extra,
    }


def record(task_id: str, value: dict[str, Any]) -> ManifestRecord:
    return ManifestRecord("dag_a", "run_1", task_id, -1, value)


def test_most_advanced_manifest_of_a_round_wins_regardless_of_order() -> None:
    records = [record("job.gather", gathered()), record("job.submit", submitted())]

    [job] = build_jobs(records)

    assert job.rounds[0].stage == "gathered"
    assert job.counts["succeeded"] == 95 and job.counts["errored"] == 5
    assert job.cost == (0.001, 0.002)


def test_waiting_round_shows_live_progress_from_the_progress_file() -> None:
    calls: list[tuple[str, int]] = []

    def read_progress(job_dir: str, number: int) -> dict[str, Any]:
        calls.append((job_dir, number))
        counts = {"processing": 60, "succeeded": 40, "errored": 0, "canceled": 0, "expired": 0}
        return {"counts": counts, "batches_ended": 1, "batches_total": 2}

    [job] = build_jobs([record("job.submit", submitted())], read_progress)

    assert calls == [(JOB, 0)]
    assert job.status == "waiting (1/2 batches ended)"
    assert job.counts["processing"] == 60 and job.counts["succeeded"] == 40
    assert job.cost == (None, None)


def test_gathered_rounds_never_read_progress_files() -> None:
    def read_progress(job_dir: str, number: int) -> None:
        raise AssertionError("a gathered round must not cost a storage read")

    [job] = build_jobs([record("job.gather", gathered())], read_progress)

    assert job.status == "gathered"


def test_retry_round_adds_its_successes_to_the_earlier_rounds() -> None:
    records = [
        record("job.gather", gathered(0, succeeded=95, errored=5)),
        record("job.retry_1", submitted(1, batches=1, requests=5)),
    ]

    [job] = build_jobs(records)

    assert [r.number for r in job.rounds] == [0, 1]
    assert job.counts["succeeded"] == 95 and job.counts["processing"] == 5
    assert job.status == "retry round 1: submitted"
    assert job.batch_count == 3
    assert job.requests == 100


def test_finalized_job_shows_final_counts_status_and_merged_files() -> None:
    final = {
        "stage": "finalized",
        "job_dir": JOB,
        "results_path": f"{JOB}/results.jsonl",
        "failures_path": f"{JOB}/failures.jsonl",
        "requests": 100,
        "succeeded": 98,
        "failed": 2,
        "failure_rate": 0.02,
        "max_failure_rate": 0.01,
        "failures_by_type": {"errored": 1, "invalid_input": 1},
        "usage": USAGE,
        "cost": {"batch_usd": 0.5, "standard_usd": 1.0},
        "finalized_at": "2026-01-01T00:05:00+00:00",
    }
    records = [record("job.gather", gathered()), record("job.finalize", final)]

    [job] = build_jobs(records)

    assert job.final is not None
    assert job.counts["succeeded"] == 98 and job.counts["errored"] == 2
    assert job.status.startswith("failed: 2.0% of requests failed")
    assert job.results_paths == [f"{JOB}/results.jsonl"]
    assert job.cost == (0.5, 1.0)


def test_values_that_are_not_batch_manifests_are_ignored() -> None:
    records = [record("other", {"answer": 42}), record("other2", "text")]  # type: ignore[arg-type]

    assert build_jobs(records) == []


def test_progress_bar_widths_are_shares_of_the_total() -> None:
    counts = {"succeeded": 75, "errored": 25, "expired": 0, "canceled": 0, "processing": 0}
    assert [(s.kind, s.share) for s in bar_segments(counts)][:2] == [("succeeded", 75.0), ("errored", 25.0)]
    job = build_jobs([record("job.gather", gathered(succeeded=75, errored=25))])
    page = render_page(job, base="", title="t", subtitle="")

    widths = dict(re.findall(r'data-kind="(\w+)" data-count="\d+" style="width: ([\d.]+)%"', page))
    assert "75 succeeded, 25 errored" in page
    assert widths == {
        "succeeded": "75.0",
        "errored": "25.0",
        "expired": "0.0",
        "canceled": "0.0",
        "processing": "0.0",
    }


def test_page_escapes_names_and_links_files_through_the_app() -> None:
    records = [ManifestRecord("dag_<b>", "run&1", "job.gather", -1, gathered())]

    page = render_page(build_jobs(records), base="/airflow-batch", title="Batch jobs", subtitle="")

    assert "dag_<b>" not in page and "dag_&lt;b&gt;" in page
    assert 'href="/airflow-batch/files?dag_id=dag_%3Cb%3E&amp;run_id=run%261&amp;path=file' in page
    assert '<span class="cost">$0.0010</span>' in page


def test_page_refreshes_itself_only_while_a_job_is_running() -> None:
    running = render_page(build_jobs([record("job.submit", submitted())]), base="", title="t", subtitle="")
    done = render_page(build_jobs([record("job.gather", gathered())]), base="", title="t", subtitle="")

    assert 'http-equiv="refresh"' in running
    assert 'http-equiv="refresh"' not in done


def test_run_view_lists_each_round_with_console_links() -> None:
    records = [record("job.gather", gathered(0)), record("job.gather_1", gathered(1, succeeded=5, errored=0))]

    page = render_page(build_jobs(records), base="", title="t", subtitle="", show_rounds=True)

    assert page.count('<tr class="round"') == 2
    assert "platform.claude.com/workspaces/default/batches/msgbatch_r1_0" in page


def test_job_is_named_after_its_submit_task_folder_whatever_task_reported_it() -> None:
    [job] = build_jobs([record("job.gather", gathered())])
    mapped = ManifestRecord("d", "r", "g.gather", 3, {**gathered(), "job_dir": "s3://b/d/r/g.submit/map-3"})

    assert job.name == "job.submit"
    assert build_jobs([mapped])[0].name == "g.submit[3]"
