"""Validation errors, error-status mapping to SDK exceptions, and injected faults."""

from __future__ import annotations

import socket
import time
from typing import Any

import anthropic
import httpx
import pytest
from emulator_helpers import request, wait_ended

from airflow_batch.emulator.process import EmulatorProcess

HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def _params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []}
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


BAD_BODIES = {
    "empty requests": ({"requests": []}, "requests: at least one request"),
    "custom_id pattern": (
        {"requests": [request("ok"), request("a b")]},
        "requests.1: custom_id 'a b' must match ^[a-zA-Z0-9_-]{1,64}$",
    ),
    "custom_id too long": ({"requests": [request("x" * 65)]}, "requests.0: custom_id"),
    "duplicate custom_id": ({"requests": [request("a"), request("a")]}, "requests.1: custom_id 'a' is used"),
    "missing model": (
        {"requests": [{"custom_id": "a", "params": _params(model=None)}]},
        "requests.0.params.model is missing",
    ),
    "missing max_tokens": (
        {"requests": [{"custom_id": "a", "params": _params(max_tokens=None)}]},
        "requests.0.params.max_tokens is missing",
    ),
    "missing messages": (
        {"requests": [request("a"), {"custom_id": "b", "params": _params(messages=None)}]},
        "requests.1.params.messages is missing",
    ),
    "max_tokens below 1": (
        {"requests": [request("a", max_tokens=0)]},
        "requests.0: params.max_tokens must be an integer >= 1",
    ),
    "stream true": ({"requests": [request("a", stream=True)]}, "requests.0: params.stream must not be true"),
}


@pytest.mark.parametrize("body, message", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_structurally_invalid_create_is_400_and_stores_nothing(
    client: anthropic.Anthropic, emu: EmulatorProcess, body: Any, message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(requests=body["requests"])

    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert emu.batch_count() == 0


def test_malformed_json_is_400(emu: EmulatorProcess) -> None:
    response = httpx.post(f"{emu.base_url}/v1/messages/batches", content=b"{nope", headers=HEADERS)

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("There was an error parsing the body")
    assert emu.batch_count() == 0


def test_more_than_100000_requests_is_rejected(emu: EmulatorProcess) -> None:
    one = b'{"custom_id":"r%d","params":{"model":"claude-x","max_tokens":1,"messages":[]}}'
    body = b'{"requests":[' + b",".join(one % i for i in range(100_001)) + b"]}"
    response = httpx.post(f"{emu.base_url}/v1/messages/batches", content=body, headers=HEADERS, timeout=60)

    assert response.status_code == 400
    assert "at most 100,000 requests" in response.json()["error"]["message"]
    assert emu.batch_count() == 0


def test_body_over_the_limit_is_413_and_stores_nothing(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(max_body_bytes=10_000)
    with pytest.raises(anthropic.RequestTooLargeError) as caught:
        client.messages.batches.create(requests=[request(f"big{i}", "x" * 1_000) for i in range(20)])

    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert emu.batch_count() == 0


def test_a_declared_length_over_the_limit_is_answered_413_at_once_without_a_body(
    emu: EmulatorProcess,
) -> None:
    emu.configure(max_body_bytes=10_000)
    host, port = emu.base_url.removeprefix("http://").split(":")
    head = (
        "POST /v1/messages/batches HTTP/1.1\r\n"
        f"Host: {host}\r\nx-api-key: test-key\r\nanthropic-version: 2023-06-01\r\n"
        "content-type: application/json\r\ncontent-length: 1000000000000\r\n\r\n"
    )
    # The client sends the headers and nothing more: the answer must come anyway, not a hang.
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        received = b""
        while b"request_too_large" not in received:  # headers and body may come in separate reads
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        answer = received.decode(errors="replace")

    assert answer.startswith("HTTP/1.1 413"), answer
    assert "request_too_large" in answer
    assert emu.batch_count() == 0


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            b'{"requests": [{"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 1, '
            b'"messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "t", "input_schema": '
            b'{"type": "object", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}]}}]}",
            "nested too deeply",
        ),
        (b'{"requests": [{"custom_id": "caf\xe9", "params": {}}]}', "utf-8"),
    ],
    ids=["nested-100000-deep", "invalid-utf-8"],
)
def test_a_body_nested_too_deep_or_not_utf8_is_a_400_not_a_500(
    body: bytes, expected: str, emu: EmulatorProcess
) -> None:
    response = httpx.post(f"{emu.base_url}/v1/messages/batches", content=body, headers=HEADERS, timeout=60)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert expected in response.json()["error"]["message"]
    assert emu.batch_count() == 0


