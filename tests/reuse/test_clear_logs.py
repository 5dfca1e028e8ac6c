"""After a clear, the log of a job with answer reuse tells one story: the recorded round decides."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.results import job_manifest

DAY = pendulum.datetime(2026, 3, 1, tz="UTC")


@pytest.mark.usefixtures("airflow_db")
def test_a_cleared_run_re_attaches_without_claiming_answers_from_the_store(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with DAG("clear_reuse_logs", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            records=[{"custom_id": f"r{i}", "text": f"item {i}"} for i in range(50)],
            prompt_template="Summarise: {text}",
            model="claude-haiku-4-5",
            max_tokens=16,
            output_path=str(tmp_path / "out"),
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            poll_interval=0.5,
            reuse_answers=True,
            submit_kwargs={"count_tokens_sample": 0},
        )
    first = run_dag(dag, logical_date=DAY, run_after=DAY)
    assert first.state == "success"
    capfd.readouterr()

    cleared_at = datetime.now(UTC)
    again = run_dag(dag, logical_date=DAY, run_after=DAY)  # dag.test() clears the same run
    log = "".join(capfd.readouterr())
    took = (datetime.now(UTC) - cleared_at).total_seconds()

    assert again.state == "success" and again.run_id == first.run_id
    assert emulator.batch_count() == 1
    # The gather of the first try stored the 50 answers; the re-run must not say it used them.
    assert "answered from the answer store: not sent" not in log
    assert "re-attaching to 1 recorded batch(es)" in log
    assert "(0 request(s) were answered from the answer store when it was submitted)" in log
    assert "50 succeeded (0 reused)" in log

    # Durations count the latest try: the job's clock starts at the re-attach, not the first submit.
    job = layout.job_dir(str(tmp_path / "out"), dag.dag_id, again.run_id, "job.submit")
    manifest = job_manifest(str(job))
    assert datetime.fromisoformat(manifest["started_at"]) >= cleared_at
    assert 0 < manifest["duration_seconds"] <= took
    assert 0 < manifest["rounds"][0]["duration_seconds"] <= took
