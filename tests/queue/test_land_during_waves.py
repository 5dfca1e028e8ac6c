"""A round created in queue waves lands its ended batches while its later waves wait for room.

300 requests in batches of 100 under ``max_queued_requests=100``: one batch per wave, each wave
waiting for the one before to end (the emulator processes 50 requests/s per batch). The submit
is deferred on the queue trigger all that time; the trigger hands the first batch to the
submit as soon as it has ended, and the submit lands it in the worker before the last wave is
created (the order the records show: its sidecar written before the API created the last
batch). The wait then starts with that batch landed and does not land it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskDeferred
from airflow_test_env import run_dag
from request_files import write_say_requests

from airflow_batch import anthropic_batch_job, layout, read_results
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.manifest import JobIdentity
from airflow_batch.operators.queueing import land_while_queued
from airflow_batch.storage import as_path, read_json
from airflow_batch.submit.queue import QueueWait

DAY = pendulum.datetime(2026, 3, 2, tz="UTC")
RESULTS = "GET /v1/messages/batches/{batch_id}/results"


def _ids(path: Any) -> list[str]:
    lines = as_path(str(path)).read_bytes().splitlines()
    return [msgspec.json.decode(line)["custom_id"] for line in lines if line]


def _downloads(emulator: EmulatorProcess) -> int:
    """Return how many result streams the emulator served (one per landing of a batch)."""
    return emulator.calls().get("", {}).get(RESULTS, 0)


@pytest.mark.usefixtures("airflow_db")
def test_the_first_waves_rows_are_readable_before_the_last_wave_is_created_and_land_once(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emulator.configure(throughput=50, start_delay_seconds=0)
    ids = write_say_requests(tmp_path / "requests.jsonl", 300, max_tokens=16)
    output = tmp_path / "out"
    with DAG("land_during_waves", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(tmp_path / "requests.jsonl"),
            output_path=str(output),
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            poll_interval=0.5,
            land_interval=1,
            max_queued_requests=100,
            submit_kwargs={"max_requests_per_batch": 100, "count_tokens_sample": 0},
        )
    run = run_dag(dag, logical_date=DAY, run_after=DAY)
    log = "".join(capfd.readouterr())

    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    job = layout.job_dir(str(output), dag.dag_id, run.run_id, "job.submit")
    ledger = read_json(layout.ledger_path(job, 0))
    assert sum("paused with" in event for event in ledger["events"]) == 2  # three waves
    first, _, last = (ledger["batches"][str(chunk)]["batch_id"] for chunk in range(3))
    # The submit landed the first batch while the round's later chunks waited for queue room ...
    assert "Landed 1 ended batch(es) (100 rows)" in log
    assert "chunk(s) of round 0 wait for queue room; waiting again" in log
    # ... before the last wave was created: the order of the records, not of a stopwatch.
    landed_at = Path(layout.gather_stats_path(job, 0, first).path).stat().st_mtime
    last_created = sync_client.messages.batches.retrieve(last).created_at.timestamp()
    assert landed_at < last_created
    # The wait started with it landed, and no batch's results were downloaded twice.
    assert "batch(es) of the round were gathered already: not asking the API for them" in log
    assert _downloads(emulator) == 3
    results = read_results(str(job))
    assert results.partial is False
    assert sorted(row["custom_id"] for row in results) == ids
    assert _ids(layout.final_results_path(job)) == ids  # every row once, in input order

    # A stale copy of the queue trigger hands the landed batch over again: nothing is landed twice.
    submit = dag.get_task("job.submit")
    part = Path(layout.results_part(job, 0, first).path)
    written = part.stat().st_mtime_ns
    stale = {
        "status": "landing",
        "to_land": [first],
        "landed": [first],
        "batch_ids": [first],
        "wait": QueueWait("max_queued_requests", 100, 100, 100, None, 2).to_json(),
        "started_at": 0.0,
    }
    with pytest.raises(TaskDeferred) as deferred:  # and it waits for queue room again
        land_while_queued(submit, stale, JobIdentity(anthropic_conn), job, 0, 0.5, None)  # type: ignore[arg-type]
    assert _downloads(emulator) == 3 and part.stat().st_mtime_ns == written
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["landed"] == [first] and kwargs["started_at"] == 0.0 and kwargs["land_interval"] == 1

    # A clear of the whole run re-attaches to the round and lands every row exactly once.
    again = run_dag(dag, logical_date=DAY, run_after=DAY)  # dag.test() clears the same run
    assert again.state == "success" and again.run_id == run.run_id
    assert emulator.batch_count() == 3 and _downloads(emulator) == 3
    assert _ids(layout.final_results_path(job)) == ids
