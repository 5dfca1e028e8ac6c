"""End to end on a real Airflow: api-server, scheduler, dag-processor and triggerer processes.

The example DAGs run against the emulator through the REST API and the ``airflow`` CLI,
exactly as a user would drive them: a deferred wait in the triggerer, a retry round for
injected transient errors, a backfill over three dates, and a re-run that must not pay twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow_cluster import AirflowCluster, ClusterDeployment, ObservedRun, wait_for

from airflow_batch import layout

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DAILY = "daily_review_sentiment"
DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: What Airflow's scheduler logs when it loses that race (``airflow.models.dagrun``).
AIRFLOW_SQLITE_BACKFILL_RACE = f"Hit IntegrityError while creating the TIs for {DAILY}- backfill__"


def create_backfill(cluster: AirflowCluster, attempts: int = 5) -> None:
    """Run ``airflow backfill create`` over DATES, again if SQLite was locked by another process.

    SQLite refuses a write at once (no busy wait) when two transactions would deadlock; the
    CLI then fails before creating anything, and running it again is safe.
    """
    args = ("backfill", "create", "--dag-id", DAILY, "--from-date", DATES[0], "--to-date", DATES[-1])
    for _ in range(attempts):
        result = cluster.run_cli(*args, check=False)
        if result.returncode == 0:
            return
        if cluster.api_json("GET", "/api/v2/backfills", params={"dag_id": DAILY})["backfills"]:
            return  # created, only the CLI's last step failed
        if "database is locked" not in result.stderr + result.stdout:
            break
    raise AssertionError(f"airflow backfill create failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def test_review_sentiment_run_succeeds_with_every_review_accounted_for(
    deployment: ClusterDeployment, review_run: ObservedRun
) -> None:
    job = Path(
        layout.job_dir(str(deployment.output), review_run.dag_id, review_run.run_id, "sentiment.submit").path
    )
    manifest = json.loads((job / "manifest.json").read_text())
    results = _rows(job / "results.jsonl")
    failures = _rows(job / "failures.jsonl")

    assert manifest["requests"] == 200
    assert len(results) + len(failures) == 200
    assert len({row["custom_id"] for row in results}) == len(results)
    assert manifest["succeeded"] == len(results)
    # 4% injected overloaded errors on round 0: a retry round resubmitted them.
    assert len(manifest["rounds"]) >= 2
    assert manifest["rounds"][0]["error_types"].get("overloaded_error", 0) > 0
    # Both figures are rounded to 6 decimals: half the standard price may differ in the last one.
    assert manifest["cost"]["batch_usd"] == pytest.approx(manifest["cost"]["standard_usd"] / 2, abs=1e-6)


def test_wait_defers_to_the_triggerer_and_offers_the_console_link_meanwhile(review_run: ObservedRun) -> None:
    assert "sentiment.wait" in review_run.deferred_tasks
    links = review_run.links_while_deferred["sentiment.wait"].get("extra_links", {})
    assert str(links.get("Anthropic Console")).startswith("https://platform.claude.com/"), links


def test_trigger_progress_appears_in_the_wait_task_log(
    deployment: ClusterDeployment, review_run: ObservedRun
) -> None:
    log = deployment.cluster.task_log(review_run.dag_id, review_run.run_id, "sentiment.wait")

    assert "Watching" in log
    assert "batches ended" in log and "requests done" in log


def test_backfill_writes_one_partition_per_date_and_a_rerun_creates_no_batch(
    deployment: ClusterDeployment,
) -> None:
    cluster, emulator = deployment.cluster, deployment.emulator
    cluster.wait_for_dag(DAILY)
    # Airflow 3.3 runs backfills of unpaused DAGs only; unpausing also starts the latest
    # scheduled run (catchup=False), which writes its own partition.
    cluster.api_json("PATCH", f"/api/v2/dags/{DAILY}", json={"is_paused": False})
    create_backfill(cluster)

    def all_runs_done() -> list[dict[str, object]] | None:
        # Airflow 3.3 on SQLite: the scheduler can die creating a backfill run's task instances
        # while `backfill create` commits (an IntegrityError in its own code, seen once in many
        # runs); a deployment's supervisor restarts it, and so does this test, for that error only.
        cluster.restart_if_exited("scheduler", because=AIRFLOW_SQLITE_BACKFILL_RACE)
        runs = cluster.api_json("GET", f"/api/v2/dags/{DAILY}/dagRuns")["dag_runs"]
        backfills = [r for r in runs if r["run_type"] == "backfill"]
        if len(backfills) == len(DATES) and all(r["state"] in ("success", "failed") for r in runs):
            return backfills
        return None

    runs = wait_for(all_runs_done, timeout=300, interval=1, what="3 backfill runs finished")
    assert sorted(str(r["state"]) for r in runs) == ["success"] * 3, runs

    partitions = deployment.output / "daily" / "output"
    assert {f"ds={d}" for d in DATES} <= {p.name for p in partitions.iterdir()}
    for date in DATES:
        published = json.loads((partitions / f"ds={date}" / "manifest.json").read_text())
        assert published["requests"] == 20
        results = Path(published["results_path"].removeprefix("file://"))  # in the current version
        assert len(_rows(results)) == published["succeeded"]

    # Re-run one date: clear its run (same run id, same ledger): no new batch, partition rewritten.
    batches_before = emulator.batch_count()
    rerun = next(r for r in runs if str(r["logical_date"]).startswith(DATES[1]))
    partition = partitions / f"ds={DATES[1]}" / "manifest.json"  # switched to each new version
    written_before = partition.stat().st_mtime_ns
    cluster.api_json(
        "POST",
        f"/api/v2/dags/{DAILY}/clearTaskInstances",
        json={
            "dry_run": False,
            "dag_run_id": rerun["dag_run_id"],
            "reset_dag_runs": True,
            "only_failed": False,
        },
    )
    wait_for(
        lambda: (
            partition.stat().st_mtime_ns != written_before
            and cluster.api_json("GET", f"/api/v2/dags/{DAILY}/dagRuns/{rerun['dag_run_id']}")["state"]
            == "success"
        ),
        timeout=240,
        interval=1,
        what="cleared run re-ran and republished its partition",
    )
    assert emulator.batch_count() == batches_before
