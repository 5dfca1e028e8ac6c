"""A job's input: what it cannot run without, checked when the DAG is parsed, and where its rows
come from when it runs: an inline list, a JSONL file (any object store), or an upstream task.

The parse-time checks (where to write, a model, an input that exists at an absolute location)
are functions the submit operator's constructor calls, so a DAG that lacks one of them is an
import error naming the setting and the fix, instead of a run that fails a minute after it is
triggered. A value given as a template (``{{ ... }}``) or an upstream task's output passes: it
is known only when the task runs, and checked then. ``[airflow_batch]`` settings are read from
the parsing process's configuration, the deployment's.

File inputs stream: request lines stay raw bytes, so the submit pass checks and writes them
without re-encoding; record lines are decoded one at a time, and a line that is not JSON
(or not UTF-8, or nested too deeply) becomes an invalid row naming its line number instead of
failing the task. Blank lines are passed on (as ``b""`` or ``BLANK``) so rows keep the line
numbers an editor shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from airflow_batch import settings
from airflow_batch.exceptions import MissingInputError
from airflow_batch.rules.params import loads
from airflow_batch.storage import as_path, iter_lines
from airflow_batch.submit.records import BLANK
from airflow_batch.submit.validation import InvalidRow

DEFAULT_MODEL_EXAMPLE = "claude-haiku-4-5"


def is_template(value: Any) -> bool:
    """Return whether ``value`` is a string Airflow renders when the task runs."""
    return isinstance(value, str) and "{{" in value


def require_output_path(task_id: str, output_path: Any) -> None:
    """Refuse a job with neither ``output_path=`` nor ``[airflow_batch] output_path``."""
    if output_path or settings.get("output_path"):
        return
    raise ValueError(
        f"{task_id}: no output_path: pass output_path= (an absolute path or a URI such as "
        "s3://bucket/prefix) or set [airflow_batch] output_path "
        "(AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH); `airflow-batch dev` sets it for its deployment"
    )


def require_model(task_id: str, *, model: Any, records: Any, requests: Any, builds_requests: bool) -> None:
    """Refuse a job whose requests would name no model: no ``model=``, no ``[airflow_batch] model``,
    and records turned into requests by a template alone, or inline requests without
    ``params.model`` (the first such request is named). ``builds_requests``: a ``request_builder``
    may set the model itself."""
    if model or settings.get("model"):
        return
    fix = (
        f"pass model= (e.g. {DEFAULT_MODEL_EXAMPLE!r}) or set [airflow_batch] model "
        "(AIRFLOW__AIRFLOW_BATCH__MODEL)"
    )
    if records is not None and not builds_requests:
        raise ValueError(f"{task_id}: no model: the requests built from records= name none; {fix}")
    if not isinstance(requests, (list, tuple)):
        return
    for number, request in enumerate(requests, 1):
        params = request.get("params") if isinstance(request, Mapping) else None
        if isinstance(params, Mapping) and not params.get("model"):
            custom_id = request.get("custom_id")
            raise ValueError(
                f"{task_id}: request {number} (custom_id {custom_id!r}) sets no params.model; {fix}"
            )


def require_local_input(task_id: str, name: str, source: Any) -> None:
    """Refuse an input given as a local file that does not exist.

    Every worker must see a local input at the same path (the DAG folder's data ships with the
    DAGs), so it exists when the DAG is parsed too; an object-store URI or a template is read
    when the task runs.
    """
    if not isinstance(source, str) or is_template(source):
        return
    if source.startswith("file://"):
        local = source.removeprefix("file://")
    elif "://" in source:
        return
    else:
        local = source
    if local.startswith("/") and not Path(local).exists():
        raise ValueError(
            f"{task_id}: {name}={source!r}: no file there. Give an existing JSONL file, an object-store URI "
            "(s3://, gs://) or a template such as '/data/{{ ds }}.jsonl' for a file written before the run"
        )


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
