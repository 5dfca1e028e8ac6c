"""Jobs that fail before submitting are on the batch jobs page with their error, collapsed when long."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import ANTHROPIC_TEST_KEY, run_dag
from markupsafe import escape

from airflow_batch import anthropic_batch_job
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.plugins.manifests import ManifestRecord
from airflow_batch.plugins.rendering import render_page
from airflow_batch.plugins.views import JobView, build_jobs


def _page_jobs(dag_id: str) -> list[JobView]:
    """Return the jobs the page builds from the run's manifests in XCom (what the app reads)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_batch.plugins.app import MANIFEST_KEYS

    with create_session() as session:
        rows = session.execute(
            select(XComModel.run_id, XComModel.task_id, XComModel.map_index, XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.key.in_(MANIFEST_KEYS)
            )
        ).all()
    return build_jobs(
        ManifestRecord(dag_id, r.run_id, r.task_id, r.map_index, XComModel.deserialize_value(r)) for r in rows
    )


@pytest.mark.usefixtures("airflow_db")
def test_runs_that_failed_before_submitting_are_listed_with_their_error(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [{"custom_id": f"r{i}", "text": f"item {i}"} for i in range(20)]
    common: dict[str, Any] = {
        "records": records,
        "prompt_template": "Summarise: {text}",
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "max_retry_rounds": 0,
        "submit_kwargs": {"count_tokens_sample": 0},
    }
    # The DAG parses where [airflow_batch] output_path is set; the worker that runs it has none.
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH", str(tmp_path / "parse-time"))
    with DAG("failed_before_submit", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job("no_output", conn_id=anthropic_conn, **common)
        anthropic_batch_job("no_conn", output_path=str(tmp_path / "out"), conn_id="no_such_conn", **common)
        anthropic_batch_job(
            "over_budget",
            output_path=str(tmp_path / "out"),
            conn_id=anthropic_conn,
            max_cost_usd=1e-6,
            **common,
        )
    monkeypatch.delenv("AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH")
    run = run_dag(dag)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert {states[f"{job}.submit"] for job in ("no_output", "no_conn", "over_budget")} == {"failed"}
    assert emulator.batch_count() == 0

    jobs = {job.name: job for job in _page_jobs(dag.dag_id)}
    assert set(jobs) == {"no_output.submit", "no_conn.submit", "over_budget.submit"}
    assert all(job.outcome == "refused" and job.run_id == run.run_id for job in jobs.values())
    assert (jobs["no_output.submit"].status, jobs["no_conn.submit"].status) == ("submit failed",) * 2
    assert jobs["over_budget.submit"].status == "refused"
    [no_output] = jobs["no_output.submit"].refusals
    assert no_output.failed and "no_output.submit: no output_path: pass output_path=" in no_output.reason
    [no_conn] = jobs["no_conn.submit"].refusals
    assert no_conn.failed and "no_such_conn" in no_conn.reason
    [budget] = jobs["over_budget.submit"].refusals
    assert not budget.failed and budget.budget_usd == pytest.approx(1e-6)
    assert all(ANTHROPIC_TEST_KEY not in str(job.rounds[0].source.value) for job in jobs.values())

    page = render_page(list(jobs.values()), base="/airflow-batch", title="Batch jobs", subtitle="")
    # Each error is on the page; a long one collapsed to its first line, the whole text one click away.
    assert page.count('<details class="reason">') == 2
    for refusal in (no_output, budget):
        assert f"<summary>{escape(refusal.reason[:60])}" in page
        assert f'<div class="full">{escape(refusal.reason)}</div>' in page
    assert f'<div class="reason">{escape(no_conn.reason)}</div>' in page
