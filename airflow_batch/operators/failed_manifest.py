"""The manifest of a round that failed before it was submitted, left in XCom for the batch jobs page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowSkipException

from airflow_batch.exceptions import BeforeSubmitError
from airflow_batch.manifest import FAILED_MANIFEST_KEY, refused_manifest

if TYPE_CHECKING:
    from airflow.sdk import Context


@contextmanager
def failures_shown(context: Context, job_dir: Callable[[], str], round_number: int) -> Iterator[None]:
    """Leave the manifest of a round that failed before it was submitted in XCom (``FAILED_MANIFEST_KEY``).

    The task fails without a return value; this is how the batch jobs page still lists the job:
    refused (a :class:`~airflow_batch.exceptions.BeforeSubmitError`: the reason, and the budget's
    figures), or failed with the error it met (no ``output_path``, the API refusing the create, a
    template that renders wrong...). A skip or a deferral passes through.
    """
    try:
        yield
    except AirflowSkipException:
        raise
    except BeforeSubmitError as refusal:
        context["ti"].xcom_push(
            FAILED_MANIFEST_KEY, refused_manifest(_job_name(job_dir, context), refusal.record(round_number))
        )
        raise
    except Exception as error:
        record = {
            "round": round_number,
            "reason": str(error) or type(error).__name__,
            "kind": type(error).__name__,
        }
        context["ti"].xcom_push(
            FAILED_MANIFEST_KEY, refused_manifest(_job_name(job_dir, context), {**record, "failed": True})
        )
        raise


def _job_name(job_dir: Callable[[], str], context: Context) -> str:
    """Return the job folder, or, for a job that cannot have one (no ``output_path``), a name the page
    shows it under (its last part is the task id, as a folder's)."""
    try:
        return job_dir()
    except Exception:
        ti = context["ti"]
        return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
