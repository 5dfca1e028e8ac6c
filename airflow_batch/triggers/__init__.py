"""Triggers of airflow_batch (run in the Airflow triggerer)."""

from __future__ import annotations

from airflow_batch.triggers.batches import BatchesTrigger
from airflow_batch.triggers.queue import QueueRoomTrigger

__all__ = ["BatchesTrigger", "QueueRoomTrigger"]
