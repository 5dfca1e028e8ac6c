"""What each model takes beyond the shape of a request: data with its source (``data/model_rules.json``).

The API's newest models refuse what older ones take, with a 400 per request: sampling
parameters (``temperature``, ``top_p``, ``top_k``) were removed from Claude Opus 4.7 and every
later model ("`temperature` is deprecated for this model"), Sonnet 4.5 and Opus 4.1 refuse
``temperature`` and ``top_p`` together, and each model takes only some ``thinking`` forms
(Opus 4.7 and Opus 5.5 only ``adaptive``; Sonnet 5.5 ``between_tools`` instead of
``disabled``; models before 4.6 no ``adaptive``). The SDK's request types no longer carry the
sampling parameters at all (SDK 2.13); the API still takes them on the older models, so they
are kept as request fields and checked here, per model. Context windows and output maxima are
the model table's (``data/prices.json``), next to the prices.

The rules are facts read from a source, kept as data like the prices: a family missing from
the file, or a rule missing from a family, is not checked (the API decides). Submit refuses a
row that breaks one before any spend (:func:`model_problem`); the emulator answers such a
request ``errored`` with the API's message, reading the same facts with its own code.

Pure: no I/O beyond reading the packaged data once, no Airflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from airflow_batch.rules.costs import model_family

#: The sampling parameters whose acceptance depends on the model.
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k")


@dataclass(frozen=True)
class ModelRules:
    """One family's rules: which sampling parameters it takes, which thinking forms (None: not known)."""

    sampling: str = "any"
    thinking: frozenset[str] | None = None


@dataclass(frozen=True)
class ModelRuleTable:
    """The per-family rules of ``data/model_rules.json``, with the file's source and date."""

    families: dict[str, ModelRules]
    source: str
    as_of: str

    @classmethod
    def from_data(cls, raw: dict[str, Any]) -> ModelRuleTable:
        """Return the table of a decoded rules file; raise ValueError naming a bad entry."""
        families: dict[str, ModelRules] = {}
        for family, entry in raw["families"].items():
            sampling = entry.get("sampling", "any")
            if sampling not in ("any", "one", "none"):
                raise ValueError(
                    f"model_rules.json: {family}.sampling must be any, one or none, not {sampling!r}"
                )
            thinking = entry.get("thinking")
            families[family] = ModelRules(sampling, frozenset(thinking) if thinking is not None else None)
        return cls(families, str(raw["source"]), str(raw["as_of"]))

    def rules_for(self, model: str) -> ModelRules | None:
        """Return the rules of ``model``'s family, or None when the file does not know it."""
        family = model_family(model)
        return self.families.get(family) if family else None


@cache
def default_rules() -> ModelRuleTable:
    """Return the packaged rules table (read once)."""
    text = resources.files("airflow_batch").joinpath("data/model_rules.json").read_text()
    return ModelRuleTable.from_data(json.loads(text))


def model_problem(
    model: str, sampling: dict[str, Any], thinking_type: str | None, table: ModelRuleTable | None = None
) -> str | None:
    """Return why a request breaks its model's rules, or None.

    :param sampling: the request's sampling parameters that are set (``{"temperature": 0.2}``).
    :param thinking_type: the request's ``thinking.type``, None without ``thinking``.
    """
    rules = (table or default_rules()).rules_for(model)
    if rules is None:
        return None
    if sampling and rules.sampling == "none":
        names = ", ".join(f"params.{name}" for name in sampling)
        return (
            f"{names}: {model} takes no sampling parameters (temperature, top_p, top_k were removed from "
            "Claude Opus 4.7 and later models); remove them, and use output_config.effort to steer the answer"
        )
    if rules.sampling == "one" and "temperature" in sampling and "top_p" in sampling:
        return f"params.temperature and params.top_p: {model} takes one of them, not both; remove one"
    if thinking_type is not None and rules.thinking is not None and thinking_type not in rules.thinking:
        forms = ", ".join(repr(form) for form in sorted(rules.thinking))
        return f"params.thinking.type {thinking_type!r} is not supported by {model}; it takes {forms}"
    return None
