"""The price of each model family against the pricing page, and how the surcharges stack.

``PRICING_PAGE`` is copied from the Anthropic pricing page (platform.claude.com/docs/en/
about-claude/pricing, the stored copy of 2026-11), independently of ``data/prices.json``:
the shipped table must agree with it figure by figure.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

from airflow_batch.manifest import Usage, empty_usage
from airflow_batch.rules.costs import model_family, price_table, usage_key

MILLION = 1_000_000

#: USD per million tokens, standard API: input, 5-minute write, 1-hour write, cache read, output.
PRICING_PAGE: dict[str, tuple[float, float, float, float, float]] = {
    "fable-5-1": (10, 12.50, 20, 0.25, 50),
    "mythos-5-1": (10, 12.50, 20, 0.25, 50),
    "fable-5": (10, 12.50, 20, 1, 50),
    "mythos-5": (10, 12.50, 20, 1, 50),
    "opus-5-5": (4, 5, 8, 0.20, 20),
    "opus-5": (5, 6.25, 10, 0.50, 25),
    "opus-4-8": (5, 6.25, 10, 0.50, 25),
    "opus-4-7": (5, 6.25, 10, 0.50, 25),
    "opus-4-6": (5, 6.25, 10, 0.50, 25),
    "opus-4-5": (5, 6.25, 10, 0.50, 25),
    "opus-4-1": (15, 18.75, 30, 1.50, 75),
    "opus-4": (15, 18.75, 30, 1.50, 75),
    "sonnet-5-5": (2, 2.50, 4, 0.10, 10),
    "sonnet-5": (2, 2.50, 4, 0.20, 10),
    "sonnet-4-6": (3, 3.75, 6, 0.30, 15),
    "sonnet-4-5": (3, 3.75, 6, 0.30, 15),
    "sonnet-4": (3, 3.75, 6, 0.30, 15),
    "haiku-5-5": (0.10, 0.125, 0.20, 0.01, 0.50),
    "haiku-4-5": (1, 1.25, 2, 0.10, 5),
    "haiku-3-5": (0.80, 1, 1.60, 0.08, 4),
}
#: Haiku 5.5 above 100,000 prompt tokens (the whole request at these rates).
HAIKU_5_5_LONG = (0.50, 0.625, 1, 0.05, 2.50)
#: Cache-read multiplier of input where the page does not say the usual 0.1x.
CACHE_READ_MULTIPLIERS = {"opus-5-5": 0.05, "sonnet-5-5": 0.05, "fable-5-1": 0.025, "mythos-5-1": 0.025}


def usage(**tokens: int) -> Usage:
    u = empty_usage()
    u.update(tokens)  # type: ignore[typeddict-item]
    return u


def one_million_of_each() -> Usage:
    """A million tokens of every token type (the 5-minute and 1-hour writes a million each)."""
    return usage(
        input_tokens=MILLION,
        output_tokens=MILLION,
        cache_creation_input_tokens=2 * MILLION,
        cache_creation_1h_input_tokens=MILLION,
        cache_read_input_tokens=MILLION,
    )


def shipped_families() -> list[str]:
    raw = json.loads(resources.files("airflow_batch").joinpath("data/prices.json").read_text())
    return list(raw["families"])


def test_the_table_has_every_family_of_the_pricing_page_and_no_other() -> None:
    assert sorted(shipped_families()) == sorted(PRICING_PAGE)


@pytest.mark.parametrize("family", sorted(PRICING_PAGE))
def test_each_family_costs_what_the_pricing_page_says_at_standard_and_batch_prices(family: str) -> None:
    input_, write_5m, write_1h, read, output = PRICING_PAGE[family]
    cost = price_table().cost({f"claude-{family}": one_million_of_each()})

    standard = input_ + write_5m + write_1h + read + output
    assert cost["standard_usd"] == pytest.approx(standard)
    assert cost["batch_usd"] == pytest.approx(standard / 2)  # 50% off every token type
    assert cost["priced"] is True


@pytest.mark.parametrize("family", sorted(PRICING_PAGE))
def test_a_dated_model_id_prices_like_its_family(family: str) -> None:
    table = price_table()
    dated = f"claude-{family}-20260901"

    assert model_family(dated) == family
    assert table.price_for(dated) == table.price_for(f"claude-{family}") == table.prices[family]
    assert table.cost({dated: one_million_of_each()}) == table.cost(
        {f"claude-{family}": one_million_of_each()}
    )


def test_the_legacy_dated_id_form_still_finds_its_family() -> None:
    table = price_table()
    assert table.price_for("claude-3-5-haiku-20241022") == table.prices["haiku-3-5"]
    assert table.price_for("claude-haiku-4-5-20251001") == table.prices["haiku-4-5"]


@pytest.mark.parametrize("family", sorted(PRICING_PAGE))
def test_cache_reads_cost_the_models_own_multiplier_of_input(family: str) -> None:
    price = price_table().prices[family]
    multiplier = CACHE_READ_MULTIPLIERS.get(family, 0.1)  # Fable 5 and Mythos 5: the usual 0.1x
    assert price.cache_read == pytest.approx(price.input * multiplier)
    assert price.cache_write_5m == pytest.approx(price.input * 1.25)
    assert price.cache_write_1h == pytest.approx(price.input * 2)


def test_an_override_can_give_a_model_its_own_cache_read_multiplier() -> None:
    table = price_table({"my-model": {"input": 4, "output": 20, "cache_read_multiplier": 0.025}})
    price = table.price_for("my-model")
    assert price is not None and price.cache_read == pytest.approx(0.1)


def test_haiku_5_5_long_prompt_tier_applies_only_above_100_000_input_tokens() -> None:
    table = price_table()
    price = table.price_for("claude-haiku-5-5-20261015")
    assert price is not None and price.long_prompt_above == 100_000
    assert not price.is_long_prompt(100_000) and price.is_long_prompt(100_001)
    assert all(table.prices[f].long_prompt_rates is None for f in PRICING_PAGE if f != "haiku-5-5")

    short = table.cost({usage_key("claude-haiku-5-5"): one_million_of_each()})
    long = table.cost({usage_key("claude-haiku-5-5", long_prompt=True): one_million_of_each()})
    assert short["standard_usd"] == pytest.approx(sum(PRICING_PAGE["haiku-5-5"]))
    assert long["standard_usd"] == pytest.approx(sum(HAIKU_5_5_LONG))  # five times the short tier
    assert long["batch_usd"] == pytest.approx(sum(HAIKU_5_5_LONG) / 2)


def test_a_request_is_long_prompt_by_all_its_input_cache_reads_and_writes_included() -> None:
    """The gather sums a Haiku 5.5 answer of 60,000 input + 30,000 cache read + 20,000 write
    under the long-prompt key: 110,000 prompt tokens, above the threshold."""
    from airflow_batch.gather.gathering import GatherConfig
    from airflow_batch.rows.gathered import block_rows

    def line(custom_id: str, input_tokens: int, read: int, write: int) -> bytes:
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-5-5",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": 10,
                "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write,
            },
        }
        return json.dumps(
            {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        ).encode()

    settings = GatherConfig().block_settings("b", 0, {})
    lines = [line("long", 60_000, 30_000, 20_000), line("short", 60_000, 30_000, 10_000)]
    rows = block_rows(b"\n".join(lines), settings, set())
    assert sorted(rows.usage_by_model) == ["claude-haiku-5-5", "claude-haiku-5-5#long-prompt"]
    assert rows.usage_by_model["claude-haiku-5-5#long-prompt"]["input_tokens"] == 60_000


def test_batch_discount_stacks_with_cache_long_prompt_and_data_residency() -> None:
    table = price_table()
    assert table.batch_discount == 0.5 and table.data_residency_multiplier == 1.1
    assert "us" in table.data_residency_geos
    tokens = usage(input_tokens=MILLION, cache_creation_input_tokens=MILLION, cache_read_input_tokens=MILLION)

    cost = table.cost({usage_key("claude-haiku-5-5", long_prompt=True, geo="us"): tokens})
    # long tier: 0.50 input + 0.625 5-minute write + 0.05 read, times 1.1 (us), times 0.5 (batch)
    assert cost["standard_usd"] == pytest.approx((0.50 + 0.625 + 0.05) * 1.1)
    assert cost["batch_usd"] == pytest.approx((0.50 + 0.625 + 0.05) * 1.1 * 0.5)
    opus = table.cost({usage_key("claude-opus-5-5", geo="us"): usage(cache_read_input_tokens=MILLION)})
    assert opus["batch_usd"] == pytest.approx(4 * 0.05 * 1.1 * 0.5)  # 0.05x read, us, batch
    global_ = table.cost({usage_key("claude-opus-5-5"): usage(cache_read_input_tokens=MILLION)})
    assert global_["batch_usd"] == pytest.approx(4 * 0.05 * 0.5)  # no residency key, no surcharge


def test_web_search_costs_10_dollars_per_1000_requests_without_batch_discount_and_fetch_is_free() -> None:
    table = price_table()
    cost = table.cost({"claude-sonnet-5-5": usage(web_search_requests=1_000, web_fetch_requests=500)})
    assert cost["standard_usd"] == pytest.approx(10.0)
    assert cost["batch_usd"] == pytest.approx(10.0)  # billed per request: not halved
    with_tokens = table.cost(
        {"claude-sonnet-5-5": usage(input_tokens=MILLION, output_tokens=MILLION, web_search_requests=3)}
    )
    assert with_tokens["batch_usd"] == pytest.approx((2 + 10) / 2 + 3 * 10 / 1000)


@pytest.mark.parametrize("model", ["my-own-model", "claude-sonnet-9-9", "claude-fable-5-2", "gpt-4o"])
def test_an_unknown_model_is_reported_unpriced_never_guessed(model: str) -> None:
    table = price_table()
    assert table.price_for(model) is None
    cost = table.cost(
        {
            "claude-haiku-4-5": usage(input_tokens=MILLION),
            usage_key(model, geo="us"): usage(input_tokens=MILLION, web_search_requests=100),
        }
    )
    assert cost["priced"] is False
    assert cost["unpriced_models"] == [model]
    assert cost["standard_usd"] == pytest.approx(1.0)  # the priced model only, nothing guessed
