"""OpenLineage for batch jobs: what each task read and wrote, its batch ids, tokens and cost.

Airflow's OpenLineage listener (``apache-airflow-providers-openlineage``, the ``[openlineage]``
extra) calls ``get_openlineage_facets_on_complete`` / ``_on_failure`` of every operator when its
task ends; :class:`BatchJobLineage` gives the job's operators those methods. They read the
manifest the task left in XCom and build the facets in :mod:`airflow_batch.lineage.facets`,
which alone imports OpenLineage: without the extra nothing here is ever called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_batch.manifest import FAILED_MANIFEST_KEY

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


def task_manifest(task_instance: Any, key: str = "return_value") -> Mapping[str, Any] | None:
    """Return the manifest a task instance left in XCom under ``key``, or None."""
    value = task_instance.xcom_pull(
        task_ids=task_instance.task_id, map_indexes=task_instance.map_index, key=key
    )
    return value if isinstance(value, Mapping) and isinstance(value.get("job_dir"), str) else None


class BatchJobLineage:
    """The OpenLineage methods of a batch job's operators (a mixin: put it before ``BaseOperator``)."""

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """Return the datasets and run facets of the task's manifest (None when it left none)."""
        manifest = task_manifest(task_instance)
        return None if manifest is None else self._lineage_of(manifest)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage | None:
        """Return what a failed task leaves: a refused round's reason, a failed job's files."""
        from airflow_batch.lineage import facets

        manifest = task_manifest(task_instance, FAILED_MANIFEST_KEY)
        if manifest is not None and manifest.get("stage") == "finalized":
            return self._lineage_of(manifest)
        return facets.failed_lineage(manifest)

    def _lineage_of(self, manifest: Mapping[str, Any]) -> OperatorLineage:
        from airflow_batch.lineage import facets
        from airflow_batch.rules.costs import price_table

        stage = manifest.get("stage")
        table = price_table(getattr(self, "prices", None))
        if stage == "finalized":
            return facets.finalized_lineage(manifest, table)
        if stage == "gathered":
            return facets.gathered_lineage(manifest, table)
        if stage == "waited":
            return facets.waited_lineage(manifest)
        return facets.submitted_lineage(manifest, self._lineage_inputs())

    def _lineage_inputs(self) -> list[str]:
        """Return what a submit read: its requests or records file, or a retry's previous failures."""
        source = getattr(self, "requests", None) or getattr(self, "records", None)
        if isinstance(source, str):
            return [source]
        previous = getattr(self, "manifest", None)
        if isinstance(previous, Mapping):
            from airflow_batch.lineage.figures import folder_of

            parts = [str(p) for p in previous.get("failures_paths") or ()]
            return [folder_of(parts[0])] if parts else []
        return []
