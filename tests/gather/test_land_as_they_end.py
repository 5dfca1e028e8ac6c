"""Each batch's rows land soon after it ends, while the round's other batches still run.

The emulator processes 1 request/s per batch; round 0 has batches of 40, 40 and 3 requests,
so the small one ends ~40 s before the others. The wait hands it to the worker (``land_interval``)
and its rows are readable with ``read_results(job_folder)`` while the others are in progress;
once a watcher saw them, the emulator speeds up and the others end at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from deadlines import until_sync
from request_files import write_say_requests

from airflow_batch import anthropic_batch_job, layout, read_results
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.gather.finalizing import finalize_job
from airflow_batch.gather.gathering import GatherConfig, gather_round
from airflow_batch.manifest import JobIdentity
from airflow_batch.plugins.app import read_progress
from airflow_batch.plugins.rendering import render_page
from airflow_batch.plugins.views import ManifestRecord, build_jobs
from airflow_batch.storage import as_path, read_json
from airflow_batch.submit.ledger import LedgerStore
from airflow_batch.submit.round import SubmitSettings, submit_round


def _read(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line]


class EarlyRows:
    """Watches a running job folder: what ``read_results`` gave while round 0's first batch still ran."""

    def __init__(self, output: Path, client: anthropic.Anthropic, release: Callable[[], object]) -> None:
        self.output = output
        self.client = client
        self.release = release  # called once the early rows were seen: the other batches may end
        self.seen: dict[str, Any] | None = None
        self.progress: Mapping[str, Any] | None = None  # what the batch jobs page read then
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while not self.stop.is_set() and self.seen is None:
            for job in self.output.glob("*/*/job.submit"):
                ledger = LedgerStore(as_path(str(job)), 0).load()
                if ledger is None or ledger.batch_id(0) is None:
                    continue
                rows = read_results(str(job))
                ids = sorted(row["custom_id"] for row in rows)
                progress = read_progress(str(job), 0)
                if ids and progress is not None and "landed" in progress:
                    first = self.client.messages.batches.retrieve(str(ledger.batch_id(0)))
                    self.progress = progress
                    self.seen = {
                        "ids": ids,
                        "partial": rows.partial,
                        "batches_landed": rows.batches_landed,
                        "first_batch": first.processing_status,
                    }
                    self.release()
            time.sleep(0.2)


@pytest.mark.usefixtures("airflow_db")
def test_a_batch_that_ends_early_is_readable_while_the_others_run(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emulator.configure(throughput=1)
    ids = write_say_requests(tmp_path / "requests.jsonl", 83)
    output = tmp_path / "out"
    with DAG("land_as_they_end", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(tmp_path / "requests.jsonl"),
            output_path=str(output),
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            poll_interval=1,
            land_interval=1,
            submit_kwargs={"max_requests_per_batch": 40, "count_tokens_sample": 0},
            gather_kwargs={"round_asset": "airflow-batch://land_as_they_end/rounds"},
        )
    watcher = EarlyRows(output, sync_client, lambda: emulator.configure(throughput=1_000_000))
    try:
        run = run_dag(dag)
    finally:
        watcher.stop.set()
        watcher.thread.join(timeout=10)

    assert run.state == "success"
    assert watcher.seen is not None, "no row was readable before the job ended"
    assert watcher.seen == {
        "ids": ids[80:],
        "partial": True,
        "batches_landed": 1,
        "first_batch": "in_progress",
    }
    logs = capfd.readouterr()
    assert "Landed 1 ended batch(es) (3 rows)" in logs.out + logs.err
    job = layout.job_dir(str(output), dag.dag_id, run.run_id, "job.submit")
    # The gather landed only what was left; every row is in the results exactly once.
    results = read_results(str(job))
    assert results.partial is False
    assert sorted(row["custom_id"] for row in results) == ids
    progress = msgspec.json.decode(layout.progress_path(job, 0).read_bytes())
    # The small batch at least (a 40-request batch may end a landing ahead of the other on a busy host).
    assert progress["batches_landed"] >= 1

    # The batch jobs page showed the landed rows of the running round, flagged partial.
    submitted = {**read_json(layout.round_manifest_path(job, 0)), "stage": "submitted"}
    [view] = build_jobs(
        [ManifestRecord(dag.dag_id, run.run_id, "job.submit", -1, submitted)], lambda *_: watcher.progress
    )
    page = render_page([view], base="", title="t", subtitle="")
    assert "3</span> rows readable now, partial (0 failed; 1 batch(es) landed)" in page

    # The gather emitted one event for its landed round, naming where its rows are.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        extras = [
            event.extra
            for event in session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == "airflow-batch://land_as_they_end/rounds")
        ]
    assert [(extra["job_dir"], extra["round"], extra["partial"]) for extra in extras] == [(str(job), 0, True)]
    assert extras[0]["result_counts"]["succeeded"] == len(ids)


