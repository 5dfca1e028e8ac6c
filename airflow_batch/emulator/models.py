"""The models the emulator serves: the families of the package's model table, as the Models API lists them.

A model id is served when its family is in the table (``claude-haiku-4-5``,
``claude-haiku-4-5-20251001``, ``claude-3-5-haiku-20241022``). ``GET /v1/models`` lists one
entry per family (its alias id); ``GET /v1/models/{id}`` answers any served id, and 404
``not_found_error`` (``model: <id>``) for any other, as the API does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow_batch.costs import ModelPrice, PriceTable, model_family

_CREATED_AT = "2026-01-01T00:00:00Z"


@cache
def _table() -> PriceTable:
    return PriceTable.default()


def is_served(model: str) -> bool:
    """Return whether the emulator serves ``model``."""
    return model_entry(model) is not None


def model_entry(model: str) -> ModelPrice | None:
    """Return the table entry of a served ``model`` (its limits and token ratio), or None."""
    family = model_family(model)
    return _table().prices.get(family) if family else None


def model_info(model: str) -> dict[str, Any] | None:
    """Return the Models API object of ``model``, or None when it is not served."""
    entry = model_entry(model)
    if entry is None:
        return None
    return {
        "id": model,
        "type": "model",
        "display_name": f"Claude {entry.label}",
        "created_at": _CREATED_AT,
        "max_input_tokens": entry.context_window,
        "max_tokens": entry.max_output_tokens,
    }


def model_ids() -> list[str]:
    """Return the alias id of every served family, newest table entries first."""
    return [f"claude-{family}" for family in _table().prices]
