"""The models the emulator serves: the families of the package's model table, as the Models API lists them.

A model id is served when its family is in the table (``claude-haiku-4-5``,
``claude-haiku-4-5-20251001``, ``claude-3-5-haiku-20241022``). ``GET /v1/models`` lists one
entry per family (its alias id); ``GET /v1/models/{id}`` answers any served id, and 404
``not_found_error`` (``model: <id>``) for any other, as the API does.

A served model refuses, per request and in the API's words, what its family does not take
(:func:`refusal`): sampling parameters on the newest models, ``temperature`` with ``top_p`` on
Sonnet 4.5 and Opus 4.1, a thinking form the model lacks. The facts are the packaged
``data/model_rules.json`` (with its source); this check is the emulator's own reading of them,
not the submit validation's, so a disagreement between the two shows in a test.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow_batch.rules.costs import ModelPrice, PriceTable, model_family
from airflow_batch.rules.models import default_rules

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


def refusal(model: str, sampling: dict[str, Any], thinking: dict[str, Any] | None) -> str | None:
    """Return the ``invalid_request_error`` message the API gives a request its model refuses, or None.

    :param sampling: the request's ``temperature``/``top_p``/``top_k`` that are set.
    """
    rules = default_rules().rules_for(model)
    if rules is None:
        return None
    if rules.sampling == "none" and sampling:
        return f"`{next(iter(sampling))}` is deprecated for this model."
    if rules.sampling == "one" and "temperature" in sampling and "top_p" in sampling:
        return "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    kind = thinking.get("type") if thinking else None
    if kind is not None and rules.thinking is not None and kind not in rules.thinking:
        instead = "adaptive" if "adaptive" in rules.thinking else sorted(rules.thinking)[0]
        return (
            f'"thinking.type.{kind}" is not supported for this model. Use "thinking.type.{instead}" '
            'and "output_config.effort" to control thinking behavior.'
        )
    return None
