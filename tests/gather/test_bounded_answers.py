"""One bad answer is one ``invalid_output`` row, in bounded time, never a failed batch.

Each test gathers a block of real result lines through ``block_rows`` (the gather's own path):
a hostile answer sits between two good ones, and the good ones must still be results. The
wall-clock bounds are generous for a loaded 2-core machine; the bugs they guard took > 30 s
(catastrophic backtracking) or raised (RecursionError, a malformed line failing the batch).
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest

from airflow_batch.rows.block import BlockSettings
from airflow_batch.rows.gathered import block_rows
from airflow_batch.rules.schema import SchemaError, job_schema

BOUND_SECONDS = 5.0

HOSTILE_PATTERN = "^(a+)+$"


def _closed_object(name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "additionalProperties": False}


# The same property checked by the compiled msgspec types, and by the jsonschema fallback (an
# anyOf over two objects is something msgspec types cannot state).
PATTERN_SCHEMAS = {
    "compiled": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": HOSTILE_PATTERN}},
        "required": ["code"],
        "additionalProperties": False,
    },
    "fallback": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": HOSTILE_PATTERN},
            "extra": {"anyOf": [_closed_object("x"), _closed_object("y")]},
        },
        "required": ["code"],
        "additionalProperties": False,
    },
}
DEEP_SCHEMA = {  # the fallback validator, with a property of any JSON value
    "type": "object",
    "properties": {
        "tree": {},
        "extra": PATTERN_SCHEMAS["fallback"]["properties"]["extra"],
    },
    "additionalProperties": False,
}


def line_of(custom_id: str, text_literal: bytes, blocks: bytes | None = None) -> bytes:
    """Return a succeeded result line whose text block is the JSON string literal ``text_literal``."""
    content = blocks if blocks is not None else b'[{"type":"text","text":%s}]' % text_literal
    return (
        b'{"custom_id":"%s","result":{"type":"succeeded","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"claude-haiku-4-5","content":%s,"stop_reason":"end_turn",'
        b'"usage":{"input_tokens":10,"output_tokens":5}}}}\n' % (custom_id.encode(), content)
    )


def literal(answer: Any) -> bytes:
    """Return an answer (a JSON value) as the string literal a text block carries."""
    return json.dumps(json.dumps(answer)).encode()


def gather(block: bytes, schema: Any = None) -> tuple[dict[str, int], list[dict[str, Any]], float]:
    settings = BlockSettings("msgbatch_1", 0, validator=job_schema(schema).validator if schema else None)
    start = time.perf_counter()
    rows = block_rows(block, settings, set())
    elapsed = time.perf_counter() - start
    failures = [msgspec.json.decode(line) for line in rows.failures.splitlines()]
    return rows.result_counts, failures, elapsed


def around(bad: bytes, good: bytes) -> bytes:
    """Return ``bad`` between two good lines (ids ``before`` and ``after``)."""
    return good.replace(b'"ok"', b'"before"', 1) + bad + good.replace(b'"ok"', b'"after"', 1)


@pytest.mark.parametrize("path", sorted(PATTERN_SCHEMAS))
def test_a_pattern_with_catastrophic_backtracking_fails_one_answer_in_bounded_time(path: str) -> None:
    schema = PATTERN_SCHEMAS[path]
    assert job_schema(schema).validator.compiled is (path == "compiled")
    hostile = [line_of(f"bad-{n}", literal({"code": "a" * n + "!"})) for n in (41, 60, 5_000)]
    block = around(b"".join(hostile), line_of("ok", literal({"code": "aaa"})))
    counts, failures, elapsed = gather(block, schema)
    assert counts == {"succeeded": 2, "invalid_output": 3}
    assert [f["custom_id"] for f in failures] == ["bad-41", "bad-60", "bad-5000"]
    assert all("code" in f["message"] for f in failures)
    assert elapsed < BOUND_SECONDS


def test_a_pattern_a_linear_time_engine_cannot_run_is_refused_at_parse_naming_its_path() -> None:
    schema = {
        "type": "object",
        "properties": {"word": {"type": "string", "pattern": r"^(\w+) \1$"}},
        "additionalProperties": False,
    }
    with pytest.raises(SchemaError, match=r"output_schema\.properties\.word\.pattern: .*linear time"):
        job_schema(schema)


@pytest.mark.parametrize("depth", [5_000, 50_000])
def test_a_deeply_nested_answer_is_one_invalid_output_row_on_the_fallback_validator(depth: int) -> None:
    assert not job_schema(DEEP_SCHEMA).validator.compiled
    deep = b'"{\\"tree\\":' + b"[" * depth + b"]" * depth + b'}"'
    block = around(line_of("deep", deep), line_of("ok", literal({"tree": [1]})))
    counts, failures, elapsed = gather(block, DEEP_SCHEMA)
    assert counts == {"succeeded": 2, "invalid_output": 1}
    assert failures[0]["custom_id"] == "deep" and "nested too deeply" in failures[0]["message"]
    assert elapsed < BOUND_SECONDS


@pytest.mark.parametrize("schema", [None, PATTERN_SCHEMAS["compiled"]], ids=["no-schema", "schema"])
def test_a_deeply_nested_tool_input_is_one_failed_row(schema: Any) -> None:
    deep = b"[" * 5_000 + b"]" * 5_000
    blocks = b'[{"type":"tool_use","id":"t1","name":"f","input":{"x":%s}}]' % deep
    good = line_of("ok", literal({"code": "aaa"}))
    counts, failures, elapsed = gather(around(line_of("deep", b"", blocks), good), schema)
    assert counts == {"succeeded": 2, "invalid_output": 1}
    assert failures[0]["custom_id"] == "deep"
    assert elapsed < BOUND_SECONDS


BAD_TEXT = {
    "lone high surrogate": b'"{\\"code\\": \\"a\\ud800\\"}"',
    "lone low surrogate": b'"{\\"code\\": \\"a\\udc00\\"}"',
    "invalid UTF-8": b'"{\\"code\\": \\"a\xff\\"}"',
    "truncated line": b'"{\\"code\\": \\"a',
}


@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
@pytest.mark.parametrize("schema", [None, PATTERN_SCHEMAS["compiled"]], ids=["no-schema", "schema"])
def test_a_line_that_is_not_valid_json_or_utf8_is_one_failed_row_not_a_failed_batch(
    kind: str, schema: Any
) -> None:
    good = line_of("ok", literal({"code": "aaa"}))
    counts, failures, elapsed = gather(around(line_of("bad", BAD_TEXT[kind]), good), schema)
    assert counts == {"succeeded": 2, "invalid_output": 1}
    (failure,) = failures
    assert failure["custom_id"] == "bad" and failure["result_type"] == "invalid_output"
    assert "text" not in failure  # nothing unreadable is copied on
    assert elapsed < BOUND_SECONDS


def test_a_succeeded_line_without_a_message_is_one_failed_row() -> None:
    good = line_of("ok", literal({"code": "aaa"}))
    bad = b'{"custom_id":"bad","result":{"type":"succeeded"}}\n'
    counts, failures, _ = gather(around(bad, good), PATTERN_SCHEMAS["compiled"])
    assert counts == {"succeeded": 2, "invalid_output": 1}
    assert failures[0]["custom_id"] == "bad" and "has no message" in failures[0]["message"]
