"""Where a job's rows come from: an inline list, a JSONL file (any object store), or an upstream task.

File inputs stream: request lines stay raw bytes, so the submit pass checks and writes them
without re-encoding; record lines are decoded one at a time, and a line that is not JSON
becomes an invalid row naming its line number instead of failing the task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from airflow_batch.storage import as_path, iter_jsonl_lines
from airflow_batch.submit.validation import InvalidRow


def _decoded(lines: Iterable[bytes]) -> Iterator[Any]:
    """Yield each JSON line decoded, or an :class:`InvalidRow` naming why it is not JSON."""
    decode = msgspec.json.Decoder().decode
    for line in lines:
        try:
            yield decode(line)
        except msgspec.DecodeError as exc:
            yield InvalidRow(f"not valid JSON: {exc}")


def input_rows(source: Any, name: str) -> Iterable[Any]:
    """Return the rows of ``source``: a list as is, a URI / path as its JSONL lines (streamed).

    ``name`` is ``"requests"`` (lines stay raw bytes) or ``"records"`` (lines are decoded).
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(source, (str, ObjectStoragePath)):
        path = as_path(source)
        if not path.exists():
            raise FileNotFoundError(f"{name}: no file at {path}; give a JSONL file's URI or a list")
        lines = iter_jsonl_lines(path)
        return lines if name == "requests" else _decoded(lines)
    if isinstance(source, Mapping):
        raise TypeError(f"{name} must be a list or a JSONL file URI, got a single mapping")
    if isinstance(source, Iterable):
        return source
    raise TypeError(f"{name} must be a list or a JSONL file URI, got {type(source).__name__}")
