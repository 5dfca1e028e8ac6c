"""Hooks: the clients of the ``anthropic`` connection a batch job uses."""

from __future__ import annotations

from airflow_batch.hooks.batches import BatchesHook

__all__ = ["BatchesHook"]
