"""Airflow plugin: the batch jobs page in the Airflow UI.

Registers the FastAPI app of :mod:`airflow_batch.plugins.app` with the api-server at
``/airflow-batch`` and two external views on it: "Batch jobs" in the navigation (every
recent job the user may read) and a "Batch jobs" tab on each DAG run (that run's jobs with
one row per round). Both views render inside the Airflow UI and authenticate with the
session cookie of the UI.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_batch.plugins import listener
from airflow_batch.plugins.app import URL_PREFIX, app


class AirflowBatchPlugin(AirflowPlugin):
    """Registers the batch jobs page with the Airflow UI, and the metrics listener."""

    name = "airflow_batch"
    # Emits each job task's metrics (airflow_batch.metrics) where the task ran.
    listeners = [listener]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Batch jobs"}]
    external_views = [
        {
            "name": "Batch jobs",
            "href": f"{URL_PREFIX}/jobs",
            "destination": "nav",
            "url_route": "batch-jobs",
            "category": "browse",
        },
        {
            "name": "Batch jobs",
            "href": f"{URL_PREFIX}/jobs?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "batch-jobs-run",
        },
    ]
