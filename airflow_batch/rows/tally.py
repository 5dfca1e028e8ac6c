"""Counts and usage of a block's rows: per result type, per error type, per model and price tier.

Sums are taken a column at a time over the block's row objects (``map`` over ``attrgetter``):
the fastest way in Python, and a gather sums every row it writes.
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter
from typing import Any, cast

import msgspec

from airflow_batch.manifest import Usage, empty_usage
from airflow_batch.rows.block import BlockRows, BlockSettings
from airflow_batch.rows.contract import FailureRow, ResultRow, RowUsage
from airflow_batch.rules.costs import usage_key

#: Every count of a row's usage (the manifest's Usage has the same keys).
_USAGE_KEYS = tuple(field.name for field in msgspec.structs.fields(RowUsage) if field.type is int)
_USAGE_COLUMNS = [(name, attrgetter(name)) for name in _USAGE_KEYS]


def _row_key(row: Any, settings: BlockSettings) -> str:
    """Return the usage key of a row: its model, price tier and residency region."""
    usage = row.usage
    threshold = settings.long_prompt_above(row.model)
    long_prompt = threshold is not None and (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens > threshold
    )
    geo = usage.inference_geo if usage.inference_geo in settings.residency_geos else None
    return usage_key(row.model, long_prompt=long_prompt, geo=geo)


def manifest_usage(usage: RowUsage) -> Usage:
    """Return one row's usage as the manifests count it (the same keys, without the region)."""
    return cast("Usage", {name: getattr(usage, name) for name in _USAGE_KEYS})


def sum_usage(usage_by_key: dict[str, Usage], rows: list[Any], settings: BlockSettings) -> None:
    """Add the usage of rows into per-key totals (a column at a time: the fastest way)."""
    models = set(map(_model_of, rows))
    usages = list(map(_usage_of, rows))
    groups: dict[str, list[RowUsage]] = {}
    if any(map(_geo_of, usages)) or any(settings.long_prompt_above(model) is not None for model in models):
        for row in rows:
            groups.setdefault(_row_key(row, settings), []).append(row.usage)
    elif len(models) == 1:  # the common case: one model, and the key is the model
        groups[models.pop()] = usages
    else:
        for row in rows:
            groups.setdefault(row.model, []).append(row.usage)
    for key, group in groups.items():
        total = usage_by_key.setdefault(key, empty_usage())
        for name, column in _USAGE_COLUMNS:
            total[name] += sum(map(column, group))  # type: ignore[literal-required]


def count_succeeded(out: BlockRows, rows: list[ResultRow]) -> None:
    """Add result rows to the succeeded counts, per model too."""
    out.result_counts["succeeded"] = out.result_counts.get("succeeded", 0) + len(rows)
    for model, count in Counter(map(_model_of, rows)).items():  # counted in C: the hot path
        by_type = out.counts_by_model.setdefault(model, {})
        by_type["succeeded"] = by_type.get("succeeded", 0) + count


def count_failures(out: BlockRows, failures: list[FailureRow]) -> None:
    """Add failure rows to the counts per result type and error type, and to ``retryable``."""
    counts, error_types = out.result_counts, out.error_types
    for failure in failures:
        counts[failure.result_type] = counts.get(failure.result_type, 0) + 1
        if failure.error_type is not None:
            error_types[failure.error_type] = error_types.get(failure.error_type, 0) + 1
        by_type = out.counts_by_model.setdefault(failure.model or "", {})
        by_type[failure.result_type] = by_type.get(failure.result_type, 0) + 1
        if failure.retryable:
            out.retryable += 1
            retried = out.retryable_by_model.setdefault(failure.model or "", {})
            retried[failure.result_type] = retried.get(failure.result_type, 0) + 1


_model_of = attrgetter("model")
_usage_of = attrgetter("usage")
_geo_of = attrgetter("inference_geo")
