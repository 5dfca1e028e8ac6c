"""The batch jobs page's logic, without a server: manifests in, jobs and HTML out."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_batch.exceptions import BudgetExceededError, UnknownModelError
from airflow_batch.manifest import BatchStatus, JobManifest, RequestCounts, refused_manifest
from airflow_batch.plugins.details import Refusal
from airflow_batch.plugins.display import bar_segments, duration, is_live
from airflow_batch.plugins.manifests import ManifestRecord, manifest_paths
from airflow_batch.plugins.rendering import render_page
from airflow_batch.plugins.views import build_jobs
from airflow_batch.wait.policy import WaitState
from airflow_batch.wait.progress import progress_document

JOB = "file:///out/dag_a/run_1/job.submit"
SUBMITTED_AT = datetime(2026, 1, 1, tzinfo=UTC)
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


def finalized(**extra: Any) -> JobManifest:
    """A job manifest as finalize writes it."""
    manifest = JobManifest(
        version=1,
        stage="finalized",
        job_dir=JOB,
        results_path=f"{JOB}/results.jsonl",
        failures_path=f"{JOB}/failures.jsonl",
        requests=100,
        succeeded=98,
        failed=2,
        failure_rate=0.02,
        max_failure_rate=0.05,
        failures_by_type={"errored": 1, "invalid_input": 1},
        failures_by_error_type={"invalid_request_error": 2},
        retryable_left=0,
        rounds=[],
        usage=USAGE,  # type: ignore[typeddict-item]
        cost={"batch_usd": 0.5, "standard_usd": 1.0, "priced": True, "unpriced_models": []},
        started_at="2026-01-01T00:00:00+00:00",
        finalized_at="2026-01-01T00:05:00+00:00",
        duration_seconds=300.0,
        refused_rounds=[],
    )
    return JobManifest(**{**manifest, **extra})  # type: ignore[typeddict-item]


def job_row(page: str) -> str:
    """Return the markup of the page's first job row."""
    return page[page.index('<tr class="job"') : page.index("</tr>", page.index('<tr class="job"'))]


