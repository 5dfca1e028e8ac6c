"""A whole job writes its spec once, and its retry round reads the batch settings from it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.spec.job_spec import read_job_spec
from airflow_batch.storage import read_json


@pytest.mark.usefixtures("airflow_db")
def test_a_retry_round_is_split_by_the_batch_limit_the_spec_recorded(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(error_types={"overloaded_error": 0.3}, seed=3)
    requests = tmp_path / "requests.jsonl"
    params = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    requests.write_bytes(
        b"".join(msgspec.json.encode({"custom_id": f"r-{i}", "params": params}) + b"\n" for i in range(60))
    )
    output = str(tmp_path / "out")
    with DAG("spec_job", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests),
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=1,
            max_cost_usd=5.0,
            poll_interval=0.2,
            submit_kwargs={"max_requests_per_batch": 5},
        )
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    spec = read_job_spec(job)
    assert spec.identity.conn_id == anthropic_conn
    assert spec.settings.max_requests_per_batch == 5 and spec.settings.max_cost_usd == 5.0
    assert read_json(layout.spec_path(job))["spec_version"] == 1

    retried = read_json(layout.round_manifest_path(job, 1))
    sizes = [batch["requests"] for batch in retried["batches"]]
    assert sum(sizes) == retried["requests"] > 5, "round 1 needs more than one batch of 5"
    assert max(sizes) <= 5 and len(sizes) == -(-sum(sizes) // 5), sizes
