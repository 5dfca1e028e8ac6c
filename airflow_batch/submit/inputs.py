"""Where a job's rows come from: an inline list, a JSONL file (any object store), or an upstream task.

File inputs stream: request lines stay raw bytes, so the submit pass checks and writes them
without re-encoding; record lines are decoded one at a time, and a line that is not JSON
(or not UTF-8, or nested too deeply) becomes an invalid row naming its line number instead of
failing the task. Blank lines are passed on (as ``b""`` or ``BLANK``) so rows keep the line
numbers an editor shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from airflow_batch.exceptions import MissingInputError
from airflow_batch.rules.params import loads
from airflow_batch.storage import as_path, iter_lines
from airflow_batch.submit.records import BLANK
from airflow_batch.submit.validation import InvalidRow


def _decoded(lines: Iterable[bytes]) -> Iterator[Any]:
    """Yield each JSON line decoded, ``BLANK`` for a blank one, or an :class:`InvalidRow` saying why not."""
    for line in lines:
        if not line.strip():
            yield BLANK
            continue
        try:
            yield loads(line)
        except ValueError as exc:
            yield InvalidRow(str(exc))


def check_location(value: Any, name: str, *, rendered: bool = False) -> None:
    """Refuse a relative local path: it would resolve against whichever worker runs the task.

    At DAG parse time (``rendered=False``) a value starting with a template (``{{ ... }}``)
    passes; the rendered value is checked again when the task runs.
    """
    if not isinstance(value, str) or "://" in value or value.startswith("/"):
        return
    if not rendered and value.lstrip().startswith("{{"):
        return
    raise ValueError(
        f"{name}={value!r} is a relative path: it would resolve against the working directory of "
        "whichever worker runs the task. Give an absolute path (/data/...) or a URI (file://, s3://, gs://)."
    )


def is_file_input(source: Any) -> bool:
    """Return whether ``source`` names a file (its rows are then numbered as lines)."""
    from airflow.sdk import ObjectStoragePath

    return isinstance(source, (str, ObjectStoragePath))


def input_rows(source: Any, name: str) -> Iterable[Any]:
    """Return the rows of ``source``: a list as is, a URI / path as its JSONL lines (streamed).

    ``name`` is ``"requests"`` (lines stay raw bytes) or ``"records"`` (lines are decoded).
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(source, (str, ObjectStoragePath)):
        if isinstance(source, str):
            check_location(source, name, rendered=True)
        path = as_path(source)
        if not path.exists():
            raise MissingInputError(f"{name}: no file at {path}; give a JSONL file's URI or a list")
        lines = iter_lines(path)
        return lines if name == "requests" else _decoded(lines)
    if isinstance(source, Mapping):
        raise TypeError(f"{name} must be a list or a JSONL file URI, got a single mapping")
    if isinstance(source, Iterable):
        return source
    raise TypeError(f"{name} must be a list or a JSONL file URI, got {type(source).__name__}")
