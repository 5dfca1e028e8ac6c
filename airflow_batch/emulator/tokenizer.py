"""How the emulated models count tokens: the shared local approximation, scaled per model family.

The API's tokenizers do not count like :mod:`airflow_batch.rules.tokens` (script-aware: a CJK
character one token, other text ``ceil(characters / 4)``): the newest families (Claude 4.7 and
later) count about 30% more tokens for the same text. The factor is the model table's
``token_ratio`` (one home: ``data/prices.json``). The emulator answers ``count_tokens`` and
reports result usage (input, cache and output tokens) with the same scaled counts, so the two
agree with each other and differ from the local approximation as the API's do, and the submit
estimate's calibration has a real ratio to find.

Each piece of a prompt (each segment of :func:`airflow_batch.rules.tokens.prompt_segments`) and each
generated text counts ``ceil(local * ratio)``, computed in integers (the ratio in thousandths),
so a count is exact and a prompt's total is the sum of its pieces. A text cut to a token
budget (an answer at ``max_tokens``) is cut by that same count, so a Chinese echo is cut shorter
than an English one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from airflow_batch.emulator.models import model_entry
from airflow_batch.rules.tokens import Segment, approx_tokens, plain_prompt_tokens, prompt_segments

_UNIT = 1_000


@dataclass(frozen=True)
class Tokenizer:
    """One model's token counting: the local approximation times ``per_mille`` / 1000."""

    per_mille: int = _UNIT

    def scale(self, local_tokens: int) -> int:
        """Return the model's count for text the local approximation counts as ``local_tokens``."""
        if self.per_mille == _UNIT:
            return local_tokens
        return (local_tokens * self.per_mille + _UNIT - 1) // _UNIT

    def text_tokens(self, text: str) -> int:
        """Return the tokens of one generated or prompt text."""
        return self.scale(approx_tokens(text))

    def within(self, text: str, tokens: int) -> str:
        """Return the longest start of ``text`` that counts at most ``tokens`` tokens."""
        local = max(tokens, 0) * _UNIT // self.per_mille  # the local tokens that scale to <= tokens
        if text.isascii():
            return text[: 4 * local]
        low, high = 0, min(len(text), 4 * local)  # the count only grows with the length
        while low < high:
            middle = (low + high + 1) // 2
            if approx_tokens(text[:middle]) <= local:
                low = middle
            else:
                high = middle - 1
        return text[:low]

    def segments(self, system: Any, messages: Sequence[Any], tools: Sequence[Any] | None) -> list[Segment]:
        """Return the prompt's segments (tools, system, messages) with this model's token counts."""
        segments = prompt_segments(system, messages, tools)
        if self.per_mille == _UNIT:
            return segments
        return [replace(segment, tokens=self.scale(segment.tokens)) for segment in segments]

    def plain_prompt_tokens(self, system: Any, messages: Sequence[Any]) -> int | None:
        """Return the input tokens of a prompt of strings only (no blocks), or None if it has blocks."""
        if self.per_mille == _UNIT:
            return plain_prompt_tokens(system, messages)
        if system is not None and type(system) is not str:
            return None
        total = self.scale(approx_tokens(system)) if system is not None else 0
        for message in messages:
            content = message.content
            if type(content) is not str:
                return None
            total += self.scale(approx_tokens(content))
        return total


@lru_cache(maxsize=256)
def tokenizer_for(model: str) -> Tokenizer:
    """Return the tokenizer of ``model`` (the local approximation as is for a model not served)."""
    entry = model_entry(model)
    return Tokenizer(round((entry.token_ratio if entry else 1.0) * _UNIT))
