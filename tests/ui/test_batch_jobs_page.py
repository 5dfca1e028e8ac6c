"""The batch jobs page on a real api-server: authentication, content, and headless Chromium.

Most tests use the session's Airflow deployment and its finished review-sentiment run (see
``tests/e2e/airflow_cluster.py``). The outcomes test runs three small jobs through the
emulator with ``dag.test()`` (one refused by its budget, one failed on its failure rate, one
finished) and serves Airflow's own api-server app over HTTP in this process, so the page it
shows is built from the manifests the package's tasks left in XCom. The browser tests write
screenshots to their tmp dir, and to ``docs/screenshots/`` when ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import httpx
import pendulum
import pytest
from airflow_cluster import REPO, ClusterDeployment, ObservedRun, free_port, wait_for
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PAGE = "/airflow-batch/jobs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_page_and_downloads_refuse_unauthenticated_and_forged_requests(deployment: ClusterDeployment) -> None:
    base = deployment.cluster.base_url

    assert httpx.get(base + PAGE).status_code == 401
    assert httpx.get(base + PAGE, headers={"Authorization": "Bearer forged.jwt.token"}).status_code == 403
    assert httpx.get(base + PAGE, cookies={"_token": "forged.jwt.token"}).status_code == 403
    files = base + "/airflow-batch/files?dag_id=review_sentiment&run_id=x&task_id=y&path=/etc/passwd"
    assert httpx.get(files).status_code == 401


def test_plugin_registers_the_app_and_both_views(deployment: ClusterDeployment) -> None:
    plugins = deployment.cluster.api_json("GET", "/api/v2/plugins")["plugins"]
    [ours] = [p for p in plugins if p["name"] == "airflow_batch"]

    assert [app["url_prefix"] for app in ours["fastapi_apps"]] == ["/airflow-batch"]
    assert {(v["destination"], v["url_route"]) for v in ours["external_views"]} == {
        ("nav", "batch-jobs"),
        ("dag_run", "batch-jobs-run"),
    }


def test_run_view_lists_the_job_with_rounds_cost_and_downloadable_results(
    deployment: ClusterDeployment, review_run: ObservedRun
) -> None:
    cluster = deployment.cluster
    page = cluster.api("GET", PAGE, params={"dag_id": review_run.dag_id, "run_id": review_run.run_id})

    assert page.status_code == 200
    html = page.text
    assert f'data-run-id="{review_run.run_id}"' in html
    assert html.count('<tr class="job"') == 1
    assert html.count('<tr class="round"') >= 2  # round 0 and at least one retry round
    assert re.search(r'<span class="cost">\$\d+\.\d{4}</span>', html)
    href = re.search(r'<a class="results" href="([^"]+)"', html)
    assert href, html
    download = cluster.api("GET", href.group(1).replace("&amp;", "&"))
    assert download.status_code == 200
    assert len(download.text.splitlines()) > 150


def test_downloads_only_serve_files_named_in_a_manifest(
    deployment: ClusterDeployment, review_run: ObservedRun
) -> None:
    response = deployment.cluster.api(
        "GET",
        "/airflow-batch/files",
        params={
            "dag_id": review_run.dag_id,
            "run_id": review_run.run_id,
            "task_id": "sentiment.finalize",
            "path": str(REPO / "pyproject.toml"),
        },
    )

    assert response.status_code == 404


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (make browser installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _save_screenshot(driver: object, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "screenshots" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return shot


@pytest.mark.browser
def test_batch_jobs_page_renders_in_headless_chromium(
    deployment: ClusterDeployment, review_run: ObservedRun, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    cluster = deployment.cluster
    driver = browser
    # Log in the way the Airflow UI does: its session is the JWT in the ``_token`` cookie.
    driver.get(cluster.base_url + "/api/v2/monitor/health")  # type: ignore[attr-defined]
    driver.add_cookie({"name": "_token", "value": cluster.token, "path": "/"})  # type: ignore[attr-defined]

    driver.get(f"{cluster.base_url}{PAGE}?dag_id={review_run.dag_id}&run_id={quote(review_run.run_id)}")  # type: ignore[attr-defined]
    row = driver.find_element(By.CSS_SELECTOR, "tr.job")  # type: ignore[attr-defined]
    assert row.get_attribute("data-dag-id") == review_run.dag_id
    assert row.find_element(By.CSS_SELECTOR, "td.status").text.startswith("finished")
    bar = row.find_element(By.CSS_SELECTOR, ".bar")
    succeeded = bar.find_element(By.CSS_SELECTOR, "span.succeeded")
    # The stacked bar is drawn: the succeeded share is most of its rendered width.
    assert succeeded.size["width"] > 0.8 * bar.size["width"]
    assert re.fullmatch(r"\$\d+\.\d{4}", row.find_element(By.CSS_SELECTOR, "span.cost").text)
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.round")) >= 2  # type: ignore[attr-defined]
    _save_screenshot(driver, tmp_path, "batch-jobs-run.png")

    driver.get(cluster.base_url + PAGE)  # type: ignore[attr-defined]
    assert driver.find_elements(By.CSS_SELECTOR, f'tr.job[data-run-id="{review_run.run_id}"]')  # type: ignore[attr-defined]
    _save_screenshot(driver, tmp_path, "batch-jobs.png")

    # Inside the Airflow UI the nav entry opens the page in an iframe, authenticated by the cookie.
    driver.get(cluster.base_url + "/plugin/batch-jobs")  # type: ignore[attr-defined]
    frame = wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "iframe[src*='/airflow-batch/jobs']"),  # type: ignore[attr-defined]
        timeout=60,
        what="the plugin iframe in the Airflow UI",
    )[0]
    driver.switch_to.frame(frame)  # type: ignore[attr-defined]
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "tr.job"),  # type: ignore[attr-defined]
        timeout=30,
        what="the job row inside the iframe",
    )
    driver.switch_to.default_content()  # type: ignore[attr-defined]
    _save_screenshot(driver, tmp_path, "batch-jobs-in-airflow-ui.png")


# -- every outcome, from jobs run through the emulator -----------------------------------------


def _write_requests(path: Path, n: int) -> Path:
    with path.open("w") as out:
        for i in range(n):
            params = {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Describe product {i} in one line."}],
            }
            out.write(json.dumps({"custom_id": f"p{i:03d}", "params": params}) + "\n")
    return path


def _run_job(dag_id: str, requests: Path, output: str, conn_id: str, **job_kwargs: Any) -> Any:
    """Run one small batch job with ``dag.test()``; return the DAG run."""
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests),
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=1,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 0},
            **job_kwargs,
        )
    return run_dag(dag)


@contextmanager
def _api_server() -> Iterator[str]:
    """Serve Airflow's api-server app (with the plugin's app mounted) over HTTP; yield its URL."""
    import uvicorn
    from airflow.api_fastapi.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app("core"), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60, what="the api-server app")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _admin_token() -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin")))


def _links(row: Any) -> dict[str, str]:
    """Return the file links of a job row: link text -> the file path its URL asks for."""
    from selenium.webdriver.common.by import By

    links = {}
    for anchor in row.find_elements(By.CSS_SELECTOR, "td.links a"):
        [path] = parse_qs(urlparse(anchor.get_attribute("href")).query)["path"]
        links[anchor.text] = path
    return links


@pytest.mark.browser
@pytest.mark.usefixtures("airflow_db")
def test_page_shows_refused_failed_and_finished_jobs_in_headless_chromium(
    emulator: EmulatorProcess, anthropic_conn: str, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    requests = _write_requests(tmp_path / "requests.jsonl", 40)
    output = str(tmp_path / "out")
    refused_run = _run_job("page_refused", requests, output, anthropic_conn, max_cost_usd=0.001)
    emulator.configure(error_types={"invalid_request_error": 0.25}, seed=3)
    failed_run = _run_job("page_failed", requests, output, anthropic_conn, max_failure_rate=0.05)
    emulator.configure(error_types={})
    finished_run = _run_job("page_finished", requests, output, anthropic_conn, max_failure_rate=0.05)
    states = {
        run.dag_id: {ti.task_id: ti.state for ti in run.get_task_instances()}
        for run in (refused_run, failed_run, finished_run)
    }
    assert states["page_refused"]["job.submit"] == "failed", states
    assert states["page_failed"]["job.finalize"] == "failed", states
    assert states["page_finished"]["job.finalize"] == "success", states

    def job_folder(run: Any) -> Path:
        return Path(layout.job_dir(output, run.dag_id, run.run_id, "job.submit").path)

    refusal = json.loads((job_folder(refused_run) / "round-0" / "refusal.json").read_text())
    failed = json.loads((job_folder(failed_run) / "manifest.json").read_text())
    finished = json.loads((job_folder(finished_run) / "manifest.json").read_text())
    estimate = json.loads((job_folder(finished_run) / "round-0" / "manifest.json").read_text())["estimate"]

    driver = browser
    with _api_server() as base:
        token = _admin_token()
        driver.get(base + "/api/v2/monitor/health")  # type: ignore[attr-defined]
        driver.add_cookie({"name": "_token", "value": token, "path": "/"})  # type: ignore[attr-defined]
        driver.get(base + PAGE)  # type: ignore[attr-defined]
        rows = {
            row.get_attribute("data-dag-id"): row
            for row in driver.find_elements(By.CSS_SELECTOR, "tr.job")  # type: ignore[attr-defined]
        }
        assert {"page_refused", "page_failed", "page_finished"} <= set(rows), list(rows)

        # Refused by the budget: the reason and the numbers of refusal.json, no files.
        status = rows["page_refused"].find_element(By.CSS_SELECTOR, "td.status").text
        assert status.startswith("refused"), status
        assert f"estimate ${refusal['estimate_usd']:.4f} > budget $0.0010, spent so far $0.0000" in status
        # The whole reason is there, collapsed under its first line (a <details> element).
        reason = rows["page_refused"].find_element(By.CSS_SELECTOR, "td.status").get_attribute("textContent")
        assert "above the budget max_cost_usd=$0.0010" in reason
        assert _links(rows["page_refused"]) == {}

        # Failed on max_failure_rate: rate against limit, failures by type, retryability, merged files.
        status = rows["page_failed"].find_element(By.CSS_SELECTOR, "td.status").text
        assert status.startswith("failed"), status
        assert f"{failed['failure_rate']:.1%} failed, limit 5.0%" in status
        assert f"{failed['failures_by_error_type']['invalid_request_error']} invalid_request_error" in status
        assert f"{failed['retryable_left']} of {failed['failed']} retryable" in status
        job = str(layout.job_dir(output, failed_run.dag_id, failed_run.run_id, "job.submit"))
        assert _links(rows["page_failed"]) == {
            "results.jsonl": f"{job}/results.jsonl",
            "failures.jsonl": f"{job}/failures.jsonl",
            "manifest.json": f"{job}/manifest.json",
        }

        # Finished: the outcome, the estimate beside the actual cost, and the merged files.
        row = rows["page_finished"]
        assert row.find_element(By.CSS_SELECTOR, "td.status").text.startswith("finished")
        cost = row.find_element(By.CSS_SELECTOR, "span.cost").text
        assert cost == f"${finished['cost']['batch_usd']:.4f}"
        assert f"at most ${estimate['batch_usd']:.4f}" in row.text
        links = _links(row)
        assert list(links) == ["results.jsonl", "failures.jsonl", "manifest.json"]
        manifest_link = row.find_element(By.LINK_TEXT, "manifest.json").get_attribute("href")
        download = httpx.get(manifest_link, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert download.status_code == 200
        assert download.json()["succeeded"] == finished["succeeded"] == 40
        _save_screenshot(driver, tmp_path, "batch-jobs-outcomes.png")
