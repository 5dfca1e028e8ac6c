"""What gathering one batch produced: its counts, usage and files, stored as the batch's sidecar JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from airflow_batch.rows.block import RowCounts


@dataclass(kw_only=True)
class BatchGatherStats(RowCounts):
    """What gathering one batch produced; also stored as the batch's sidecar JSON.

    Its counts and usage (:class:`~airflow_batch.rows.block.RowCounts`) are the sum of its blocks'.
    """

    batch_id: str
    results_path: str
    failures_path: str
    attempts: int = 0
    #: Answers written to the answer store (0 without one).
    stored: int = 0
    #: When the batch was deleted from the API after landing (``delete_batches``), else None.
    deleted_at: str | None = None
    #: Why the API no longer held the batch's results when it was gathered (archived, deleted),
    #: else None: its requests were landed as ``missing`` failures.
    results_gone: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the stats as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchGatherStats:
        """Return stats read back from a sidecar."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
