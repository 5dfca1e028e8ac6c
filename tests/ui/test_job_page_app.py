"""A job's own page in Airflow's FastAPI app, in process: who may see it, and what it finds."""

from __future__ import annotations

from typing import Any

from test_batch_jobs_app import _token, client, finished_job

__all__ = ["client", "finished_job"]  # the fixtures


def _page(client: Any, job: dict[str, Any], **headers: str) -> Any:
    params = {"dag_id": "ui_app_probe", "run_id": job["run_id"], "job_dir": job["manifest"]["job_dir"]}
    return client.get("/airflow-batch/job", params=params, headers=headers)


def test_the_job_page_needs_a_user_who_may_read_the_dag(client: Any, finished_job: dict[str, Any]) -> None:
    assert _page(client, finished_job).status_code == 401
    assert _page(client, finished_job, Authorization="Bearer forged").status_code == 403
    unknown = client.get(
        "/airflow-batch/job",
        params={"dag_id": "no_such_dag", "run_id": "r", "job_dir": "/x"},
        headers={"Authorization": f"Bearer {_token()}"},
    )
    assert unknown.status_code == 403


def test_the_job_page_draws_the_jobs_charts_and_is_linked_from_its_row(
    client: Any, finished_job: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {_token()}"}
    page = _page(client, finished_job, **headers)
    listing = client.get("/airflow-batch/jobs", params={"dag_id": "ui_app_probe"}, headers=headers)
    missing = client.get(
        "/airflow-batch/job",
        params={"dag_id": "ui_app_probe", "run_id": finished_job["run_id"], "job_dir": "/elsewhere"},
        headers=headers,
    )

    assert page.status_code == 200
    for chart in ("progress", "failures", "cost", "trend-cost", "trend-tokens", "trend-failure-rate"):
        assert f'data-chart="{chart}"' in page.text
    # The gathered round's one errored request, drawn and labelled.
    assert '<g class="mark" data-kind="errored" data-label="1">' in page.text
    assert 'class="job-view" href="/airflow-batch/job?dag_id=ui_app_probe&amp;run_id=' in listing.text
    assert missing.status_code == 404
