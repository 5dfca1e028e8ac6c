"""Judge an answer read back from the answer store as gather judges a fresh one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from airflow_batch.rows.contract import row_encoder, stored_answer_decoder
from airflow_batch.rows.failures import FAILED_STOPS

if TYPE_CHECKING:
    from airflow_batch.rules.validator import Validator

_str_decoder = msgspec.json.Decoder(str)


@dataclass(frozen=True)
class ReuseCheck:
    """Judges an answer read back from the answer store exactly as gather judges a fresh one.

    A store is written by other jobs, other versions and possibly a stranger, so nothing in it is
    taken as stored: the answer must decode, must not be a failed stop (refusal, paused turn,
    context window), with an output schema its text must be valid JSON of the schema (its
    ``output`` is derived again from the text, as gather derives it), and with
    ``include_content`` it must carry its content blocks.
    """

    validator: Validator | None = None
    include_content: bool = False

    def __call__(self, answer: bytes) -> bytes | str:
        """Return the answer to splice into a result row, or why it cannot be reused."""
        try:
            stored = stored_answer_decoder.decode(answer)
            text = _str_decoder.decode(stored.text)
        except msgspec.DecodeError as exc:
            return f"the stored answer is damaged ({exc})"
        kind = FAILED_STOPS.get(stored.stop_reason or "")
        if kind is not None:
            return f"the stored answer is a {kind} answer (stop_reason {stored.stop_reason!r})"
        if self.include_content and stored.content is msgspec.UNSET:
            return "the stored answer has no content blocks and this job keeps them (include_content=True)"
        if not self.include_content:
            stored.content = msgspec.UNSET
        stored.output = msgspec.UNSET  # derived again below, never taken as stored
        if self.validator is not None and stored.tool_calls is msgspec.UNSET:
            problem = self.validator.check(text)
            if problem is not None:
                return f"the stored answer is not valid for this job's output schema: {problem}"
            stored.output = msgspec.Raw(text.encode())
        return row_encoder.encode(stored)
