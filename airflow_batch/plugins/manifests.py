"""Which XCom values the batch jobs page reads as a job's manifests, and the files they name.

A manifest says its stage (:data:`~airflow_batch.manifest.STAGE_ORDER`); the page serves for
download only the files a manifest of the run names (:func:`manifest_paths`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_batch.layout import FINAL_MANIFEST_FILE
from airflow_batch.manifest import STAGE_ORDER

#: The files finalize writes, by job-manifest key, in the order the page links them.
FINAL_FILE_KEYS: tuple[tuple[str, str], ...] = (
    ("results_path", "results"),
    ("failures_path", "failures"),
    ("manifest_path", "manifest"),
    ("results_parquet_path", "results-parquet"),
    ("failures_parquet_path", "failures-parquet"),
)


@dataclass(frozen=True)
class ManifestRecord:
    """One manifest a task of a batch job left in XCom, with the task instance it came from."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    value: Mapping[str, Any]


def manifest_stage(value: Mapping[str, Any]) -> str:
    """Return the stage a manifest names (``refused``, ``submitted`` ... ``finalized``)."""
    stage = value.get("stage")
    return stage if stage in STAGE_ORDER else "submitted"


def is_final_manifest(value: Mapping[str, Any]) -> bool:
    """Return True for the job manifest finalize writes (it carries no single round)."""
    return manifest_stage(value) == "finalized"


def is_batch_manifest(value: Any) -> bool:
    """Return True if an XCom value is one of this package's manifests."""
    return isinstance(value, Mapping) and isinstance(value.get("job_dir"), str)


def final_files(value: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (kind, URI) of each file a finalized job manifest names, the job manifest included."""
    job_dir = str(value.get("job_dir", "")).rstrip("/")
    paths = {**value, "manifest_path": f"{job_dir}/{FINAL_MANIFEST_FILE}"}
    return [(kind, paths[key]) for key, kind in FINAL_FILE_KEYS if isinstance(paths.get(key), str)]


def manifest_paths(value: Mapping[str, Any]) -> set[str]:
    """Return every file a manifest names, which the page may serve for download.

    A round's results, failures and invalid-input files; a finalized job's merged files,
    its Parquet files and the job manifest itself.
    """
    paths = {str(p) for key in ("results_paths", "failures_paths") for p in value.get(key, []) or []}
    for key in ("results_path", "failures_path", "invalid_path"):
        if isinstance(value.get(key), str):
            paths.add(value[key])
    if is_final_manifest(value):
        paths.update(path for _, path in final_files(value))
    return paths
