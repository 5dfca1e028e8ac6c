"""``airflow-batch dev`` as a newcomer runs it: real processes, a browser login, a job, Ctrl-C.

The command runs as a subprocess on free ports with a temp workdir. The test logs in with the
login it prints (REST API and the UI's login form in headless Chromium), triggers
``review_sentiment``, sees its job on the Batch jobs page, sends SIGINT while the run is in
flight, and checks that every process group the command listed, and every process seen
under it, is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from airflow_cluster import free_port, wait_for

from airflow_batch.dev.processes import ProcessGroupsFile, stop_process_groups

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(480)]

AIRFLOW_BATCH = str(Path(sys.executable).with_name("airflow-batch"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DAG_ID = "review_sentiment"
STARTED_GROUPS = {
    "emulator", "migrate", "api-server", "scheduler", "dag-processor", "triggerer",
    "worker-log-server", "trigger-log-server",
}  # fmt: skip


@dataclass
class RunningDev:
    """A running ``airflow-batch dev`` and what it printed once it was ready."""

    process: subprocess.Popen[bytes]
    workdir: Path
    output: Path
    ui: str
    username: str
    password: str

    def printed(self) -> str:
        """Return everything the command printed so far."""
        return self.output.read_text(errors="replace")


def _ready(process: subprocess.Popen[bytes], output: Path) -> str | None:
    text = output.read_text(errors="replace")
    if process.poll() is not None:
        raise AssertionError(f"airflow-batch dev exited {process.returncode} before it was ready:\n{text}")
    return text if "Ctrl-C stops everything." in text else None


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[RunningDev]:
    """Start ``airflow-batch dev`` on free ports; after the test, make sure nothing it started runs."""
    workdir = tmp_path / "dev"
    output = tmp_path / "dev.out"
    # Batches start 10 minutes after their create: the run is surely still in flight at Ctrl-C.
    held = '{"start_delay_seconds": 600}'
    command = [
        AIRFLOW_BATCH, "dev", "--port", str(free_port()), "--workdir", str(workdir), "--emulator-config", held
    ]  # fmt: skip
    with output.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        text = wait_for(
            lambda: _ready(process, output), timeout=240, interval=0.5, what="airflow-batch dev ready"
        )
        ui = re.search(r"^  UI +(http://\S+)$", text, re.M)
        login = re.search(r"^  login +(\S+) / (\S+)$", text, re.M)
        assert ui and login, text
        yield RunningDev(process, workdir, output, ui.group(1), login.group(1), login.group(2))
    finally:
        # A failed test must not leave a deployment behind either.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if (groups_file := workdir / "processes.json").exists():
            stop_process_groups(ProcessGroupsFile.read(groups_file).values(), grace=5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium, set up as in ``tests/ui/test_batch_jobs_page.py``."""
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


def _api(dev: RunningDev, token: str, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method, dev.ui + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
    )
    assert response.status_code < 400, f"{method} {path} -> {response.status_code}: {response.text[:2000]}"
    return response.json()


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _members_of(groups: set[int]) -> list[str]:
    members = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) in groups:
                members.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:120]}")
    return members


def test_dev_command_serves_the_ui_runs_a_dag_and_leaves_no_process_after_ctrl_c(
    dev: RunningDev, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    phases: dict[str, float] = {}
    started = time.monotonic()
    groups = ProcessGroupsFile.read(dev.workdir / "processes.json")
    assert set(groups) == STARTED_GROUPS

    # The REST API accepts the printed login, and the example DAG is there to trigger.
    token_response = httpx.post(
        f"{dev.ui}/auth/token", json={"username": dev.username, "password": dev.password}, timeout=30
    )
    assert token_response.status_code == 201, token_response.text
    token = token_response.json()["access_token"]
    wait_for(
        lambda: (
            httpx.get(
                f"{dev.ui}/api/v2/dags/{DAG_ID}", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ).status_code
            == 200
        ),
        timeout=90,
        what=f"{DAG_ID} parsed",
    )
    _api(dev, token, "PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    run_id = _api(dev, token, "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})[
        "dag_run_id"
    ]
    phases["triggered"] = time.monotonic() - started

    # The UI's own login form, then the Batch jobs page shows the run's job once it is submitted.
    browser.get(dev.ui + "/")
    wait_for(lambda: browser.find_elements(By.NAME, "username"), timeout=60, what="the login form")
    browser.find_element(By.NAME, "username").send_keys(dev.username)
    browser.find_element(By.NAME, "password").send_keys(dev.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: browser.get_cookie("_token"), timeout=30, what="the UI's session cookie after login")
    phases["logged in"] = time.monotonic() - started

    def job_row() -> list[Any]:
        browser.get(dev.ui + "/airflow-batch/jobs")
        return list(browser.find_elements(By.CSS_SELECTOR, f'tr.job[data-run-id="{run_id}"]'))

    [row] = wait_for(job_row, timeout=120, interval=1, what=f"the job of {run_id} on the Batch jobs page")
    assert row.get_attribute("data-dag-id") == DAG_ID
    phases["job on the page"] = time.monotonic() - started

    # Ctrl-C while the run is in flight (checked: a run already over would prove nothing): every
    # group listed, and every process seen, is gone.
    state = _api(dev, token, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
    assert state == "running", f"the run was {state} before Ctrl-C: nothing was in flight"
    seen = _process_tree(dev.process.pid)
    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(timeout=60) == 0, dev.printed()
    phases["stopped"] = time.monotonic() - started
    assert "; no process left running" in dev.printed()
    assert not (dev.workdir / "processes.json").exists()
    assert [p.pid for p in seen if _alive(p)] == []
    assert _members_of(set(groups.values())) == []
    assert len(seen) > len(STARTED_GROUPS)  # the check covered the components' own children too
    print("seconds after ready:", {phase: round(seconds) for phase, seconds in phases.items()})
