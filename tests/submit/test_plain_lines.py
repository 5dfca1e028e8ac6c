"""The submit pass's fast path: a line that decodes as a PlainRequest is valid and fingerprints alike.

``decode_plain`` lets the common line (text messages, a string system prompt, nothing else)
skip the general checks; these tests hold that it never accepts a line the general path
refuses, and that the typed params it gives hash as the general path's do (reuse keys).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from airflow_batch.reuse.fingerprint import Fingerprints
from airflow_batch.rules.params import decode_line, decode_plain
from airflow_batch.submit.validation import check_request


def line(custom_id: str = "r1", **params: Any) -> bytes:
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(params)
    return msgspec.json.encode({"custom_id": custom_id, "params": body})


PLAIN = [
    line(),
    line(system="Be brief."),
    line(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
    line("review-0000001", system="", max_tokens=1),
]
NOT_PLAIN = {
    "bad custom_id": line("a b"),
    "custom_id with a trailing newline": line("a\n"),
    "custom_id of 65 characters": line("x" * 65),
    "empty model": line(model=""),
    "max_tokens 0": line(max_tokens=0),
    "no messages": line(messages=[]),
    "empty content": line(messages=[{"role": "user", "content": ""}]),
    "system role": line(messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]),
    "content blocks": line(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    "temperature": line(temperature=0.2),
    "thinking": line(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000),
    "tools": line(tools=[{"name": "t", "input_schema": {"type": "object"}}]),
    "unknown field": line(temprature=0.2),
    "stream": line(stream=True),
    "not JSON": b"{nope",
    "invalid UTF-8": b'{"custom_id":"a","params":{"model":"\xff"}}',
}


@pytest.mark.parametrize("raw", PLAIN)
def test_a_plain_line_is_valid_and_fingerprints_as_the_general_path(raw: bytes) -> None:
    plain = decode_plain(raw)
    assert plain is not None
    assert check_request(msgspec.json.decode(raw)) is None
    fingerprints = Fingerprints()
    assert fingerprints.of(plain.params) == fingerprints.of(decode_line(raw).params)


@pytest.mark.parametrize("case", list(NOT_PLAIN))
def test_anything_else_takes_the_general_path(case: str) -> None:
    assert decode_plain(NOT_PLAIN[case]) is None
