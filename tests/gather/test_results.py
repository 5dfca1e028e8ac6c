"""Unit tests of result-line parsing, rows and failure classification (no server)."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import pytest

from airflow_batch.gather.gathering import write_rows
from airflow_batch.rows.block import BlockSettings, InputMeta
from airflow_batch.rows.failures import DEFAULT_RETRYABLE, classify_failure
from airflow_batch.rows.gathered import SLICE_BYTES, block_rows
from airflow_batch.rules.schema import job_schema

SUCCEEDED = (
    b'{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Hello"},'
    b'{"type":"tool_use","id":"t","name":"f","input":{"x":1}},{"type":"text","text":" world"}],'
    b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":5,'
    b'"cache_creation_input_tokens":7,"cache_read_input_tokens":3,"cache_creation":'
    b'{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":4},"service_tier":"batch"}}}}'
)
ERRORED = (
    b'{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":'
    b'{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}}}'
)
INVALID = (
    b'{"custom_id":"c","result":{"type":"errored","error":{"type":"error","error":'
    b'{"type":"invalid_request_error","message":"bad"},"request_id":"req_2"}}}'
)
EXPIRED = b'{"custom_id":"d","result":{"type":"expired"}}'
CANCELED = b'{"custom_id":"e","result":{"type":"canceled"}}'


@pytest.mark.parametrize(
    "error_type", sorted(DEFAULT_RETRYABLE - {"expired", "missing", "canceled_by_timeout"})
)
def test_transient_error_types_are_retryable(error_type: str) -> None:
    assert classify_failure("errored", error_type, canceled_by_timeout=False)


# Failures that would fail again unchanged: the request or the account must be fixed first.
NOT_RETRYABLE = (
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "billing_error",
    "not_found_error",
    "request_too_large",
    "invalid_input",
    "some_future_error",
)


@pytest.mark.parametrize("error_type", NOT_RETRYABLE)
def test_request_and_account_errors_are_not_retryable(error_type: str) -> None:
    assert not classify_failure("errored", error_type, canceled_by_timeout=False)


def test_expired_missing_and_our_own_timeout_cancel_are_retryable_but_a_user_cancel_is_not() -> None:
    assert classify_failure("expired", None, canceled_by_timeout=False)
    assert classify_failure("missing", None, canceled_by_timeout=False)
    assert classify_failure("canceled", None, canceled_by_timeout=True)
    assert not classify_failure("canceled", None, canceled_by_timeout=False)
    assert not classify_failure("invalid_input", None, canceled_by_timeout=False)


def test_unknown_error_type_is_not_retried_unless_configured() -> None:
    assert not classify_failure("errored", "brand_new_error", canceled_by_timeout=False)
    assert classify_failure(
        "errored", "brand_new_error", canceled_by_timeout=False, retryable_types={"brand_new_error"}
    )
    assert not classify_failure(
        "errored", "overloaded_error", canceled_by_timeout=False, retryable_types={"api_error"}
    )


def rows_of(*lines: bytes, **settings: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the decoded result and failure rows of result lines, as gather writes them."""
    settings.setdefault("batch_id", "b")
    settings.setdefault("round_number", 0)
    rows = block_rows(b"\n".join(lines) + b"\n", BlockSettings(**settings), set())
    return (
        [msgspec.json.decode(line) for line in rows.results.splitlines()],
        [msgspec.json.decode(line) for line in rows.failures.splitlines()],
    )


def answer(custom_id: str = "x", content: Any = "Hi", stop_reason: str = "end_turn", **usage: Any) -> bytes:
    """Return the result line of a succeeded request."""
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    return msgspec.json.encode(
        {
            "custom_id": custom_id,
            "result": {
                "type": "succeeded",
                "message": {
                    "id": "msg_1",
                    "model": "claude-haiku-4-5",
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
                },
            },
        }
    )


