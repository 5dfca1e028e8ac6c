"""The OpenLineage facets of a batch job's tasks, built from their manifests.

Imported only by the OpenLineage listener's calls (``get_openlineage_facets_on_complete`` /
``_on_failure`` of :class:`~airflow_batch.lineage.BatchJobLineage`), so the package imports
without ``apache-airflow-providers-openlineage``.

What each task reports (datasets named by :func:`~airflow_batch.lineage.figures.dataset_name`):

=========  =======================================  ==============================================
task       inputs                                   outputs
=========  =======================================  ==============================================
submit     the requests or records file             ``round-0/chunks`` (requests, bytes, files)
wait       --                                       --
gather     ``round-N/chunks``                       ``round-N/results``, ``round-N/failures``
retry      the previous round's ``failures``        ``round-N/chunks``
finalize   every round's ``results``, ``failures``  ``results.jsonl``, ``failures.jsonl``, the
                                                    Parquet tables (with their schema), the
                                                    published copies
=========  =======================================  ==============================================

Every task with batches names them as ``ExternalQueryRunFacet`` (``externalQuery`` for the first,
``externalQuery_2``... for the others); gather and finalize add the ``airflow_batch`` run facet
(:data:`~airflow_batch.lineage.figures.FACET_SCHEMA_URL`) with requests, failures by type, tokens
by kind and cost per model, and reused answers with their saved cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.lineage.figures import (
    FACET_NAME,
    FACET_SCHEMA_URL,
    QUERY_SOURCE,
    batch_ids,
    dataset_name,
    failures_by_type,
    folder_of,
    reuse_savings,
    run_figures,
)

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_batch.rules.costs import PriceTable


@cache
def run_facet_class() -> type:
    """Return the ``airflow_batch`` run facet class (an OpenLineage ``RunFacet`` with our schema URL)."""
    import attr
    from openlineage.client.generated.base import RunFacet

    @attr.define
    class AirflowBatchRunFacet(RunFacet):  # type: ignore[misc]
        """A batch job's (or round's) requests, failures, tokens and cost, per model."""

        stage: str
        round: int | None
        requests: int
        succeeded: int
        failed: int
        failedByType: dict[str, int]
        reused: int
        tokens: dict[str, int]
        batchUsd: float
        standardUsd: float
        models: dict[str, Any]
        reuse: dict[str, Any] | None
        batchIds: list[str]

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return AirflowBatchRunFacet


def dataset(
    uri: str,
    *,
    output: bool = False,
    rows: int | None = None,
    files: int | None = None,
    size: int | None = None,
    facets: Mapping[str, Any] | None = None,
) -> Any:
    """Return the input (or output, with its statistics) dataset of a file or folder URI."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    name = dataset_name(uri)
    if not output:
        return InputDataset(namespace=name.namespace, name=name.name, facets=dict(facets or {}))
    return OutputDataset(
        namespace=name.namespace,
        name=name.name,
        facets=dict(facets or {}),
        outputFacets={
            "outputStatistics": stats.OutputStatisticsOutputDatasetFacet(
                rowCount=rows, size=size, fileCount=files
            )
        },
    )


def query_facets(ids: list[str]) -> dict[str, Any]:
    """Return one ``ExternalQueryRunFacet`` per batch id."""
    from openlineage.client.facet_v2 import external_query_run

    return {
        "externalQuery" if index == 1 else f"externalQuery_{index}": external_query_run.ExternalQueryRunFacet(
            externalQueryId=batch_id, source=QUERY_SOURCE
        )
        for index, batch_id in enumerate(ids, 1)
    }


def _size(paths: list[str]) -> int | None:
    """Return the bytes of ``paths`` added up, None when one cannot be read."""
    from airflow_batch.storage import as_path

    try:
        return sum(as_path(path).stat().st_size for path in paths)
    except Exception:  # lineage never fails a task: the statistic is left out
        return None


def _parquet_schema(uri: str) -> Any:
    """Return the ``SchemaDatasetFacet`` of a Parquet table (read from its footer)."""
    import pyarrow.parquet as pq
    from openlineage.client.facet_v2 import schema_dataset

    from airflow_batch.storage import as_path

    with as_path(uri).open("rb") as handle:
        schema = pq.read_schema(handle)
    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=field.name, type=str(field.type), ordinal_position=i)
            for i, field in enumerate(schema, 1)
        ]
    )


def submitted_lineage(manifest: Mapping[str, Any], source: list[str]) -> OperatorLineage:
    """Return the lineage of a submit (or retry): ``source`` in, the round's chunk files out."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    chunks = [str(b["chunk_path"]) for b in manifest.get("batches") or ()]
    outputs = []
    if chunks:
        outputs.append(
            dataset(
                folder_of(chunks[0]),
                output=True,
                rows=int(manifest.get("requests", 0) or 0),
                files=len(chunks),
                size=int(manifest.get("bytes", 0) or 0),
            )
        )
    return OperatorLineage(
        inputs=[dataset(uri) for uri in source],
        outputs=outputs,
        run_facets=query_facets(batch_ids(manifest)),
    )


def waited_lineage(manifest: Mapping[str, Any]) -> OperatorLineage:
    """Return the lineage of a wait: the batches it watched."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(run_facets=query_facets(batch_ids(manifest)))


