"""``@task.anthropic_batch``: a TaskFlow function whose return value a whole batch job answers.

::

    @task.anthropic_batch(prompt_template="Sentiment of: {text}", model="claude-haiku-4-5")
    def reviews(ds=None):
        return [{"custom_id": "r1", "text": "Great lamp"}]  # or the URI of a JSONL file

    job = reviews()  # a BatchJobGroup: use job.output downstream

The function runs as a task (``{group_id}_rows``) and its return value becomes the job's input:
records with a ``prompt_template`` (or a ``request_builder`` in ``submit_kwargs``), else complete
requests. Every other argument is an :func:`~airflow_batch.job.anthropic_batch_job` argument.
The return value travels through XCom: return a list for small inputs, a file URI for large ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from airflow.sdk import task

from airflow_batch.job import BatchJobGroup, anthropic_batch_job


def anthropic_batch_task(
    python_callable: Callable[..., Any] | None = None, *, group_id: str | None = None, **job_kwargs: Any
) -> Any:
    """Return a decorator (or, given the function, the job builder) that turns a function returning
    records or requests into a whole batch job; calling the result in a DAG returns the
    :class:`~airflow_batch.job.BatchJobGroup` (group id: ``group_id`` or the function's name)."""
    submit_kwargs = job_kwargs.get("submit_kwargs") or {}
    builds_records = "prompt_template" in job_kwargs or "request_builder" in submit_kwargs

    def decorate(function: Callable[..., Any]) -> Callable[..., BatchJobGroup]:
        name = group_id or function.__name__

        @functools.wraps(function)
        def build(*args: Any, **kwargs: Any) -> BatchJobGroup:
            rows = task(task_id=f"{name}_rows")(function)(*args, **kwargs)
            if builds_records:
                return anthropic_batch_job(name, records=rows, **job_kwargs)
            return anthropic_batch_job(name, requests=rows, **job_kwargs)

        return build

    return decorate(python_callable) if python_callable is not None else decorate
