"""The row contract: every origin's rows are the contract's rows, and the tables derive from it.

Pure tests (no Airflow, no server): each origin's encoder is called as the job calls it, and
its bytes are decoded with the contract's own strict decoders; the Parquet tables are written
with :func:`write_tables` and their schema compared with the contract's declaration.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from airflow_batch.gather.tables import write_tables
from airflow_batch.rows.block import BlockSettings, InputMeta
from airflow_batch.rows.contract import (
    FAILURE_TAIL,
    RESULT_HEAD,
    RESULT_TAIL,
    USAGE_COLUMNS,
    FailureRow,
    ResultRow,
    RowUsage,
    StoredAnswer,
    answered_row,
    failure_row_decoder,
    invalid_input_row,
    result_row_decoder,
    reused_row,
    row_encoder,
    stored_answer,
    table_columns,
)
from airflow_batch.rows.gathered import block_rows
from airflow_batch.storage import as_path
from airflow_batch.submit.chunking import _invalid_row, inputs_line
from airflow_batch.submit.validation import Problem

SUCCEEDED = (
    b'{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Hello"}],'
    b'"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":3}}}}\n'
)
ERRORED = (
    b'{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":'
    b'{"type":"overloaded_error","message":"busy"},"request_id":"req_1"}}}\n'
)
_SOURCE = b'{"batch_id":"msgbatch_old","job_dir":"file:///jobs/old","round":0}'


def _stored() -> bytes:
    row = ResultRow("x", 1, "msgbatch_old", 0, "claude-haiku-4-5", "end_turn", msgspec.Raw(b'"Hi"'),
                    RowUsage(5, 2, 0, 0, 0))  # fmt: skip
    return stored_answer(row)


def test_a_reused_row_spliced_from_bytes_is_a_result_row_of_the_contract() -> None:
    line = reused_row(inputs_line("r-7", 7, {"sku": "p-1"}), 2, _stored(), _SOURCE)
    row = result_row_decoder.decode(line)
    assert (row.custom_id, row.row, row.batch_id, row.round) == ("r-7", 7, None, 2)
    assert (row.model, msgspec.json.decode(row.text), row.usage) == (
        "claude-haiku-4-5",
        "Hi",
        RowUsage(0, 0, 0, 0, 0),
    )
    assert isinstance(row.input, msgspec.Raw) and isinstance(row.reused_from, msgspec.Raw)
    assert msgspec.json.decode(row.input) == {"sku": "p-1"}
    assert msgspec.json.decode(row.reused_from)["batch_id"] == "msgbatch_old"


def test_a_canary_row_carries_the_usage_it_paid() -> None:
    usage = row_encoder.encode(RowUsage(12, 4, 0, 0, 0))
    row = result_row_decoder.decode(
        answered_row(inputs_line("c-1", 1), 0, _stored(), usage, b'{"canary":true}')
    )
    assert (row.custom_id, row.usage.input_tokens, row.usage.output_tokens) == ("c-1", 12, 4)


def test_an_invalid_input_row_without_a_custom_id_is_a_failure_row_with_a_null_id() -> None:
    encoded = _invalid_row(Problem(5, None, "custom_id is missing"), 0)
    row = failure_row_decoder.decode(encoded)
    assert (row.custom_id, row.row, row.batch_id, row.result_type, row.retryable) == (
        None, 5, None, "invalid_input", False,
    )  # fmt: skip
    assert row.message == "row 5: custom_id is missing"
    assert failure_row_decoder.decode(invalid_input_row("ok-1", 2, 1, "why")).custom_id == "ok-1"


def test_gathered_rows_decode_as_the_contract_rows() -> None:
    inputs = {"a": InputMeta("a", 1), "b": InputMeta("b", 2)}
    rows = block_rows(SUCCEEDED + ERRORED, BlockSettings("msgbatch_1", 0, inputs=inputs), set())
    (result,) = result_row_decoder.decode_lines(rows.results)
    (failure,) = failure_row_decoder.decode_lines(rows.failures)
    assert (result.custom_id, result.row, result.batch_id, msgspec.json.decode(result.text)) == (
        "a", 1, "msgbatch_1", "Hello",
    )  # fmt: skip
    assert (failure.custom_id, failure.error_type, failure.retryable) == ("b", "overloaded_error", True)


def test_the_stored_answer_is_the_result_row_without_what_belongs_to_one_run() -> None:
    answer = {field.name for field in msgspec.structs.fields(StoredAnswer)}
    row = {field.name for field in msgspec.structs.fields(ResultRow)}
    assert answer < row
    assert row - answer == {"custom_id", "row", "batch_id", "round", "usage", "input", "reused_from"}


def test_every_scalar_field_of_a_row_is_a_column_or_said_not_to_be_one() -> None:
    # Fields that are other columns (usage: one per count; output and input: one per property)
    # or stay in the JSONL rows only (the blocks, tool calls; a failure's billed answer).
    not_own_columns = {"usage", "output", "input", "tool_calls", "content"}
    result_columns = {c.name for c in table_columns(ResultRow, (*RESULT_HEAD, "text", *RESULT_TAIL))}
    result_fields = {field.name for field in msgspec.structs.fields(ResultRow)}
    assert result_fields - not_own_columns <= result_columns
    assert set(USAGE_COLUMNS) <= result_columns
    failure_columns = {c.name for c in table_columns(FailureRow, (*RESULT_HEAD, *FAILURE_TAIL))}
    billed = {"model", "stop_reason", "text"}
    failure_fields = {field.name for field in msgspec.structs.fields(FailureRow)}
    assert failure_fields - not_own_columns - billed == failure_columns


def test_a_table_naming_a_field_the_row_lacks_fails_at_once() -> None:
    with pytest.raises(KeyError):
        table_columns(ResultRow, ("result_type",))


def _write(tmp_path: Path, results: bytes, failures: bytes) -> tuple[object, object]:
    base = as_path(str(tmp_path))
    (tmp_path / "results.jsonl").write_bytes(results)
    (tmp_path / "failures.jsonl").write_bytes(failures)
    write_tables(
        base / "results.jsonl",
        base / "failures.jsonl",
        base / "results.parquet",
        base / "failures.parquet",
        output_schema=None,
        passthrough=["sku"],
    )
    return pq.read_schema(tmp_path / "results.parquet"), pq.read_schema(tmp_path / "failures.parquet")


def test_parquet_columns_take_type_and_nullability_from_the_contract(tmp_path: Path) -> None:
    inputs = {"a": InputMeta("a", 1, msgspec.Raw(b'{"sku":"p-1"}')), "b": InputMeta("b", 2)}
    rows = block_rows(SUCCEEDED + ERRORED, BlockSettings("msgbatch_1", 0, inputs=inputs), set())
    reused = reused_row(inputs_line("r", 3, {"sku": "p-3"}), 0, _stored(), _SOURCE)
    invalid = _invalid_row(Problem(4, None, "custom_id is missing"), 0)
    results, failures = _write(tmp_path, rows.results + reused + b"\n", rows.failures + invalid + b"\n")
    types = {str: "string", int: "int64", bool: "bool"}
    for schema, struct, names in (
        (results, ResultRow, (*RESULT_HEAD, "text", *RESULT_TAIL)),
        (failures, FailureRow, (*RESULT_HEAD, *FAILURE_TAIL)),
    ):
        for column in table_columns(struct, names):
            field = schema.field(column.name)  # type: ignore[attr-defined]
            assert (str(field.type), field.nullable) == (types[column.kind], column.nullable), column.name
    assert not results.field("custom_id").nullable  # type: ignore[attr-defined]
    assert failures.field("custom_id").nullable  # type: ignore[attr-defined]
    assert results.field("batch_id").nullable  # type: ignore[attr-defined]  # a reused answer has none
    table = pq.read_table(tmp_path / "failures.parquet").to_pylist()
    assert [(row["custom_id"], row["row"], row["result_type"]) for row in table] == [
        ("b", 2, "errored"), (None, 4, "invalid_input"),
    ]  # fmt: skip


def test_a_null_where_the_contract_says_never_is_reported_and_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = (
        b'{"custom_id":null,"row":9,"batch_id":"b","round":0,"model":"m","stop_reason":null,"text":"x"}\n'
    )
    with caplog.at_level(logging.WARNING, logger="airflow_batch.gather.tables"):
        results, _ = _write(tmp_path, stranger, b"")
    assert results.field("custom_id").nullable  # type: ignore[attr-defined]
    assert "column 'custom_id' is never null by the row contract, but row 9 holds a null" in caplog.text
    assert pq.read_table(tmp_path / "results.parquet").column("row").to_pylist() == [9]
