"""Output schemas (checked before spend, compiled once) and the Parquet tables finalize writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import jsonschema
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airflow_batch import read_results, read_table
from airflow_batch.gather.finalizing import finalize_job
from airflow_batch.gather.tables import arrow_type, results_formats, write_tables
from airflow_batch.rules.schema import SchemaError, job_schema
from airflow_batch.storage import as_path


class Review(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    keywords: list[str] = Field(max_length=3)
    stars: int = Field(ge=1, le=5)


REVIEW_DICT = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "keywords", "stars"],
    "additionalProperties": False,
}


def test_a_pydantic_model_and_the_equivalent_dict_give_the_same_columns_and_rules() -> None:
    from_model, from_dict = job_schema(Review), job_schema(REVIEW_DICT)
    model_types = {name: arrow_type(sub) for name, sub in from_model.schema["properties"].items()}
    dict_types = {name: arrow_type(sub) for name, sub in from_dict.schema["properties"].items()}
    assert (
        model_types
        == dict_types
        == {
            "sentiment": pa.dictionary(pa.int32(), pa.string()),
            "keywords": pa.list_(pa.string()),
            "stars": pa.int64(),
        }
    )
    for schema in (from_model, from_dict):
        assert schema.api_schema["additionalProperties"] is False
        # Bounds the API's grammar does not enforce go to the description and are checked locally.
        assert "minimum" not in schema.api_schema["properties"]["stars"]
        assert "at most 5" in schema.api_schema["properties"]["stars"]["description"]
        assert schema.validator.check(b'{"sentiment": "neutral", "keywords": [], "stars": 6}') is not None
        assert schema.validator.check(b'{"sentiment": "neutral", "keywords": [], "stars": 5}') is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}},
            r"output_schema: objects need additionalProperties: false",
        ),
        (
            {**REVIEW_DICT, "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
            r"output_schema\.properties\.a: 'oneOf' is not supported by structured outputs; use anyOf",
        ),
        (
            {**REVIEW_DICT, "properties": {"a": {"type": "string", "format": "credit-card"}}},
            r"output_schema\.properties\.a\.format: 'credit-card' is not a supported string format",
        ),
        (
            {**REVIEW_DICT, "properties": {"a": {"type": "object", "properties": {}}}},
            r"output_schema\.properties\.a: objects need additionalProperties: false",
        ),
        ({"type": "array", "items": {"type": "string"}}, "the top level must be an object"),
        (
            {**REVIEW_DICT, "properties": {"a": {"$ref": "https://example.com/s.json"}}},
            "external refs are refused",
        ),
    ],
)
def test_a_schema_structured_outputs_refuse_is_refused_naming_the_part(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        job_schema(schema)


def test_the_submit_operator_refuses_a_bad_schema_when_the_dag_is_parsed() -> None:
    from airflow_batch.operators.submit import SubmitBatchesOperator

    with pytest.raises(SchemaError, match="additionalProperties"):
        SubmitBatchesOperator(
            task_id="t",
            output_path="/tmp/x",
            records=[{"a": 1}],
            prompt_template="{a}",
            output_schema={"type": "object", "properties": {"a": {"type": "string"}}},
        )


def test_results_format_accepts_jsonl_parquet_or_both_and_names_the_choices() -> None:
    assert results_formats("parquet") == ("parquet",)
    assert results_formats(["jsonl", "parquet"]) == ("jsonl", "parquet")
    with pytest.raises(ValueError, match="use 'jsonl', 'parquet'"):
        results_formats("csv")


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in rows))


USAGE = {
    "input_tokens": 12,
    "output_tokens": 7,
    "cache_creation_input_tokens": 0,
    "cache_creation_1h_input_tokens": 0,
    "cache_read_input_tokens": 4,
}


def result(i: int, output: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": f"r-{i}",
        "row": i,
        "batch_id": "msgbatch_1",
        "round": 0,
        "model": "claude-haiku-4-5",
        "stop_reason": "end_turn",
        "text": msgspec.json.encode(output).decode(),
        "usage": USAGE,
        "output": output,
        "input": {"product": f"p{i}", "price": 9.5 + i},
        **extra,
    }


def test_parquet_tables_have_typed_columns_in_order_and_as_many_rows_as_the_jsonl(tmp_path: Path) -> None:
    schema = {
        **REVIEW_DICT,
        "properties": {
            **REVIEW_DICT["properties"],
            "where": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "lat": {"type": "number"}},
                "required": ["city", "lat"],
                "additionalProperties": False,
            },
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }
    outputs = [
        {
            "sentiment": "positive",
            "keywords": ["a"],
            "stars": 5,
            "where": {"city": "Oslo", "lat": 59.9},
            "note": None,
        },
        {
            "sentiment": "negative",
            "keywords": [],
            "stars": 1,
            "where": {"city": "Rome", "lat": 41.9},
            "note": "x",
        },
    ]
    rows = [result(i + 1, out) for i, out in enumerate(outputs)]
    rows[1] = {**rows[1], "batch_id": None, "reused_from": {"batch_id": "msgbatch_0", "job_dir": "/x"}}
    _write(tmp_path / "results.jsonl", rows)
    _write(
        tmp_path / "failures.jsonl",
        [
            {
                "custom_id": "r-3",
                "row": 3,
                "batch_id": "msgbatch_1",
                "round": 1,
                "result_type": "invalid_output",
                "error_type": None,
                "message": "the answer is not valid for the output schema: $.stars: ...",
                "request_id": None,
                "retryable": True,
                "input": {"product": "p3", "price": 1.0},
            }
        ],
    )
    write_tables(
        as_path(str(tmp_path / "results.jsonl")),
        as_path(str(tmp_path / "failures.jsonl")),
        as_path(str(tmp_path / "results.parquet")),
        as_path(str(tmp_path / "failures.parquet")),
        output_schema=schema,
        passthrough=["product", "price"],
    )
    results = pq.read_table(tmp_path / "results.parquet")
    assert results.column_names == [
        "custom_id", "row", "product", "price", "sentiment", "keywords", "stars", "where", "note",
        "model", "stop_reason", "input_tokens", "output_tokens", "cache_creation_input_tokens",
        "cache_creation_1h_input_tokens", "cache_read_input_tokens", "round", "batch_id", "reused_from",
    ]  # fmt: skip
    types = dict(zip(results.column_names, results.schema.types, strict=True))
    assert types["sentiment"] == pa.dictionary(pa.int32(), pa.string())
    assert types["keywords"] == pa.list_(pa.string())
    assert types["stars"] == pa.int64() and types["row"] == pa.int64() and types["price"] == pa.float64()
    assert types["where"] == pa.struct([("city", pa.string()), ("lat", pa.float64())])
    assert types["note"] == pa.string()
    assert results.num_rows == 2
    assert results.to_pylist()[0]["where"] == {"city": "Oslo", "lat": 59.9}
    assert results.column("cache_read_input_tokens").to_pylist() == [4, 4]
    assert results.column("reused_from").to_pylist() == [None, "msgbatch_0"]
    assert results.column("batch_id").to_pylist() == ["msgbatch_1", None]
    failures = pq.read_table(tmp_path / "failures.parquet")
    assert failures.column_names[:4] == ["custom_id", "row", "product", "price"]
    assert failures.to_pylist()[0]["result_type"] == "invalid_output"
    assert failures.schema.field("retryable").type == pa.bool_()


def test_a_passthrough_field_of_changing_type_becomes_a_json_text_column_named_in_the_result(
    tmp_path: Path,
) -> None:
    import airflow_batch.gather.tables as tables

    rows = [result(i, {"sentiment": "neutral", "keywords": [], "stars": 3}) for i in range(1, 5)]
    rows[3]["input"]["price"] = "free"
    _write(tmp_path / "results.jsonl", rows)
    _write(tmp_path / "failures.jsonl", [])
    old = tables.ROW_GROUP
    tables.ROW_GROUP = 2  # the odd value lands in a later row group, after the type was fixed
    try:
        written = write_tables(
            as_path(str(tmp_path / "results.jsonl")),
            as_path(str(tmp_path / "failures.jsonl")),
            as_path(str(tmp_path / "results.parquet")),
            as_path(str(tmp_path / "failures.parquet")),
            output_schema=REVIEW_DICT,
            passthrough=["product", "price"],
        )
    finally:
        tables.ROW_GROUP = old
    assert list(written) == ["results"] and list(written["results"]) == ["price"]
    assert "the value at row 4 does not fit double" in written["results"]["price"]
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.schema.field("price").type == pa.string()
    assert table.column("price").to_pylist() == ["10.5", "11.5", "12.5", '"free"']
    assert table.schema.field("stars").type == pa.int64()  # the other columns keep their types


def _round_manifest(job: Path) -> None:
    (job / "round-0" / "results").mkdir(parents=True)
    (job / "round-0" / "failures").mkdir(parents=True)
    rows = [result(i, {"sentiment": "positive", "keywords": [], "stars": 4}) for i in (2, 1)]
    _write(job / "round-0" / "results" / "msgbatch_1.jsonl", rows)
    _write(job / "round-0" / "failures" / "msgbatch_1.jsonl", [])
    manifest = {
        "round": 0,
        "job_dir": str(job),
        "requests": 2,
        "results_paths": [str(job / "round-0" / "results" / "msgbatch_1.jsonl")],
        "failures_paths": [str(job / "round-0" / "failures" / "msgbatch_1.jsonl")],
    }
    (job / "round-0" / "manifest.json").write_bytes(msgspec.json.encode(manifest))
    spec = {"output_schema": REVIEW_DICT, "passthrough_fields": ["product", "price"]}
    (job / "job.json").write_bytes(msgspec.json.encode(spec))


def test_finalize_writes_parquet_publishes_manifest_last_and_the_readers_find_everything(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job"
    _round_manifest(job)
    published = tmp_path / "published" / "ds=2026-11-27"
    manifest = finalize_job(
        str(job), results_format=["jsonl", "parquet"], publish_path=str(published), publisher="dag.finalize"
    )

    assert manifest["results_parquet_path"] == f"file://{job}/results.parquet"
    assert manifest["published_path"] == f"file://{published}"
    assert sorted(path.name for path in published.iterdir()) == ["manifest.json", "versions"]
    copy = msgspec.json.decode((published / "manifest.json").read_bytes())
    version = published / "versions" / copy["published_version"]
    assert sorted(path.name for path in version.iterdir()) == [
        "failures.jsonl", "failures.parquet", "manifest.json", "results.jsonl", "results.parquet",
    ]  # fmt: skip
    assert (
        copy["results_path"] == f"file://{version}/results.jsonl" and copy["published_by"] == "dag.finalize"
    )
    assert manifest["published_version"] == copy["published_version"]  # the job's own manifest says where
    # Rows are in input order, whatever order the batches returned them in.
    for source in (manifest, str(job), str(published), str(published / "manifest.json")):
        assert [row["row"] for row in read_results(source)] == [1, 2]
        table = read_table(source)
        assert table.column("row").to_pylist() == [1, 2]
        assert table.column("product").to_pylist() == ["p1", "p2"]
    assert list(read_results(manifest, which="failures")) == []
    empty = read_table(manifest, which="failures")  # no failures: the columns are still there
    assert empty.num_rows == 0 and empty.column_names[:4] == ["custom_id", "row", "product", "price"]
    with pytest.raises(FileNotFoundError, match="finalize writes the manifest last"):
        list(read_results(str(tmp_path / "nothing-here")))


def test_gather_and_retry_read_the_passthrough_fields_submit_recorded(tmp_path: Path) -> None:
    from airflow_batch import layout
    from airflow_batch.gather.gathering import chunk_inputs
    from airflow_batch.submit.retrying import original_requests

    job = as_path(str(tmp_path / "job"))
    request = b'{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[]}}'
    layout.chunk_path(job, 0, 0).parent.mkdir(parents=True)
    layout.chunk_path(job, 0, 0).write_bytes(request + b"\n" + request.replace(b'"a"', b'"b"') + b"\n")
    layout.chunk_inputs_path(job, 0, 0).parent.mkdir(parents=True)
    layout.chunk_inputs_path(job, 0, 0).write_bytes(
        b'{"custom_id":"a","row":1,"input":{"shop":"north"}}\n{"custom_id":"b","row":2}\n'
    )
    inputs = chunk_inputs(job, 0, {"chunk": 0, "chunk_path": str(layout.chunk_path(job, 0, 0))})
    assert inputs["a"].row == 1 and msgspec.json.decode(inputs["a"].input) == {"shop": "north"}
    assert (inputs["b"].row, bool(inputs["b"].input)) == (2, False)  # no passthrough fields

    failures = layout.failures_part(job, 0, "batch-1")
    failures.parent.mkdir(parents=True)
    row = {"row": 0, "batch_id": "batch-1", "round": 0, "result_type": "errored", "error_type": "api_error"}
    failures.write_bytes(
        b"".join(
            msgspec.json.encode(
                {**row, "custom_id": cid, "message": "x", "request_id": None, "retryable": True}
            )
            + b"\n"
            for cid in ("a", "b")
        )
    )
    manifest = {
        "job_dir": str(job),
        "round": 0,
        "batches": [{"batch_id": "batch-1", "chunk": 0, "chunk_path": str(layout.chunk_path(job, 0, 0))}],
    }
    carried = list(original_requests(manifest))
    assert [(msgspec.json.decode(c.input) if c.input else None, c.row) for c in carried] == [
        ({"shop": "north"}, 1),
        (None, 2),
    ]


def test_gather_validates_against_the_schema_a_pydantic_job_recorded(tmp_path: Path) -> None:
    from airflow_batch import layout
    from airflow_batch.gather.gathering import job_validator
    from airflow_batch.storage import write_json

    job = as_path(str(tmp_path / "job"))
    write_json(layout.job_spec_path(job), {"output_schema": job_schema(Review).schema})
    validator = job_validator(job)
    assert validator is not None
    assert validator.check(b'{"sentiment": "positive", "keywords": ["a"], "stars": 5}') is None
    assert validator.check(b'{"sentiment": "positive", "keywords": ["a"], "stars": 9}') is not None


def test_read_table_has_one_shape_whether_finalize_wrote_parquet_or_jsonl_only(tmp_path: Path) -> None:
    tables = {}
    for results_format in ("jsonl", "parquet"):
        job = tmp_path / results_format
        _round_manifest(job)
        manifest = finalize_job(str(job), results_format=["jsonl", results_format])
        assert bool(manifest.get("results_parquet_path")) == (results_format == "parquet")
        tables[results_format] = (read_table(manifest), read_table(manifest, which="failures"))

    (jsonl_results, jsonl_failures), (parquet_results, parquet_failures) = tables["jsonl"], tables["parquet"]
    assert jsonl_results.schema == parquet_results.schema  # flat: output properties and inputs as columns
    assert jsonl_results.to_pylist() == parquet_results.to_pylist()
    assert "sentiment" in jsonl_results.column_names and "output" not in jsonl_results.column_names
    assert jsonl_failures.schema == parquet_failures.schema


class ClosedReview(Review):
    """Review as the job's schema reads it: closed (a model's fields are all there is)."""

    model_config = ConfigDict(extra="forbid")


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    city: str = Field(min_length=1)
    postcode: str | None = None


class Invoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: str = Field(max_length=8)
    total: float = Field(ge=0)
    currency: Literal["EUR", "USD"]
    lines: list[ClosedReview] = Field(max_length=2)
    billed_to: Address | None = None


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 7),
    st.floats(-2, 7, allow_nan=False),
    st.text(max_size=9),
    st.sampled_from(["positive", "neutral", "negative", "EUR", "USD", ""]),
)
#: Any JSON value, small: what a wrong answer may put where the schema wants something else.
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _near(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``value`` (answers near the schema), sometimes anything else."""
    return st.one_of(value, value, value, _ANY)


