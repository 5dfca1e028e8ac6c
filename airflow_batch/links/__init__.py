"""Operator extra links of airflow_batch."""

from __future__ import annotations

from airflow_batch.links.console import BatchConsoleLink

__all__ = ["BatchConsoleLink"]
