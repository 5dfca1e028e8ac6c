"""A job's own page in headless Chromium: its charts are drawn, and their labels are the manifests' numbers.

Two runs of one DAG go through the emulator with ``dag.test()`` (the first with some invalid
requests, the second with a quarter of its requests overloaded, so a retry round runs), then the page
is served by Airflow's own api-server app in this process, as in ``test_batch_jobs_page``. The
screenshot is written to ``docs/screenshots/batch-job-charts.png`` with ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_batch_jobs_page import _admin_token, _api_server, _run_job, _save_screenshot, _write_requests
from test_batch_jobs_page import browser as browser  # the fixture

from airflow_batch import layout
from airflow_batch.emulator.process import EmulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHARTS = ("progress", "failures", "cost", "trend-cost", "trend-tokens", "trend-failure-rate")


def usd(amount: float) -> str:
    return f"${amount:,.4f}"


def _labels(driver: Any, chart: str, kind: str | None = None) -> list[str]:
    from selenium.webdriver.common.by import By

    selector = f'figure[data-chart="{chart}"] g.mark' + (f'[data-kind="{kind}"]' if kind else "")
    return [mark.get_attribute("data-label") for mark in driver.find_elements(By.CSS_SELECTOR, selector)]


@pytest.mark.browser
@pytest.mark.usefixtures("airflow_db")
def test_job_page_draws_progress_failures_cost_and_the_dags_trend_in_headless_chromium(
    emulator: EmulatorProcess, anthropic_conn: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    requests = _write_requests(tmp_path / "requests.jsonl", 40)
    output = str(tmp_path / "out")
    emulator.configure(error_types={"invalid_request_error": 0.1}, seed=4)
    first = _run_job("charted", requests, output, anthropic_conn)
    emulator.configure(error_types={"overloaded_error": 0.25}, seed=3)
    second = _run_job("charted", requests, output, anthropic_conn)

    def job(run: Any) -> Path:
        return Path(layout.job_dir(output, run.dag_id, run.run_id, "job.submit").path)

    finals = [json.loads((job(run) / "manifest.json").read_text()) for run in (first, second)]
    rounds = [json.loads(path.read_text()) for path in sorted(job(second).glob("round-*/manifest.json"))]
    manifest = finals[1]

    driver = browser
    driver.set_window_size(1400, 900)
    with _api_server() as base:
        driver.get(base + "/api/v2/monitor/health")
        driver.add_cookie({"name": "_token", "value": _admin_token(), "path": "/"})
        driver.get(f"{base}/airflow-batch/jobs?dag_id=charted")
        [row] = [
            r
            for r in driver.find_elements(By.CSS_SELECTOR, "tr.job")
            if r.get_attribute("data-run-id") == second.run_id
        ]
        row.find_element(By.CSS_SELECTOR, "a.job-view").click()

        for chart in CHARTS:
            assert driver.find_elements(By.CSS_SELECTOR, f'figure[data-chart="{chart}"] svg g.mark'), chart

        # Failures by type per round: each round's result counts other than succeeded.
        expected_failures = [
            str(n)
            for r in rounds
            for kind, n in sorted(r["result_counts"].items())
            if kind != "succeeded" and n
        ]
        assert _labels(driver, "failures") == expected_failures
        # Cost by model, and the estimates beside the actual cost.
        actual = usd(manifest["cost"]["batch_usd"])
        assert _labels(driver, "cost", "actual") == [actual, actual]  # the one model, then the job
        estimate = sum(r["estimate"]["batch_usd"] for r in rounds)
        assert _labels(driver, "cost", "at most") == [usd(estimate)]
        # Progress: every request each round's batches ended, binned by minute.
        ended = sum(
            n
            for r in rounds
            for status in r["batch_status"].values()
            for kind, n in status["request_counts"].items()
            if kind != "processing"
        )
        assert (
            sum(int(label) for label in _labels(driver, "progress"))
            == ended
            == sum(r["requests"] for r in rounds)
        )
        # The DAG's trend, oldest run first.
        assert _labels(driver, "trend-cost") == [usd(f["cost"]["batch_usd"]) for f in finals]
        assert _labels(driver, "trend-tokens") == [
            f"{f['usage']['input_tokens'] + f['usage']['output_tokens']:,}" for f in finals
        ]
        assert _labels(driver, "trend-failure-rate") == [f"{f['failure_rate']:.1%}" for f in finals]

        # Readable at 1400x900: nothing wider than the window, each chart drawn at its own size (its
        # text unscaled), and the run's charts all in the first screen.
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400
        for svg in driver.find_elements(By.CSS_SELECTOR, "figure.chart svg"):
            assert svg.size["width"] >= 400, svg.size
        for chart in ("progress", "failures", "cost"):
            figure = driver.find_element(By.CSS_SELECTOR, f'figure[data-chart="{chart}"]')
            assert figure.location["y"] + figure.size["height"] <= 900, chart
        _save_screenshot(driver, tmp_path, "batch-job-charts.png")