@pytest.mark.parametrize(
    "status, exception",
    [
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
    ],
)
def test_injected_status_maps_to_sdk_exception(
    emu: EmulatorProcess, status: int, exception: type[anthropic.APIStatusError]
) -> None:
    emu.configure(http_fault_rate=1.0, http_fault_statuses=[status], retry_after_seconds=0.01)
    with (
        anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0) as sdk,
        pytest.raises(exception) as caught,
    ):
        sdk.messages.batches.create(requests=[request("f")])

    assert caught.value.status_code == status
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.response.headers["retry-after-ms"] == "10"
    emu.configure(http_fault_rate=0.0)
    assert emu.batch_count() == 0


def test_unknown_batch_is_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_unknown")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.cancel("msgbatch_unknown")


def test_missing_api_key_is_401(emu: EmulatorProcess) -> None:
    response = httpx.get(f"{emu.base_url}/v1/messages/batches", headers={"anthropic-version": "2023-06-01"})
    bearer = httpx.get(
        f"{emu.base_url}/v1/messages/batches",
        headers={"authorization": "Bearer any", "anthropic-version": "2026-10-21"},
    )

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert bearer.status_code == 200


def test_batch_http_faults_make_one_batch_fail(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    batch = client.messages.batches.create(requests=[request("a")])
    emu.configure(batch_http_faults={batch.id: 401})

    with pytest.raises(anthropic.AuthenticationError):
        client.messages.batches.retrieve(batch.id)
    assert client.messages.batches.list().data[0].id == batch.id


def test_sdk_retries_injected_faults_without_duplicate_batch(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(
        http_fault_rate=1.0, http_fault_statuses=[429, 529], http_fault_budget=2, retry_after_seconds=0.01
    )
    batch = client.messages.batches.create(requests=[request("once")])

    assert emu.configure()["http_fault_budget"] == 0
    assert emu.batch_count() == 1
    assert [b.id for b in client.messages.batches.list()] == [batch.id]


def test_http_faults_are_reproducible_for_a_seed(emu: EmulatorProcess) -> None:
    def statuses() -> list[int]:
        emu.configure(seed=1, http_fault_rate=0.5, http_fault_statuses=[500, 529])
        with httpx.Client(base_url=emu.base_url, headers=HEADERS) as http:
            codes = [http.get("/v1/messages/batches").status_code for _ in range(20)]
        emu.configure(seed=2)
        return codes

    first = statuses()
    assert first == statuses()
    assert {200, 500, 529} == set(first)


def test_a_reset_restarts_the_fault_sequence_and_its_count(emu: EmulatorProcess) -> None:
    # What lets the tests share one emulator: after a reset, the faults come as from a new process.
    def statuses() -> list[int]:
        with httpx.Client(base_url=emu.base_url, headers=HEADERS) as http:
            return [http.get("/v1/messages/batches").status_code for _ in range(20)]

    emu.configure(http_fault_rate=0.5, http_fault_statuses=[500, 529])
    first = statuses()
    assert {200, 500, 529} == set(first)
    emu.reset()
    assert emu.stats()["http_faults_injected"] == 0
    assert statuses() == first  # the same seed, from the start again


def test_dropped_results_stream_is_observable(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    batch = client.messages.batches.create(requests=[request(f"d{i}") for i in range(50)])
    ended = wait_ended(client, batch.id)
    emu.configure(http_fault_rate=1.0, http_fault_statuses=["drop"])

    # Only the results stream is cut; other calls are unaffected by "drop".
    assert client.messages.batches.retrieve(batch.id).id == batch.id
    with httpx.Client(headers=HEADERS) as http, http.stream("GET", ended.results_url) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in response.iter_raw():
                pass


def test_latency_is_added_to_api_calls_only(emu: EmulatorProcess) -> None:
    emu.configure(latency_ms=1500)
    with httpx.Client(base_url=emu.base_url, headers=HEADERS) as http:
        started = time.monotonic()
        http.get("/_emulator/health")
        admin = time.monotonic() - started
        started = time.monotonic()
        http.get("/v1/messages/batches")
        api = time.monotonic() - started

    assert api >= 1.5 > admin


def test_config_rejects_unknown_settings_and_bad_values(emu: EmulatorProcess) -> None:
    unknown = httpx.post(f"{emu.base_url}/_emulator/config", json={"speed": 1})
    bad_rate = httpx.post(f"{emu.base_url}/_emulator/config", json={"error_rate": 2})
    bad_type = httpx.post(f"{emu.base_url}/_emulator/config", json={"error_types": ["nope_error"]})

    assert unknown.status_code == bad_rate.status_code == bad_type.status_code == 400
    assert "speed" in unknown.json()["error"]["message"]
    assert "error_rate" in bad_rate.json()["error"]["message"]
    config = httpx.get(f"{emu.base_url}/_emulator/config").json()
    assert config["error_rate"] == 0.0 and config["error_types"] == ["overloaded_error"]
