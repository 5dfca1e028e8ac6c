"""Batches whose results the API no longer holds (archived 29 days after creation, or deleted).

The emulator's clock is run 30 days ahead once round 0's batches have been polled: they end,
and their results are archived before the gather asks for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from deadlines import release_after_first_poll, until_sync
from request_files import write_say_requests

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import ResultsGoneError
from airflow_batch.gather.gathering import GatherConfig, gather_batch, gather_round
from airflow_batch.manifest import JobIdentity
from airflow_batch.storage import as_path
from airflow_batch.submit.ledger import LedgerStore
from airflow_batch.submit.retrying import original_requests

THIRTY_DAYS = 30 * 86_400
N_REQUESTS = 40


def _read(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line]


def _job_dag(dag_id: str, requests: Path, output: str, conn_id: str, retry_rounds: int) -> DAG:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests),
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=retry_rounds,
            poll_interval=1,
            submit_kwargs={"max_requests_per_batch": N_REQUESTS // 2, "count_tokens_sample": 0},
            keep_chunks=True,  # the test reads what each round sent
        )
    return dag


def _archive_after_first_poll(emulator: EmulatorProcess, output: str, dag_id: str) -> None:
    """Let round 0 end once its wait has polled it, with the emulator's clock 30 days ahead."""
    folder = Path(output) / dag_id

    class FirstProgress:
        def exists(self) -> bool:
            return any(folder.glob("*/job.submit/round-0/progress.json"))

    release_after_first_poll(
        emulator, FirstProgress(), start_delay_seconds=0, clock_offset_seconds=THIRTY_DAYS
    )


@pytest.mark.usefixtures("airflow_db")
def test_archived_batches_requests_are_resubmitted_in_the_next_round(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(start_delay_seconds=600)
    ids = write_say_requests(tmp_path / "requests.jsonl", N_REQUESTS)
    output = str(tmp_path / "out")
    dag = _job_dag("results_gone_retry", tmp_path / "requests.jsonl", output, anthropic_conn, 1)
    _archive_after_first_poll(emulator, output, dag.dag_id)

    run = run_dag(dag)

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    round_0 = msgspec.json.decode(layout.round_manifest_path(job, 0).read_bytes())
    batches = [record["batch_id"] for record in round_0["batches"]]
    assert len(batches) == 2
    assert sorted(round_0["results_gone"]) == sorted(batches)
    assert all("archived at" in why for why in round_0["results_gone"].values())
    failures = [row for batch_id in batches for row in _read(layout.failures_part(job, 0, batch_id))]
    assert sorted(row["custom_id"] for row in failures) == ids
    assert {(row["result_type"], row["error_type"], row["retryable"]) for row in failures} == {
        ("missing", "results_archived", True)
    }
    assert [row["row"] for row in sorted(failures, key=lambda row: row["custom_id"])] == list(
        range(1, N_REQUESTS + 1)
    )
    # Round 1 resubmitted exactly the archived batches' requests, and they landed once each.
    resubmitted = sorted(
        row["custom_id"] for part in layout.chunks_dir(job, 1).glob("*.jsonl") for row in _read(part)
    )
    assert resubmitted == ids
    results = _read(layout.final_results_path(job))
    assert sorted(row["custom_id"] for row in results) == ids
    assert _read(layout.final_failures_path(job)) == []


@pytest.mark.usefixtures("airflow_db")
def test_archived_batches_fail_the_last_gather_naming_them_and_their_requests(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    emulator.configure(start_delay_seconds=600)
    write_say_requests(tmp_path / "requests.jsonl", N_REQUESTS)
    output = str(tmp_path / "out")
    dag = _job_dag("results_gone_fail", tmp_path / "requests.jsonl", output, anthropic_conn, 0)
    _archive_after_first_poll(emulator, output, dag.dag_id)

    run = run_dag(dag)

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["job.gather"] == "failed"
    assert run.state == "failed"
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    ledger = LedgerStore(job, 0).load()
    assert ledger is not None
    batches = [ledger.batch_id(0), ledger.batch_id(1)]
    logs = capfd.readouterr()
    message = next(line for line in (logs.out + logs.err).splitlines() if "ResultsGoneError: round 0" in line)
    for batch_id in batches:
        assert f"batch {batch_id} (archived at " in message
    assert "req-000 (row 1)" in message and "req-020 (row 21)" in message
    assert "40 request(s) have no answer" in message
    assert "max_retry_rounds >= 1" in message
    # It failed before landing anything: no part file, no sidecar.
    assert not list(layout.round_dir(job, 0).glob("results/*"))
    assert not list(layout.round_dir(job, 0).glob("failures/*"))


def test_a_round_landed_in_part_resubmits_only_the_archived_batchs_requests(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    """One batch was landed before the archive (its sidecar exists); only the other is gone."""
    from airflow_batch.submit.round import SubmitSettings, submit_round

    ids = write_say_requests(tmp_path / "requests.jsonl", N_REQUESTS)
    job = as_path(str(tmp_path / "job"))
    api = BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key"))
    with api:
        manifest: Any = submit_round(
            api,
            _read(tmp_path / "requests.jsonl"),
            job=job,
            round_number=0,
            identity=JobIdentity("anthropic_default"),
            settings=SubmitSettings(max_requests_per_batch=N_REQUESTS // 2, count_tokens_sample=0),
        )
        first, second = manifest["batches"]
        for record in (first, second):
            until_sync(
                lambda record=record: (
                    sync_client.messages.batches.retrieve(record["batch_id"]).processing_status == "ended"
                )
            )
        gather_batch(api, first, job=job, round_number=0, config=GatherConfig())
        emulator.configure(clock_offset_seconds=THIRTY_DAYS)

        with pytest.raises(ResultsGoneError) as failed:
            gather_round(api, manifest, config=GatherConfig())
        assert list(failed.value.batches) == [second["batch_id"]]
        assert first["batch_id"] not in str(failed.value)

        gathered = gather_round(api, manifest, config=GatherConfig(on_results_gone="retry"))
    assert list(gathered["results_gone"]) == [second["batch_id"]]
    assert gathered["result_counts"]["succeeded"] == N_REQUESTS // 2
    assert gathered["retryable"] == N_REQUESTS // 2
    resubmitted = [
        msgspec.json.decode(carried.request)["custom_id"] for carried in original_requests(gathered)
    ]
    assert resubmitted == ids[N_REQUESTS // 2 :]
