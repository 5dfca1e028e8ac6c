"""What tokens cost, and what each model can take: the model table (data with its source and date).

The table lives in ``data/prices.json``: per model family the standard-API price per million
tokens of input, output, 5-minute and 1-hour cache writes and cache reads (the per-model
cache multipliers are in those figures: cache reads cost 0.1x input on most models, 0.05x on
Opus 5.5 and Sonnet 5.5, 0.025x on Fable 5.1 and Mythos 5.1), a long-prompt tier where the
model has one (Haiku 5.5 above 100,000 input tokens: the whole request at the higher rates),
the model's limits (context window, most output tokens, most in a batch, shortest
cacheable prompt), and its ``token_ratio``: how many tokens the model's tokenizer counts for
text the local approximation (:func:`airflow_batch.rules.tokens.approx_tokens`) counts as one —
about 1.3 on Claude 4.7 and later (a newer tokenizer, ~30% more tokens for the same text),
1.0 before. The emulator's tokenizer applies it; the submit estimate measures it with
``count_tokens`` instead. ``thinking_display`` is what a thinking block shows when the request
does not say (``summarized``, or ``omitted`` — an empty thinking text — on Claude 4.7 and
later). Model ids match by family: ``claude-haiku-4-5-20251001`` and
``claude-haiku-4-5`` are Haiku 4.5, the older ``claude-3-5-haiku-20241022`` form is Haiku
3.5. Users override or extend the table with a mapping whose keys are exact model ids or
family keys (``"haiku-4-5"``). A model with no price is reported as unpriced, never guessed.

Usage is priced per **usage key**: the model id, plus ``#long-prompt`` for requests priced at
the long-prompt tier and ``@us`` (any ``inference_geo`` in ``data_residency_geos``) for
requests served in a data-residency region, which cost ``data_residency_multiplier`` (1.1x)
on every token type. Batch prices are the standard prices times ``batch_discount`` (0.5) for
every token type; cache and data-residency multipliers stack with it. Server tools add a
price per 1,000 requests (web search $10, web fetch free).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from airflow_batch.manifest import CostFigures, Usage

_MODEL_ID = re.compile(
    r"^claude-(?:"
    r"(?P<legacy_version>\d+(?:-\d{1,2}(?!\d))?)-(?P<legacy_family>opus|sonnet|haiku)"
    r"|(?P<family>[a-z]+)-(?P<version>\d+(?:-\d{1,2}(?!\d))?)"
    r")(?:-|$)"
)
_PER_TOKEN = 1_000_000
LONG_PROMPT = "#long-prompt"
_RATES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_CACHE_MULTIPLIERS = {"cache_write_5m": 1.25, "cache_write_1h": 2.0, "cache_read": 0.1}


def model_family(model: str) -> str | None:
    """Return the family key of a model id (``"haiku-4-5"``), or None if it is not a Claude id."""
    match = _MODEL_ID.match(model)
    if not match:
        return None
    if match["family"]:
        return f"{match['family']}-{match['version']}"
    return f"{match['legacy_family']}-{match['legacy_version']}"


def usage_key(model: str, *, long_prompt: bool = False, geo: str | None = None) -> str:
    """Return the key a request's usage is summed under: model, price tier and residency region."""
    return model + (LONG_PROMPT if long_prompt else "") + (f"@{geo}" if geo else "")


def split_usage_key(key: str) -> tuple[str, bool, str | None]:
    """Return ``(model, long_prompt, geo)`` of a usage key."""
    key, _, geo = key.partition("@")
    long_prompt = key.endswith(LONG_PROMPT)
    return key.removesuffix(LONG_PROMPT), long_prompt, geo or None


@dataclass(frozen=True)
class Rates:
    """Standard-API USD per million tokens of each token type."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    @classmethod
    def from_mapping(cls, key: str, data: Mapping[str, Any]) -> Rates:
        """Build rates from a table entry; cache rates default to the usual multipliers of input."""
        try:
            base = float(data["input"])
            values = {"input": base, "output": float(data["output"])}
        except KeyError as missing:
            raise ValueError(f"price entry {key!r} lacks the field {missing.args[0]!r}") from None
        read_multiplier = float(data.get("cache_read_multiplier", _CACHE_MULTIPLIERS["cache_read"]))
        multipliers = {**_CACHE_MULTIPLIERS, "cache_read": read_multiplier}
        for name, multiplier in multipliers.items():
            values[name] = float(data.get(name, base * multiplier))
        return cls(**values)

    def standard_usd(self, usage: Mapping[str, Any]) -> float:
        """Return what ``usage``'s tokens cost on the standard API at these rates."""
        writes_1h = int(usage.get("cache_creation_1h_input_tokens", 0))
        writes_5m = int(usage.get("cache_creation_input_tokens", 0)) - writes_1h
        return (
            int(usage.get("input_tokens", 0)) * self.input
            + int(usage.get("output_tokens", 0)) * self.output
            + writes_5m * self.cache_write_5m
            + writes_1h * self.cache_write_1h
            + int(usage.get("cache_read_input_tokens", 0)) * self.cache_read
        ) / _PER_TOKEN


