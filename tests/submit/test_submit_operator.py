"""SubmitBatchesOperator inside Airflow (``dag.test()``) against the emulator: XCom, retry, clear."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow_test_env import run_dag

from airflow_batch import layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.operators import SubmitBatchesOperator
from airflow_batch.storage import as_path, read_json
from airflow_batch.submit.ledger import state_key

LOGICAL_DATE = pendulum.datetime(2026, 3, 1, tz="UTC")


def submit_dag(dag_id: str, out: Path, **submit_kwargs: Any) -> DAG:
    """submit >> record (writes the XCom manifest the next task receives to ``out``)."""
    with DAG(dag_id, schedule=None, start_date=LOGICAL_DATE) as dag:
        submitted = SubmitBatchesOperator(
            task_id="submit", output_path=str(out.parent / "jobs"), **submit_kwargs
        )

        @task
        def record(manifest: dict[str, Any]) -> None:
            out.write_text(json.dumps(manifest))

        record(submitted.output)
    return dag


def test_operator_turns_records_into_batches_and_pushes_a_small_manifest(
    airflow_db: str, emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    source = tmp_path / "reviews.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"rev-{i}", "text": f"Great lamp {i}"}) + "\n" for i in range(7))
    )
    out = tmp_path / "manifest.json"
    dag = submit_dag(
        "submit_records",
        out,
        records=str(source),
        prompt_template="Sentiment of: {text}",
        custom_id_field="id",
        model="claude-haiku-4-5",
        max_tokens=16,
        system="Answer with one word.",
        max_requests_per_batch=3,
    )
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)

    assert run.state == "success"
    manifest = json.loads(out.read_text())
    assert [b["requests"] for b in manifest["batches"]] == [3, 3, 1]
    assert emulator.batch_count() == 3
    job = layout.job_dir(str(tmp_path / "jobs"), "submit_records", run.run_id, "submit")
    assert manifest["job_dir"] == str(job) and manifest["conn_id"] == anthropic_conn
    assert len(json.dumps(manifest)) < 3_000  # ids, counts and paths only: no request bodies
    assert "Great lamp" not in json.dumps(manifest)
    first = json.loads((job / "round-0/chunks/chunk-00000.jsonl").read_text().splitlines()[0])
    assert first["custom_id"] == "rev-0" and first["params"]["model"] == "claude-haiku-4-5"


def test_a_retry_and_a_clear_of_the_task_reattach_and_create_no_new_batch(
    airflow_db: str, emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    attempts: list[int] = []
    mirrored: list[Any] = []

    def fail_first_attempt(context: Any, result: Any) -> None:
        attempts.append(context["ti"].try_number)
        mirrored.append(context["task_state_store"].get(state_key(0)))
        if len(attempts) == 1:
            raise RuntimeError("worker lost after the batches were created")

    out = tmp_path / "manifest.json"
    requests = [
        {"custom_id": f"r{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 4, "messages": [
            {"role": "user", "content": f"hi {i}"}]}}
        for i in range(10)
    ]  # fmt: skip
    dag = submit_dag(
        "submit_retry_clear",
        out,
        requests=requests,
        max_requests_per_batch=4,
        retries=1,
        retry_delay=timedelta(0),
        post_execute=fail_first_attempt,
    )
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "success" and attempts == [1, 2]  # try 1 failed after submitting, try 2 retried
    assert emulator.batch_count() == 3
    first = json.loads(out.read_text())
    first_run_id = run.run_id

    run = run_dag(
        dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE
    )  # dag.test() clears the same run's task instances
    assert run.state == "success" and len(attempts) == 3 and run.run_id == first_run_id
    assert emulator.batch_count() == 3
    assert json.loads(out.read_text())["batches"] == first["batches"]
    ledger = read_json(layout.ledger_path(as_path(first["job_dir"]), 0))
    ids = sorted(b["batch_id"] for b in first["batches"])
    assert sorted(e["batch_id"] for e in ledger["batches"].values()) == ids
    # Airflow's task_state_store mirror survived the retry and the clear too.
    assert all(sorted(m["batches"].values()) == ids for m in mirrored)


def test_operator_rejects_ambiguous_input_and_bad_settings_at_parse_time() -> None:
    with pytest.raises(ValueError, match="exactly one of requests= or records="):
        SubmitBatchesOperator(task_id="t", output_path="/tmp/x")
    with pytest.raises(ValueError, match="prompt_template"):
        SubmitBatchesOperator(task_id="t", output_path="/tmp/x", records=[{"a": 1}])
    with pytest.raises(ValueError, match="max_requests_per_batch"):
        SubmitBatchesOperator(task_id="t", output_path="/tmp/x", requests=[], max_requests_per_batch=100_001)
    with pytest.raises(ValueError, match="on_input_change"):
        SubmitBatchesOperator(task_id="t", output_path="/tmp/x", requests=[], on_input_change="ignore")


def test_inline_records_are_data_never_templates(
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cr3t-password-of-another-connection"
    monkeypatch.setenv("AIRFLOW_CONN_SECRET_CONN", json.dumps({"conn_type": "generic", "password": secret}))
    records = [
        {"id": "math", "text": "{{ 7*7 }}"},
        {"id": "leak", "text": "{{ conn.secret_conn.password }}"},
        {"id": "date", "text": "on {{ ds }}"},
    ]
    out = tmp_path / "manifest.json"
    dag = submit_dag(
        "submit_data_not_templates",
        out,
        records=records,
        prompt_template="Review: {text}",
        custom_id_field="id",
        model="claude-haiku-4-5",
        max_tokens=16,
        count_tokens_sample=0,
    )
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)

    assert run.state == "success"
    manifest = json.loads(out.read_text())
    chunk = as_path(manifest["batches"][0]["chunk_path"]).read_text()
    prompts = [json.loads(line)["params"]["messages"][0]["content"] for line in chunk.splitlines()]
    assert prompts == ["Review: {{ 7*7 }}", "Review: {{ conn.secret_conn.password }}", "Review: on {{ ds }}"]
    assert secret not in chunk and "49" not in chunk
