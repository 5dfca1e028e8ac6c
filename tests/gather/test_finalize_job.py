"""Whole jobs (dag.test, emulator): finalize writes whatever submit accepted, and clashes fail at parse.

The examples of issue 23's classes 1 and 2, end to end: an invalid record without a
``custom_id`` kept by ``skip_invalid``, an answer above int64, a schema array without ``items``
and a property without a type, a passthrough field whose type changes between records. The job
succeeds, every record ends once, and each column that could not be typed is a JSON-text column
named with its reason in the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path

ABOVE_INT64 = 2**70
SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "count": {"type": "integer", "const": ABOVE_INT64},
        "tags": {"type": "array"},
        "anything": {},
    },
    "required": ["sentiment", "count", "tags", "anything"],
    "additionalProperties": False,
}


def _rows(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line]


@pytest.mark.usefixtures("airflow_db")
def test_a_job_writes_every_row_it_accepted_with_untypable_columns_as_json_text_named_in_the_manifest(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    records: list[dict[str, Any]] = [
        {"id": f"r{i}", "text": f"review {i}", "price": [3, "free", 2.5, None, {"eur": 4}][i % 5]}
        for i in range(10)
    ]
    records.insert(4, {"text": "a record without an id", "price": 1})  # invalid, kept by skip_invalid
    output = str(tmp_path / "out")
    with DAG("finalize_writes", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            records=records,
            custom_id_field="id",
            passthrough_fields=["price"],
            prompt_template="{text}",
            output_schema=SCHEMA,
            results_format=["jsonl", "parquet"],
            model="claude-haiku-4-5",
            max_tokens=300,
            output_path=output,
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            poll_interval=0.2,
            max_failure_rate=1.0,  # its one invalid row on purpose is 9% of the job (default 5%)
            submit_kwargs={"count_tokens_sample": 0, "skip_invalid": True},
        )
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    folder = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    manifest = json.loads(layout.final_manifest_path(folder).read_bytes())
    results = _rows(layout.final_results_path(folder))
    failures = _rows(layout.final_failures_path(folder))
    assert len(results) == 10 and [row["output"]["count"] for row in results] == [ABOVE_INT64] * 10
    (invalid,) = failures
    assert (invalid["custom_id"], invalid["row"], invalid["result_type"]) == (None, 5, "invalid_input")

    text_columns = manifest["json_text_columns"]["results"]
    assert sorted(text_columns) == ["anything", "count", "price", "tags"]
    assert "the schema states no single type" in text_columns["tags"]
    assert "the schema states no single type" in text_columns["anything"]
    assert "does not fit int64" in text_columns["count"]
    table = pq.read_table(layout.final_table_path(folder, "results").path)
    assert table.num_rows == 10
    assert table.schema.field("sentiment").type == pa.dictionary(pa.int32(), pa.string())
    for name in text_columns:
        assert table.schema.field(name).type == pa.string()
    assert table.column("count").to_pylist() == [str(ABOVE_INT64)] * 10
    prices = [json.loads(cell) if cell is not None else None for cell in table.column("price").to_pylist()]
    assert prices == [row["input"]["price"] for row in results]
    assert pq.read_table(layout.final_table_path(folder, "failures").path).num_rows == 1


@pytest.mark.parametrize(
    ("passthrough", "schema_property", "named"),
    [
        (["model"], None, "'model'"),
        (["text"], None, "'text'"),
        (["round"], None, "'round'"),
        (["retryable"], None, "'retryable'"),
        ([], "model", "'model'"),
        ([], "round", "'round'"),
        (["product"], "product", "'product'"),
    ],
)
def test_names_that_clash_with_result_columns_fail_when_the_dag_is_parsed_and_nothing_is_created(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    passthrough: list[str],
    schema_property: str | None,
    named: str,
) -> None:
    # The job's connection points at this emulator: were anything sent, it would be counted here.
    schema = None
    if schema_property is not None:
        schema = {
            "type": "object",
            "properties": {schema_property: {"type": "string"}},
            "additionalProperties": False,
        }
    with (
        pytest.raises(ValueError, match=rf"submit: .*{named}.*rename"),
        DAG("clash", schedule=None, start_date=pendulum.datetime(2026, 1, 1)),
    ):
        anthropic_batch_job(
            "clash",
            records=[{"id": "a", "model": "m", "text": "t", "round": 1, "retryable": 1, "product": "p"}],
            custom_id_field="id",
            passthrough_fields=passthrough,
            prompt_template="{text}",
            output_schema=schema,
            output_path="/tmp/never",
            conn_id=anthropic_conn,
            model="claude-haiku-4-5",
        )
    assert emulator.batch_count() == 0 and emulator.calls() == {}
