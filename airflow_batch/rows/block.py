"""How the result lines of one batch become rows: the settings of a batch, and what a block gives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from airflow_batch.manifest import sum_usages
from airflow_batch.rows.contract import ResultRow
from airflow_batch.rows.failures import DEFAULT_RETRYABLE

if TYPE_CHECKING:
    from airflow_batch.manifest import Usage
    from airflow_batch.rules.validator import Validator


class InputMeta(msgspec.Struct, gc=False):
    """What submit recorded of a request (a line of its chunk's inputs twin): its input row, its
    passthrough fields (raw JSON) and, with an answer store, its fingerprint.

    Decoded straight from the twin and kept as is: a gather looks one up per row."""

    custom_id: str = ""
    row: int | None = None
    # Not ``Raw | None``: msgspec 0.22 decodes that union as null only. No passthrough fields
    # is an empty (falsy) Raw.
    input: msgspec.Raw = msgspec.Raw()
    fingerprint: str | None = None


@dataclass(frozen=True)
class BlockSettings:
    """How the lines of one batch become rows; the same for every block of the batch.

    :param inputs: ``custom_id -> (input row, passthrough fields)`` of the batch's requests.
    :param validator: the job's compiled output schema, when it has one.
    :param long_prompt_above: ``model -> input tokens above which it is priced at its
        long-prompt tier`` (None: no tier).
    :param residency_geos: ``inference_geo`` values priced with the data-residency multiplier.
    :param keep_rows: keep the result row objects in :attr:`BlockRows.result_rows` (answer store).
    """

    batch_id: str
    round_number: int
    canceled_by_timeout: bool = False
    include_content: bool = False
    retryable_types: frozenset[str] = DEFAULT_RETRYABLE
    inputs: Mapping[str, InputMeta] = field(default_factory=dict)
    validator: Validator | None = None
    long_prompt_above: Callable[[str], int | None] = lambda model: None
    residency_geos: frozenset[str] = frozenset()
    keep_rows: bool = False


@dataclass(kw_only=True)
class RowCounts:
    """The counts and usage of a set of rows (a block's, a batch's, a round's), and their sum."""

    result_counts: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    retryable: int = 0
    usage_by_model: dict[str, Usage] = field(default_factory=dict)
    #: Per model: rows by result type, and the retryable failures by type. ``""``: a failure whose
    #: result names no model (errored, expired, canceled, missing).
    counts_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    retryable_by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, rows: RowCounts) -> None:
        """Add the counts and usage of other rows (a block's, another batch's) into these."""
        add_counts(self.result_counts, rows.result_counts)
        add_counts(self.error_types, rows.error_types)
        self.retryable += rows.retryable
        for model, usage in rows.usage_by_model.items():
            self.usage_by_model[model] = sum_usages([self.usage_by_model.get(model, {}), usage])
        for mine, theirs in (
            (self.counts_by_model, rows.counts_by_model),
            (self.retryable_by_model, rows.retryable_by_model),
        ):
            for model, by_type in theirs.items():
                add_counts(mine.setdefault(model, {}), by_type)


def add_counts(total: dict[str, int], counts: Mapping[str, int]) -> None:
    """Add ``counts`` (by kind) into ``total``."""
    for kind, count in counts.items():
        total[kind] = total.get(kind, 0) + count


@dataclass
class BlockRows(RowCounts):
    """The rows of a block of result lines, encoded as JSONL, with their counts and usage."""

    results: bytes = b""
    failures: bytes = b""
    #: The result rows themselves, for the answer store (kept only when asked: ``keep_rows``).
    result_rows: list[ResultRow] = field(default_factory=list)


#: The meta of a request submit recorded nothing of (a line whose custom_id is not the batch's).
NO_META = InputMeta()
