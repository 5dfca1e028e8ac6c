"""A batch's rows reach stable storage before ``delete_batches`` deletes the API's copy (issue 23, 9)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path, read_json


@pytest.mark.usefixtures("airflow_db")
def test_every_landed_file_is_fsynced_while_its_batch_still_exists(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "r.jsonl"
    records.write_bytes(
        b"".join(msgspec.json.encode({"id": f"r{i}", "text": f"lamp {i}"}) + b"\n" for i in range(300))
    )
    synced: dict[str, list[int]] = {}  # path -> batches the API still stored each time it was fsynced
    fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        fsync(descriptor)
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        if "/out/" in path:
            synced.setdefault(path, []).append(emulator.stats()["batches_stored"])

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with DAG("durable", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job", records=str(records), prompt_template="Rate: {text}", custom_id_field="id",
            model="claude-haiku-4-5", max_tokens=32, output_path=str(tmp_path / "out"),
            conn_id=anthropic_conn, poll_interval=0.5, delete_batches="after_gather",
            submit_kwargs={"count_tokens_sample": 0, "max_requests_per_batch": 100},
        )  # fmt: skip
    run = run_dag(dag)
    assert run.state == "success" and emulator.stats()["batches_stored"] == 0
    job = layout.job_dir(str(tmp_path / "out"), "durable", run.run_id, "job.submit")
    gathered: dict[str, Any] = read_json(layout.round_manifest_path(job, 0))
    assert len(gathered["deleted_batches"]) == 3
    # Deleted one after another: the n-th batch's files were synced while 3 - n + 1 batches were stored.
    for n, batch_id in enumerate(record["batch_id"] for record in gathered["batches"]):
        files = [
            layout.results_part(job, 0, batch_id),
            layout.failures_part(job, 0, batch_id),
            layout.gather_stats_path(job, 0, batch_id),
        ]
        for path in files:
            local = str(as_path(str(path)).path)
            assert 3 - n in synced.get(local, []), (local, synced)
            assert 3 - n in synced.get(os.path.dirname(local), []), (local, synced)
