"""BatchesSensor through ``dag.test()`` (trigger inline) and in non-deferrable mode, on the emulator."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anthropic
import pytest
from airflow.sdk import DAG, task
from airflow_test_env import run_dag
from deadlines import release_after_first_poll, until_sync

from airflow_batch import layout, storage
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import BatchPollError, BatchWaitTimeoutError
from airflow_batch.links.console import BATCH_LINKS_XCOM_KEY
from airflow_batch.links.urls import batch_console_url
from airflow_batch.sensors import BatchesSensor

CreateBatches = Callable[[Sequence[int]], list[str]]


def manifest_for(batch_ids: list[str], job_dir: Path, conn_id: str) -> dict[str, Any]:
    return {
        "version": 1,
        "job_dir": str(job_dir),
        "round": 0,
        "conn_id": conn_id,
        "requests": 0,
        "batches": [
            {"chunk": i, "batch_id": batch_id, "requests": 0, "bytes": 0, "chunk_path": ""}
            for i, batch_id in enumerate(batch_ids)
        ],
    }


def wait_dag(dag_id: str, manifest: dict[str, Any], out: Path, **sensor_kwargs: Any) -> DAG:
    """submit (stand-in returning the manifest) >> wait >> record (what the gather would receive)."""
    with DAG(dag_id, schedule=None) as dag:

        @task
        def submit() -> dict[str, Any]:
            return manifest

        @task
        def record(waited: dict[str, Any], ti: Any = None) -> None:
            links = ti.xcom_pull(task_ids="wait", key=BATCH_LINKS_XCOM_KEY)
            out.write_text(json.dumps({"manifest": waited, "links": links}))

        submitted = submit()
        waited = BatchesSensor(task_id="wait", manifest=submitted, poll_interval=0.2, **sensor_kwargs)
        record(waited.output)
    return dag


def triggers_run(caplog: pytest.LogCaptureFixture) -> int:
    """Return how many triggers ``dag.test()`` ran inline, i.e. how many times a task deferred."""
    return caplog.text.count("[DAG TEST] running trigger in line")


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "in-worker"])
def test_sensor_returns_the_manifest_with_final_counts_for_the_gather(
    deferrable: bool,
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Nothing ends before the sensor's first poll: a deferrable wait must really defer.
    emulator.configure(throughput=20, error_rate=0.25, seed=7, start_delay_seconds=600)
    ids = create_batches([4, 12, 20])
    out = tmp_path / "waited.json"
    dag = wait_dag(
        f"wait_ok_{deferrable}", manifest_for(ids, tmp_path, anthropic_conn), out, deferrable=deferrable
    )
    release_after_first_poll(
        emulator, layout.progress_path(storage.as_path(str(tmp_path)), 0), start_delay_seconds=0
    )
    with caplog.at_level("INFO"):
        run = run_dag(dag)

    assert run.state == "success"
    assert triggers_run(caplog) == (1 if deferrable else 0)
    task_log = "".join(capfd.readouterr())
    if deferrable:
        assert "Deferring to the triggerer: 3 of 3 batches" in task_log
        assert "Watching 3 batches (0 already ended)" in task_log, "the trigger watched the round"
        assert "[DAG TEST] Trigger completed" in caplog.text, "the task resumed from the trigger's event"
    recorded = json.loads(out.read_text())
    waited = recorded["manifest"]
    assert waited["stage"] == "waited"
    assert waited["job_dir"] == str(tmp_path) and len(waited["batches"]) == 3
    assert set(waited["batch_status"]) == set(ids)
    assert all(s["processing_status"] == "ended" for s in waited["batch_status"].values())
    counts = waited["counts"]
    assert counts["processing"] == 0
    assert counts["succeeded"] + counts["errored"] == 36 and counts["errored"] > 0
    assert waited["timed_out"] is False and waited["canceled_by_timeout"] == []
    assert recorded["links"] == [batch_console_url(batch_id) for batch_id in ids]
    progress = storage.read_json(layout.progress_path(storage.as_path(str(tmp_path)), 0))
    assert progress["phase"] == "success" and progress["batches_ended"] == 3
    assert progress["elapsed_seconds"] >= 0 and progress["last_poll_at"] is not None


def test_deferrable_wait_of_an_ended_round_returns_without_deferring(
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ids = create_batches([3, 4])
    until_sync(
        lambda: all(sync_client.messages.batches.retrieve(b).processing_status == "ended" for b in ids)
    )
    out = tmp_path / "waited.json"
    dag = wait_dag("wait_ended_round", manifest_for(ids, tmp_path, anthropic_conn), out, deferrable=True)
    with caplog.at_level("INFO"):
        run = run_dag(dag)

    assert run.state == "success"
    assert triggers_run(caplog) == 0
    task_log = "".join(capfd.readouterr())
    assert "Not deferring: the wait ended at the first poll (success). All 2 batches ended" in task_log
    assert "to the triggerer" not in task_log
    assert json.loads(out.read_text())["manifest"]["counts"]["succeeded"] == 7
    progress = storage.read_json(layout.progress_path(storage.as_path(str(tmp_path)), 0))
    assert progress["batches_ended"] == 2


def test_deferrable_wait_failing_at_the_first_poll_says_so_instead_of_deferring(
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emulator.configure(start_delay_seconds=600)
    ids = [*create_batches([2]), "msgbatch_does_not_exist_0000000"]
    out = tmp_path / "waited.json"
    dag = wait_dag("wait_missing_batch", manifest_for(ids, tmp_path, anthropic_conn), out, deferrable=True)
    with caplog.at_level("INFO"):
        run = run_dag(dag)

    assert run.state == "failed"
    assert triggers_run(caplog) == 0
    task_log = "".join(capfd.readouterr())
    assert "Not deferring: the wait ended at the first poll (error)" in task_log
    assert "msgbatch_does_not_exist_0000000" in task_log
    assert "to the triggerer" not in task_log and "had ended" not in task_log


def test_sensor_timeout_cancels_and_fails_the_task_by_default(
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
) -> None:
    emulator.configure(start_delay_seconds=600)
    ids = create_batches([3, 3])
    out = tmp_path / "waited.json"
    dag = wait_dag("wait_timeout_fail", manifest_for(ids, tmp_path, anthropic_conn), out, timeout=1)
    run = run_dag(dag)

    assert run.state == "failed"
    assert run.get_task_instance("wait").state == "failed"
    assert not out.exists(), "the round is not gathered after a failed wait"
    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is not None for b in ids)


def test_sensor_timeout_without_failing_passes_the_round_on_once_cancels_ended(
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    tmp_path: Path,
) -> None:
    emulator.configure(throughput=1000)
    done = create_batches([2])
    emulator.configure(start_delay_seconds=600, cancel_delay_seconds=0.3)
    slow = create_batches([3])
    out = tmp_path / "waited.json"
    dag = wait_dag(
        "wait_timeout_gather",
        manifest_for(done + slow, tmp_path, anthropic_conn),
        out,
        timeout=1,
        fail_on_timeout=False,
        cancel_grace=30,
    )
    run = run_dag(dag)

    assert run.state == "success"
    waited = json.loads(out.read_text())["manifest"]
    assert waited["timed_out"] is True
    assert waited["canceled_by_timeout"] == slow
    assert waited["counts"] == {"processing": 0, "succeeded": 2, "errored": 0, "canceled": 3, "expired": 0}


def test_resume_with_unknown_event_status_fails_loudly() -> None:
    sensor = BatchesSensor(task_id="wait", manifest=manifest_for(["b1"], Path("/tmp"), "c"))
    with pytest.raises(BatchPollError, match="unknown wait event status 'finished'"):
        sensor.execute_complete({}, {"status": "finished", "batch_status": {}})
    with pytest.raises(BatchPollError, match="must be a mapping"):
        sensor.execute_complete({}, None)


def test_resume_with_error_event_raises_its_message_and_timeout_raises_timeout_error() -> None:
    sensor = BatchesSensor(task_id="wait", manifest=manifest_for(["b1"], Path("/tmp"), "c"))
    with pytest.raises(BatchPollError, match="b1 failed permanently"):
        sensor.execute_complete(
            {}, {"status": "error", "message": "Polling batch b1 failed permanently", "batch_status": {}}
        )
    ended = {
        "processing_status": "ended",
        "request_counts": {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 1, "expired": 0},
        "expires_at": None,
        "ended_at": None,
    }
    event = {
        "status": "timeout",
        "message": "Wait deadline passed with 1 of 1 batches not ended.",
        "batch_status": {"b1": ended},
        "timed_out": True,
        "canceled_by_timeout": ["b1"],
    }
    with pytest.raises(BatchWaitTimeoutError, match="1 of 1 batches not ended"):
        sensor.execute_complete({}, event)


def test_sensor_is_deferrable_by_default_and_validates_its_settings() -> None:
    from airflow.sdk import conf

    manifest = manifest_for(["b1"], Path("/tmp"), "c")
    # Airflow's own default (written into every generated airflow.cfg) is False; ours is True.
    assert conf.getboolean("operators", "default_deferrable") is False
    assert BatchesSensor(task_id="a", manifest=manifest).deferrable is True
    assert BatchesSensor(task_id="b", manifest=manifest, deferrable=False).deferrable is False
    with pytest.raises(ValueError, match="timeout_policy"):
        BatchesSensor(task_id="c", manifest=manifest, timeout_policy="abandon")
    with pytest.raises(ValueError, match="poll_interval"):
        BatchesSensor(task_id="d", manifest=manifest, poll_interval=0)


def test_deployment_environment_can_turn_the_default_deferral_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert BatchesSensor(task_id="a", manifest={}).deferrable is False
    assert BatchesSensor(task_id="b", manifest={}, deferrable=True).deferrable is True


def test_poll_interval_is_the_sensor_poke_interval() -> None:
    sensor = BatchesSensor(task_id="w", manifest={}, poll_interval=2, timeout=30)
    assert (sensor.poll_interval, sensor.poke_interval, sensor.timeout) == (2.0, 2.0, 30.0)


def test_kill_of_the_in_worker_wait_cancels_its_unfinished_batches(
    airflow_db: str,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emulator.configure(start_delay_seconds=600)
    ids = create_batches([2, 5])
    progress = layout.progress_path(storage.as_path(str(tmp_path)), 0)
    with DAG("wait_killed", schedule=None) as dag:
        manifest = manifest_for(ids, tmp_path, anthropic_conn)
        BatchesSensor(task_id="wait", manifest=manifest, deferrable=False, poll_interval=0.2)
    # A real SIGTERM to this process once the wait has polled: dag.test() runs the task in this
    # process's main thread, where the task runner's handler calls on_kill while the in-worker
    # wait's event loop is running, exactly as in a worker. Until the runner installs its handler,
    # a guard keeps a too-early signal from ending the test process, and says so.
    signals: list[str] = []

    def terminate() -> None:
        try:
            until_sync(progress.exists, deadline=120)
        finally:
            signals.append("sent")
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: signals.append("before the task's handler"))
    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    try:
        run = run_dag(dag)
    finally:
        signal.signal(signal.SIGTERM, previous)
        killer.join(timeout=10)
    output = capfd.readouterr().out

    assert signals == ["sent"], signals
    assert "on_kill: canceled 2 of 2 unfinished batches" in output, output[-3000:]
    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is not None for b in ids)
    # The canceled batches end, so the wait itself finishes: the round is canceled, not lost.
    assert run.state == "success"
    assert storage.read_json(progress)["counts"]["canceled"] == 7