@dataclass(frozen=True)
class ModelPrice:
    """One model family: its rates, its long-prompt tier if any, and its limits."""

    label: str
    rates: Rates
    long_prompt_rates: Rates | None = None
    long_prompt_above: int | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    batch_max_output_tokens: int | None = None
    min_cacheable_tokens: int | None = None
    token_ratio: float = 1.0
    thinking_display: str = "summarized"

    @classmethod
    def from_mapping(cls, key: str, data: Mapping[str, Any]) -> ModelPrice:
        """Build a model's entry from the table or an override, naming the entry when a field is missing."""
        tier = data.get("long_prompt")

        def limit(name: str) -> int | None:
            return int(data[name]) if data.get(name) is not None else None

        return cls(
            label=str(data.get("label", key)),
            rates=Rates.from_mapping(key, data),
            long_prompt_rates=Rates.from_mapping(f"{key}.long_prompt", tier) if tier else None,
            long_prompt_above=int(tier["above_input_tokens"]) if tier else None,
            context_window=limit("context_window"),
            max_output_tokens=limit("max_output_tokens"),
            batch_max_output_tokens=limit("batch_max_output_tokens"),
            min_cacheable_tokens=limit("min_cacheable_tokens"),
            token_ratio=float(data.get("token_ratio", 1.0)),
            thinking_display=str(data.get("thinking_display", "summarized")),
        )

    # The attributes of the shipped rates, for callers that price by hand.
    @property
    def input(self) -> float:
        return self.rates.input

    @property
    def output(self) -> float:
        return self.rates.output

    @property
    def cache_write_5m(self) -> float:
        return self.rates.cache_write_5m

    @property
    def cache_write_1h(self) -> float:
        return self.rates.cache_write_1h

    @property
    def cache_read(self) -> float:
        return self.rates.cache_read

    def is_long_prompt(self, input_tokens: int) -> bool:
        """Return whether ``input_tokens`` (cache reads and writes counted) make a request long-tier."""
        return self.long_prompt_above is not None and input_tokens > self.long_prompt_above

    def max_tokens_in_batch(self, betas: Iterable[str] = ()) -> int | None:
        """Return the most ``max_tokens`` a batch request may ask of this model (None: not known)."""
        if self.batch_max_output_tokens and any(beta.startswith("output-300k") for beta in betas):
            return self.batch_max_output_tokens
        return self.max_output_tokens


@dataclass(frozen=True)
class PriceTable:
    """Per-family prices and limits, the batch discount and the surcharges, with where they came from."""

    prices: Mapping[str, ModelPrice]
    batch_discount: float
    source: str
    as_of: str
    data_residency_multiplier: float = 1.0
    data_residency_geos: frozenset[str] = frozenset()
    server_tools_per_1000: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def default(cls) -> PriceTable:
        """Return the table shipped with the package."""
        raw = json.loads(resources.files("airflow_batch").joinpath("data/prices.json").read_text())
        return cls(
            prices={key: ModelPrice.from_mapping(key, entry) for key, entry in raw["families"].items()},
            batch_discount=float(raw["batch_discount"]),
            source=raw["source"],
            as_of=raw["as_of"],
            data_residency_multiplier=float(raw.get("data_residency_multiplier", 1.0)),
            data_residency_geos=frozenset(raw.get("data_residency_geos", ())),
            server_tools_per_1000={k: float(v) for k, v in raw.get("server_tools_per_1000", {}).items()},
        )

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]] | None) -> PriceTable:
        """Return a table where ``overrides`` (model ids or family keys) replace or extend entries."""
        if not overrides:
            return self
        merged = dict(self.prices)
        for key, entry in overrides.items():
            merged[key] = ModelPrice.from_mapping(key, entry)
        return PriceTable(
            merged,
            self.batch_discount,
            f"{self.source} + user overrides",
            self.as_of,
            self.data_residency_multiplier,
            self.data_residency_geos,
            self.server_tools_per_1000,
        )

    def price_for(self, model: str) -> ModelPrice | None:
        """Return the entry of ``model``: an exact-id entry first, then its family; None if unknown."""
        if model in self.prices:
            return self.prices[model]
        family = model_family(model)
        return self.prices.get(family) if family else None

    def known_models(self) -> list[str]:
        """Return the model ids this table knows, as ``claude-<family>`` ids (for "did you mean")."""
        return [key if key.startswith("claude-") else f"claude-{key}" for key in self.prices]

    def priced(self, key: str, usage: Mapping[str, Any]) -> tuple[float, float] | None:
        """Return the standard-API cost of ``usage`` summed under a usage key as (tokens, server
        tools), or None when the model has no price."""
        model, long_prompt, geo = split_usage_key(key)
        price = self.price_for(model)
        if price is None:
            return None
        rates = price.long_prompt_rates if long_prompt and price.long_prompt_rates else price.rates
        tokens = rates.standard_usd(usage)
        if geo in self.data_residency_geos:
            tokens *= self.data_residency_multiplier
        tools = sum(
            int(usage.get(name, 0) or 0) * per_1000 / 1000
            for name, per_1000 in self.server_tools_per_1000.items()
        )
        return tokens, tools

    def cost(self, usage_by_key: Mapping[str, Usage]) -> CostFigures:
        """Return the batch and standard cost of usage per key, listing models with no price.

        Server tool requests are billed per request, not per token: the batch discount does not
        apply to them.
        """
        standard = batch = 0.0
        unpriced: set[str] = set()
        for key, usage in usage_by_key.items():
            priced = self.priced(key, usage)
            if priced is None:
                unpriced.add(split_usage_key(key)[0])
                continue
            tokens, tools = priced
            standard += tokens + tools
            batch += tokens * self.batch_discount + tools
        return CostFigures(
            batch_usd=round(batch, 6),
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
