"""A job from a TaskFlow function (``@task.anthropic_batch``), and one job per input file with
``.partial().expand()`` on the operators (dag.test, real SDK, emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow_test_env import run_dag

from airflow_batch import (
    BatchesSensor,
    FinalizeBatchJobOperator,
    GatherResultsOperator,
    SubmitBatchesOperator,
    layout,
    read_results,
)
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.get_provider_info import get_provider_info

START = pendulum.datetime(2026, 1, 1)


def test_the_decorator_is_registered_in_the_provider_metadata() -> None:
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    entry = {"name": "anthropic_batch", "class-name": "airflow_batch.decorators.batch.anthropic_batch_task"}
    assert entry in get_provider_info()["task-decorators"]
    assert "anthropic_batch" in ProvidersManagerTaskRuntime().taskflow_decorators


@pytest.mark.usefixtures("airflow_db")
def test_a_taskflow_function_returning_records_becomes_a_whole_job(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    output = str(tmp_path / "out")
    with DAG("taskflow_job", schedule=None, start_date=START) as dag:

        @task.anthropic_batch(  # type: ignore[attr-defined]
            prompt_template="Sentiment of: {text}",
            model="claude-haiku-4-5",
            max_tokens=16,
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 0},
        )
        def reviews(count: int) -> list[dict[str, Any]]:
            return [{"custom_id": f"r{i}", "text": f"lamp {i}"} for i in range(count)]

        job = reviews(5)

    run = run_dag(dag)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert job.group_id == "reviews" and "reviews_rows" in states
    folder = layout.job_dir(output, dag.dag_id, run.run_id, "reviews.submit")
    assert sorted(row["custom_id"] for row in read_results(str(folder))) == [f"r{i}" for i in range(5)]


@pytest.mark.usefixtures("airflow_db")
def test_one_job_per_input_file_with_partial_and_expand(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    files = []
    for part in range(3):
        path = tmp_path / f"part-{part}.jsonl"
        rows = [{"custom_id": f"p{part}-{i}", "text": f"item {i}"} for i in range(4)]
        path.write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in rows))
        files.append(str(path))
    output = str(tmp_path / "out")
    with DAG("mapped_jobs", schedule=None, start_date=START) as dag:
        submit = SubmitBatchesOperator.partial(
            task_id="submit",
            output_path=output,
            conn_id=anthropic_conn,
            prompt_template="Summarise: {text}",
            model="claude-haiku-4-5",
            max_tokens=16,
            count_tokens_sample=0,
        ).expand(records=files)
        wait = BatchesSensor.partial(task_id="wait", poll_interval=0.5).expand(manifest=submit.output)
        gather = GatherResultsOperator.partial(task_id="gather").expand(manifest=wait.output)
        FinalizeBatchJobOperator.partial(task_id="finalize").expand(manifest=gather.output)

    run = run_dag(dag)
    finalized = [ti for ti in run.get_task_instances() if ti.task_id == "finalize"]
    assert run.state == "success"
    assert sorted(ti.map_index for ti in finalized) == [0, 1, 2]
    for part in range(3):
        folder = layout.job_dir(output, dag.dag_id, run.run_id, "submit", part)
        ids = sorted(row["custom_id"] for row in read_results(str(folder)))
        assert ids == [f"p{part}-{i}" for i in range(4)]  # each map index is a job of its own
