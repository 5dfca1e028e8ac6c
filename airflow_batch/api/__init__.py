"""The only code that talks to the API: the calls a job makes, the one retry policy they share, and
the package's own types they return (:class:`BatchStatus`, :class:`BatchPage`); no SDK type is
read past this package. A results stream is handed on as bytes, decoded into the package's own
result lines (:mod:`airflow_batch.rows.lines`) a block at a time."""

from __future__ import annotations

from airflow_batch.api.batches import AsyncBatchesApi, BatchesApi, CreatedBatch, job_headers
from airflow_batch.api.retry import RetryPolicy
from airflow_batch.api.status import BatchPage, BatchStatus, RequestCounts

__all__ = [
    "AsyncBatchesApi",
    "BatchPage",
    "BatchStatus",
    "BatchesApi",
    "CreatedBatch",
    "RequestCounts",
    "RetryPolicy",
    "job_headers",
]
