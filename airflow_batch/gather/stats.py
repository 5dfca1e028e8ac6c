"""What gathering one batch produced: its counts, usage and files, stored as the batch's sidecar JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_batch.manifest import Usage, sum_usages

if TYPE_CHECKING:
    from airflow_batch.rows.block import BlockRows


@dataclass
class BatchGatherStats:
    """What gathering one batch produced; also stored as the batch's sidecar JSON."""

    batch_id: str
    results_path: str
    failures_path: str
    result_counts: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    retryable: int = 0
    usage_by_model: dict[str, Usage] = field(default_factory=dict)
    #: Per model (``""``: a failure naming none): rows by result type, retryable failures by type.
    counts_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    retryable_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    attempts: int = 0
    #: Answers written to the answer store (0 without one).
    stored: int = 0
    #: When the batch was deleted from the API after landing (``delete_batches``), else None.
    deleted_at: str | None = None
    #: Why the API no longer held the batch's results when it was gathered (archived, deleted),
    #: else None: its requests were landed as ``missing`` failures.
    results_gone: str | None = None

    def add(self, rows: BlockRows | BatchGatherStats) -> None:
        """Add the counts and usage of a block's rows, or of another batch."""
        for kind, count in rows.result_counts.items():
            self.result_counts[kind] = self.result_counts.get(kind, 0) + count
        for error_type, count in rows.error_types.items():
            self.error_types[error_type] = self.error_types.get(error_type, 0) + count
        self.retryable += rows.retryable
        for model, usage in rows.usage_by_model.items():
            self.usage_by_model[model] = sum_usages([self.usage_by_model.get(model, {}), usage])
        for mine, theirs in (
            (self.counts_by_model, rows.counts_by_model),
            (self.retryable_by_model, rows.retryable_by_model),
        ):
            for model, by_type in theirs.items():
                add_counts(mine.setdefault(model, {}), by_type)

    def to_json(self) -> dict[str, Any]:
        """Return the stats as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchGatherStats:
        """Return stats read back from a sidecar."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def add_counts(total: dict[str, int], counts: Mapping[str, int]) -> None:
    """Add ``counts`` (by kind) into ``total``."""
    for kind, count in counts.items():
        total[kind] = total.get(kind, 0) + count
