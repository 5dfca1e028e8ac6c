"""The only code that talks to the API: the calls a job makes and the one retry policy they share."""

from __future__ import annotations

from airflow_batch.api.batches import AsyncBatchesApi, BatchesApi, CreatedBatch, job_headers
from airflow_batch.api.retry import RetryPolicy

__all__ = ["AsyncBatchesApi", "BatchesApi", "CreatedBatch", "RetryPolicy", "job_headers"]
