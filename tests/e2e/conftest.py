"""Fixtures of the end-to-end tests: a real Airflow deployment on the repository's DAGs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from airflow_cluster import deployment, review_run

__all__ = ["deployment", "review_run"]
