"""A job's own page in Airflow's FastAPI app, in process: who may see it, and what it finds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow_test_env import run_dag
from test_batch_jobs_app import _token

DAG_ID = "job_page_probe"


@pytest.fixture(scope="module")
def client(airflow_db: str) -> Any:
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    return TestClient(create_app("core"))


@pytest.fixture(scope="module")
def gathered_job(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DAG run whose task returned a gathered round manifest with one errored request."""
    from airflow.sdk import DAG, task

    job: Path = tmp_path_factory.mktemp("job")
    manifest = {
        "version": 1,
        "stage": "gathered",
        "job_dir": f"file://{job}",
        "round": 0,
        "requests": 3,
        "batches": [{"chunk": 0, "batch_id": "msgbatch_1"}],
        "submitted_at": "2026-01-01T00:00:00+00:00",
        "batch_status": {
            "msgbatch_1": {
                "processing_status": "ended",
                "ended_at": "2026-01-01T00:01:30+00:00",
                "request_counts": {
                    "processing": 0,
                    "succeeded": 2,
                    "errored": 1,
                    "canceled": 0,
                    "expired": 0,
                },
            }
        },
        "result_counts": {"succeeded": 2, "errored": 1},
        "usage": {"input_tokens": 30, "output_tokens": 6},
        "usage_by_model": {"claude-haiku-4-5": {"input_tokens": 30, "output_tokens": 6}},
        "cost": {"batch_usd": 0.000045, "standard_usd": 0.00009},
        "gathered_at": "2026-01-01T00:02:00+00:00",
    }
    with DAG(DAG_ID, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

        @task(task_id="job.gather")
        def gather() -> dict[str, Any]:
            return manifest

        gather()
    return {"run_id": run_dag(dag).run_id, "manifest": manifest}


def _page(client: Any, job: dict[str, Any], job_dir: str | None = None, **headers: str) -> Any:
    params = {"dag_id": DAG_ID, "run_id": job["run_id"], "job_dir": job_dir or job["manifest"]["job_dir"]}
    return client.get("/airflow-batch/job", params=params, headers=headers)


def test_the_job_page_needs_a_user_who_may_read_the_dag(client: Any, gathered_job: dict[str, Any]) -> None:
    assert _page(client, gathered_job).status_code == 401
    assert _page(client, gathered_job, Authorization="Bearer forged").status_code == 403
    unknown = client.get(
        "/airflow-batch/job",
        params={"dag_id": "no_such_dag", "run_id": "r", "job_dir": "/x"},
        headers={"Authorization": f"Bearer {_token()}"},
    )
    assert unknown.status_code == 403


def test_the_job_page_draws_the_jobs_charts_and_is_linked_from_its_row(
    client: Any, gathered_job: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {_token()}"}
    page = _page(client, gathered_job, **headers)
    listing = client.get("/airflow-batch/jobs", params={"dag_id": DAG_ID}, headers=headers)
    missing = _page(client, gathered_job, "/elsewhere", **headers)

    assert page.status_code == 200
    for chart in ("progress", "failures", "cost", "trend-cost", "trend-tokens", "trend-failure-rate"):
        assert f'data-chart="{chart}"' in page.text
    # The round's one errored request, and its three ended requests in the second minute.
    assert '<g class="mark" data-kind="errored" data-label="1">' in page.text
    assert '<g class="mark" data-kind="round 0" data-label="3">' in page.text
    assert f'class="job-view" href="/airflow-batch/job?dag_id={DAG_ID}&amp;run_id=' in listing.text
    assert missing.status_code == 404
