"""The UI tests share the session's Airflow deployment with the end-to-end tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from airflow_cluster import deployment, review_run

__all__ = ["deployment", "review_run"]
