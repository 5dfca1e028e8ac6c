"""Request files the whole-job tests write: one small "Say <custom_id>." request per line."""

from __future__ import annotations

from pathlib import Path

import msgspec


def write_say_requests(path: Path, n: int, *, max_tokens: int = 32) -> list[str]:
    """Write ``n`` requests ``req-000``, ``req-001``, ... to ``path`` (JSONL); return their ids."""
    ids = [f"req-{i:03d}" for i in range(n)]
    with path.open("wb") as out:
        for custom_id in ids:
            params = {
                "model": "claude-haiku-4-5",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Say {custom_id}."}],
            }
            out.write(msgspec.json.encode({"custom_id": custom_id, "params": params}) + b"\n")
    return ids
