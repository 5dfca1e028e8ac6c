"""What the model table knows of each model's limits, for refusing rows that can only fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelLimits:
    """What the model table knows of each model's limits, for refusing rows that can only fail.

    ``table`` is a :class:`~airflow_batch.rules.costs.PriceTable` (or None: nothing is checked);
    ``betas`` may raise the batch output maximum (``output-300k-...``). Looked up once per model.
    """

    table: Any = None
    betas: tuple[str, ...] = ()
    _known: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict, compare=False)

    def limits(self, model: str) -> tuple[int | None, int | None, int | None]:
        """Return the model's context window, batch output maximum and cache minimum (None: not known)."""
        limits = self._known.get(model)
        if limits is None:  # once per model: the lookup matches the model id to its family
            entry = self.table.price_for(model) if self.table is not None else None
            limits = (
                (entry.context_window, entry.max_tokens_in_batch(self.betas), entry.min_cacheable_tokens)
                if entry
                else (None, None, None)
            )
            self._known[model] = limits
        return limits

    def context_window(self, model: str) -> int | None:
        """Return the model's context window in tokens, or None when not known."""
        return self.limits(model)[0]

    def max_output_tokens(self, model: str) -> int | None:
        """Return the most ``max_tokens`` the model takes in a batch, or None when not known."""
        return self.limits(model)[1]

    def min_cacheable_tokens(self, model: str) -> int | None:
        """Return the model's shortest cacheable prompt prefix in tokens, or None when not known."""
        return self.limits(model)[2]
