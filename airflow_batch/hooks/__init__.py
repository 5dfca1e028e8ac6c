"""Hooks: the clients of the ``anthropic`` connection a batch job uses.

:mod:`airflow_batch.hooks.batches` imports the SDK and the official provider: seconds and about
150,000 objects on a cold process. A DAG file imports the operators and the factory at every
parse, so no module imports it at module level: a task imports it when it first calls the API
(:func:`job_api`, the one place it does), and a trigger in a worker thread, off the event loop
(:func:`airflow_batch.wait.loop.connect`). Importing this package costs nothing
(``tests/dags/test_parse_imports.py`` fails when a DAG parse loads the SDK).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_batch.api import BatchesApi
    from airflow_batch.manifest import JobIdentity

__all__ = ["BatchesHook", "job_api"]


def job_api(identity: JobIdentity) -> BatchesApi:
    """Return the sync API calls of a job's connection, betas and workspace; close it when done."""
    from airflow_batch.hooks.batches import BatchesHook

    return BatchesHook.of(identity).batches_api()


def __getattr__(name: str) -> Any:
    """Return :class:`~airflow_batch.hooks.batches.BatchesHook`, imported on first use (see above)."""
    if name == "BatchesHook":
        from airflow_batch.hooks.batches import BatchesHook

        return BatchesHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