def test_result_row_joins_text_blocks_and_sums_cache_writes_by_lifetime() -> None:
    results, failures = rows_of(SUCCEEDED, batch_id="msgbatch_1", round_number=2)
    assert failures == []
    assert results == [
        {
            "custom_id": "a",
            "row": None,
            "batch_id": "msgbatch_1",
            "round": 2,
            "model": "claude-haiku-4-5",
            "text": "Hello world",
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_creation_input_tokens": 7,
                "cache_creation_1h_input_tokens": 4,
                "cache_read_input_tokens": 3,
            },
            "tool_calls": [{"id": "t", "name": "f", "input": {"x": 1}}],
        }
    ]


def test_result_row_keeps_full_content_only_when_asked() -> None:
    (plain,), _ = rows_of(SUCCEEDED)
    assert "content" not in plain
    (row,), _ = rows_of(SUCCEEDED, include_content=True)
    assert [block["type"] for block in row["content"]] == ["text", "tool_use", "text"]
    assert row["content"][1]["input"] == {"x": 1}


def test_rows_carry_the_input_row_and_passthrough_fields_of_their_request() -> None:
    inputs = {
        "a": InputMeta("a", 7, msgspec.Raw(b'{"sku":"p-1","lang":"ja"}')),
        "b": InputMeta("b", 8, msgspec.Raw(b'{"sku":"p-2","lang":"de"}')),
    }
    (result,), (failure,) = rows_of(SUCCEEDED, ERRORED, inputs=inputs)
    assert (result["row"], result["input"]) == (7, {"sku": "p-1", "lang": "ja"})
    assert (failure["row"], failure["input"]) == (8, {"sku": "p-2", "lang": "de"})


def test_failure_rows_carry_error_type_message_request_id_and_classification() -> None:
    _, failures = rows_of(ERRORED, INVALID, EXPIRED, round_number=1)
    errored, invalid, expired = failures
    assert (
        errored["result_type"],
        errored["error_type"],
        errored["message"],
        errored["request_id"],
        errored["retryable"],
    ) == ("errored", "overloaded_error", "Overloaded", "req_1", True)
    assert (invalid["error_type"], invalid["retryable"]) == ("invalid_request_error", False)
    assert (expired["result_type"], expired["error_type"], expired["retryable"]) == ("expired", None, True)
    _, (canceled,) = rows_of(CANCELED, canceled_by_timeout=True)
    assert (canceled["result_type"], canceled["retryable"]) == ("canceled", True)
    _, (user_canceled,) = rows_of(CANCELED)
    assert user_canceled["retryable"] is False


REVIEW_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["sentiment", "stars", "keywords"],
    "additionalProperties": False,
}


def test_a_valid_answer_gets_its_output_and_an_invalid_one_is_a_retryable_failure_naming_the_path() -> None:
    validator = job_schema(REVIEW_SCHEMA).validator
    good = '{"sentiment": "positive", "stars": 5, "keywords": ["fast"]}'
    results, failures = rows_of(
        answer("ok", good),
        answer("enum", '{"sentiment": "angry", "stars": 2, "keywords": []}'),
        answer("prose", "I think it is positive"),
        answer("cut", '{"sentiment": "posi', stop_reason="max_tokens"),
        validator=validator,
    )
    assert [(r["custom_id"], r["output"], r["text"]) for r in results] == [
        ("ok", {"sentiment": "positive", "stars": 5, "keywords": ["fast"]}, good)
    ]
    by_id = {f["custom_id"]: f for f in failures}
    assert {f["result_type"] for f in failures} == {"invalid_output"}
    assert "$.sentiment" in by_id["enum"]["message"] and by_id["enum"]["retryable"] is True
    assert "not JSON" in by_id["prose"]["message"] and by_id["prose"]["retryable"] is True
    assert "raise max_tokens" in by_id["cut"]["message"] and by_id["cut"]["retryable"] is False
    # The answer was billed: the failure keeps its text and usage, and usage is summed.
    assert (
        by_id["prose"]["text"] == "I think it is positive" and by_id["prose"]["usage"]["output_tokens"] == 5
    )


