"""What a batch job reports as lineage, as plain data: dataset names and the job's figures.

Pure functions over manifests (:mod:`airflow_batch.manifest`) and URIs: no OpenLineage import,
so they are tested without the extra and :mod:`airflow_batch.lineage.facets` only wraps their
output in facet classes.

Datasets are named as OpenLineage's naming spec names files: ``file`` and the absolute path on
a local disk, ``s3://{bucket}`` or ``gs://{bucket}`` and the key in object storage. A round's
part files (one per batch) are one dataset, their folder, with the file count in its statistics;
a job's final files are a dataset each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_batch.manifest import Usage, empty_usage, sum_usages

if TYPE_CHECKING:
    from airflow_batch.rules.costs import PriceTable

#: Where the custom run facet's JSON schema lives: the project's own namespace.
FACET_SCHEMA_URL = (
    "https://airflow-batch.readthedocs.io/spec/facets/1-0-0/AirflowBatchRunFacet.json"
    "#/$defs/AirflowBatchRunFacet"
)
#: The run facet's key in an event's ``run.facets``.
FACET_NAME = "airflow_batch"
#: What an ``ExternalQueryRunFacet`` names as the source of a batch id.
QUERY_SOURCE = "anthropic_message_batches"


@dataclass(frozen=True)
class DatasetName:
    """A dataset as OpenLineage names it: a namespace (the storage) and a name in it."""

    namespace: str
    name: str


def dataset_name(uri: str) -> DatasetName:
    """Return the OpenLineage name of a file or folder URI (a bare path is a local file)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "local"):
        path = parts.path if parts.scheme else uri
        return DatasetName("file", "/" + path.strip("/"))
    scheme = "gs" if parts.scheme == "gcs" else parts.scheme
    return DatasetName(f"{scheme}://{parts.netloc}", parts.path.strip("/"))


def folder_of(uri: str) -> str:
    """Return the folder a file URI is in (the dataset of a round's part files)."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def token_kinds(usage: Mapping[str, Any]) -> dict[str, int]:
    """Return tokens by the kind they are priced as: input, output, cache read, cache write 5m and 1h.

    ``cache_creation_input_tokens`` counts every cache write; the 1-hour ones are split out of it.
    """
    written = int(usage.get("cache_creation_input_tokens", 0) or 0)
    written_1h = int(usage.get("cache_creation_1h_input_tokens", 0) or 0)
    return {
        "input": int(usage.get("input_tokens", 0) or 0),
        "output": int(usage.get("output_tokens", 0) or 0),
        "cache_read": int(usage.get("cache_read_input_tokens", 0) or 0),
        "cache_write_5m": written - written_1h,
        "cache_write_1h": written_1h,
    }


def usage_by_model(usage_by_key: Mapping[str, Mapping[str, Any]]) -> dict[str, Usage]:
    """Return usage summed per model id (the manifests key usage by model, prompt tier and geo)."""
    from airflow_batch.rules.costs import split_usage_key

    models: dict[str, Usage] = {}
    for key, usage in usage_by_key.items():
        model = split_usage_key(key)[0]
        models[model] = sum_usages([models.get(model, empty_usage()), usage])
    return models


def model_figures(usage_by_key: Mapping[str, Mapping[str, Any]], table: PriceTable) -> dict[str, Any]:
    """Return per model: tokens by kind, cost at batch prices and the standard-price equivalent."""
    from airflow_batch.rules.costs import split_usage_key

    keys_of: dict[str, dict[str, Usage]] = {}
    for key, usage in usage_by_key.items():
        keys_of.setdefault(split_usage_key(key)[0], {})[key] = usage  # type: ignore[assignment]
    figures = {}
    for model, keys in sorted(keys_of.items()):
        cost = table.cost(keys)
        figures[model] = {
            "tokens": token_kinds(sum_usages(keys.values())),
            "batchUsd": cost["batch_usd"],
            "standardUsd": cost["standard_usd"],
            "priced": cost["priced"],
        }
    return figures


def model_counts(rounds: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return per model: requests sent, succeeded, and failed by type, from gathered round manifests.

    One round: its own figures. A job's rounds (round 0 first): requests are round 0's, and a
    failure counts once, where it ended: the retryable failures of a round the next round resent
    are counted by that round instead.
    """
    counts: dict[str, dict[str, Any]] = {}

    def entry(model: str) -> dict[str, Any]:
        return counts.setdefault(model, {"requests": 0, "succeeded": 0, "failed": 0, "failedByType": {}})

    named = {model for manifest in rounds for model in manifest.get("result_counts_by_model") or {}}
    for model, requests in ((rounds[0].get("requests_by_model") or {}) if rounds else {}).items():
        entry(_answered_as(model, named))["requests"] += int(requests)
    for index, manifest in enumerate(rounds):
        resent = (manifest.get("retryable_by_model") or {}) if index + 1 < len(rounds) else {}
        for model, by_type in (manifest.get("result_counts_by_model") or {}).items():
            figures = entry(model)
            for kind, count in by_type.items():
                if kind == "succeeded":
                    figures["succeeded"] += int(count)
                    continue
                ended = int(count) - int((resent.get(model) or {}).get(kind, 0))
                if ended:
                    figures["failedByType"][kind] = figures["failedByType"].get(kind, 0) + ended
                    figures["failed"] += ended
    return counts


