"""Provider registration read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_batch import __version__
from airflow_batch.settings import provider_config


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata Airflow's ProvidersManager validates and lists."""
    return {
        "package-name": "airflow-batch",
        "name": "Airflow Batch (Anthropic Message Batches)",
        "description": (
            "Anthropic Message Batches as an Airflow workflow: chunked, idempotent submission, "
            "one deferrable trigger per run, streamed results, retry rounds, cost guards, "
            "a progress page and a local API emulator."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Airflow Batch",
                "external-doc-url": "https://docs.claude.com/en/docs/build-with-claude/batch-processing",
                "tags": ["ai"],
            }
        ],
        "operators": [
            {
                "integration-name": "Airflow Batch",
                "python-modules": [
                    "airflow_batch.operators.submit",
                    "airflow_batch.operators.gather",
                    "airflow_batch.operators.retry",
                    "airflow_batch.operators.finalize",
                ],
            }
        ],
        "sensors": [
            {"integration-name": "Airflow Batch", "python-modules": ["airflow_batch.sensors.batches"]}
        ],
        "triggers": [
            {
                "integration-name": "Airflow Batch",
                "python-modules": ["airflow_batch.triggers.batches", "airflow_batch.triggers.queue"],
            }
        ],
        "task-decorators": [
            {"name": "anthropic_batch", "class-name": "airflow_batch.decorators.batch.anthropic_batch_task"}
        ],
        "extra-links": ["airflow_batch.links.console.BatchConsoleLink"],
        "config": provider_config(),
        "plugins": [
            {"name": "airflow_batch", "plugin-class": "airflow_batch.plugins.batch_jobs.AirflowBatchPlugin"}
        ],
    }
