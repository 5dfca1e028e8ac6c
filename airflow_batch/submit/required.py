"""What a job cannot run without, checked when the DAG is parsed: where to write, a model, its input.

Each check is a function the submit operator's constructor calls, so a DAG that lacks one of
them is an import error naming the setting and the fix, instead of a run that fails a minute
after it is triggered. A value given as a template (``{{ ... }}``) or an upstream task's output
passes: it is known only when the task runs, and checked then. ``[airflow_batch]`` settings are
read from the parsing process's configuration, the deployment's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow_batch import settings
from airflow_batch.submit.documents import DELETE_FILES
from airflow_batch.submit.inputs import check_location

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


def max_age_seconds(max_age: Any, task_id: str) -> float | None:
    """Return ``max_age`` in seconds; raise ValueError for anything but a positive number or timedelta
    (``nan`` would silently turn reuse off: no age compares below it)."""
    if max_age is None:
        return None
    if isinstance(max_age, timedelta):
        seconds = max_age.total_seconds()
    elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
        seconds = float(max_age)
    else:
        raise ValueError(
            f"{task_id}: max_age must be a number of seconds or a timedelta, got {max_age!r}; "
            "e.g. max_age=timedelta(hours=1) or max_age=3600"
        )
    if not seconds > 0:  # also refuses nan
        raise ValueError(f"{task_id}: max_age must be positive seconds, got {max_age!r}")
    return seconds


def require_documents(
    task_id: str,
    documents: Any,
    requests: Any,
    records: Any,
    prompt_template: str | None,
    delete_files: str,
    upload_concurrency: int,
) -> None:
    """Refuse a ``documents=`` job that cannot run."""
    if upload_concurrency < 1:
        raise ValueError(f"{task_id}: upload_concurrency must be >= 1, got {upload_concurrency}")
    if requests is not None or records is not None:
        raise ValueError(f"{task_id}: give exactly one of requests=, records= or documents=")
    if prompt_template is None:
        raise ValueError(f"{task_id}: documents= needs prompt_template= (the text sent with each file)")
    if delete_files not in DELETE_FILES:
        raise ValueError(f"{task_id}: delete_files must be one of {DELETE_FILES}, got {delete_files!r}")
    check_location(documents, f"{task_id}: documents")
