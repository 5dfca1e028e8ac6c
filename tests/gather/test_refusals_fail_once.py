"""A refusal a retry would meet again fails its task once: no retries, and finalize says why."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job
from airflow_batch.emulator.process import EmulatorProcess


def _write_requests(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for i in range(n):
            params = {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"{i}"}],
            }
            out.write(msgspec.json.encode({"custom_id": f"req-{i}", "params": params}) + b"\n")


@pytest.mark.usefixtures("airflow_db")
def test_a_budget_refusal_fails_submit_without_retries_and_finalize_names_it(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    requests_path = tmp_path / "requests.jsonl"
    _write_requests(requests_path, 20)
    # Retries that would run (1 s apart) if the refusal were retryable: each would refuse again.
    default_args = {"retries": 2, "retry_delay": timedelta(seconds=1)}
    with DAG(
        "refused_once", schedule=None, start_date=pendulum.datetime(2026, 1, 1), default_args=default_args
    ) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests_path),
            output_path=str(tmp_path / "out"),
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            max_cost_usd=0.000001,
            submit_kwargs={"count_tokens_sample": 0},
        )
    run = run_dag(dag)
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    log = "".join(capfd.readouterr())

    assert run.state == "failed"
    assert (tis["job.submit"].state, tis["job.submit"].try_number) == ("failed", 1)
    assert (tis["job.finalize"].state, tis["job.finalize"].try_number) == ("failed", 1)
    assert tis["job.wait"].state == "upstream_failed"
    assert "nothing to merge: job.submit was refused before any spend (BudgetExceededError: " in log
    assert "round 0 has no manifest" not in log


@pytest.mark.usefixtures("airflow_db")
def test_a_missing_input_file_leaves_its_error_for_the_batch_jobs_page(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_batch.manifest import FAILED_MANIFEST_KEY
    from airflow_batch.plugins.manifests import ManifestRecord
    from airflow_batch.plugins.views import build_jobs

    # A template passes the parse-time check; the file is still missing when the task runs.
    missing = str(tmp_path / "input-{{ ds }}.jsonl")
    with DAG("missing_input", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=missing,
            output_path=str(tmp_path / "out"),
            conn_id=anthropic_conn,
            max_retry_rounds=0,
        )
    run = run_dag(dag, logical_date=pendulum.datetime(2026, 3, 1))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["job.submit"] == "failed"

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.map_index, XComModel.value).where(
                XComModel.dag_id == dag.dag_id, XComModel.key == FAILED_MANIFEST_KEY
            )
        ).all()
    records = [
        ManifestRecord(dag.dag_id, run.run_id, r.task_id, r.map_index, XComModel.deserialize_value(r))
        for r in rows
    ]
    [job] = build_jobs(records)
    assert job.outcome == "refused"
    [refusal] = job.refusals
    assert "requests: no file at" in refusal.reason and "input-2026-03-01.jsonl" in refusal.reason
    assert emulator.batch_count() == 0
