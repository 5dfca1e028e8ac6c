"""Answer reuse, the canary and deletion after landing, through ``dag.test()`` against the emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from literal_prices import usage_cost

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.gather.gathering import GatherConfig, gather_round
from airflow_batch.sensors.batches import BatchesSensor
from airflow_batch.storage import as_path, read_json

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "confident": {"type": "boolean"},
    },
    "required": ["sentiment", "confident"],
}
WORDS = "great lamp broke after a week shipping slow colour lovely would buy again".split()  # noqa: SIM905


def _write_records(path: Path, n: int) -> Path:
    with path.open("wb") as out:
        for i in range(n):
            text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(5 + i % 7)) + f" (#{i})"
            out.write(msgspec.json.encode({"review_id": f"r{i:05d}", "text": text, "shop": i % 3}) + b"\n")
    return path


def _rows(path: Any) -> list[dict[str, Any]]:
    path = as_path(str(path))
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def _job(records: Path, output: str, conn_id: str, **kwargs: Any) -> None:
    anthropic_batch_job(
        "reviews",
        records=str(records),
        prompt_template="Rate this review: {text}",
        custom_id_field="review_id",
        passthrough_fields=["shop"],
        output_schema=SCHEMA,
        model="claude-haiku-4-5",
        max_tokens=200,
        output_path=output,
        conn_id=conn_id,
        max_retry_rounds=1,
        poll_interval=0.5,
        submit_kwargs={"max_requests_per_batch": 1000, "count_tokens_sample": 0},
        keep_chunks=True,  # the tests read what each round sent
        **kwargs,
    )


def _run(dag_id: str, records: Path, output: str, conn_id: str, **kwargs: Any) -> tuple[Any, Path]:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        _job(records, output, conn_id, **kwargs)
    run = run_dag(dag)
    job = Path(str(layout.job_dir(output, dag.dag_id, run.run_id, "reviews.submit")).removeprefix("file://"))
    return run, job


def _outputs(job: Path) -> dict[str, Any]:
    return {row["custom_id"]: row["output"] for row in _rows(layout.final_results_path(as_path(str(job))))}


def _manifest(job: Path) -> dict[str, Any]:
    return dict(read_json(layout.final_manifest_path(as_path(str(job)))))


@pytest.mark.usefixtures("airflow_db")
def test_a_second_run_over_the_same_records_creates_no_batch_and_lands_the_same_outputs(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    records = _write_records(tmp_path / "reviews.jsonl", 5_000)
    output = str(tmp_path / "out")
    first, first_job = _run("reuse_twice", records, output, anthropic_conn, reuse_answers=True)
    assert first.state == "success", [(ti.task_id, ti.state) for ti in first.get_task_instances()]
    created = emulator.batch_count()
    assert created == 5
    assert _manifest(first_job)["answers_stored"] == 5_000
    capfd.readouterr()

    second, second_job = _run("reuse_twice", records, output, anthropic_conn, reuse_answers=True)
    log = "".join(capfd.readouterr())
    # The log says what happened, and nothing about batches or costs that do not exist.
    assert "no batch: every request was answered without one (5000 from the answer store, 0 by" in log
    assert "0 request(s) in 0 batch(es)" not in log and "Cost estimate" not in log
    assert second.state == "success", [(ti.task_id, ti.state) for ti in second.get_task_instances()]
    assert emulator.batch_count() == created, "the second run created a batch"
    assert second_job != first_job

    assert _outputs(second_job) == _outputs(first_job)
    rows = _rows(layout.final_results_path(as_path(str(second_job))))
    assert [row["row"] for row in rows] == list(range(1, 5_001))  # input order
    assert {row["reused_from"]["job_dir"] for row in rows} == {str(as_path(str(first_job)))}
    assert all(row["usage"]["output_tokens"] == 0 and row["batch_id"] is None for row in rows)
    assert all(row["reused_from"]["usage"]["output_tokens"] > 0 for row in rows)
    assert all(row["input"] == {"shop": int(row["custom_id"][1:]) % 3} for row in rows)
    manifest = _manifest(second_job)
    assert (manifest["succeeded"], manifest["reused"], manifest["failed"]) == (5_000, 5_000, 0)
    assert manifest["cost"]["batch_usd"] == 0 and manifest["rounds"][0]["batches"] == []
    assert _manifest(first_job)["cost"]["batch_usd"] > 0


@pytest.mark.usefixtures("airflow_db")
def test_a_run_over_records_partly_answered_before_sends_only_the_new_ones(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    everything = _write_records(tmp_path / "all.jsonl", 5_000)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_bytes(b"".join(everything.read_bytes().splitlines(keepends=True)[:3_000]))
    output = str(tmp_path / "out")
    # The earlier run also has a canary: its usable answers are results and stored answers too.
    first, first_job = _run("reuse_partly", earlier, output, anthropic_conn, reuse_answers=True, canary=10)
    assert first.state == "success"
    round_0 = read_json(layout.round_manifest_path(as_path(str(first_job)), 0))
    canary = round_0["canary"]
    assert (canary["requests"], canary["answered"], canary["failed"]) == (10, 10, 0)
    assert canary["cost"]["standard_usd"] == canary["cost"]["batch_usd"] > 0
    # The round paid for its batches at batch prices (what the emulator billed them, priced by
    # hand) and for its canary at standard prices.
    _, batches_cost = usage_cost(emulator.billing()["usage_by_model"])
    assert round_0["cost"]["batch_usd"] == pytest.approx(batches_cost + canary["cost"]["batch_usd"], abs=1e-6)
    # The canary's output length is the estimate's expected figure.
    assert round_0["estimate"]["expected_basis"] == "canary (10 answer(s))"
    assert round_0["estimate"]["expected_output_tokens"] == canary["output_tokens_per_answer"]
    first_manifest = _manifest(first_job)
    assert first_manifest["canary_answered"] == 10 and first_manifest["succeeded"] == 3_000
    assert read_json(layout.ledger_path(as_path(str(first_job)), 0))["chunks"][0]["requests"] == 1000
    assert (
        sum(c["requests"] for c in read_json(layout.ledger_path(as_path(str(first_job)), 0))["chunks"])
        == 2_990
    )
    before = emulator.batch_count()

    second, second_job = _run("reuse_partly", everything, output, anthropic_conn, reuse_answers=True)
    assert second.state == "success", [(ti.task_id, ti.state) for ti in second.get_task_instances()]
    assert emulator.batch_count() - before == 2  # 2,000 new requests, 1,000 a batch
    sent = {
        row["custom_id"]
        for part in sorted((second_job / "round-0" / "chunks").glob("*.jsonl"))
        for row in _rows(part)
    }
    assert sent == {f"r{i:05d}" for i in range(3_000, 5_000)}
    manifest = _manifest(second_job)
    assert (manifest["succeeded"], manifest["reused"]) == (5_000, 3_000)
    outputs = _outputs(second_job)
    assert {k: v for k, v in outputs.items() if int(k[1:]) < 3_000} == _outputs(first_job)
    reused_from = {
        row["custom_id"]: row.get("reused_from")
        for row in _rows(layout.final_results_path(as_path(str(second_job))))
    }
    assert sum(1 for source in reused_from.values() if source and source.get("canary")) == 10


@pytest.mark.usefixtures("airflow_db")
def test_a_canary_that_finds_answers_invalid_for_the_schema_fails_the_submit_before_any_batch(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(invalid_output_rate=1.0, seed=4)
    records = _write_records(tmp_path / "reviews.jsonl", 500)
    output = str(tmp_path / "out")
    run, job = _run("canary_refuses", records, output, anthropic_conn, canary=5, max_cost_usd=5.0)

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["reviews.submit"] == "failed" and run.state == "failed"
    assert emulator.batch_count() == 0
    refusal = read_json(layout.refusal_path(as_path(str(job)), 0))
    assert refusal["kind"] == "CanaryFailedError"
    assert "5 of 5 answer(s) unusable" in refusal["reason"]
    assert "invalid_output" in refusal["reason"] and refusal["examples"][0]["custom_id"] == "r00000"
    assert refusal["canary_cost_usd"] > 0
    assert not (job / "round-0" / "chunks").exists()


@pytest.mark.usefixtures("airflow_db")
def test_deleting_after_gather_leaves_no_batch_on_the_api_and_every_row_landed(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(error_types={"overloaded_error": 0.05}, seed=9)
    records = _write_records(tmp_path / "reviews.jsonl", 2_500)
    output = str(tmp_path / "out")
    run, job = _run("delete_after", records, output, anthropic_conn, delete_batches="after_gather")

    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    stats = emulator.stats()
    assert stats["batches_created"] >= 4  # three in round 0, at least one retry batch
    assert stats["batches_stored"] == 0, "a batch of the job is still on the API"
    results = _rows(layout.final_results_path(as_path(str(job))))
    failures = _rows(layout.final_failures_path(as_path(str(job))))
    ids = [row["custom_id"] for row in results + failures]
    assert len(ids) == len(set(ids)) == 2_500
    manifest = _manifest(job)
    assert manifest["deleted_batches"] == stats["batches_created"]
    gathered = read_json(layout.round_manifest_path(as_path(str(job)), 0))
    assert set(gathered["deleted_batches"]) == {b["batch_id"] for b in gathered["batches"]}

    # Waiting and gathering the round again find every batch landed: no call for the deleted batches.
    pushed: dict[str, Any] = {}

    class Ti:
        def xcom_push(self, key: str, value: Any) -> None:
            pushed[key] = value

    waited = BatchesSensor(task_id="wait_again", manifest=gathered).execute({"ti": Ti()})  # type: ignore[arg-type]
    assert set(waited["batch_status"]) == set(gathered["deleted_batches"])
    assert waited["counts"]["processing"] == 0
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="k", max_retries=0)) as api:
        again = gather_round(api, gathered, config=GatherConfig(delete_batches=True))
    assert again["result_counts"] == gathered["result_counts"]
    assert again["deleted_batches"] == gathered["deleted_batches"]
