"""The whole job through ``dag.test()``: real SDK against the emulator, injected failures."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import ANTHROPIC_TEST_KEY, run_dag
from deadlines import until_sync
from literal_prices import rows_cost

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.manifest import empty_usage
from airflow_batch.storage import as_path

N_REQUESTS = 1_000


def _read(path: Any) -> list[dict[str, Any]]:
    path = as_path(str(path))
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def _write_requests(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for i in range(n):
            request = {
                "custom_id": f"req-{i:05d}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"Summarise item {i} in one line."}],
                },
            }
            out.write(msgspec.json.encode(request) + b"\n")


def _round_failures(job: Any, round_number: int) -> list[dict[str, Any]]:
    folder = layout.round_dir(job, round_number) / "failures"
    return [row for part in sorted(folder.glob("*.jsonl")) for row in _read(part)] if folder.exists() else []


def release_when_deferred(emulator: EmulatorProcess, output: str, dag_id: str, submit_task: str) -> None:
    """Let round 0's batches start once its wait has polled them (they were created start-delayed)."""

    def progress_file() -> Any:
        found = list(Path(output).glob(f"{dag_id}/*/{submit_task}/round-0/progress.json"))
        return found[0] if found else Path(output) / "none"

    def release() -> None:
        # Released even when the poll is late: a thread's missed deadline is silent, and every
        # round would then sit out the whole start delay (10 minutes each on a loaded machine).
        try:
            until_sync(lambda: progress_file().exists(), deadline=120)
        finally:
            emulator.configure(start_delay_seconds=0)

    threading.Thread(target=release, daemon=True).start()


def _chunk_ids(job: Any, round_number: int) -> set[str]:
    folder = layout.round_dir(job, round_number) / "chunks"
    return {row["custom_id"] for part in sorted(folder.glob("*.jsonl")) for row in _read(part)}


