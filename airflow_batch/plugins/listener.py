"""The metrics listener: when a task of a batch job succeeds, emit what its manifest counts.

Registered by :class:`~airflow_batch.plugins.batch_jobs.AirflowBatchPlugin`; Airflow calls it in
the process that ran the task (a worker, or ``dag.test()``), after the task's XCom is written.
Only this package's operators are looked at, and a listener that fails never fails the task:
the error is logged at debug level and the metrics of that task are lost.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def _is_job_task(task: Any) -> bool:
    return type(task).__module__.startswith("airflow_batch.")


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    """Emit the metrics of a job task's manifest (see :func:`airflow_batch.metrics.points_of`)."""
    task = getattr(task_instance, "task", None)
    if task is None or not _is_job_task(task):
        return
    try:
        from airflow_batch import metrics
        from airflow_batch.lineage import task_manifest
        from airflow_batch.rules.costs import price_table

        manifest = task_manifest(task_instance)
        if manifest is None:
            return
        start = getattr(task_instance, "start_date", None)
        seconds = (datetime.now(UTC) - start).total_seconds() if start is not None else None
        table = price_table(getattr(task, "prices", None))
        metrics.emit(metrics.points_of(manifest, metrics.task_tags(task_instance), seconds, table))
    except Exception:  # metrics are best effort: never fail a task that succeeded
        log.debug("airflow_batch metrics not sent for %s", task_instance, exc_info=True)