def _obj(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Objects with each field present or not, sometimes with a property the schema does not list."""
    return st.fixed_dictionaries({}, optional={**fields, "extra": _ANY})


_REVIEWS = _obj(
    {
        "sentiment": _near(st.sampled_from(["positive", "neutral", "negative"])),
        "keywords": _near(st.lists(st.text(max_size=5), max_size=4)),
        "stars": _near(st.integers(0, 6)),
    }
)
_INVOICES = _obj(
    {
        "number": _near(st.text(max_size=10)),
        "total": _near(st.floats(-1, 1e6, allow_nan=False) | st.integers(-1, 10**6)),
        "currency": _near(st.sampled_from(["EUR", "USD"])),
        "lines": _near(st.lists(_REVIEWS, max_size=3)),
        "billed_to": _near(
            st.none() | _obj({"city": _near(st.text(max_size=4)), "postcode": _near(st.text() | st.none())})
        ),
    }
)


def _reference(schema: dict[str, Any]) -> Any:
    """The ``jsonschema`` validator of ``schema``: the independent judge of the compiled one."""
    checker = jsonschema.validators.validator_for(schema)
    return checker(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize(
    ("model", "answers"), [(ClosedReview, _REVIEWS), (Invoice, _INVOICES)], ids=["review", "invoice"]
)
def test_the_compiled_validator_judges_every_answer_as_jsonschema_and_the_model_do(
    model: type[BaseModel], answers: st.SearchStrategy[Any]
) -> None:
    validator = job_schema(model).validator
    assert validator.compiled  # the fast path is the one under test, not the jsonschema fallback
    reference = _reference(validator.schema)

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(answers, _ANY))
    def judged_alike(answer: Any) -> None:
        text = json.dumps(answer)
        verdict = validator.check(text) is None
        assert verdict == reference.is_valid(answer), (answer, validator.check(text))
        try:
            model.model_validate_json(text, strict=True)
        except ValidationError:
            assert not verdict, answer
        else:
            assert verdict, answer

    judged_alike()


@pytest.mark.parametrize("model", [ClosedReview, Invoice], ids=["review", "invoice"])
def test_the_compiled_validator_accepts_generated_instances_and_refuses_generated_violations(
    model: type[BaseModel],
) -> None:
    from airflow_batch.emulator.schema_instance import schema_instance, schema_violation

    schema = job_schema(model)
    reference = _reference(schema.validator.schema)
    kinds = set()
    for seed in range(300):
        valid = schema_instance(schema.validator.schema, seed)
        assert reference.is_valid(valid) and schema.validator.check(json.dumps(valid)) is None, valid
        broken = schema_violation(schema.validator.schema, seed)
        assert broken is not None
        value, why = broken
        assert not reference.is_valid(value), (why, value)
        assert schema.validator.check(json.dumps(value)) is not None, (why, value)
        kinds.add(why.split(" ", 1)[1].split(" ")[0])
    assert {"misses", "is", "has"} <= kinds  # missing required, wrong type/enum, extra property