def _failed_manifests(dag_id: str) -> dict[str, Any]:
    """Return the manifests the DAG's failed tasks left in XCom, by task id."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_batch.manifest import FAILED_MANIFEST_KEY

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.key == FAILED_MANIFEST_KEY
            )
        ).all()
    return {row.task_id: XComModel.deserialize_value(row) for row in rows}


@pytest.mark.usefixtures("airflow_db")
def test_batch_job_retries_only_retryable_failures_and_keeps_every_other_request(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator.configure(
        error_types={"overloaded_error": 0.05, "invalid_request_error": 0.01},
        expire_rate=0.01,
        seed=11,
        # The first two results streams are cut mid-way: the gather must recover.
        http_fault_rate=1.0,
        http_fault_statuses=["drop"],
        http_fault_budget=2,
        # Round 0 is still in progress at the wait's first poll, so the wait really defers.
        start_delay_seconds=600,
    )
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, N_REQUESTS)
    output = str(tmp_path / "out")
    with DAG("gather_job_e2e", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "reviews",
            requests=str(requests_path),
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=2,
            poll_interval=1,
            max_failure_rate=0.05,
            submit_kwargs={"max_requests_per_batch": 400, "count_tokens_sample": 0},
            keep_chunks=True,  # the test reads what each round sent
        )
    release_when_deferred(emulator, output, dag.dag_id, "reviews.submit")
    with caplog.at_level("INFO"):
        run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert emulator.configure()["http_fault_budget"] == 0, "no results stream was cut"
    assert "[DAG TEST] running trigger in line" in caplog.text, "the wait never deferred"

    job = layout.job_dir(output, dag.dag_id, run.run_id, "reviews.submit")
    all_ids = {f"req-{i:05d}" for i in range(N_REQUESTS)}
    failures_by_round = [_round_failures(job, r) for r in range(3)]
    invalid = {
        row["custom_id"]
        for rows in failures_by_round
        for row in rows
        if row["error_type"] == "invalid_request_error"
    }
    assert invalid, "the injected invalid_request_error rate produced no failure to check"

    # Each retry round resubmitted exactly the retryable failures of the round before.
    for number in (1, 2):
        retryable = {row["custom_id"] for row in failures_by_round[number - 1] if row["retryable"]}
        assert retryable, f"round {number - 1} had no retryable failure to resubmit"
        assert _chunk_ids(job, number) == retryable
        earlier_invalid = {
            row["custom_id"]
            for row in failures_by_round[number - 1]
            if row["error_type"] == "invalid_request_error"
        }
        assert not retryable & earlier_invalid

    results = _read(layout.final_results_path(job))
    failures = _read(layout.final_failures_path(job))
    result_ids = [row["custom_id"] for row in results]
    assert len(result_ids) == len(set(result_ids))
    assert set(result_ids) == all_ids - invalid
    assert {row["custom_id"] for row in failures} == invalid
    assert len(failures) == len(invalid)

    # Tokens of the manifest are those of the result lines.
    manifest = msgspec.json.decode(layout.final_manifest_path(job).read_bytes())
    usage_by_model: dict[str, Any] = defaultdict(empty_usage)
    for row in results:
        for key, value in row["usage"].items():
            usage_by_model[row["model"]][key] += value
    assert manifest["usage"] == usage_by_model["claude-haiku-4-5"]
    assert manifest["usage"]["output_tokens"] > 0
    # The cost: each result row's usage at the pricing page's prices, written out by hand.
    standard, batch = rows_cost(results)
    assert manifest["cost"]["batch_usd"] == pytest.approx(batch, abs=2e-6)
    assert manifest["cost"]["standard_usd"] == pytest.approx(standard, abs=2e-6)
    assert (manifest["succeeded"], manifest["failed"]) == (len(results), len(invalid))
    assert len(manifest["rounds"]) == 3

    # Finalize emitted the results asset with the counts and cost in its extra.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == "airflow-batch://gather_job_e2e/reviews")
            .all()
        )
        extras = [event.extra for event in events]
    assert extras and extras[-1]["succeeded"] == len(results)
    assert extras[-1]["failed"] == len(invalid)
    assert extras[-1]["results_uri"] == str(layout.final_results_path(job))
    assert extras[-1]["cost_batch_usd"] == manifest["cost"]["batch_usd"]

    # The connection's API key reached no XCom value, no file of the job and no log line.
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel

    with create_session() as session:
        xcoms = session.query(XComModel.value).filter(XComModel.dag_id == dag.dag_id).all()
        resumes = session.query(TaskInstance.next_kwargs).filter(TaskInstance.dag_id == dag.dag_id).all()
    assert len(xcoms) > 10
    assert all(ANTHROPIC_TEST_KEY not in str(row) for row in [*xcoms, *resumes])
    files = [path for path in Path(output).rglob("*") if path.is_file()]
    assert len(files) > 10
    assert all(ANTHROPIC_TEST_KEY.encode() not in path.read_bytes() for path in files)
    captured = capfd.readouterr()
    assert "reviews.finalize" in captured.out + captured.err, "the run's log output was not captured"
    assert ANTHROPIC_TEST_KEY not in captured.out + captured.err


@pytest.mark.usefixtures("airflow_db")
def test_nothing_retryable_skips_the_retry_round_and_failure_rate_fails_after_writing(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(error_types={"invalid_request_error": 0.05}, seed=3)
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, 300)
    output = str(tmp_path / "out")
    with DAG("gather_job_policy", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests_path),
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=1,
            poll_interval=1,
            max_failure_rate=0.01,
            submit_kwargs={"count_tokens_sample": 0},
        )
    run = run_dag(dag)

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["job.retry_1"] == "skipped"
    assert states["job.wait_1"] == "skipped"
    assert states["job.gather_1"] == "skipped"
    assert states["job.finalize"] == "failed"
    assert run.state == "failed"
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    failures = _read(layout.final_failures_path(job))
    results = _read(layout.final_results_path(job))
    assert failures and all(row["error_type"] == "invalid_request_error" for row in failures)
    assert len(results) + len(failures) == 300
    manifest = msgspec.json.decode(layout.final_manifest_path(job).read_bytes())
    assert manifest["failure_rate"] > manifest["max_failure_rate"] == 0.01
    assert not layout.round_dir(job, 1).exists()
    # The failed finalize has no return value; it left the job manifest for the batch jobs page.
    assert _failed_manifests(dag.dag_id) == {"job.finalize": manifest}


@pytest.mark.usefixtures("airflow_db")
def test_a_job_rides_out_thirty_percent_transient_faults_on_every_endpoint(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_batch.api.retry import RetryPolicy
    from airflow_batch.submit import chunk_batch

    # The emulator stores a batch before it loses the create's response: nothing to wait for.
    monkeypatch.setattr(chunk_batch, "LOST_RESPONSE_SETTLE_SECONDS", 0.0)
    # The policy's own backoff (0.5 s, doubling) is what a real outage needs; here it only adds
    # idle seconds, so every hook retries sooner. Which faults are retried is the policy's own.
    fast = RetryPolicy(budget_seconds=60.0, base_seconds=0.02, cap_seconds=0.2)
    monkeypatch.setattr("airflow_batch.hooks.batches.api_retry_policy", lambda: fast)
    emulator.configure(
        # Every API call may fail: 429/500/529, a cut results stream, or a create whose
        # response is lost after the batch was stored.
        http_fault_rate=0.3,
        http_fault_statuses=[429, 500, 529, "drop", "lost"],
        retry_after_seconds=0.05,
        seed=5,
        start_delay_seconds=600,
    )
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, 2_000)
    output = str(tmp_path / "out")
    with DAG("faulty_api_job", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests_path),
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=1,
            poll_interval=0.5,
            submit_kwargs={"max_requests_per_batch": 100, "count_tokens_sample": 5},
        )
    release_when_deferred(emulator, output, dag.dag_id, "job.submit")
    with caplog.at_level("INFO"):
        run = run_dag(dag)

    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert all(number <= 1 for number in tries.values()), f"no task may need a retry: {tries}"
    assert "[DAG TEST] running trigger in line" in caplog.text, "the wait never deferred"
    assert emulator.stats()["http_faults_injected"] > 20, "faults were not injected"
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    manifest = msgspec.json.decode(layout.round_manifest_path(job, 0).read_bytes())
    assert len(manifest["batches"]) == 20 and emulator.batch_count() == 20, "one batch per chunk"
    result_ids = [row["custom_id"] for row in _read(layout.final_results_path(job))]
    assert sorted(result_ids) == [f"req-{i:05d}" for i in range(2_000)]


@pytest.mark.usefixtures("airflow_db")
def test_a_retry_round_over_the_budget_is_refused_and_finalize_still_merges_what_landed(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The estimate counts 1 output token a request (expected_output_tokens=1) but the emulator
    # answers ~14: round 0 fits the budget, its actual cost does not, and round 1 is refused.
    emulator.configure(error_types={"overloaded_error": 0.1}, seed=4)
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, 200)
    output = str(tmp_path / "out")
    budget = 0.003
    with DAG("over_budget_job", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests_path),
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=1,
            poll_interval=0.5,
            max_cost_usd=budget,
            max_failure_rate=1.0,  # the 10% left failed by the refused round would fail it (default 5%)
            submit_kwargs={"expected_output_tokens": 1, "count_tokens_sample": 0},
        )
    run = run_dag(dag)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    log = "".join(capfd.readouterr())

    assert states["job.retry_1"] == "failed"
    assert states["job.finalize"] == "success", states
    assert "BUDGET EXCEEDED: the job has actually spent $" in log
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    round_0 = msgspec.json.decode(layout.round_manifest_path(job, 0).read_bytes())
    spent = round_0["cost"]["batch_usd"]
    assert round_0["budget"] == {"max_cost_usd": budget, "spent_usd": spent, "exceeded": True}
    manifest = msgspec.json.decode(layout.final_manifest_path(job).read_bytes())
    [refusal] = manifest["refused_rounds"]
    assert refusal["round"] == 1
    assert refusal["budget_usd"] == budget and refusal["spent_usd"] == spent
    assert refusal["estimate_usd"] > budget - spent
    assert _failed_manifests(dag.dag_id) == {
        "job.retry_1": {"version": 1, "stage": "refused", "job_dir": str(job), **refusal}
    }
    assert (
        f"above the budget max_cost_usd=${budget:.4f}; the job has spent ${spent:.4f} so far"
        in refusal["reason"]
    )
    assert "round 1 is expected to cost $" in refusal["reason"]  # the user's expected_output_tokens
    assert refusal["basis"] == "expected" and refusal["budget_usd"] == budget
    assert refusal["spent_usd"] == pytest.approx(spent) and refusal["estimate_usd"] > 0
    results = _read(layout.final_results_path(job))
    failures = _read(layout.final_failures_path(job))
    assert len(results) == round_0["result_counts"]["succeeded"] > 150
    assert len(results) + len(failures) == 200
    assert all(row["retryable"] for row in failures)


def _budget_job(output: str, conn_id: str, requests_path: Path, **kwargs: Any) -> DAG:
    with DAG("budget_basis_job", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests_path),
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=0,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 0},
            **kwargs,
        )
    return dag


@pytest.mark.usefixtures("airflow_db")
def test_the_budget_can_guard_the_cost_expected_from_earlier_runs_instead_of_the_upper_bound(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # max_tokens is 64 a request; the emulator answers ~14 tokens. Run 1 has no budget and
    # records the output length; run 2 is priced from it; a budget between the expected and
    # the upper-bound figures passes with budget_basis="expected" and is refused without it.
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, 200)
    output = str(tmp_path / "out")
    first = run_dag(
        _budget_job(output, anthropic_conn, requests_path), logical_date=pendulum.datetime(2026, 3, 1)
    )
    assert first.state == "success"
    job_1 = layout.job_dir(output, "budget_basis_job", first.run_id, "job.submit")
    actual = msgspec.json.decode(layout.final_manifest_path(job_1).read_bytes())["cost"]["batch_usd"]
    estimate_1 = msgspec.json.decode(layout.round_manifest_path(job_1, 0).read_bytes())["estimate"]
    assert estimate_1["expected_batch_usd"] is None  # no earlier run, no expected figure
    assert estimate_1["batch_usd"] > 3 * actual  # the upper bound is far above what it cost

    budget = 2 * actual
    second = run_dag(
        _budget_job(output, anthropic_conn, requests_path, max_cost_usd=budget, budget_basis="expected"),
        logical_date=pendulum.datetime(2026, 3, 2),
    )
    assert second.state == "success"
    job_2 = layout.job_dir(output, "budget_basis_job", second.run_id, "job.submit")
    estimate_2 = msgspec.json.decode(layout.round_manifest_path(job_2, 0).read_bytes())["estimate"]
    assert estimate_2["expected_basis"] == "observed in the last 1 run(s) of this task"
    assert estimate_2["expected_batch_usd"] == pytest.approx(actual, rel=0.05)
    assert estimate_2["expected_batch_usd"] < budget < estimate_2["batch_usd"]

    third = run_dag(
        _budget_job(output, anthropic_conn, requests_path, max_cost_usd=budget),
        logical_date=pendulum.datetime(2026, 3, 3),
    )
    states = {ti.task_id: ti.state for ti in third.get_task_instances()}
    assert states["job.submit"] == "failed"
    assert states["job.finalize"] == "failed"  # nothing was gathered: it says so, the run fails
    assert third.state == "failed"
    job_3 = layout.job_dir(output, "budget_basis_job", third.run_id, "job.submit")
    refusal = msgspec.json.decode(layout.refusal_path(job_3, 0).read_bytes())
    assert refusal["basis"] == "upper_bound" and refusal["budget_usd"] == budget
    assert refusal["estimate_usd"] == pytest.approx(estimate_2["batch_usd"])
    assert "set budget_basis='expected' to guard the expected cost" in refusal["reason"]
    assert "(expected: $" in refusal["reason"]


@pytest.mark.usefixtures("airflow_db")
def test_a_retry_round_that_crashes_fails_finalize_after_it_merged_what_landed(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Round 0 runs; then the organisation hits its spend limit, so the retry round's create fails
    # (a permanent error, not a refusal before spend). The run must not pass as a success.
    emulator.configure(error_types={"overloaded_error": 0.1}, seed=8, start_delay_seconds=600)
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, 100)
    output = str(tmp_path / "out")
    with DAG("crashed_retry_job", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests_path),
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=1,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 0},
        )

    def spend_limit_once_round_0_is_watched() -> None:
        until_sync(
            lambda: any(Path(output).glob("crashed_retry_job/*/job.submit/round-0/progress.json")), 120
        )
        emulator.configure(spend_limit_reached=True, start_delay_seconds=0)

    threading.Thread(target=spend_limit_once_round_0_is_watched, daemon=True).start()
    run = run_dag(dag)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    log = "".join(capfd.readouterr())

    assert states["job.retry_1"] == "failed" and states["job.finalize"] == "failed", states
    assert run.state == "failed"
    assert "enforced_spend_limit_reached" in log
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    manifest = msgspec.json.decode(layout.final_manifest_path(job).read_bytes())
    [incomplete] = manifest["incomplete_rounds"]
    assert incomplete["round"] == 1 and "retry_1" in incomplete["reason"]
    assert manifest["refused_rounds"] == []
    results, failures = _read(layout.final_results_path(job)), _read(layout.final_failures_path(job))
    assert len(results) + len(failures) == 100 and failures  # what landed is merged
    assert "IncompleteJobError" in log
