"""The batch guide's own Chinese prompts are counted as the API's tokenizers count CJK text.

A CJK character counts one token, other text ceil(characters / 4) (``airflow_batch.rules.tokens``),
in the submit estimate and in the emulator alike, so the budget before calibration, the
context-window refusal and the cache-minimum decision agree on the guide's prompts instead of
counting them 2-4x short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import batch_guide as guide
import pytest

from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.rules.costs import price_table
from airflow_batch.rules.tokens import approx_tokens, input_tokens
from airflow_batch.storage import as_path
from airflow_batch.submit.chunking import prepare_chunks
from airflow_batch.submit.estimate import estimate_cost
from airflow_batch.submit.model_limits import ModelLimits

HAIKU = "claude-haiku-4-5-20251001"  # token_ratio 1.0: the emulator's count is the local count
#: Han ideographs, CJK punctuation, kana, Hangul syllables and fullwidth forms.
CJK = {*range(0x4E00, 0xA000), *range(0x3000, 0x3100), *range(0xAC00, 0xD7A4), *range(0xFF00, 0xFFF0)}


@pytest.fixture
def client(emulator: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emulator.base_url, api_key="guide-key") as sdk_client:
        yield sdk_client


def cjk_and_other(text: str) -> tuple[int, int]:
    cjk = sum(ord(char) in CJK for char in text)
    return cjk, len(text) - cjk


@pytest.mark.parametrize(
    "text",
    [
        guide.SYSTEM_PROMPT,
        guide.SHARED_SYSTEM,
        "对以下商品评论进行情感分析,输出 positive/negative/neutral:\n\n这款耳机音质非常棒,低音有力!",
        "こんにちは、世界。バッチ処理のテストです。",
        "배치 처리 테스트입니다. 안녕하세요!",
    ],
)
def test_cjk_text_counts_a_token_per_character_and_the_rest_four_characters_a_token(text: str) -> None:
    cjk, other = cjk_and_other(text)
    tokens = approx_tokens(text)
    assert tokens == cjk + (other + 3) // 4
    assert tokens >= 2 * ((len(text) + 3) // 4)  # what characters / 4 gave: at least 2x short
    assert approx_tokens("Classify the sentiment of this review") == 10  # English unchanged


def test_the_guides_chinese_system_prompt_is_counted_alike_by_the_estimate_and_the_emulator(
    client: anthropic.Anthropic,
) -> None:
    params = {
        "model": HAIKU,
        "system": guide.SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": "音质很好"}],
    }
    counted = client.messages.count_tokens(**params).input_tokens  # type: ignore[arg-type]
    assert counted == input_tokens(params) == approx_tokens(guide.SYSTEM_PROMPT) + 4
    assert counted > 2 * ((len(guide.SYSTEM_PROMPT) + 3) // 4 + 1)


def shared_block_requests(repeat: int) -> list[dict[str, Any]]:
    """The guide's cached-document requests with its shared system block repeated ``repeat`` times."""
    shared = guide.SHARED_SYSTEM * repeat
    requests = guide.build_cached_document_requests(["文档一的内容", "文档二的内容", "文档三的内容"])
    for request in requests:
        request["params"]["system"][0]["text"] = shared
    return requests


def test_a_chinese_block_above_the_cache_minimum_is_cached_by_the_estimate_and_the_emulator(
    client: anthropic.Anthropic, tmp_path: Path
) -> None:
    # Haiku 4.5 caches prefixes of 4,096 tokens and more: this block is about 4,900 tokens by the
    # script-aware count and about 1,500 by characters / 4, so the two counts decide differently.
    requests = shared_block_requests(210)
    shared = requests[0]["params"]["system"][0]["text"]
    assert approx_tokens(shared) >= 4_096 > (len(shared) + 3) // 4

    prepared = prepare_chunks(
        requests, staging=as_path(str(tmp_path / "staging")), max_requests=100, max_bytes=10_000_000,
        limits=ModelLimits(price_table()),
    )  # fmt: skip
    estimated = estimate_cost(prepared.tally, price_table())["usage"]

    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    guide.poll_until_ended(client, batch.id)
    usage = {r.custom_id: r.result.message.usage for r in client.messages.batches.results(batch.id)}  # type: ignore[union-attr]
    assert usage["doc-0"].cache_creation_input_tokens == estimated["cache_creation_input_tokens"] > 4_096
    assert usage["doc-1"].cache_read_input_tokens == usage["doc-2"].cache_read_input_tokens > 4_096
    assert estimated["cache_read_input_tokens"] == 2 * estimated["cache_creation_input_tokens"]


def test_a_chinese_prompt_above_the_context_window_is_refused_before_any_spend(tmp_path: Path) -> None:
    # 210,000 Chinese characters: about 210,000 tokens, above Haiku 4.5's 200,000-token window
    # (characters / 4 counted 52,500 and let it through, to fail at the API after the create).
    row = {
        "custom_id": "long-doc",
        "params": {
            "model": HAIKU,
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "文" * 210_000}],
        },
    }
    prepared = prepare_chunks(
        [row], staging=as_path(str(tmp_path / "staging")), max_requests=100, max_bytes=10_000_000,
        limits=ModelLimits(price_table()),
    )  # fmt: skip
    assert prepared.fatal
    assert "about 210,000 tokens (estimated locally), above the 200,000-token context window" in (
        prepared.report.message(prepared.rows)
    )


def test_the_emulator_refuses_the_same_chinese_prompt_as_too_long(client: anthropic.Anthropic) -> None:
    params = {"model": HAIKU, "max_tokens": 100, "messages": [{"role": "user", "content": "文" * 210_000}]}
    batch = client.messages.batches.create(requests=[{"custom_id": "long-doc", "params": params}])  # type: ignore[list-item]
    guide.poll_until_ended(client, batch.id)
    (result,) = client.messages.batches.results(batch.id)
    assert result.result.type == "errored"
    assert "prompt is too long: 210000 tokens > 200000 maximum" in result.result.error.error.message  # type: ignore[union-attr]