def visible(markup: str) -> str:
    """Return the text of ``markup`` as a browser shows it (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_finalized_job_shows_final_counts_status_and_merged_files() -> None:
    records = [record("job.gather", gathered()), record("job.finalize", finalized())]

    [job] = build_jobs(records)
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert job.final is not None
    assert job.counts["succeeded"] == 98 and job.counts["errored"] == 2
    assert (job.outcome, job.status) == ("finished", "finished, 2 failed")
    assert job.cost == (0.5, 1.0)
    assert job.duration_seconds == 300.0
    assert [(link.kind, link.label) for _, links in job.file_groups for link in links] == [
        ("results", "results.jsonl"),
        ("failures", "failures.jsonl"),
        ("manifest", "manifest.json"),
    ]
    assert "round-0/results" not in row, "a round's part file is linked as the job's results"
    assert "5m 00s" in row


def test_job_finalized_above_its_failure_rate_limit_is_failed_with_rate_types_and_retryability() -> None:
    final = finalized(
        succeeded=88,
        failed=12,
        failure_rate=0.12,
        max_failure_rate=0.05,
        failures_by_type={"errored": 10, "expired": 2},
        failures_by_error_type={"invalid_request_error": 9, "overloaded_error": 1},
        retryable_left=3,
    )
    # Finalize failed the task: its manifest is the one it left under FAILED_MANIFEST_KEY.
    records = [record("job.gather", gathered(0, succeeded=88, errored=12)), record("job.finalize", final)]

    [job] = build_jobs(records)
    page = render_page([job], base="/airflow-batch", title="t", subtitle="")
    row = job_row(page)

    assert (job.outcome, job.status) == ("failed", "failed")
    assert job.failures is not None and job.failures.over_limit
    assert "12.0% failed, limit 5.0%" in row
    assert "10 errored, 2 expired" in row
    assert "9 invalid_request_error, 1 overloaded_error" in row
    assert "3 of 12 retryable" in row
    assert 'data-outcome="failed"' in row
    for name in ("results.jsonl", "failures.jsonl", "manifest.json"):
        assert f"{JOB}/{name}".replace(":", "%3A").replace("/", "%2F") in row
    assert "round-0" not in row
    assert not is_live([job])


def test_finalized_job_links_parquet_files_when_finalize_wrote_them() -> None:
    final = finalized(
        results_parquet_path=f"{JOB}/results.parquet", failures_parquet_path=f"{JOB}/failures.parquet"
    )

    [job] = build_jobs([record("job.finalize", final)])

    labels = [link.label for _, links in job.file_groups for link in links]
    assert labels == [
        "results.jsonl",
        "failures.jsonl",
        "manifest.json",
        "results.parquet",
        "failures.parquet",
    ]
    assert {f"{JOB}/manifest.json", f"{JOB}/results.parquet", f"{JOB}/failures.parquet"} <= manifest_paths(
        final
    )


def test_before_finalize_round_parts_are_linked_under_their_round_not_as_the_results() -> None:
    [job] = build_jobs([record("job.gather", gathered())])
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert [title for title, _ in job.file_groups] == ["round 0 parts"]
    assert 'class="results"' not in row
    assert "round 0 parts:" in row and 'class="results-part"' in row


def test_round_0_refused_by_the_budget_shows_the_job_refused_with_estimate_budget_and_spend() -> None:
    error = BudgetExceededError(
        "round 0 would cost $0.0142 at batch prices, above the budget max_cost_usd=$0.0100",
        estimate_usd=0.0142,
        budget_usd=0.01,
        spent_usd=0.0,
    )
    # The submit failed: no return value, only the refused round it left under FAILED_MANIFEST_KEY.
    [job] = build_jobs([record("job.submit", refused_manifest(JOB, error.record(0)))])
    page = render_page([job], base="", title="t", subtitle="")
    row = job_row(page)

    assert (job.outcome, job.status) == ("refused", "refused")
    assert job.refusals == [Refusal(0, str(error), estimate_usd=0.0142, budget_usd=0.01, spent_usd=0.0)]
    assert job.estimate_usd == 0.0142 and job.cost == (None, None)
    assert "estimate $0.0142 &gt; budget $0.0100, spent so far $0.0000" in row
    assert "above the budget max_cost_usd=$0.0100" in row
    assert 'data-outcome="refused"' in row
    assert job.file_groups == []
    assert 'http-equiv="refresh"' not in page, "a refused job is not running"


def test_refused_model_shows_the_reason_alone() -> None:
    error = UnknownModelError("the API does not serve the model(s) 'claude-haiku-9' (did you mean ...)")

    [job] = build_jobs([record("job.submit", refused_manifest(JOB, error.record(0)))])
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert job.outcome == "refused"
    assert job.refusals == [Refusal(0, str(error))]
    assert "the API does not serve the model(s) &#39;claude-haiku-9&#39;" in row
    assert "estimate" not in row and "budget" not in row


def test_retry_round_refused_after_spending_shows_what_was_left_of_the_budget() -> None:
    error = BudgetExceededError(
        "round 1 would cost $0.0075", estimate_usd=0.0075, budget_usd=0.01, spent_usd=0.004
    )
    records = [
        record("job.gather", gathered(0)),
        record("job.retry_1", refused_manifest(JOB, error.record(1))),
    ]

    [job] = build_jobs(records)
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert job.status == "retry round 1: refused"
    assert [r.round for r in job.refusals] == [1]
    assert "retry round 1 refused" in row
    assert "estimate $0.0075 &gt; $0.0060 left of budget $0.0100, spent so far $0.0040" in row


def test_a_refused_retry_round_finalize_recorded_shows_beside_the_finished_job() -> None:
    refusal = {"round": 1, "reason": "round 1 would cost $0.0075", "estimate_usd": 0.0075, "budget_usd": 0.01}
    final = finalized(refused_rounds=[{**refusal, "spent_usd": 0.004}])

    [job] = build_jobs([record("job.gather", gathered(0)), record("job.finalize", final)])

    assert job.outcome == "finished"
    assert job.refusals == [Refusal(1, "round 1 would cost $0.0075", 0.0075, 0.01, 0.004)]


def test_gathered_round_counts_errors_by_type_with_retryability() -> None:
    value = gathered(
        0,
        succeeded=95,
        errored=5,
        error_types={"invalid_request_error": 1, "overloaded_error": 4},
        retryable=4,
    )

    [job] = build_jobs([record("job.gather", value)])
    page = render_page([job], base="", title="t", subtitle="", show_rounds=True)

    failures = job.rounds[0].failures
    assert failures is not None and job.failures == failures
    assert (failures.failed, failures.by_type, failures.retryable) == (5, {"errored": 5}, 4)
    assert (
        visible(page).count("5 errored (1 invalid_request_error, 4 overloaded_error); 4 of 5 retryable") == 2
    )


def test_estimate_is_shown_beside_the_actual_cost() -> None:
    estimate = {"batch_usd": 0.004, "standard_usd": 0.008, "priced": True, "method": "approximation"}
    records = [record("job.gather", gathered(estimate=estimate))]

    [job] = build_jobs(records)
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert (job.cost[0], job.estimate_usd, job.expected_usd) == (0.001, 0.004, None)
    assert re.search(r'<span class="cost">\$0\.0010</span>.*at most \$0\.0040', row)
    assert "expected" not in row

    # With an expected figure (observed output lengths) it is shown above the upper bound.
    with_expected = {**estimate, "expected_batch_usd": 0.0012}
    [job] = build_jobs([record("job.gather", gathered(estimate=with_expected))])
    row = job_row(render_page([job], base="", title="t", subtitle=""))
    assert job.expected_usd == 0.0012
    assert re.search(r"expected \$0\.0012.*at most \$0\.0040", row)


def test_each_round_shows_how_long_it_took() -> None:
    records = [
        record("job.gather", gathered(0)),
        record("job.gather_1", gathered(1, gathered_at="2026-01-01T00:02:42+00:00")),
    ]

    [job] = build_jobs(records)
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert [r.duration_seconds for r in job.rounds] == [120.0, 162.0]
    assert re.findall(r'class="legend round-time">([^<]+)<', row) == ["round 0: 2m 00s", "round 1: 2m 42s"]


def waiting_progress(now: float) -> dict[str, Any]:
    """The progress file a wait writes after a poll at ``now``: one of two batches ended."""
    start = SUBMITTED_AT.timestamp()
    ended = RequestCounts(processing=0, succeeded=50, errored=0, canceled=0, expired=0)
    open_ = RequestCounts(processing=50, succeeded=0, errored=0, canceled=0, expired=0)
    state = WaitState(
        batch_ids=["msgbatch_r0_0", "msgbatch_r0_1"],
        end_time=start + 86_400,
        statuses={
            "msgbatch_r0_0": BatchStatus(
                processing_status="ended", request_counts=ended, expires_at=None, ended_at=None
            ),
            "msgbatch_r0_1": BatchStatus(
                processing_status="in_progress", request_counts=open_, expires_at=None, ended_at=None
            ),
        },
        started_at=start + 10,
        last_poll=now,
    )
    return progress_document(state, 0, now)


def test_waiting_round_shows_elapsed_time_last_poll_and_eta() -> None:
    polled = SUBMITTED_AT.timestamp() + 100
    progress = waiting_progress(polled)

    [job] = build_jobs(
        [record("job.submit", submitted())],
        lambda job_dir, number: progress,
        now=SUBMITTED_AT + timedelta(seconds=110),
    )
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    wait = job.wait
    assert wait is not None
    # Half the requests ended in the 90 s the wait has polled: 90 s more at that rate, 10 s of it gone.
    assert (wait.elapsed_seconds, wait.last_poll_seconds_ago, wait.eta_seconds) == (110.0, 10.0, 80.0)
    assert "1m 50s since submit" in row
    assert "last poll 10s ago" in row
    assert "about 1m 20s left" in row


def test_waiting_round_before_its_first_poll_says_so_and_gives_no_eta() -> None:
    [job] = build_jobs([record("job.submit", submitted())], now=SUBMITTED_AT + timedelta(seconds=5))
    row = job_row(render_page([job], base="", title="t", subtitle=""))

    assert "5s since submit" in row and "no poll yet" in row
    assert "left" not in row


def test_durations_read_as_people_read_them() -> None:
    assert [duration(s) for s in (0, 42.4, 187, 7_500)] == ["0s", "42s", "3m 07s", "2h 05m"]


def test_reused_canary_and_deleted_show_beside_succeeded_before_and_after_finalize() -> None:
    canary = {
        "requests": 10,
        "answered": 9,
        "failed": 1,
        "examples": [],
        "usage": USAGE,
        "cost": {"batch_usd": 0.0125, "standard_usd": 0.0125, "priced": True, "unpriced_models": []},
        "output_tokens_per_answer": 20,
    }
    round_0 = gathered(succeeded=1_990, errored=1, reused=3_000, canary=canary)
    round_0["deleted_batches"] = {"msgbatch_r0_0": "2026-01-01T00:02:00+00:00", "msgbatch_r0_1": "x"}
    [job] = build_jobs([record("job.gather", round_0)])
    assert job.requests == 1_991 + 3_000 + 9
    assert job.counts["reused"] == 3_000 and job.counts["succeeded"] == 1_999
    assert (job.reused, job.deleted, [c.answered for c in job.canaries]) == (3_000, 2, [9])
    row = visible(job_row(render_page([job], base="", title="t", subtitle="")))
    assert "3,000 reused from earlier runs, no cost" in row
    assert "canary: 9 of 10 answered, 1 sent in the batch; $0.0125 at standard price" in row
    assert "2 batch(es) deleted from the API after landing" in row

    final = finalized(requests=5_000, succeeded=4_999, reused=3_000, failed=1, deleted_batches=2)
    [job] = build_jobs([record("job.gather", round_0), record("job.finalize", final)])
    assert (job.counts["succeeded"], job.counts["reused"]) == (1_999, 3_000)
    assert "3000 reused" in render_page([job], base="", title="t", subtitle="")

    # A round answered entirely without a batch says so, and waits for nothing.
    empty = {**submitted(batches=0, requests=0), "reused": 5_000}
    [job] = build_jobs([record("job.submit", empty)])
    assert job.rounds[0].status == "answered without a batch" and job.counts["reused"] == 5_000


def test_values_that_are_not_batch_manifests_are_ignored() -> None:
    records = [record("other", {"answer": 42}), record("other2", "text")]  # type: ignore[arg-type]

    assert build_jobs(records) == []


def test_progress_bar_widths_are_shares_of_the_total() -> None:
    counts = {"succeeded": 75, "errored": 25, "expired": 0, "canceled": 0, "processing": 0}
    shares = [(s.kind, s.share) for s in bar_segments(counts) if s.count]
    assert shares == [("succeeded", 75.0), ("errored", 25.0)]
    job = build_jobs([record("job.gather", gathered(succeeded=75, errored=25))])
    page = render_page(job, base="", title="t", subtitle="")

    widths = dict(re.findall(r'data-kind="(\w+)" data-count="\d+" style="width: ([\d.]+)%"', page))
    assert "75 succeeded, 25 errored" in page
    assert widths == {
        "succeeded": "75.0",
        "reused": "0.0",
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
