"""Unit tests of result-line parsing, rows and failure classification (no server)."""

from __future__ import annotations

import io

import msgspec
import pytest

from airflow_batch.gather.gathering import write_rows
from airflow_batch.gather.rows import (
    DEFAULT_RETRYABLE,
    SLICE_BYTES,
    BlockSettings,
    block_rows,
    classify_failure,
    line_decoder,
    line_with_content_decoder,
    to_failure_row,
    to_result_row,
)

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


def test_result_row_joins_text_blocks_and_sums_cache_writes_by_lifetime() -> None:
    row = to_result_row(line_decoder.decode(SUCCEEDED), batch_id="msgbatch_1", round_number=2)
    data = msgspec.json.decode(msgspec.json.encode(row))
    assert data == {
        "custom_id": "a",
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
    }


def test_result_row_keeps_full_content_only_when_asked() -> None:
    row = to_result_row(line_with_content_decoder.decode(SUCCEEDED), batch_id="b", round_number=0)
    content = msgspec.json.decode(msgspec.json.encode(row))["content"]
    assert [block["type"] for block in content] == ["text", "tool_use", "text"]
    assert content[1]["input"] == {"x": 1}


def test_failure_rows_carry_error_type_message_request_id_and_classification() -> None:
    errored = to_failure_row(line_decoder.decode(ERRORED), batch_id="b", round_number=1)
    assert (
        errored.result_type,
        errored.error_type,
        errored.message,
        errored.request_id,
        errored.retryable,
    ) == (
        "errored",
        "overloaded_error",
        "Overloaded",
        "req_1",
        True,
    )
    invalid = to_failure_row(line_decoder.decode(INVALID), batch_id="b", round_number=1)
    assert (invalid.error_type, invalid.retryable) == ("invalid_request_error", False)
    expired = to_failure_row(line_decoder.decode(EXPIRED), batch_id="b", round_number=1)
    assert (expired.result_type, expired.error_type, expired.retryable) == ("expired", None, True)
    canceled = to_failure_row(
        line_decoder.decode(CANCELED), batch_id="b", round_number=1, canceled_by_timeout=True
    )
    assert (canceled.result_type, canceled.retryable) == ("canceled", True)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_write_rows_splits_lines_across_any_chunking_and_reports_missing_ids(chunk_size: int) -> None:
    # The last line has no newline, as the API may end a stream.
    stream = b"\n".join([SUCCEEDED, ERRORED, INVALID, EXPIRED, CANCELED, SUCCEEDED])
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    results, failures = io.BytesIO(), io.BytesIO()
    stats = write_rows(
        chunks,
        results,
        failures,
        batch_id="b",
        round_number=0,
        expected_ids={"a", "b", "c", "d", "e", "f"},
    )
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


def test_a_corrupt_line_in_a_later_slice_names_the_batch() -> None:
    block = (SUCCEEDED + b"\n") * (2 * SLICE_BYTES // len(SUCCEEDED)) + b'{"custom_id": "x", trun\n'
    with pytest.raises(ValueError, match="batch b7: a results line is not valid JSON"):
        block_rows(block, BlockSettings("b7", 0), set())


def test_write_rows_names_the_batch_of_a_corrupt_line() -> None:
    with pytest.raises(ValueError, match="batch b"):
        write_rows(
            [b"{not json\n"], io.BytesIO(), io.BytesIO(), batch_id="b", round_number=0, expected_ids=None
        )


def test_single_text_block_is_copied_verbatim_and_stays_the_same_string() -> None:
    text = 'line one\nline "two" \u00e9\u4e2d \\ end'
    line = msgspec.json.encode(
        {
            "custom_id": "x",
            "result": {
                "type": "succeeded",
                "message": {
                    "model": "claude-haiku-4-5",
                    "content": [{"type": "text", "text": text, "citations": None}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                },
            },
        }
    )
    for decoder in (line_decoder, line_with_content_decoder):
        row = to_result_row(decoder.decode(line), batch_id="b", round_number=0)
        decoded = msgspec.json.decode(msgspec.json.encode(row))
        assert decoded["text"] == text
        assert decoded["usage"]["cache_read_input_tokens"] == 0  # absent counts are 0
