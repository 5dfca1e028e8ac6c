"""Structured extraction end to end: a Pydantic schema in, validated typed tables out (dag.test, emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec
import pendulum
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path

RECORDS = 2_000


class Review(BaseModel):
    # Closed, as a job reads any model (its fields are all there is): then the model itself can
    # judge the answers, an extra property included.
    model_config = ConfigDict(extra="forbid")

    sentiment: Literal["positive", "neutral", "negative"]
    keywords: list[str] = Field(max_length=3)
    stars: int = Field(ge=1, le=5)


def _rows(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line]


@pytest.mark.usefixtures("airflow_db")
def test_a_structured_job_ends_every_record_once_with_a_valid_output_or_a_failure_and_typed_tables(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(invalid_output_rate=0.05, error_types={"overloaded_error": 0.05}, seed=13)
    records = [
        {
            "review_id": f"rev-{i:05d}",
            "product": f"p{i % 37}",
            "category": ["shoes", "desks"][i % 2],
            "text": f"Review {i}",
        }
        for i in range(RECORDS)
    ]
    output = str(tmp_path / "out")
    with DAG("structured_reviews", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        job = anthropic_batch_job(
            "reviews",
            records=records,
            custom_id_field="review_id",
            passthrough_fields=["product", "category"],
            prompt_template="Product: {product}\nReview: {text}",
            output_schema=Review,
            results_format=["jsonl", "parquet"],
            model="claude-haiku-4-5",
            max_tokens=200,
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=2,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 0, "max_requests_per_batch": 700},
            keep_chunks=True,  # the test reads what each round sent
        )
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert job.output.operator.task_id == "reviews.finalize"

    folder = layout.job_dir(output, dag.dag_id, run.run_id, "reviews.submit")
    results = _rows(layout.final_results_path(folder))
    failures = _rows(layout.final_failures_path(folder))
    ids = [row["custom_id"] for row in results + failures]
    assert len(ids) == len(set(ids)) == RECORDS  # every record ends exactly once
    for row in results:  # judged by the model itself, not by the validator under test
        assert Review.model_validate(row["output"]).model_dump() == row["output"]
        number = int(row["custom_id"][4:])
        assert row["row"] == number + 1  # joined back to the input row
        assert row["input"] == {"product": f"p{number % 37}", "category": ["shoes", "desks"][number % 2]}
    assert [row["row"] for row in results] == sorted(row["row"] for row in results)  # input order

    # Round 0 had invalid outputs and overloads; retry rounds resubmitted exactly those.
    round_0 = _rows_of_round(folder, 0)
    kinds = {(row["result_type"], row.get("error_type")) for row in round_0}
    assert ("invalid_output", None) in kinds and ("errored", "overloaded_error") in kinds
    for row in round_0:  # and each answer refused as invalid is one the model refuses too
        if row["result_type"] == "invalid_output":
            with pytest.raises(ValidationError):
                Review.model_validate_json(row["text"])
    retried = _chunk_ids(folder, 1)
    assert retried == {row["custom_id"] for row in round_0 if row["retryable"]}
    assert all(row["round"] >= 1 for row in results if row["custom_id"] in retried)

    table = pq.read_table(layout.final_table_path(folder, "results").path)
    assert table.num_rows == len(results)
    assert table.column_names[:6] == ["custom_id", "row", "product", "category", "sentiment", "keywords"]
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["sentiment"] == pa.dictionary(pa.int32(), pa.string())
    assert types["keywords"] == pa.list_(pa.string())
    assert types["stars"] == pa.int64()
    assert {"model", "stop_reason", "input_tokens", "output_tokens", "round", "batch_id"} <= set(types)
    failures_table = pq.read_table(layout.final_table_path(folder, "failures").path)
    assert failures_table.num_rows == len(failures)


def _rows_of_round(folder: Any, number: int) -> list[dict[str, Any]]:
    parts = sorted((layout.round_dir(folder, number) / "failures").glob("*.jsonl"))
    return [row for part in parts for row in _rows(part)]


def _chunk_ids(folder: Any, number: int) -> set[str]:
    parts = sorted((layout.round_dir(folder, number) / "chunks").glob("*.jsonl"))
    return {row["custom_id"] for part in parts for row in _rows(part)}


def test_a_schema_structured_outputs_refuse_fails_when_the_dag_is_parsed_and_nothing_is_created(
    emulator: EmulatorProcess, anthropic_conn: str
) -> None:
    # The job's connection points at this emulator: were anything sent, it would be counted here.
    with (
        pytest.raises(ValueError, match=r"output_schema\.properties\.tags: 'oneOf' is not supported"),
        DAG("bad_schema", schedule=None, start_date=pendulum.datetime(2026, 1, 1)),
    ):
        anthropic_batch_job(
            "bad",
            records=[{"a": 1}],
            prompt_template="{a}",
            output_path="/tmp/never",
            conn_id=anthropic_conn,
            output_schema={
                "type": "object",
                "properties": {"tags": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
                "additionalProperties": False,
            },
        )
    assert emulator.batch_count() == 0 and emulator.calls() == {}
