"""The batch jobs page: a FastAPI app the api-server mounts at ``/airflow-batch``.

Plugin FastAPI apps get no authentication from Airflow, so every route here resolves the
caller with Airflow's own ``get_user`` (the ``Authorization: Bearer`` JWT, or the ``_token``
cookie the Airflow UI sets) and asks the configured auth manager which DAGs the caller may
read. Unauthenticated requests get 401, a forged token 403, a DAG the caller may not read
403. Airflow's heavy modules are imported inside the handlers: every Airflow component loads
plugins, and only the api-server ever serves this app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airflow_batch.manifest import FAILED_MANIFEST_KEY
from airflow_batch.plugins.manifests import ManifestRecord, is_batch_manifest, manifest_paths
from airflow_batch.plugins.rendering import render_job_page, render_page
from airflow_batch.plugins.views import build_jobs

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

URL_PREFIX = "/airflow-batch"
RECENT_RUNS = 50
#: The XCom keys manifests are found under.
MANIFEST_KEYS = ("return_value", FAILED_MANIFEST_KEY)
MEDIA_TYPES = {".jsonl": "application/x-ndjson", ".json": "application/json"}
_bearer = HTTPBearer(auto_error=False)

app = FastAPI(title="Airflow Batch: batch jobs", docs_url=None, redoc_url=None, openapi_url=None)


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> BaseUser:
    """Return the caller as Airflow's core API resolves it; 401/403 when not authenticated."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, credentials)


# ``Any``, not ``BaseUser``: FastAPI resolves these annotations at runtime, and Airflow's user
# model is only imported when a request comes in.
CurrentUser = Annotated[Any, Depends(current_user)]


def readable_dag_ids(user: BaseUser) -> set[str]:
    """Return the DAG ids whose runs ``user`` may read."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def _require_dag(user: BaseUser, dag_id: str) -> None:
    if dag_id not in readable_dag_ids(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"no read access to DAG {dag_id!r}")


def load_records(
    dag_ids: set[str], dag_id: str | None = None, run_id: str | None = None
) -> list[ManifestRecord]:
    """Return the manifests in XCom of the most recent runs of ``dag_ids``, newest run first.

    Return values, and the manifests failed tasks left (a refused round, a job above its
    failure-rate limit).
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not dag_ids:
        return []
    with create_session() as session:
        runs = select(DagRun.id).where(DagRun.dag_id.in_(dag_ids))
        if dag_id is not None:
            runs = runs.where(DagRun.dag_id == dag_id)
        if run_id is not None:
            runs = runs.where(DagRun.run_id == run_id)
        run_pks = list(session.scalars(runs.order_by(DagRun.id.desc()).limit(RECENT_RUNS)))
        rows = session.execute(
            select(
                XComModel.dag_id,
                XComModel.run_id,
                XComModel.task_id,
                XComModel.map_index,
                XComModel.value,
                XComModel.dag_run_id,
            )
            .where(XComModel.dag_run_id.in_(run_pks), XComModel.key.in_(MANIFEST_KEYS))
            .order_by(XComModel.dag_run_id.desc(), XComModel.timestamp)
        ).all()
    records = []
    for row in rows:
        value = XComModel.deserialize_value(row)
        if is_batch_manifest(value):
            records.append(ManifestRecord(row.dag_id, row.run_id, row.task_id, row.map_index, value))
    return records


def read_progress(job_dir: str, round_number: int) -> Mapping[str, Any] | None:
    """Return the wait's latest ``progress.json`` of a round, or None if there is none yet."""
    from airflow_batch.layout import progress_path
    from airflow_batch.storage import as_path, read_json

    try:
        progress = read_json(progress_path(as_path(job_dir), round_number))
    except Exception:  # missing file, unreachable store: the page shows what XCom knows
        return None
    return progress if isinstance(progress, Mapping) else None


def _ui_base() -> str:
    from urllib.parse import urlparse

    from airflow.configuration import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


@app.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    user: CurrentUser,
    dag_id: Annotated[str | None, Query(description="Only this DAG (the DAG-run view passes it)")] = None,
    run_id: Annotated[str | None, Query(description="Only this run")] = None,
) -> HTMLResponse:
    """Return the batch jobs of the recent runs the caller may read (optionally one DAG or run)."""
    allowed = readable_dag_ids(user)
    if dag_id is not None and dag_id not in allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"no read access to DAG {dag_id!r}")
    jobs = build_jobs(load_records(allowed, dag_id, run_id), read_progress)
    if run_id is not None:
        title, subtitle = "Batch jobs of this run", f"{dag_id} / {run_id}"
    elif dag_id is not None:
        title, subtitle = f"Batch jobs of {dag_id}", f"the last {RECENT_RUNS} runs"
    else:
        title = "Batch jobs"
        subtitle = f"Anthropic Message Batches of the last {RECENT_RUNS} runs you can read"
    page = render_page(
        jobs,
        base=str(request.scope.get("root_path", URL_PREFIX)).rstrip("/"),
        title=title,
        subtitle=subtitle,
        ui_base=_ui_base(),
        show_rounds=run_id is not None,
    )
    return HTMLResponse(page)


@app.get("/job", response_class=HTMLResponse)
def job_page(request: Request, user: CurrentUser, dag_id: str, run_id: str, job_dir: str) -> HTMLResponse:
    """Return one job's charts: its progress, failures and cost, and the DAG's trend of its runs."""
    from airflow_batch.plugins.job_view import cost_by_model, job_charts

    _require_dag(user, dag_id)
    runs = [j for j in build_jobs(load_records({dag_id}, dag_id), read_progress) if j.dag_id == dag_id]
    job = next((j for j in runs if j.job_dir == job_dir and j.run_id == run_id), None)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch job {job_dir!r} in run {run_id!r}")
    same_job = [j for j in runs if j.name == job.name]
    charts = job_charts(job, same_job, cost_by_model(job))
    return HTMLResponse(
        render_job_page(charts, base=str(request.scope.get("root_path", URL_PREFIX)).rstrip("/"))
    )


@app.get("/files")
def download(dag_id: str, run_id: str, path: str, user: CurrentUser) -> StreamingResponse:
    """Stream a file named in a manifest of the DAG run (results, failures, the job manifest).

    Only paths a manifest of that run lists can be fetched, so the page can never be used to
    read an arbitrary file, and only by users who may read the DAG.
    """
    _require_dag(user, dag_id)
    allowed = set().union(*(manifest_paths(r.value) for r in load_records({dag_id}, dag_id, run_id)))
    if path not in allowed:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file in the manifests of this run")

    from airflow_batch.storage import as_path, read_blocks

    target = as_path(path)
    if not target.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{path} does not exist (yet)")

    return StreamingResponse(
        read_blocks(target, 1 << 20),
        media_type=MEDIA_TYPES.get(target.suffix, "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{target.name}"'},
    )