def test_the_validator_catches_each_rule_of_the_schema() -> None:
    check = job_schema(REVIEW_SCHEMA).validator.check
    assert check(b'{"sentiment": "mixed", "stars": 3, "keywords": []}') is None
    assert check(b'{"sentiment": "mixed", "stars": 9, "keywords": []}') is not None  # maximum
    assert check(b'{"sentiment": "mixed", "stars": 3, "keywords": ["a", "b", "c", "d"]}') is not None
    assert check(b'{"sentiment": "mixed", "stars": 3}') is not None  # required
    assert check(b'{"sentiment": "mixed", "stars": 3, "keywords": [], "extra": 1}') is not None
    assert check(b'{"sentiment": "mixed", "stars": 3.5, "keywords": []}') is not None  # integer


def test_tool_calls_are_a_result_with_their_inputs() -> None:
    blocks = [
        {"type": "thinking", "thinking": "secret", "signature": "s"},
        {"type": "text", "text": "Looking it up."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"sku": "p-1"}},
    ]
    (row,), failures = rows_of(answer("t", blocks, stop_reason="tool_use"))
    assert failures == []
    assert row["stop_reason"] == "tool_use" and row["text"] == "Looking it up."  # thinking is never text
    assert row["tool_calls"] == [{"id": "toolu_1", "name": "lookup", "input": {"sku": "p-1"}}]


def test_paused_refused_and_context_window_stops_are_failures_of_their_own_kinds() -> None:
    paused_blocks = [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
    ]
    _, failures = rows_of(
        answer("p", paused_blocks, stop_reason="pause_turn", server_tool_use={"web_search_requests": 1}),
        answer("r", "I can't help with that.", stop_reason="refusal"),
        answer("w", "partial", stop_reason="model_context_window_exceeded"),
    )
    by_id = {f["custom_id"]: f for f in failures}
    assert (by_id["p"]["result_type"], by_id["p"]["retryable"]) == ("paused", True)
    assert by_id["p"]["content"] == paused_blocks  # the retry round continues the turn from it
    assert by_id["p"]["usage"]["web_search_requests"] == 1
    assert (by_id["r"]["result_type"], by_id["r"]["retryable"]) == ("refused", False)
    assert (by_id["w"]["result_type"], by_id["w"]["retryable"]) == ("context_window_exceeded", False)


def test_usage_is_summed_per_model_price_tier_and_residency() -> None:
    rows = block_rows(
        b"\n".join(
            [
                answer("short"),
                answer("long", input_tokens=250_000),
                answer("us", inference_geo="us"),
                answer("global", inference_geo="global"),
            ]
        ),
        BlockSettings("b", 0, long_prompt_above=lambda model: 200_000, residency_geos=frozenset({"us"})),
        set(),
    )
    assert sorted(rows.usage_by_model) == [
        "claude-haiku-4-5",
        "claude-haiku-4-5#long-prompt",
        "claude-haiku-4-5@us",
    ]
    assert rows.usage_by_model["claude-haiku-4-5"]["input_tokens"] == 20  # short and global


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_write_rows_splits_lines_across_any_chunking_and_reports_missing_ids(chunk_size: int) -> None:
    # The last line has no newline, as the API may end a stream.
    stream = b"\n".join([SUCCEEDED, ERRORED, INVALID, EXPIRED, CANCELED, SUCCEEDED])
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    results, failures = io.BytesIO(), io.BytesIO()
    inputs = {custom_id: InputMeta(custom_id) for custom_id in "abcdef"}
    stats = write_rows(chunks, results, failures, BlockSettings("b", 0, inputs=inputs))
    result_rows = [msgspec.json.decode(line) for line in results.getvalue().splitlines()]
    failure_rows = [msgspec.json.decode(line) for line in failures.getvalue().splitlines()]
    assert [r["custom_id"] for r in result_rows] == ["a"]  # the repeated line is dropped
    assert sorted((r["custom_id"], r["result_type"]) for r in failure_rows) == [
        ("b", "errored"),
        ("c", "errored"),
        ("d", "expired"),
        ("e", "canceled"),
        ("f", "missing"),
    ]
    assert stats.result_counts == {"succeeded": 1, "errored": 2, "expired": 1, "canceled": 1, "missing": 1}
    assert stats.error_types == {"overloaded_error": 1, "invalid_request_error": 1}
    assert stats.retryable == 3  # overloaded, expired, missing
    assert stats.usage_by_model["claude-haiku-4-5"]["cache_read_input_tokens"] == 3


