"""Chunk files go once their round has landed; retries, clears, reuse and the canary still work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path
from airflow_batch.submit.retrying import keep_retry_requests, original_requests

DAY = pendulum.datetime(2026, 4, 1, tz="UTC")
#: A long shared system prompt: what made the chunk files of a 30,000-request job weigh 1.4 GB.
SYSTEM = "You rate product reviews from 1 to 5. " * 200


def _rows(path: Any) -> list[dict[str, Any]]:
    return [
        msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line.strip()
    ]


def _round_parts(job: Any, number: int, kind: str) -> list[dict[str, Any]]:
    folder = layout.round_dir(job, number) / kind
    return [row for part in sorted(folder.glob("*.jsonl")) for row in _rows(part)]


def _job_dag(dag_id: str, output: str, conn_id: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "reviews",
            records=[{"custom_id": f"r{i:03d}", "text": f"review {i}"} for i in range(60)],
            prompt_template="Rate: {text}",
            model="claude-haiku-4-5",
            max_tokens=16,
            system=SYSTEM,
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=1,
            poll_interval=0.5,
            max_failure_rate=1.0,
            submit_kwargs={"count_tokens_sample": 0, "max_requests_per_batch": 25},
            **kwargs,
        )
    return dag


@pytest.mark.usefixtures("airflow_db")
def test_landed_rounds_lose_their_chunks_and_a_cleared_run_resubmits_nothing(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(error_types={"overloaded_error": 0.25}, seed=7)
    output = str(tmp_path / "out")
    # The canary (answers kept, the rest cut around them) and the answer store both change how
    # chunks are cut: a clear of such a round must re-attach without its chunk files too.
    dag = _job_dag(
        "prune_chunks", output, anthropic_conn, canary=2, canary_max_failure_rate=1.0, reuse_answers=True
    )
    first = run_dag(dag, logical_date=DAY, run_after=DAY)
    assert first.state == "success", [(ti.task_id, ti.state) for ti in first.get_task_instances()]
    job = layout.job_dir(output, dag.dag_id, first.run_id, "reviews.submit")

    retryable = {row["custom_id"] for row in _round_parts(job, 0, "failures") if row["retryable"]}
    assert retryable, "the injected overloaded errors left nothing to retry"
    for number in (0, 1):
        assert not layout.chunks_dir(job, number).exists(), f"round {number} kept its chunk files"
        assert layout.inputs_dir(job, number).exists()  # small, and what a gather run again reads
    kept = _rows(layout.retry_requests_path(job, 0))
    assert {
        msgspec.json.decode(msgspec.json.encode(row["request"]))["custom_id"] for row in kept
    } == retryable
    assert all(row["request"]["params"]["system"][0]["text"] == SYSTEM for row in kept)
    landed_1 = {row["custom_id"] for kind in ("results", "failures") for row in _round_parts(job, 1, kind)}
    assert landed_1 == retryable  # round 1 sent exactly round 0's retryable failures
    results = {row["custom_id"] for row in _rows(layout.final_results_path(job))}
    batches = emulator.batch_count()

    # A clear of the finished run: every task runs again; nothing is submitted twice, and the
    # retry round re-attaches (its requests are the same bytes, or its fingerprint would differ).
    again = run_dag(dag, logical_date=DAY, run_after=DAY)
    assert again.state == "success", [(ti.task_id, ti.state) for ti in again.get_task_instances()]
    assert again.run_id == first.run_id
    assert emulator.batch_count() == batches
    assert not layout.chunks_dir(job, 0).exists() and not layout.chunks_dir(job, 1).exists()
    assert {row["custom_id"] for row in _rows(layout.final_results_path(job))} == results


@pytest.mark.usefixtures("airflow_db")
def test_keep_chunks_keeps_every_rounds_chunk_files(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(error_types={"overloaded_error": 0.25}, seed=7)
    output = str(tmp_path / "out")
    dag = _job_dag("keep_chunks", output, anthropic_conn, keep_chunks=True)
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    job = layout.job_dir(output, dag.dag_id, run.run_id, "reviews.submit")
    sent_0 = {row["custom_id"] for part in layout.chunks_dir(job, 0).glob("*.jsonl") for row in _rows(part)}
    sent_1 = {row["custom_id"] for part in layout.chunks_dir(job, 1).glob("*.jsonl") for row in _rows(part)}
    assert len(sent_0) == 60
    assert sent_1 == {row["custom_id"] for row in _round_parts(job, 0, "failures") if row["retryable"]}


def test_the_kept_retry_requests_are_the_requests_the_chunks_give(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    request = (
        b'{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}}'
    )
    layout.chunk_path(job, 0, 0).parent.mkdir(parents=True)
    layout.chunk_path(job, 0, 0).write_bytes(
        b"\n".join(request.replace(b'"a"', b'"%s"' % cid) for cid in (b"a", b"b", b"c")) + b"\n"
    )
    layout.chunk_inputs_path(job, 0, 0).parent.mkdir(parents=True)
    layout.chunk_inputs_path(job, 0, 0).write_bytes(
        b'{"custom_id":"a","row":1,"input":{"shop":"north"}}\n{"custom_id":"b","row":2}\n{"custom_id":"c","row":3}\n'
    )
    failures = layout.failures_part(job, 0, "batch-1")
    failures.parent.mkdir(parents=True)
    base = {
        "batch_id": "batch-1",
        "round": 0,
        "error_type": "overloaded_error",
        "message": "x",
        "request_id": None,
    }
    paused = {
        "result_type": "paused",
        "content": [{"type": "server_tool_use", "id": "s", "name": "web_search"}],
    }
    failures.write_bytes(
        msgspec.json.encode({**base, "custom_id": "a", "row": 1, "result_type": "errored", "retryable": True})
        + b"\n"
        + msgspec.json.encode(
            {**base, "custom_id": "b", "row": 2, "result_type": "errored", "retryable": False}
        )
        + b"\n"
        + msgspec.json.encode({**base, "custom_id": "c", "row": 3, "retryable": True, **paused})
        + b"\n"
    )
    manifest = {
        "job_dir": str(job),
        "round": 0,
        "batches": [{"batch_id": "batch-1", "chunk": 0, "chunk_path": str(layout.chunk_path(job, 0, 0))}],
    }
    from_chunks = list(original_requests(manifest))
    assert keep_retry_requests(manifest) == 2
    layout.chunks_dir(job, 0).rmdir(recursive=True)
    kept = list(original_requests(manifest))
    assert [(c.request, bytes(c.input) if c.input else None, c.row) for c in kept] == [
        (c.request, bytes(c.input) if c.input else None, c.row) for c in from_chunks
    ]
    assert [msgspec.json.decode(c.request)["custom_id"] for c in kept] == ["a", "c"]
    assert msgspec.json.decode(kept[1].request)["params"]["messages"][-1]["role"] == "assistant"
    assert keep_retry_requests(manifest) == 2  # a gather run again keeps the file it wrote
