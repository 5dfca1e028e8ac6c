"""Whatever submit accepted, finalize writes: a property test of the merge and the Parquet writer.

Hypothesis draws a schema from every shape :func:`job_schema` accepts at parse (typed scalars,
string enums, nested objects and arrays, ``anyOf`` with null, several types, untyped nodes,
arrays without ``items``, ``const``), passthrough fields whose types change between rows, and
rows of every origin, each built by the code that writes it in a job: a gathered answer
(:class:`ResultRow`), a reused one (:func:`reused_row`), a canary's (:func:`answered_row` with
:func:`canary_source`), an invalid input row (with and without a ``custom_id``), an API failure
and an answer that failed the schema. Answers are the emulator's valid instances of the schema,
or any JSON value (integers above int64, deep nesting, any text) where the property has no
single type. Finalize must write every row, and every column it could not type must be a
JSON-text column named, with its reason, in the manifest, holding each value's JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_batch.emulator.schema_instance import schema_instance
from airflow_batch.gather.finalizing import finalize_job
from airflow_batch.gather.tables import arrow_type
from airflow_batch.rows.contract import (
    FailureRow,
    ResultRow,
    RowUsage,
    answered_row,
    reused_row,
    row_encoder,
    stored_answer,
)
from airflow_batch.rules.schema import SchemaError, job_schema
from airflow_batch.submit.chunk_files import inputs_line
from airflow_batch.submit.chunking import _invalid_row
from airflow_batch.submit.validation import Problem

NAMES = st.sampled_from(["alpha", "beta", "gamma", "delta", "score", "tags", "where", "note"])
SCALARS = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "integer", "enum": [1, 2**70]},  # valid answers above int64
    ]
)
UNTYPED = st.sampled_from(
    [
        {},  # a property without a type
        {"type": "array"},  # an array without items
        {"type": ["string", "integer"]},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"const": 7},
        {"const": -(2**70)},
        {"enum": [1, "one", None]},
    ]
)
BIG_INT = st.integers(min_value=-(2**80), max_value=2**80)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | BIG_INT | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


def _node(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(_closed, st.dictionaries(NAMES, inner, min_size=1, max_size=3)),
        st.builds(lambda node: {"anyOf": [node, {"type": "null"}]}, inner),
    )


SCHEMA_NODES = st.recursive(
    SCALARS
    | UNTYPED
    | st.just({"type": "string", "enum": ["positive", "negative"]})
    | st.just({"type": ["integer", "null"]}),
    _node,
    max_leaves=6,
)
SCHEMAS = st.builds(_closed, st.dictionaries(NAMES, SCHEMA_NODES, min_size=1, max_size=4))
PASSTHROUGH_VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.none(), BIG_INT, JSON_VALUES)
USAGE = RowUsage(10, 5, 0, 0, 0)


def _has_untyped(node: Any) -> bool:
    """Return whether a schema node has a part with no single type (the emulator draws any value)."""
    return arrow_type(node) is None


def _answer(schema: dict[str, Any], seed: int, wild: dict[str, Any]) -> dict[str, Any]:
    answer = schema_instance(schema, seed)
    for name, value in wild.items():  # any JSON where the schema allows any JSON
        if name in schema["properties"] and _has_untyped(schema["properties"][name]):
            answer[name] = value
    return answer


def _inputs(custom_id: str, row: int, fields: dict[str, Any]) -> bytes:
    return inputs_line(custom_id, row, fields)


@st.composite
def jobs(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes], list[bytes], list[bytes]]:
    schema = draw(SCHEMAS)
    try:
        job_schema(schema)
    except SchemaError:
        assume(False)
    passthrough = ["price", "tags_in"]
    results: list[bytes] = []
    failures: list[bytes] = []
    invalid: list[bytes] = []
    origins = draw(
        st.lists(
            st.sampled_from(["gathered", "reused", "canary", "invalid", "invalid-no-id", "errored", "bad"]),
            min_size=1,
            max_size=12,
        )
    )
    for row, origin in enumerate(origins, start=1):
        custom_id = f"r-{row}"
        fields = {name: draw(PASSTHROUGH_VALUES) for name in passthrough}
        wild = draw(st.dictionaries(st.sampled_from(sorted(schema["properties"])), JSON_VALUES, max_size=2))
        answer = _answer(schema, draw(st.integers(0, 2**32)), wild)
        text = msgspec.json.encode(answer)
        result = ResultRow(
            custom_id,
            row,
            "msgbatch_1",
            0,
            "claude-haiku-4-5",
            "end_turn",
            msgspec.Raw(msgspec.json.encode(text.decode())),
            USAGE,
            output=msgspec.Raw(text),
            input=msgspec.Raw(msgspec.json.encode(fields)),
        )
        if origin == "gathered":
            results.append(row_encoder.encode(result))
        elif origin == "reused":
            source = b'{"batch_id":"msgbatch_0","job_dir":"/earlier","round":0}'
            results.append(reused_row(_inputs(custom_id, row, fields), 0, stored_answer(result), source))
        elif origin == "canary":
            source = b'{"canary":true,"message_id":"msg_1","job_dir":"/job","round":0}'
            usage = row_encoder.encode(USAGE)
            results.append(
                answered_row(_inputs(custom_id, row, fields), 0, stored_answer(result), usage, source)
            )
        elif origin in ("invalid", "invalid-no-id"):
            problem = Problem(row, custom_id if origin == "invalid" else None, "custom_id is missing")
            invalid.append(_invalid_row(problem, 0))
        else:
            failure = FailureRow(
                custom_id, row, "msgbatch_1", 0, "errored", "overloaded_error", "Overloaded", "req_1", True,
                input=msgspec.Raw(msgspec.json.encode(fields)),
            )  # fmt: skip
            if origin == "bad":
                failure = FailureRow(
                    custom_id, row, "msgbatch_1", 0, "invalid_output", None, "not valid", None, True,
                    model="claude-haiku-4-5", stop_reason="end_turn", text=result.text, usage=USAGE,
                    input=result.input,
                )  # fmt: skip
            failures.append(row_encoder.encode(failure))
    return schema, results, failures, invalid


def _write_job(
    job: Path, schema: dict[str, Any], results: list[bytes], failures: list[bytes], invalid: list[bytes]
) -> None:
    round_dir = job / "round-0"
    round_dir.mkdir(parents=True)
    for name, lines in (("results.jsonl", results), ("failures.jsonl", failures), ("invalid.jsonl", invalid)):
        (round_dir / name).write_bytes(b"".join(line + b"\n" for line in lines))
    manifest = {
        "round": 0,
        "job_dir": str(job),
        "requests": len(results) + len(failures) + len(invalid),
        "results_paths": [str(round_dir / "results.jsonl")],
        "failures_paths": [str(round_dir / "failures.jsonl")],
        "invalid": len(invalid),
        "invalid_path": str(round_dir / "invalid.jsonl"),
    }
    (round_dir / "manifest.json").write_bytes(msgspec.json.encode(manifest))
    spec = {"output_schema": job_schema(schema).schema, "passthrough_fields": ["price", "tags_in"]}
    (job / "job.json").write_bytes(msgspec.json.encode(spec))


def _same(cell: Any, value: Any) -> bool:
    if isinstance(value, float) or isinstance(cell, float):
        return cell is not None and value is not None and math.isclose(cell, value)
    return bool(cell == value)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(job=jobs())
def test_finalize_writes_every_row_of_every_origin_for_every_schema_shape(
    tmp_path_factory: Any, job: tuple[dict[str, Any], list[bytes], list[bytes], list[bytes]]
) -> None:
    schema, results, failures, invalid = job
    folder = tmp_path_factory.mktemp("job")
    _write_job(folder, schema, results, failures, invalid)

    manifest = finalize_job(str(folder), results_format=["jsonl", "parquet"])

    assert manifest["succeeded"] == len(results)
    assert manifest["failed"] == len(failures) + len(invalid)
    written = manifest["json_text_columns"]
    for table_name, jsonl in (("results", "results.jsonl"), ("failures", "failures.jsonl")):
        rows = [msgspec.json.decode(line) for line in (folder / jsonl).read_bytes().splitlines()]
        table = pq.read_table(folder / f"{table_name}.parquet")
        assert table.num_rows == len(rows)
        as_text = written.get(table_name, {})
        for name in as_text:
            assert table.schema.field(name).type == pa.string() and as_text[name]
            source = "input" if name in ("price", "tags_in") else "output"
            for cell, row in zip(table.column(name).to_pylist(), rows, strict=True):
                value = (row.get(source) or {}).get(name)
                assert (cell is None) if value is None else _same(json.loads(cell), value)
        if table_name == "results":
            for name, sub in schema["properties"].items():
                kind = arrow_type(sub)
                if kind is None:  # no single type at parse: JSON text, and the manifest says why
                    assert "the schema states no single type" in as_text[name]
                elif name not in as_text:
                    assert table.schema.field(name).type == kind
                    for cell, row in zip(table.column(name).to_pylist(), rows, strict=True):
                        value = row["output"][name]
                        if not isinstance(value, (dict, list)):
                            assert _same(cell, value)