def _line(kind: bytes, custom_id: str) -> bytes:
    """Return the result line ``kind`` for another ``custom_id``."""
    return msgspec.json.encode({**msgspec.json.decode(kind), "custom_id": custom_id})


def test_a_block_of_many_slices_keeps_first_lines_across_slices_and_blocks() -> None:
    # Over three slices of lines; one id repeats within the block (in a later slice) and one
    # repeats an id of an earlier block: each keeps its first line only.
    kinds = [SUCCEEDED, ERRORED, INVALID, EXPIRED, CANCELED]
    count = 3 * SLICE_BYTES // 100  # lines of 50 to 350 bytes
    lines = [_line(kinds[i % 5], f"id-{i:06d}") for i in range(count)]
    lines.insert(0, _line(SUCCEEDED, "earlier-block"))
    lines.append(_line(INVALID, "id-000000"))  # first seen as SUCCEEDED, slices earlier
    block = b"\n".join(lines) + b"\n"
    assert len(block) > 3 * SLICE_BYTES

    seen = {"earlier-block"}
    rows = block_rows(block, BlockSettings("b", 2), seen)

    assert seen == {"earlier-block"} | {f"id-{i:06d}" for i in range(count)}
    results = [msgspec.json.decode(line) for line in rows.results.splitlines()]
    failures = [msgspec.json.decode(line) for line in rows.failures.splitlines()]
    assert [r["custom_id"] for r in results] == [f"id-{i:06d}" for i in range(0, count, 5)]
    assert results[0]["text"] == "Hello world" and results[0]["round"] == 2
    assert sorted(r["custom_id"] for r in failures) == sorted(f"id-{i:06d}" for i in range(count) if i % 5)
    per_kind = -(-count // 5)
    assert rows.result_counts["succeeded"] == len(results) == per_kind
    assert rows.result_counts["errored"] == len([i for i in range(count) if i % 5 in (1, 2)])
    assert rows.retryable == len([i for i in range(count) if i % 5 in (1, 3)])  # overloaded, expired
    assert rows.usage_by_model["claude-haiku-4-5"]["input_tokens"] == 10 * per_kind


def test_a_corrupt_line_in_a_later_slice_is_one_invalid_output_row_of_its_custom_id() -> None:
    count = 2 * SLICE_BYTES // len(SUCCEEDED)
    lines = [SUCCEEDED.replace(b'"a"', b'"id-%06d"' % i, 1) for i in range(count)]
    block = b"\n".join(lines) + b'\n{"custom_id": "x", trun\n'
    rows = block_rows(block, BlockSettings("b7", 0), set())
    assert rows.result_counts == {"succeeded": count, "invalid_output": 1}
    (failure,) = [msgspec.json.decode(line) for line in rows.failures.splitlines()]
    assert failure["custom_id"] == "x" and failure["result_type"] == "invalid_output"
    assert "the result line cannot be read" in failure["message"] and failure["retryable"]


def test_write_rows_reports_the_request_of_a_line_without_a_readable_id_missing() -> None:
    results, failures = io.BytesIO(), io.BytesIO()
    settings = BlockSettings("b", 0, inputs={"a": InputMeta("a", 1), "x": InputMeta("x", 2)})
    write_rows([SUCCEEDED + b"\n{not json\n"], results, failures, settings)
    (failure,) = [msgspec.json.decode(line) for line in failures.getvalue().splitlines()]
    assert (failure["custom_id"], failure["row"], failure["result_type"]) == ("x", 2, "missing")
    assert len(results.getvalue().splitlines()) == 1


def test_single_text_block_is_copied_verbatim_and_stays_the_same_string() -> None:
    text = 'line one\nline "two" \u00e9\u4e2d \\ end'
    line = answer("x", [{"type": "text", "text": text, "citations": None}])
    for include_content in (False, True):
        (row,), _ = rows_of(line, include_content=include_content)
        assert row["text"] == text
        assert row["usage"]["cache_read_input_tokens"] == 0  # absent counts are 0
