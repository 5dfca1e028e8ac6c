"""The batch jobs page on a real api-server: authentication, content, and headless Chromium.

Uses the session's Airflow deployment and its finished review-sentiment run (see
``tests/e2e/airflow_cluster.py``). The browser test writes screenshots to its tmp dir, and
to ``docs/screenshots/`` when ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from airflow_cluster import REPO, ClusterDeployment, ObservedRun, wait_for

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
