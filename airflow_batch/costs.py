"""What tokens cost: the price table (data with its source and date) and usage pricing.

The table lives in ``data/prices.json``. Model ids match by family:
``claude-haiku-4-5-20251001`` and ``claude-haiku-4-5`` are both Haiku 4.5, and the older
``claude-3-5-haiku-20241022`` form is Haiku 3.5. Users override or extend the table with a
mapping whose keys are exact model ids or family keys (``"haiku-4-5"``). A model with no
price is reported as unpriced, never guessed.

Batch prices are the standard prices times ``batch_discount`` (0.5) for every token type;
cache multipliers are already in the per-type prices, so the two stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from airflow_batch.manifest import CostFigures, Usage

_MODEL_ID = re.compile(
    r"^claude-(?:"
    r"(?P<legacy_version>\d+(?:-\d{1,2}(?!\d))?)-(?P<legacy_family>opus|sonnet|haiku)"
    r"|(?P<family>opus|sonnet|haiku)-(?P<version>\d+(?:-\d{1,2}(?!\d))?)"
    r")(?:-|$)"
)
_PER_TOKEN = 1_000_000


@dataclass(frozen=True)
class ModelPrice:
    """Standard-API prices of one model family, USD per million tokens."""

    label: str
    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    @classmethod
    def from_mapping(cls, key: str, data: Mapping[str, Any]) -> ModelPrice:
        """Build a price from a table entry, naming the entry and field when one is missing."""
        try:
            return cls(
                label=str(data.get("label", key)),
                input=float(data["input"]),
                output=float(data["output"]),
                cache_write_5m=float(data.get("cache_write_5m", float(data["input"]) * 1.25)),
                cache_write_1h=float(data.get("cache_write_1h", float(data["input"]) * 2)),
                cache_read=float(data.get("cache_read", float(data["input"]) * 0.1)),
            )
        except KeyError as missing:
            raise ValueError(f"price entry {key!r} lacks the field {missing.args[0]!r}") from None

    def standard_usd(self, usage: Usage) -> float:
        """Return what ``usage`` costs on the standard API."""
        writes_1h = usage["cache_creation_1h_input_tokens"]
        writes_5m = usage["cache_creation_input_tokens"] - writes_1h
        return (
            usage["input_tokens"] * self.input
            + usage["output_tokens"] * self.output
            + writes_5m * self.cache_write_5m
            + writes_1h * self.cache_write_1h
            + usage["cache_read_input_tokens"] * self.cache_read
        ) / _PER_TOKEN


def model_family(model: str) -> str | None:
    """Return the family key of a model id (``"haiku-4-5"``), or None if it is not a Claude id."""
    match = _MODEL_ID.match(model)
    if not match:
        return None
    if match["family"]:
        return f"{match['family']}-{match['version']}"
    return f"{match['legacy_family']}-{match['legacy_version']}"


@dataclass(frozen=True)
class PriceTable:
    """Per-family prices plus the batch discount, with where they came from."""

    prices: Mapping[str, ModelPrice]
    batch_discount: float
    source: str
    as_of: str

    @classmethod
    def default(cls) -> PriceTable:
        """Return the table shipped with the package."""
        raw = json.loads(resources.files("airflow_batch").joinpath("data/prices.json").read_text())
        return cls(
            prices={key: ModelPrice.from_mapping(key, entry) for key, entry in raw["families"].items()},
            batch_discount=float(raw["batch_discount"]),
            source=raw["source"],
            as_of=raw["as_of"],
        )

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]] | None) -> PriceTable:
        """Return a table where ``overrides`` (model ids or family keys) replace or extend entries."""
        if not overrides:
            return self
        merged = dict(self.prices)
        for key, entry in overrides.items():
            merged[key] = ModelPrice.from_mapping(key, entry)
        return PriceTable(merged, self.batch_discount, f"{self.source} + user overrides", self.as_of)

    def price_for(self, model: str) -> ModelPrice | None:
        """Return the price of ``model``: an exact-id entry first, then its family; None if unknown."""
        if model in self.prices:
            return self.prices[model]
        family = model_family(model)
        return self.prices.get(family) if family else None

    def cost(self, usage_by_model: Mapping[str, Usage]) -> CostFigures:
        """Return the batch and standard cost of per-model usage, listing models with no price."""
        standard = 0.0
        unpriced: list[str] = []
        for model, usage in usage_by_model.items():
            price = self.price_for(model)
            if price is None:
                unpriced.append(model)
                continue
            standard += price.standard_usd(usage)
        return CostFigures(
            batch_usd=round(standard * self.batch_discount, 6),
            standard_usd=round(standard, 6),
            priced=not unpriced,
            unpriced_models=sorted(unpriced),
        )


def price_table(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PriceTable:
    """Return the shipped price table with the user's ``overrides`` applied."""
    return PriceTable.default().with_overrides(overrides)


def sum_costs(costs: Iterable[CostFigures]) -> CostFigures:
    """Return cost figures added up, listing every model any of them could not price."""
    batch = standard = 0.0
    unpriced: set[str] = set()
    for cost in costs:
        batch += cost.get("batch_usd", 0.0)
        standard += cost.get("standard_usd", 0.0)
        unpriced.update(cost.get("unpriced_models", []))
    return CostFigures(
        batch_usd=round(batch, 6),
        standard_usd=round(standard, 6),
        priced=not unpriced,
        unpriced_models=sorted(unpriced),
    )
