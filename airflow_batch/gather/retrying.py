"""What a retry round resubmits: the retryable failures of a round, as the requests first sent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from airflow_batch.gather.rows import custom_id_decoder, failure_row_decoder
from airflow_batch.storage import as_path, iter_jsonl_lines


def retryable_ids(manifest: Mapping[str, Any]) -> set[str]:
    """Return the ``custom_id`` of every failure of a gathered round classified retryable."""
    ids: set[str] = set()
    for part in manifest.get("failures_paths", []):
        for line in iter_jsonl_lines(as_path(part)):
            row = failure_row_decoder.decode(line)
            if row.retryable:
                ids.add(row.custom_id)
    return ids


def original_requests(manifest: Mapping[str, Any], ids: set[str]) -> Iterator[bytes]:
    """Yield, from the round's prepared chunks, the JSONL lines of the requests whose id is in ``ids``.

    The lines are the bytes submitted before, so the retry sends exactly the same requests.
    """
    decode_id = custom_id_decoder.decode
    for record in manifest.get("batches", []):
        for line in iter_jsonl_lines(as_path(record["chunk_path"])):
            if decode_id(line).custom_id in ids:
                yield line
