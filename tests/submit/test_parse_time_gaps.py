"""Settings and rows that used to pass the checks before spend (issue 23, class 8): each is now a
clear error at parse (the operator's constructor) or at validation, naming the setting or the row
and the fix."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from airflow_batch.operators.submit import SubmitBatchesOperator
from airflow_batch.rules.schema import MAX_SCHEMA_DEPTH, SchemaError, job_schema
from airflow_batch.storage import as_path
from airflow_batch.submit.chunking import prepare_chunks
from airflow_batch.submit.records import records_to_requests
from airflow_batch.submit.validation import InvalidRow

RECORDS = [{"id": "a", "text": "hello"}]


def submit(**kwargs: Any) -> SubmitBatchesOperator:
    kwargs.setdefault("records", RECORDS)
    kwargs.setdefault("prompt_template", "{text}")
    kwargs.setdefault("custom_id_field", "id")
    return SubmitBatchesOperator(
        task_id="submit", output_path="/tmp/never", **{"model": "claude-haiku-4-5", **kwargs}
    )


@pytest.mark.parametrize("max_age", [math.nan, "1h", -5, 0, True, -math.inf, timedelta(0)])
def test_a_max_age_that_is_not_positive_seconds_or_a_timedelta_fails_at_parse_naming_it(max_age: Any) -> None:
    with pytest.raises(ValueError, match=r"submit: max_age must be .*got") as raised:
        submit(reuse_answers=True, max_age=max_age)
    if isinstance(max_age, str):
        assert "timedelta(hours=1)" in str(raised.value)


def test_a_max_age_of_seconds_or_a_timedelta_is_kept_in_seconds() -> None:
    assert submit(reuse_answers=True, max_age=timedelta(hours=1)).max_age == 3600.0
    assert submit(reuse_answers=True, max_age=90).max_age == 90.0


@pytest.mark.parametrize("canary", [1.5, 0.5, True, "2"])
def test_a_canary_that_is_not_a_whole_number_of_requests_fails_at_parse(canary: Any) -> None:
    with pytest.raises(ValueError, match=r"canary must be"):
        submit(canary=canary)


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}, "additionalProperties": False}
    return node


def test_a_schema_nested_too_deeply_fails_at_parse_naming_the_limit_and_the_place() -> None:
    with pytest.raises(
        SchemaError, match=rf"output_schema\.properties\.a\..*more than {MAX_SCHEMA_DEPTH} levels"
    ):
        submit(output_schema=_nested(300))
    job_schema(_nested(MAX_SCHEMA_DEPTH // 2 - 1))  # within the limit: accepted


class WithCallback(BaseModel):
    name: str
    on_done: Callable[[int], int]


def test_a_pydantic_field_that_cannot_be_a_json_schema_is_named() -> None:
    with pytest.raises(SchemaError, match=r"WithCallback: field\(s\) on_done .*cannot be a JSON Schema"):
        submit(output_schema=WithCallback)


@pytest.mark.parametrize(
    ("custom_id_from", "record", "rule"),
    [
        ("{sku}", {"sku": None, "text": "x"}, "its field 'sku' is null"),
        (lambda record: record.get("sku"), {"text": "x"}, "built no key (None)"),
        (lambda record: record.get("sku", ""), {"text": "x"}, "built an empty key"),
    ],
)
def test_a_null_or_empty_key_is_an_invalid_row_not_the_id_none(
    custom_id_from: Any, record: dict[str, Any], rule: str
) -> None:
    good = {"sku": "S-1", "text": "y"}
    rows = list(records_to_requests([record, good], prompt_template="{text}", custom_id_from=custom_id_from))
    assert isinstance(rows[0], InvalidRow) and rule in rows[0].rule and rows[0].hint
    assert not isinstance(rows[1], InvalidRow)


def test_custom_id_from_with_a_passthrough_key_fails_at_parse_instead_of_overwriting_it() -> None:
    with pytest.raises(ValueError, match=r"submit: passthrough_fields has 'key'.*rename"):
        submit(custom_id_from="{id}", passthrough_fields=["key"])


def _line(custom_id: str, **params: Any) -> bytes:
    body = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "params": {**body, **params}}).encode()


def _prepare(tmp_path: Path, lines: list[bytes]) -> Any:
    return prepare_chunks(
        lines,
        staging=as_path(str(tmp_path / "staging")),
        max_requests=1000,
        max_bytes=1_000_000,
        row_label="line",
    )


@pytest.mark.parametrize("bad_id", ["a" * 65, "abc\n", "abc\r\n", "a b"])
def test_a_custom_id_the_api_refuses_is_refused_before_spend_naming_the_line(
    tmp_path: Path, bad_id: str
) -> None:
    prepared = _prepare(tmp_path, [_line("fine"), _line(bad_id), _line("also-fine")])
    assert prepared.fatal and prepared.invalid == 1
    message = prepared.report.message(3)
    assert f"line 2 (custom_id {bad_id!r}): custom_id {bad_id!r} must match" in message
    assert "fix:" in message


def test_a_message_with_role_system_is_refused_before_spend_with_the_fix(tmp_path: Path) -> None:
    system_turn = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    prepared = _prepare(tmp_path, [_line("ok"), _line("sys", messages=system_turn)])
    assert prepared.fatal and prepared.invalid == 1
    message = prepared.report.message(2)
    assert "line 2 (custom_id 'sys'): params.messages[0].role" in message
    assert "put a system prompt in params.system" in message
