"""The operators of a batch job: submit, gather, retry, finalize."""

from __future__ import annotations

from airflow_batch.operators.finalize import FinalizeBatchJobOperator
from airflow_batch.operators.gather import GatherResultsOperator
from airflow_batch.operators.retry import RetryFailedOperator
from airflow_batch.operators.submit import SubmitBatchesOperator

__all__ = [
    "FinalizeBatchJobOperator",
    "GatherResultsOperator",
    "RetryFailedOperator",
    "SubmitBatchesOperator",
]
