"""Anthropic Message Batches as an Apache Airflow workflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from airflow_batch.job import anthropic_batch_job

__all__ = ["__version__", "anthropic_batch_job"]


def __getattr__(name: str) -> Any:
    # Lazy, so ``import airflow_batch`` (provider discovery, the emulator CLI) stays cheap.
    if name == "anthropic_batch_job":
        from airflow_batch.job import anthropic_batch_job

        return anthropic_batch_job
    raise AttributeError(f"module 'airflow_batch' has no attribute {name!r}")