_LAND_ONE = textwrap.dedent(
    """
    import pathlib
    import signal
    import sys
    import anthropic
    from airflow_batch.api import BatchesApi
    from airflow_batch.gather.gathering import GatherConfig, gather_batch
    from airflow_batch.storage import as_path, read_json
    from airflow_batch import layout

    base_url, job, batch_id, holding = sys.argv[1:]
    download_results = BatchesApi.download_results

    def download_then_hold(self, batch_id, consume):
        # The first block of the stream reaches the part file, then the landing stops until killed:
        # the kill lands mid-write whatever the machine's speed and the batch's size.
        def first_block_then_hold(chunks):
            yield next(chunks)
            pathlib.Path(holding).touch()
            signal.pause()

        return download_results(self, batch_id, lambda chunks: consume(first_block_then_hold(chunks)))

    BatchesApi.download_results = download_then_hold
    manifest = read_json(as_path(job) / "submitted.json")
    record = next(r for r in manifest["batches"] if r["batch_id"] == batch_id)
    with BatchesApi(anthropic.Anthropic(base_url=base_url, api_key="test-key")) as api:
        gather_batch(api, record, job=as_path(job), round_number=0, config=GatherConfig(include_content=True))
    """
)


def test_a_landing_killed_mid_batch_and_run_again_lands_every_row_once(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    ids = write_say_requests(tmp_path / "requests.jsonl", 3_000)
    job = as_path(str(tmp_path / "job"))
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key")) as api:
        manifest: Any = submit_round(
            api,
            _read(tmp_path / "requests.jsonl"),
            job=job,
            round_number=0,
            identity=JobIdentity("anthropic_default"),
            settings=SubmitSettings(max_requests_per_batch=1_500, count_tokens_sample=0),
        )
        (tmp_path / "job" / "submitted.json").write_bytes(msgspec.json.encode(manifest))
        batch_ids = [record["batch_id"] for record in manifest["batches"]]
        for batch_id in batch_ids:
            until_sync(
                lambda batch_id=batch_id: (
                    sync_client.messages.batches.retrieve(batch_id).processing_status == "ended"
                ),
                deadline=60,
            )
        # Land the first batch in another process and kill it while it writes the part file.
        parts = tmp_path / "job" / "round-0" / "results"
        holding = tmp_path / "landing-holds"
        args = [emulator.base_url, str(tmp_path / "job"), batch_ids[0], str(holding)]
        landing = subprocess.Popen(
            [sys.executable, "-c", _LAND_ONE, *args],
            env={**os.environ},
        )
        try:
            until_sync(lambda: holding.exists() or landing.poll() is not None, deadline=180)
            assert landing.poll() is None, "the landing ended before it could be killed"
            assert list(parts.glob(f".{batch_ids[0]}.jsonl.*.tmp")), "killed while it writes the part file"
            os.kill(landing.pid, signal.SIGKILL)
        finally:
            if landing.poll() is None:
                landing.kill()
            landing.wait(timeout=30)
        assert landing.returncode == -signal.SIGKILL
        assert not layout.gather_stats_path(job, 0, batch_ids[0]).exists()

        gathered = gather_round(api, manifest, config=GatherConfig(include_content=True))

    assert gathered["result_counts"]["succeeded"] == 3_000
    rows = [row["custom_id"] for path in gathered["results_paths"] for row in _read(path)]
    assert sorted(rows) == sorted(ids)
    assert not list(parts.glob(".*.tmp"))
    # Finalize merges the runs made as the batches landed: every row once, in input order.
    finalize_job(job)
    merged = [row["custom_id"] for row in _read(layout.final_results_path(job))]
    assert merged == ids
