"""Anthropic Message Batches as an Apache Airflow workflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from airflow_batch.job import BatchJobGroup, anthropic_batch_job
    from airflow_batch.operators.finalize import FinalizeBatchJobOperator
    from airflow_batch.operators.gather import GatherResultsOperator
    from airflow_batch.operators.retry import RetryFailedOperator
    from airflow_batch.operators.submit import SubmitBatchesOperator
    from airflow_batch.results import read_results, read_table
    from airflow_batch.sensors.batches import BatchesSensor

__all__ = [
    "BatchJobGroup",
    "BatchesSensor",
    "FinalizeBatchJobOperator",
    "GatherResultsOperator",
    "RetryFailedOperator",
    "SubmitBatchesOperator",
    "__version__",
    "anthropic_batch_job",
    "read_results",
    "read_table",
]

_LAZY = {
    "anthropic_batch_job": "airflow_batch.job",
    "BatchJobGroup": "airflow_batch.job",
    "SubmitBatchesOperator": "airflow_batch.operators.submit",
    "BatchesSensor": "airflow_batch.sensors.batches",
    "GatherResultsOperator": "airflow_batch.operators.gather",
    "RetryFailedOperator": "airflow_batch.operators.retry",
    "FinalizeBatchJobOperator": "airflow_batch.operators.finalize",
    "read_results": "airflow_batch.results",
    "read_table": "airflow_batch.results",
}


def __getattr__(name: str) -> Any:
    # Lazy, so ``import airflow_batch`` (provider discovery, the emulator CLI) stays cheap.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'airflow_batch' has no attribute {name!r}")
