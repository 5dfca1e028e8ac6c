"""The batch jobs app inside Airflow's own FastAPI app, in process: auth, XCom reading, downloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow_test_env import run_dag

from airflow_batch import layout
from airflow_batch.manifest import FAILED_MANIFEST_KEY
from airflow_batch.operators import SubmitBatchesOperator


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
    job_manifest = job / "manifest.json"
    job_manifest.write_text('{"stage": "finalized", "succeeded": 2}\n')
    final = {
        "version": 1,
        "stage": "finalized",
        "job_dir": f"file://{job}",
        "results_path": f"file://{job}/results.jsonl",
        "failures_path": f"file://{job}/failures.jsonl",
        "requests": 3,
        "succeeded": 2,
        "failed": 1,
    }
    with DAG("ui_app_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

        @task(task_id="job.gather")
        def gather() -> dict[str, Any]:
            return manifest

        @task(task_id="job.finalize")
        def finalize() -> dict[str, Any]:
            return final

        @task
        def unrelated() -> dict[str, int]:
            return {"answer": 42}

        gather() >> finalize()
        unrelated()
    run = run_dag(dag)
    return {"run_id": run.run_id, "manifest": manifest, "results": results, "job_manifest": job_manifest}


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


def test_the_job_manifest_of_a_finalized_job_downloads_as_json(
    client: Any, finished_job: dict[str, Any]
) -> None:
    response = client.get(
        "/airflow-batch/files",
        params={
            "dag_id": "ui_app_probe",
            "run_id": finished_job["run_id"],
            "path": f"file://{finished_job['job_manifest']}",
        },
        headers={"Authorization": f"Bearer {_token()}"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"stage": "finalized", "succeeded": 2}


@pytest.mark.usefixtures("airflow_db")
def test_a_submit_refused_by_the_budget_is_listed_from_the_manifest_its_failed_task_left(
    client: Any, emulator: Any, anthropic_conn: str, tmp_path: Path
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG
    from airflow.utils.session import create_session
    from sqlalchemy import select

    request = {
        "custom_id": "r1",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 4000,
            "messages": [{"role": "user", "content": "hi"}],
        },
    }
    with DAG("ui_app_refused", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        SubmitBatchesOperator(
            task_id="job.submit",
            requests=[request],
            output_path=str(tmp_path),
            conn_id=anthropic_conn,
            max_cost_usd=0.0001,
            count_tokens_sample=0,
        )
    run = run_dag(dag)
    job = layout.job_dir(str(tmp_path), dag.dag_id, run.run_id, "job.submit")
    refusal = json.loads(Path(layout.refusal_path(job, 0).path).read_text())
    with create_session() as session:
        [row] = session.execute(
            select(XComModel.value).where(
                XComModel.dag_id == dag.dag_id, XComModel.key == FAILED_MANIFEST_KEY
            )
        ).all()

    page = client.get(
        "/airflow-batch/jobs", params={"dag_id": dag.dag_id}, headers={"Authorization": f"Bearer {_token()}"}
    )

    assert emulator.batch_count() == 0
    assert XComModel.deserialize_value(row) == {
        "version": 1,
        "stage": "refused",
        "job_dir": str(job),
        **refusal,
    }
    assert refusal["budget_usd"] == 0.0001 and refusal["spent_usd"] == 0.0
    assert refusal["estimate_usd"] > refusal["budget_usd"]
    assert page.status_code == 200
    assert 'data-outcome="refused"' in page.text
    assert f"estimate ${refusal['estimate_usd']:.4f} &gt; budget $0.0001, spent so far $0.0000" in page.text
