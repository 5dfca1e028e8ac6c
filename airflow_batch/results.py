"""Read a job's results: rows one at a time, or a pyarrow table; a running job's rows landed so far.

A job is named by what a downstream task has at hand: the job manifest (``job.output`` of
``anthropic_batch_job``, the return value of ``FinalizeBatchJobOperator``), the URI of a job
folder or of a ``publish_path`` folder, or the URI of a ``manifest.json``; the asset event's
``extra`` works too (its ``manifest_uri``). Rows are the merged rows finalize wrote (see the
docs/output-schemas.md), in input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from airflow_batch.folder import JobFolder
from airflow_batch.layout import FINAL_MANIFEST_FILE
from airflow_batch.storage import as_path, iter_jsonl

if TYPE_CHECKING:
    import pyarrow
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.manifest import JobManifest

Which = Literal["results", "failures"]


def job_manifest(job: Mapping[str, Any] | str) -> JobManifest:
    """Return the job manifest of ``job`` (a manifest, an asset ``extra``, a folder or manifest URI)."""
    if isinstance(job, Mapping):
        if "results_path" in job:
            return job  # type: ignore[return-value]
        if "manifest_uri" in job:
            return job_manifest(str(job["manifest_uri"]))
        raise ValueError(
            "expected a job manifest (job.output / finalize's return value) or an asset event's extra; "
            f"got a mapping with keys {sorted(job)[:8]}"
        )
    path = as_path(job)
    return JobFolder(path.parent if path.name == FINAL_MANIFEST_FILE else path).read_job_manifest()


class ResultRows(Iterator[dict[str, Any]]):
    """Rows streamed from part files in constant memory; ``partial`` says whether the job is still running.

    A running job's rows are those landed so far (each batch's rows once it is landed, by its
    round's gather or, with ``land_interval``, by the wait as it ends), round by round: not
    merged, not in input order. ``batches_landed`` counts the batches they come from.
    """

    def __init__(self, paths: list[ObjectStoragePath], *, partial: bool, batches_landed: int | None = None):
        self.paths = paths
        self.partial = partial
        self.batches_landed = batches_landed
        self._rows = (row for path in paths for row in iter_jsonl(path))

    def __next__(self) -> dict[str, Any]:
        return next(self._rows)


def read_results(job: Mapping[str, Any] | str, *, which: Which = "results") -> ResultRows:
    """Return the job's merged result rows (or, with ``which="failures"``, its failure rows).

    Rows are streamed from ``results.jsonl`` / ``failures.jsonl`` in constant memory. A job
    folder without a job manifest yet (the job still runs) gives the rows landed so far, with
    ``partial=True`` (see :class:`ResultRows`).
    """
    if isinstance(job, str) and _running(folder := as_path(job)):
        return landed_rows(folder, which=which)
    manifest = job_manifest(job)
    return ResultRows([as_path(manifest[f"{which}_path"])], partial=False)  # type: ignore[literal-required]


def _running(folder: ObjectStoragePath) -> bool:
    """Return whether ``folder`` is a job folder whose job has not written its manifest yet."""
    if folder.name == FINAL_MANIFEST_FILE:
        return False
    job = JobFolder(folder)
    return not job.is_finalized() and job.has_round(0)


def landed_rows(job: ObjectStoragePath, *, which: Which = "results") -> ResultRows:
    """Return the rows a running job has landed so far: each landed batch's part, round by round."""
    folder = JobFolder(job)
    paths: list[ObjectStoragePath] = []
    batches = 0
    round_number = 0
    while folder.has_round(round_number):
        reused = folder.reused_path(round_number)
        if which == "results" and reused.exists():
            paths.append(reused)
        landed = folder.landed_stats(round_number)
        for stats in landed:
            paths.append(as_path(stats.results_path if which == "results" else stats.failures_path))
        batches += len(landed)
        round_number += 1
    return ResultRows(paths, partial=True, batches_landed=batches)


def read_table(job: Mapping[str, Any] | str, *, which: Which = "results") -> pyarrow.Table:
    """Return the job's merged results (or failures) as a pyarrow Table (``airflow-batch[parquet]``).

    One shape whatever the job's ``results_format``: ``results.parquet`` when finalize wrote it
    (typed columns, see docs/output-schemas.md), else the same columns built from the JSONL rows (output
    properties and passthrough fields flat, not nested under ``output`` / ``input``).
    """
    from airflow_batch.gather.tables import read_flat_table, require_pyarrow

    require_pyarrow()
    import pyarrow.parquet

    manifest = job_manifest(job)
    parquet = manifest.get(f"{which}_parquet_path")
    if parquet:
        with as_path(str(parquet)).open("rb") as handle:
            return pyarrow.parquet.read_table(handle)
    spec = JobFolder(str(manifest["job_dir"])).read_spec()
    return read_flat_table(
        as_path(manifest[f"{which}_path"]),  # type: ignore[literal-required]
        which=which,
        output_schema=spec.get("output_schema"),
        passthrough=spec.get("passthrough_fields") or (),
    )