def gathered_lineage(manifest: Mapping[str, Any], table: PriceTable) -> OperatorLineage:
    """Return the lineage of a gather: the round's chunks in; its results, failures (and the rows
    answered without a batch, ``reused.jsonl``) out."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_batch.folder import JobFolder

    chunks = [str(b["chunk_path"]) for b in manifest.get("batches") or ()]
    round_dir = str(JobFolder(str(manifest["job_dir"])).round_dir(int(manifest.get("round", 0))))
    reused_path = manifest.get("reused_path")
    results = [str(p) for p in manifest.get("results_paths") or () if p != reused_path]
    failures = [str(p) for p in manifest.get("failures_paths") or ()]
    counts = manifest.get("result_counts") or {}
    reused = int(manifest.get("reused", 0) or 0)
    saved = _saved([manifest], table) if reused else None
    outputs = [
        dataset(
            f"{round_dir}/results",
            output=True,
            rows=int(counts.get("succeeded", 0) or 0),
            files=len(results),
            size=_size(results),
        ),
        dataset(
            f"{round_dir}/failures",
            output=True,
            rows=sum(failures_by_type(manifest).values()),
            files=len(failures),
            size=_size(failures),
        ),
    ]
    if reused and reused_path:
        outputs.append(
            dataset(str(reused_path), output=True, rows=reused, files=1, size=_size([str(reused_path)]))
        )
    return OperatorLineage(
        inputs=[dataset(folder_of(chunks[0]))] if chunks else [],
        outputs=outputs,
        run_facets={
            **query_facets(batch_ids(manifest)),
            FACET_NAME: run_facet_class()(**run_figures(manifest, table, saved)),
        },
    )


#: Reused answers priced for the facet at most: pricing reads their rows, and the listener gives
#: a task's facets seconds (``[openlineage] execution_timeout``), not minutes.
MAX_PRICED_REUSED = 200_000


def _saved(rounds: Sequence[Mapping[str, Any]], table: PriceTable) -> dict[str, Any]:
    """Return what the rounds' reused answers saved (read from their ``reused.jsonl``); above
    :data:`MAX_PRICED_REUSED` answers only their count (the saving is then ``None``)."""
    from airflow_batch.storage import as_path, iter_jsonl

    reused = sum(int(m.get("reused", 0) or 0) for m in rounds)
    if reused > MAX_PRICED_REUSED:
        return {"answers": reused, "savedBatchUsd": None, "savedStandardUsd": None}

    def rows() -> Iterator[Mapping[str, Any]]:
        for manifest in rounds:
            if manifest.get("reused") and manifest.get("reused_path"):
                yield from iter_jsonl(as_path(str(manifest["reused_path"])))

    return reuse_savings(rows(), table)


def finalized_lineage(manifest: Mapping[str, Any], table: PriceTable) -> OperatorLineage:
    """Return the lineage of a finalize: every round's parts in, the job's final files out."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_batch.folder import JobFolder
    from airflow_batch.storage import as_path

    rounds = JobFolder(str(manifest["job_dir"])).read_rounds()
    inputs: list[Any] = []
    for round_manifest in rounds:
        for key in ("results_paths", "failures_paths"):
            paths: list[str] = [str(p) for p in round_manifest.get(key) or ()]  # type: ignore[attr-defined]
            # A round's part files are one dataset (their folder); its reused rows are a file.
            inputs.extend(dataset(p) for p in paths if p.endswith(layout.REUSED_FILE))
            parts = [p for p in paths if not p.endswith(layout.REUSED_FILE)]
            if parts:
                inputs.append(dataset(folder_of(parts[0])))
    rows = {
        "results": int(manifest.get("succeeded", 0) or 0),
        "failures": int(manifest.get("failed", 0) or 0),
    }
    finals: list[tuple[str, str]] = [
        ("results", str(manifest["results_path"])),
        ("failures", str(manifest["failures_path"])),
    ]
    for kind in ("results", "failures"):
        table_path = manifest.get(f"{kind}_parquet_path")
        if table_path:
            finals.append((kind, str(table_path)))
    published = manifest.get("published_path")
    if published:
        version = manifest.get("published_version")
        folder = layout.published_version_dir(as_path(str(published)), version) if version else published
        finals += [(kind, f"{str(folder).rstrip('/')}/{as_path(uri).name}") for kind, uri in list(finals)]
    outputs = [
        dataset(
            uri,
            output=True,
            rows=rows[kind],
            files=1,
            size=_size([uri]),
            facets={"schema": _parquet_schema(uri)} if uri.endswith(".parquet") else None,
        )
        for kind, uri in finals
    ]
    saved = _saved(rounds, table) if manifest.get("reused") else None
    return OperatorLineage(
        inputs=inputs,
        outputs=outputs,
        run_facets={
            **query_facets(batch_ids(manifest)),
            FACET_NAME: run_facet_class()(**run_figures(manifest, table, saved, rounds)),
        },
    )


def failed_lineage(manifest: Mapping[str, Any] | None) -> OperatorLineage:
    """Return the lineage of a failed task: the refusal (or failure-rate) outcome as an error message.

    The listener adds the exception itself as ``errorMessage`` too; this one also carries the
    failed manifest's reason when a refused round left one.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.facet_v2 import error_message_run

    facets: dict[str, Any] = {}
    if manifest is not None:
        facets.update(query_facets(batch_ids(manifest)))
        reason = manifest.get("reason")
        if reason:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=str(reason), programmingLanguage="python"
            )
    return OperatorLineage(run_facets=facets)
