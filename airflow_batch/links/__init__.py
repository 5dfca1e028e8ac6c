"""Operator extra links of airflow_batch (the Console URLs themselves are in :mod:`.urls`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_batch.links.console import BatchConsoleLink

__all__ = ["BatchConsoleLink"]


def __getattr__(name: str) -> Any:
    # Lazy: the URL helpers in .urls are pure and must not pull Airflow in with the link class.
    if name == "BatchConsoleLink":
        from airflow_batch.links.console import BatchConsoleLink

        return BatchConsoleLink
    raise AttributeError(f"module 'airflow_batch.links' has no attribute {name!r}")
