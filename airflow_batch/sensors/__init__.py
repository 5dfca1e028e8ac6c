"""Sensors of airflow_batch."""

from __future__ import annotations

from airflow_batch.sensors.batches import BatchesSensor

__all__ = ["BatchesSensor"]
