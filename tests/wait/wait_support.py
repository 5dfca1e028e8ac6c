"""Helpers of the wait tests: requests of chosen sizes, triggers run to their event, polling waits."""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_batch.triggers.batches import BatchesTrigger


def batch_requests(size: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"say {i}"}],
            },
        }
        for i in range(size)
    ]


async def first_event(trigger: BatchesTrigger, deadline: float = 60.0) -> dict[str, Any]:
    """Run ``trigger`` until its first event (at most ``deadline`` seconds); return the payload."""

    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("trigger ended without an event")

    return await asyncio.wait_for(run(), deadline)
