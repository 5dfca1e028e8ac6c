"""What a job's rows cost, priced by hand: the independent check of the manifests' cost.

The prices are written out here from the pricing page (DESIGN.md's table), not read from the
package's price table, and the usage is each billed row's own (every round's results and
billed failures), not a manifest's sum: a cost test then fails if the summing, the table or
the pricing function goes wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from airflow_batch import layout

#: USD per million tokens on the standard API: input, output, 5-minute cache write, 1-hour
#: cache write, cache read. The Batches API bills every token at half of these.
PER_MTOK = {
    "claude-haiku-4-5": (1.0, 5.0, 1.25, 2.0, 0.10),
    "claude-sonnet-4-6": (3.0, 15.0, 3.75, 6.0, 0.30),
    "claude-opus-4-8": (5.0, 25.0, 6.25, 10.0, 0.50),
}
#: USD per web search, with or without the batch discount (server tools are billed per use).
WEB_SEARCH_USD = 10.0 / 1000


def billed_rows(job: Any, rounds: Iterable[int]) -> list[dict[str, Any]]:
    """Return every row of ``rounds`` that carries usage: results and billed failures."""
    rows = []
    for number in rounds:
        for kind in ("results", "failures"):
            folder = layout.round_dir(job, number) / kind
            for part in sorted(folder.glob("*.jsonl")) if folder.exists() else []:
                for line in part.read_bytes().splitlines():
                    row = msgspec.json.decode(line) if line.strip() else {}
                    if row.get("usage"):
                        rows.append(row)
    return rows


def _rates(model: str) -> tuple[float, float, float, float, float]:
    for name, rates in PER_MTOK.items():
        if model == name or model.startswith(name + "-"):  # a dated id of the family
            return rates
    raise AssertionError(f"no literal price for {model!r}: add it to PER_MTOK")


def row_cost(model: str, usage: Mapping[str, Any]) -> tuple[float, float]:
    """Return (standard USD, batch USD) of one row's usage."""
    input_rate, output_rate, write_5m, write_1h, read = _rates(model)
    writes_1h = usage.get("cache_creation_1h_input_tokens", 0)
    tokens = (
        usage["input_tokens"] * input_rate
        + usage["output_tokens"] * output_rate
        + (usage.get("cache_creation_input_tokens", 0) - writes_1h) * write_5m
        + writes_1h * write_1h
        + usage.get("cache_read_input_tokens", 0) * read
    ) / 1e6
    searches = usage.get("web_search_requests", 0) * WEB_SEARCH_USD
    return tokens + searches, tokens / 2 + searches


def rows_cost(rows: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
    """Return (standard USD, batch USD) of every row's usage."""
    standard = batch = 0.0
    for row in rows:
        row_standard, row_batch = row_cost(row["model"], row["usage"])
        standard, batch = standard + row_standard, batch + row_batch
    return standard, batch


def usage_by_model(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Return the rows' billed usage summed per model, keeping only the non-zero counts.

    Thinking tokens are left out: they are part of ``output_tokens``, and no bill lists them apart.
    """
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        total = totals.setdefault(row["model"], {})
        for key, value in row["usage"].items():
            if value and key != "thinking_tokens":
                total[key] = total.get(key, 0) + value
    return totals


def without_zeros(by_model: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Return usage per model with its zero counts left out (to compare with :func:`usage_by_model`)."""
    return {model: {key: value for key, value in usage.items() if value} for model, usage in by_model.items()}


def usage_cost(by_model: Mapping[str, Mapping[str, Any]]) -> tuple[float, float]:
    """Return (standard USD, batch USD) of usage summed per model (the emulator's billing)."""
    costs = [
        row_cost(model, {"input_tokens": 0, "output_tokens": 0, **usage}) for model, usage in by_model.items()
    ]
    return sum(standard for standard, _ in costs), sum(batch for _, batch in costs)
