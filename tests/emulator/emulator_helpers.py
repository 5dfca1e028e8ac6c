"""Helpers shared by the emulator tests."""

from __future__ import annotations

import time
from typing import Any

import anthropic


def request(custom_id: str, text: str = "Hello, emulator", **params: Any) -> dict[str, Any]:
    """Return one batch request with sensible params, overridable by keyword."""
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 15, **options: Any) -> Any:
    """Poll until the batch has ended (deadline, not a fixed sleep) and return it."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id, **options)
        if batch.processing_status == "ended":
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"{batch_id} still {batch.processing_status} after {timeout}s")
        time.sleep(0.02)


def tokens(text: str) -> int:
    """Return the emulator's documented token approximation, ``ceil(len / 4)``."""
    return (len(text) + 3) // 4


def create_and_wait(client: anthropic.Anthropic, requests: list[dict[str, Any]], **options: Any) -> Any:
    """Create a batch, wait until it has ended, and return its results by custom_id."""
    batch = client.messages.batches.create(requests=requests, **options)  # type: ignore[arg-type]
    wait_ended(client, batch.id, **options)
    return {r.custom_id: r.result for r in client.messages.batches.results(batch.id, **options)}


def raw_result_lines(client: anthropic.Anthropic, batch_id: str) -> list[bytes]:
    """Return the batch's results as the raw JSONL lines the emulator sent."""
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        return [line for line in response.http_response.read().split(b"\n") if line]
