from __future__ import annotations

import pytest

from airflow_batch.manifest import Usage, empty_usage
from airflow_batch.rules.costs import model_family, price_table


def usage(**tokens: int) -> Usage:
    u = empty_usage()
    u.update(tokens)  # type: ignore[typeddict-item]
    return u


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-haiku-4-5-20251001", "haiku-4-5"),
        ("claude-haiku-4-5", "haiku-4-5"),
        ("claude-3-5-haiku-20241022", "haiku-3-5"),
        ("claude-opus-4-20250514", "opus-4"),
        ("claude-opus-4-1-20250805", "opus-4-1"),
        ("claude-sonnet-4-6", "sonnet-4-6"),
        ("claude-sonnet-5", "sonnet-5"),
        ("claude-opus-5-latest", "opus-5"),
        ("gpt-4o", None),
        ("claude-", None),
    ],
)
def test_model_ids_match_their_family(model: str, family: str | None) -> None:
    assert model_family(model) == family


def test_batch_price_is_half_the_standard_price_for_every_token_type() -> None:
    table = price_table()
    million = 1_000_000
    cost = table.cost(
        {
            "claude-haiku-4-5-20251001": usage(
                input_tokens=million,
                output_tokens=million,
                cache_creation_input_tokens=2 * million,
                cache_creation_1h_input_tokens=million,
                cache_read_input_tokens=million,
            )
        }
    )
    # Haiku 4.5 standard: 1 input + 5 output + 1.25 (5m write) + 2 (1h write) + 0.10 read
    assert cost["standard_usd"] == pytest.approx(9.35)
    assert cost["batch_usd"] == pytest.approx(4.675)
    assert cost["priced"] is True


def test_unknown_model_is_reported_unpriced_not_guessed() -> None:
    cost = price_table().cost({"my-own-model": usage(input_tokens=1000)})
    assert cost == {
        "batch_usd": 0.0,
        "standard_usd": 0.0,
        "priced": False,
        "unpriced_models": ["my-own-model"],
    }


def test_overrides_take_exact_model_ids_before_families() -> None:
    table = price_table(
        {"claude-haiku-4-5-20251001": {"input": 10, "output": 50}, "my-model": {"input": 2, "output": 4}}
    )
    assert table.price_for("claude-haiku-4-5-20251001").input == 10  # type: ignore[union-attr]
    assert table.price_for("claude-haiku-4-5").input == 1  # type: ignore[union-attr]
    cost = table.cost({"my-model": usage(input_tokens=1_000_000, output_tokens=1_000_000)})
    assert cost["standard_usd"] == pytest.approx(6.0)


def test_override_without_required_field_names_the_entry() -> None:
    with pytest.raises(ValueError, match="'my-model' lacks the field 'output'"):
        price_table({"my-model": {"input": 2}})


def test_shipped_table_records_its_source_and_date() -> None:
    table = price_table()
    assert table.source and table.as_of
    assert table.batch_discount == 0.5
