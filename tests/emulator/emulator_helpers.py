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


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 15) -> Any:
    """Poll until the batch has ended (deadline, not a fixed sleep) and return it."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"{batch_id} still {batch.processing_status} after {timeout}s")
        time.sleep(0.02)


def tokens(text: str) -> int:
    """Return the emulator's documented token approximation, ``ceil(len / 4)``."""
    return (len(text) + 3) // 4
