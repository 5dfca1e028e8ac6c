"""How the batch jobs page draws what it shows: progress bars, durations and links.

Pure functions the template calls (registered in :mod:`airflow_batch.plugins.rendering`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from airflow_batch.links.urls import batch_console_url

if TYPE_CHECKING:
    from airflow_batch.plugins.manifests import ManifestRecord
    from airflow_batch.plugins.views import JobView

#: The kinds of a progress bar, in order: the API's request counts, and ``reused`` (answered
#: from the answer store: no batch, no cost) after ``succeeded``.
COUNT_KINDS: tuple[str, ...] = ("succeeded", "reused", "errored", "expired", "canceled", "processing")
#: Request counts by kind (:data:`COUNT_KINDS`), as a bar shows them.
BarCounts = dict[str, int]


def empty_counts() -> BarCounts:
    """Return all-zero bar counts."""
    return dict.fromkeys(COUNT_KINDS, 0)


@dataclass(frozen=True)
class BarSegment:
    """One part of a stacked progress bar: a kind of outcome, its count and its share in percent."""

    kind: str
    count: int
    share: float

    @property
    def label(self) -> str:
        """Return the segment as the legend names it: ``"75 succeeded"``."""
        return f"{self.count} {self.kind}"


def bar_segments(counts: Mapping[str, Any]) -> list[BarSegment]:
    """Return the stacked bar of request counts, one segment per kind, widths as shares of the total."""
    total = sum(int(counts.get(kind, 0)) for kind in COUNT_KINDS)
    return [
        BarSegment(kind, n, round(100.0 * n / total, 1) if total else 0.0)
        for kind in COUNT_KINDS
        for n in (int(counts.get(kind, 0)),)
    ]


def duration(seconds: float) -> str:
    """Return a duration as people read it: ``"42s"``, ``"3m 07s"``, ``"2h 05m"``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def is_live(jobs: Sequence[JobView]) -> bool:
    """Return whether any job is still running (the page then refreshes itself)."""
    return any(j.outcome == "running" and (j.latest is None or j.latest.stage != "gathered") for j in jobs)


def file_href(base: str, record: ManifestRecord | JobView, path: str) -> str:
    """Return the download URL of ``path`` through the page's app (it checks access per DAG run)."""
    query = urlencode({"dag_id": record.dag_id, "run_id": record.run_id, "path": path})
    return f"{base}/files?{query}"


def console_links(batch_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Return (short label, Anthropic Console URL) of each batch."""
    return [(batch_id[-8:], batch_console_url(batch_id)) for batch_id in batch_ids]
