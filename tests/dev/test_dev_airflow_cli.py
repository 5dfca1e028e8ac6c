"""``airflow-batch dev airflow ...``: the Airflow CLI on the dev deployment's database, DAGs and defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_batch.dev.command import DEPLOYMENT_FILE, record_deployment
from airflow_batch.dev.deployment import DEFAULT_MODEL

AIRFLOW_BATCH = str(Path(sys.executable).with_name("airflow-batch"))
DAGS = Path(__file__).resolve().parents[2] / "dags"

pytestmark = pytest.mark.timeout(600)


def _dev_airflow(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A stray AIRFLOW_HOME of the caller's shell must not matter: the command sets its own.
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": "/nonexistent/airflow-home"}
    return subprocess.run(
        [AIRFLOW_BATCH, "dev", "--workdir", str(workdir), "airflow", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# Runs the `airflow` CLI as subprocesses on a migrated database (about 45 s): a deployment.
@pytest.mark.e2e
def test_the_airflow_cli_reaches_the_dev_deployment_and_creates_a_backfill(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    record_deployment(workdir, dags_folder=DAGS, anthropic_url="http://127.0.0.1:9", real_api=False)
    assert json.loads((workdir / DEPLOYMENT_FILE).read_text())["dags_folder"] == str(DAGS)

    migrate = _dev_airflow(workdir, "db", "migrate")
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    assert (workdir / "airflow-home" / "airflow.db").exists()  # the deployment's DB, not ~/airflow

    output = _dev_airflow(workdir, "config", "get-value", "airflow_batch", "output_path")
    model = _dev_airflow(workdir, "config", "get-value", "airflow_batch", "model")
    assert output.stdout.strip() == str(workdir.resolve() / "output")
    assert model.stdout.strip() == DEFAULT_MODEL

    reserialize = _dev_airflow(workdir, "dags", "reserialize")
    assert reserialize.returncode == 0, reserialize.stderr[-2000:]
    backfill = _dev_airflow(
        workdir,
        "backfill",
        "create",
        "--dag-id",
        "daily_review_sentiment",
        "--from-date",
        "2026-11-01",
        "--to-date",
        "2026-11-03",
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-2000:]
    assert "Database migration required" not in backfill.stdout + backfill.stderr


def test_dev_airflow_without_a_deployment_says_how_to_start_one(tmp_path: Path) -> None:
    result = _dev_airflow(tmp_path / "none", "dags", "list")

    assert result.returncode == 1
    assert "no deployment in" in result.stderr and "start `airflow-batch dev` there first" in result.stderr
