"""The estimate applies the model's minimum cacheable prompt length, as the emulator and the API do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_batch.rules.costs import price_table
from airflow_batch.storage import as_path
from airflow_batch.submit.chunking import prepare_chunks
from airflow_batch.submit.estimate import TokenTally, estimate_cost
from airflow_batch.submit.model_limits import ModelLimits

MODEL = "claude-haiku-4-5"  # minimum cacheable prompt: 4,096 tokens


def cached_requests(system_tokens: int, n: int = 5) -> list[dict[str, Any]]:
    system = [{"type": "text", "text": "S" * (4 * system_tokens), "cache_control": {"type": "ephemeral"}}]
    return [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 16,
                "system": system,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(n)
    ]


def test_table_gives_each_model_its_minimum_cacheable_length() -> None:
    limits = ModelLimits(price_table())
    assert limits.min_cacheable_tokens(MODEL) == 4_096
    assert limits.min_cacheable_tokens("claude-opus-4-8") == 1_024
    assert limits.min_cacheable_tokens("claude-unknown-9") is None
    assert ModelLimits().min_cacheable_tokens(MODEL) is None


def test_a_prefix_below_the_minimum_is_neither_written_nor_read() -> None:
    tally = TokenTally(min_cacheable=ModelLimits(price_table()).min_cacheable_tokens)
    for request in cached_requests(system_tokens=4_095):
        tally.add(request["params"])
    usage = estimate_cost(tally, price_table())["usage"]
    assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
    assert usage["input_tokens"] == 5 * (4_095 + 3)  # "question i" is 3 tokens


def test_prepared_round_estimates_caching_only_at_or_above_the_models_minimum(tmp_path: Path) -> None:
    def usage(system_tokens: int) -> dict[str, int]:
        prepared = prepare_chunks(
            cached_requests(system_tokens),
            staging=as_path(str(tmp_path / f"staging-{system_tokens}")),
            max_requests=100,
            max_bytes=10_000_000,
            limits=ModelLimits(price_table()),
        )
        return dict(estimate_cost(prepared.tally, price_table())["usage"])

    below, at = usage(4_095), usage(4_096)
    assert (below["cache_creation_input_tokens"], below["cache_read_input_tokens"]) == (0, 0)
    assert (at["cache_creation_input_tokens"], at["cache_read_input_tokens"]) == (4_096, 4 * 4_096)
