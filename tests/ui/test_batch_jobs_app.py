"""The batch jobs app inside Airflow's own FastAPI app, in process: auth, XCom reading, downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow_test_env import run_dag


@pytest.fixture(scope="module")
def client(airflow_db: str) -> Any:
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    return TestClient(create_app("core"))


def _token(role: str = "admin") -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role=role)))


@pytest.fixture(scope="module")
def finished_job(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DAG run whose task returned a gathered round manifest, as the gather operator does."""
    from airflow.sdk import DAG, task

    job = tmp_path_factory.mktemp("job")
    results = job / "round-0" / "results" / "msgbatch_1.jsonl"
    results.parent.mkdir(parents=True)
    results.write_text('{"custom_id": "a", "text": "ok"}\n{"custom_id": "b", "text": "ok"}\n')
    manifest = {
        "version": 1,
        "stage": "gathered",
        "job_dir": f"file://{job}",
        "round": 0,
        "requests": 3,
        "batches": [{"chunk": 0, "batch_id": "msgbatch_1"}],
        "counts": {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 0},
        "waited_at": "2026-01-01T00:01:00+00:00",
        "result_counts": {"succeeded": 2, "errored": 1},
        "results_paths": [f"file://{results}"],
        "failures_paths": [],
        "usage": {"input_tokens": 30, "output_tokens": 6},
        "cost": {"batch_usd": 0.000045, "standard_usd": 0.00009},
        "gathered_at": "2026-01-01T00:02:00+00:00",
    }
    with DAG("ui_app_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

        @task(task_id="job.gather")
        def gather() -> dict[str, Any]:
            return manifest

        @task
        def unrelated() -> dict[str, int]:
            return {"answer": 42}

        gather()
        unrelated()
    run = run_dag(dag)
    return {"run_id": run.run_id, "manifest": manifest, "results": results}


def test_unauthenticated_and_forged_requests_are_refused(client: Any) -> None:
    assert client.get("/airflow-batch/jobs").status_code == 401
    assert client.get("/airflow-batch/jobs", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get("/airflow-batch/jobs", cookies={"_token": "nope"}).status_code == 403


def test_page_lists_jobs_found_in_xcom_for_a_token_or_the_ui_cookie(
    client: Any, finished_job: dict[str, Any]
) -> None:
    by_header = client.get("/airflow-batch/jobs", headers={"Authorization": f"Bearer {_token()}"})
    client.cookies.set("_token", _token())
    try:
        by_cookie = client.get("/airflow-batch/jobs", params={"dag_id": "ui_app_probe"})
    finally:
        client.cookies.clear()

    for response in (by_header, by_cookie):
        assert response.status_code == 200
        assert f'data-run-id="{finished_job["run_id"]}"' in response.text
        assert response.text.count('<tr class="job" data-dag-id="ui_app_probe"') == 1
        assert '<span class="cost">$0.0000</span>' in response.text


def test_results_download_streams_the_file_named_in_the_manifest(
    client: Any, finished_job: dict[str, Any]
) -> None:
    params = {"dag_id": "ui_app_probe", "run_id": finished_job["run_id"]}
    headers = {"Authorization": f"Bearer {_token()}"}

    ok = client.get(
        "/airflow-batch/files",
        params={**params, "path": finished_job["manifest"]["results_paths"][0]},
        headers=headers,
    )
    other = client.get(
        "/airflow-batch/files", params={**params, "path": str(Path(__file__))}, headers=headers
    )

    assert ok.status_code == 200
    assert ok.text == finished_job["results"].read_text()
    assert "attachment" in ok.headers["content-disposition"]
    assert other.status_code == 404
