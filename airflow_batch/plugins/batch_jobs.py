"""Airflow plugin: the batch jobs page (filled in by the UI work)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class AirflowBatchPlugin(AirflowPlugin):
    """Registers the batch jobs page with the Airflow UI."""

    name = "airflow_batch"
