"""How the emulated models count tokens, and prompt caching with its minimum length and its TTL."""

from __future__ import annotations

import logging
import math
from typing import Any

import anthropic
import pytest
from emulator_helpers import create_and_wait, request, tokens, wait_ended

from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.emulator.prompt_cache import CacheEntry
from airflow_batch.rules.costs import price_table
from airflow_batch.submit.estimate import calibrate

NEWER = [
    "opus-4-7",
    "opus-4-8",
    "opus-5",
    "opus-5-5",
    "sonnet-5",
    "sonnet-5-5",
    "haiku-5-5",
    "fable-5",
    "fable-5-1",
]
NEWER += ["mythos-5", "mythos-5-1"]
OLDER = ["opus-4-6", "opus-4-5", "opus-4-1", "sonnet-4-6", "sonnet-4-5", "haiku-4-5", "haiku-3-5"]
TEXT = "The quick brown fox jumps over the lazy dog. " * 50  # 2,250 characters: 563 local tokens


def count(client: anthropic.Anthropic, model: str, **params: Any) -> int:
    messages = params.pop("messages", [{"role": "user", "content": TEXT}])
    return client.messages.count_tokens(model=model, messages=messages, **params).input_tokens


def test_the_model_table_holds_the_one_token_ratio_of_each_family() -> None:
    table = price_table()
    assert {family for family, entry in table.prices.items() if entry.token_ratio != 1.0} == set(NEWER)
    assert all(table.prices[family].token_ratio == pytest.approx(1.3) for family in NEWER)


def test_newest_families_count_about_30_percent_more_than_the_local_approximation(
    client: anthropic.Anthropic,
) -> None:
    local = tokens(TEXT)
    for family in NEWER:
        assert count(client, f"claude-{family}") == math.ceil(local * 1.3), family
    for family in OLDER:
        assert count(client, f"claude-{family}") == local, family


def test_count_tokens_and_result_usage_agree_for_a_cached_prompt_with_tools(
    client: anthropic.Anthropic,
) -> None:
    model = "claude-opus-4-7"
    system = [{"type": "text", "text": "Guidelines. " * 1500, "cache_control": {"type": "ephemeral"}}]
    tools = [{"name": "lookup", "description": "Look up a SKU", "input_schema": {"type": "object"}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": TEXT}]}]
    counted = count(client, model, system=system, tools=tools, messages=messages)
    usage = create_and_wait(
        client, [request("u", model=model, system=system, tools=tools, messages=messages)]
    )["u"].message.usage

    assert usage.cache_creation_input_tokens > 0
    assert usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens == counted
    assert usage.output_tokens == math.ceil(tokens(create_text(client, model)) * 1.3)


def create_text(client: anthropic.Anthropic, model: str) -> str:
    message = create_and_wait(client, [request("t", TEXT, model=model)])["t"].message
    return str(message.content[0].text)


def test_the_estimates_calibration_finds_the_emulators_ratio(client: anthropic.Anthropic) -> None:
    sample = [
        (
            {"model": "claude-opus-4-8", "messages": [{"role": "user", "content": f"{TEXT} {i}"}]},
            tokens(f"{TEXT} {i}"),
        )
        for i in range(5)
    ]

    def count_tokens(params: Any) -> int:
        return client.messages.count_tokens(**params).input_tokens

    calibration = calibrate(count_tokens, sample, logging.getLogger("test"))
    assert calibration.method == "count_tokens"
    assert calibration.ratio == pytest.approx(1.3, abs=0.005)


def cached_usage(client: anthropic.Anthropic, model: str, prefix_tokens: int) -> list[Any]:
    system = [{"type": "text", "text": "s" * (4 * prefix_tokens), "cache_control": {"type": "ephemeral"}}]
    results = create_and_wait(
        client, [request(f"c{i}", f"q{i}", model=model, system=system) for i in range(2)]
    )
    return [results[f"c{i}"].message.usage for i in range(2)]


@pytest.mark.parametrize(
    ("model", "local_minimum"),
    # Opus 4.8 counts 1.3x: 787 local tokens are ceil(1,023.1) = 1,024, its minimum; 786 are 1,022.
    [("claude-haiku-4-5", 4_096), ("claude-opus-4-8", 787)],
)
def test_a_prefix_below_the_models_minimum_is_neither_written_nor_read(
    client: anthropic.Anthropic, emu: EmulatorProcess, model: str, local_minimum: int
) -> None:
    below = cached_usage(client, model, local_minimum - 1)
    assert [(u.cache_creation_input_tokens, u.cache_read_input_tokens) for u in below] == [(0, 0), (0, 0)]
    emu.reset()
    write, read = cached_usage(client, model, local_minimum)
    assert write.cache_creation_input_tokens >= 1_024 and write.cache_read_input_tokens == 0
    assert read.cache_read_input_tokens == write.cache_creation_input_tokens


def slow_batch_usage(client: anthropic.Anthropic, emu: EmulatorProcess, ttl: str) -> list[Any]:
    """Three requests sharing a cached prefix, processed 400 simulated seconds apart."""
    system = [{"type": "text", "text": "g" * 20_000, "cache_control": {"type": "ephemeral", "ttl": ttl}}]
    emu.configure(throughput=1 / 400)
    batch = client.messages.batches.create(
        requests=[request(f"{ttl}-{i}", f"q{i}", system=system) for i in range(3)]  # type: ignore[misc]
    )
    emu.configure(throughput=1_000_000_000)  # the cache was decided on the schedule at create time
    wait_ended(client, batch.id)
    by_id = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    return [by_id[f"{ttl}-{i}"].message.usage for i in range(3)]


def test_a_long_batch_pays_5_minute_writes_again_but_not_1_hour_ones(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    five = slow_batch_usage(client, emu, "5m")
    assert [u.cache_creation.ephemeral_5m_input_tokens for u in five] == [5_000, 5_000, 5_000]
    assert [u.cache_read_input_tokens for u in five] == [0, 0, 0]
    hour = slow_batch_usage(client, emu, "1h")
    assert [u.cache_creation.ephemeral_1h_input_tokens for u in hour] == [5_000, 0, 0]
    assert [u.cache_read_input_tokens for u in hour] == [0, 5_000, 5_000]


def test_caches_are_isolated_per_workspace(client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "w" * 20_000, "cache_control": {"type": "ephemeral"}}]

    def usage(workspace: str | None) -> Any:
        options = {"workspace_id": workspace} if workspace else {}
        return create_and_wait(client, [request("x", system=system)], **options)["x"].message.usage

    assert usage(None).cache_creation_input_tokens == 5_000
    assert usage(None).cache_read_input_tokens == 5_000
    assert usage("wrkspc_other").cache_creation_input_tokens == 5_000
    assert usage("wrkspc_other").cache_read_input_tokens == 5_000


def test_a_cache_entry_lives_its_ttl_from_its_last_use() -> None:
    entry = CacheEntry(written_at=100.0, last_used_at=100.0, ttl_seconds=300.0)
    assert entry.live_at(100.0) and entry.live_at(400.0)
    assert not entry.live_at(400.1) and not entry.live_at(99.0)
    refreshed = entry.used_at(350.0, 300.0)
    assert refreshed == CacheEntry(100.0, 350.0, 300.0) and refreshed.live_at(650.0)
    assert entry.used_at(500.0, 300.0) == CacheEntry(500.0, 500.0, 300.0)  # expired: written again
    assert entry.used_at(60.0, 300.0) == CacheEntry(60.0, 100.0, 300.0)  # just before: joins
    assert entry.used_at(200.0, 3600.0).ttl_seconds == 3600.0  # keeps the longest TTL