def _answered_as(model: str, answered: set[str]) -> str:
    """Return the id answers name for a requested model: itself, or the one answered id of its family
    (the API answers an alias such as ``claude-haiku-4-5`` with its dated id)."""
    from airflow_batch.rules.costs import model_family

    family = model_family(model)
    same = [m for m in answered if family is not None and model_family(m) == family]
    return model if model in answered or len(same) != 1 else same[0]


def reuse_savings(rows: Iterable[Mapping[str, Any]], table: PriceTable) -> dict[str, Any]:
    """Return what reused answers saved: their count and the batch price of their original usage.

    A reused result row costs nothing in this job; its ``reused_from`` names the run that paid
    for the answer, with that run's usage.
    """
    usage: dict[str, Usage] = {}
    count = 0
    for row in rows:
        source = row.get("reused_from")
        if not isinstance(source, Mapping):
            continue
        count += 1
        model = str(row.get("model", ""))
        usage[model] = sum_usages([usage.get(model, empty_usage()), source.get("usage") or {}])
    cost = table.cost(usage)
    return {"answers": count, "savedBatchUsd": cost["batch_usd"], "savedStandardUsd": cost["standard_usd"]}


def failures_by_type(manifest: Mapping[str, Any]) -> dict[str, int]:
    """Return failed requests by type: a job's ``failures_by_type``, or a round's non-success counts."""
    if isinstance(manifest.get("failures_by_type"), Mapping):
        return {str(k): int(v) for k, v in manifest["failures_by_type"].items() if v}
    counts = manifest.get("result_counts") or {}
    return {str(k): int(v) for k, v in counts.items() if k != "succeeded" and v}


def run_figures(
    manifest: Mapping[str, Any],
    table: PriceTable,
    saved: Mapping[str, Any] | None = None,
    rounds: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the custom run facet's fields for a gathered round or a finalized job.

    Counts and costs are the manifest's own; per-model tokens and costs price the manifest's
    ``usage_by_model`` with ``table`` (the job's totals are the sum of the models'); per-model
    requests and outcomes are :func:`model_counts` of ``rounds`` (a job's gathered rounds; a
    round's manifest alone by default).
    """
    by_type = failures_by_type(manifest)
    cost = manifest.get("cost") or {}
    counts = manifest.get("result_counts") or {}
    succeeded = manifest.get("succeeded", counts.get("succeeded", 0))
    return {
        "stage": str(manifest.get("stage", "")),
        "round": manifest.get("round"),
        "requests": int(manifest.get("requests", 0) or 0),
        "succeeded": int(succeeded or 0),
        "failed": sum(by_type.values()),
        "failedByType": by_type,
        "reused": int(manifest.get("reused", 0) or 0),
        "tokens": token_kinds(manifest.get("usage") or {}),
        "batchUsd": float(cost.get("batch_usd", 0.0) or 0.0),
        "standardUsd": float(cost.get("standard_usd", 0.0) or 0.0),
        "models": _models(
            model_figures(manifest.get("usage_by_model") or {}, table), model_counts(rounds or [manifest])
        ),
        "reuse": dict(saved) if saved is not None else None,
        "batchIds": batch_ids(manifest),
    }


def _models(priced: Mapping[str, dict[str, Any]], counted: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Return each model's figures: its counts beside its tokens and cost (zero for a model that
    only failed, unbilled)."""
    unbilled = {"tokens": token_kinds({}), "batchUsd": 0.0, "standardUsd": 0.0, "priced": True}
    none = {"requests": 0, "succeeded": 0, "failed": 0, "failedByType": {}}
    return {
        model: {**(priced.get(model) or unbilled), **(counted.get(model) or none)}
        for model in sorted({*priced, *counted})
    }


def batch_ids(manifest: Mapping[str, Any]) -> list[str]:
    """Return the batch ids a round manifest records, or every round's of a job manifest."""
    ids = [str(b["batch_id"]) for b in manifest.get("batches") or () if "batch_id" in b]
    for summary in manifest.get("rounds") or ():
        ids.extend(str(b) for b in summary.get("batches") or ())
    return ids
