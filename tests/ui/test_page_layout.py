"""The jobs table at a laptop's width: the budget beside the cost, a long refusal collapsed to its
first line, and every column inside 1400 px (headless Chromium, no server: the rendered page)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_batch.exceptions import InvalidRequestsError
from airflow_batch.manifest import refused_manifest
from airflow_batch.plugins.details import Budget
from airflow_batch.plugins.manifests import ManifestRecord
from airflow_batch.plugins.rendering import render_page
from airflow_batch.plugins.views import build_jobs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
RUN_ID = "scheduled__2026-11-27T00:00:00+00:00"
USAGE = {"input_tokens": 123_456, "output_tokens": 45_678, "cache_creation_input_tokens": 4_096,
         "cache_creation_1h_input_tokens": 4_096, "cache_read_input_tokens": 1_234_567}  # fmt: skip
LONG_REFUSAL = "\n".join(
    [f"3000 invalid row(s); fix them, or pass skip_invalid=True to skip them (lines {list(range(40))})"]
    + [f"  line {n} (custom_id 'sku/{n}'): custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$" for n in range(60)]
)


def _job_dir(name: str) -> str:
    return f"file:///data/airflow-batch/jobs/a_rather_long_dag_id_for_products/{RUN_ID}/{name}.submit"


def _gathered(job: str, *, budget: float | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "gathered",
        "job_dir": job,
        "round": 0,
        "requests": 30_000,
        "batches": [{"chunk": i, "batch_id": f"msgbatch_01{i:022d}"} for i in range(3)],
        "submitted_at": "2026-01-01T00:00:00+00:00",
        "gathered_at": "2026-01-01T00:12:00+00:00",
        "result_counts": {"succeeded": 29_000, "errored": 1_000},
        "results_paths": [f"{job}/round-0/results/msgbatch_01{i:022d}.jsonl" for i in range(3)],
        "failures_paths": [f"{job}/round-0/failures/msgbatch_01{i:022d}.jsonl" for i in range(3)],
        "usage": USAGE,
        "cost": {"batch_usd": 12.3456, "standard_usd": 24.6912, "priced": True, "unpriced_models": []},
        "estimate": {"batch_usd": 40.0, "expected_batch_usd": 13.0},
        "budget": {"max_cost_usd": budget, "spent_usd": 12.3456, "exceeded": False} if budget else None,
    }


def _page() -> tuple[list[Any], str]:
    refused = _job_dir("extract")
    records = [
        ManifestRecord("a_rather_long_dag_id_for_products", RUN_ID, "extract.submit", -1,
                       refused_manifest(refused, InvalidRequestsError(LONG_REFUSAL).record(0))),
        ManifestRecord("a_rather_long_dag_id_for_products", RUN_ID, "describe.gather", -1,
                       _gathered(_job_dir("describe"), budget=50.0)),
        ManifestRecord("a_rather_long_dag_id_for_products", RUN_ID, "classify.gather", -1,
                       _gathered(_job_dir("classify"))),
    ]  # fmt: skip
    jobs = build_jobs(records)
    return jobs, render_page(jobs, base="", title="Batch jobs", subtitle="", show_rounds=True)


def test_the_budget_shows_beside_the_cost_and_a_long_refusal_collapses_to_its_first_line() -> None:
    jobs, page = _page()

    by_name = {job.name: job for job in jobs}
    assert by_name["describe.submit"].budget == Budget(50.0, 12.3456)
    assert by_name["classify.submit"].budget is None
    assert page.count('budget $50.0000,</div><div class="legend budget">spent $12.3456') == 1
    assert '<details class="reason"><summary>3000 invalid row(s); fix them' in page
    assert "line 59 (custom_id &#39;sku/59&#39;)" in page  # the whole text is one click away


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (make browser installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.browser
def test_the_table_fits_1400_px_and_a_refused_row_stays_short(browser: Any, tmp_path: Path) -> None:
    _, page = _page()
    path = tmp_path / "jobs.html"
    path.write_text(page)
    browser.set_window_size(1400, 900)
    browser.get(path.as_uri())
    viewport = browser.execute_script("return document.documentElement.clientWidth")
    table_right = browser.execute_script(
        "return document.querySelector('table').getBoundingClientRect().right"
    )
    page_width = browser.execute_script("return document.documentElement.scrollWidth")
    refused_height = browser.execute_script(
        "return document.querySelector('tr.job[data-outcome=\"refused\"]').getBoundingClientRect().height"
    )
    browser.save_screenshot(str(tmp_path / "jobs-1400.png"))

    assert page_width <= viewport, f"the page scrolls sideways: {page_width} px in a {viewport} px window"
    assert table_right <= viewport
    # ~300 px when the whole reason showed; the run cell (name and its charts link) and the cost cell
    # (its budget line) take a few lines of their own.
    assert refused_height < 150, f"the refused job's row is {refused_height:.0f} px tall"
