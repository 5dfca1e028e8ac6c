"""Rounds larger than the processing queue go in waves, deferring in between (SDK, emulator, dag.test)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import SpendLimitReachedError
from airflow_batch.manifest import JobIdentity
from airflow_batch.storage import as_path, read_json
from airflow_batch.submit.creating import continue_round
from airflow_batch.submit.queue import QueueWait, QueueWaitNeeded
from airflow_batch.submit.round import SubmitSettings, submit_round
from airflow_batch.triggers.queue import QueueRoomTrigger
from airflow_batch.wait import loop
from airflow_batch.wait.loop import SETTLE_SECONDS


def _write_requests(path: Path, n: int, prefix: str = "req") -> None:
    with path.open("wb") as out:
        for i in range(n):
            request = {
                "custom_id": f"{prefix}-{i:05d}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"Label item {i}."}],
                },
            }
            out.write(msgspec.json.encode(request) + b"\n")


def _rows(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line]


def _job(dag_id: str, group: str, requests: Path, output: str, conn_id: str, **kwargs: Any) -> None:
    anthropic_batch_job(
        group,
        requests=str(requests),
        output_path=output,
        conn_id=conn_id,
        max_retry_rounds=1,
        poll_interval=0.5,
        submit_kwargs={"max_requests_per_batch": 1000, "count_tokens_sample": 0},
        **kwargs,
    )


@pytest.mark.usefixtures("airflow_db")
def test_a_job_four_times_the_queue_submits_in_waves_deferring_and_every_request_ends_once(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.configure(queue_limit=3000, throughput=1000, error_types={"overloaded_error": 0.01}, seed=5)
    requests = tmp_path / "requests.jsonl"
    _write_requests(requests, 12_000)
    output = str(tmp_path / "out")
    with DAG("queue_waves", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        # No share: learned from 429s. Nothing landed early: the submit's resumes are counted below
        # (landing during waves resumes it too: tests/queue/test_land_during_waves.py).
        _job("queue_waves", "job", requests, output, anthropic_conn, land_interval=None)
    with caplog.at_level("INFO"):
        run = run_dag(dag)

    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    # The emulator refuses any create past its queue (its peak cannot pass it): what shows the
    # job never tried to overflow the queue is how many creates the emulator refused, below.
    stats = emulator.stats()
    # The submit ran once, deferred, and resumed once: the queue trigger created every later
    # wave itself (it paused at least twice), with no worker slot held in between.
    assert caplog.text.count(f"running task <TaskInstance: {dag.dag_id}.job.submit") == 2
    job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
    ledger = read_json(layout.ledger_path(job, 0))
    assert len(ledger["batches"]) == 12 and ledger["intents"] == {}
    assert sum("paused with" in event for event in ledger["events"]) >= 2
    # One refused create taught the round the queue's size; later waves fill up to it without one.
    assert sum("queue is full" in event for event in ledger["events"]) == 1
    assert stats["creates_refused"] == 1  # as the emulator counted them
    assert ledger["learned_queue_limit"] == 3000
    results, failures = _rows(layout.final_results_path(job)), _rows(layout.final_failures_path(job))
    ids = [row["custom_id"] for row in results + failures]
    assert len(ids) == len(set(ids)) == 12_000


def _submit(
    base_url: str,
    source: str,
    job: str,
    queued: int | None = None,
    resume: bool = False,
    max_queued_requests: int | None = None,
) -> Any:
    from airflow_batch.storage import iter_jsonl_lines

    settings = SubmitSettings(
        max_requests_per_batch=1000, count_tokens_sample=0, max_queued_requests=max_queued_requests
    )
    identity = JobIdentity("anthropic_default", (), None)
    with BatchesApi(anthropic.Anthropic(base_url=base_url, api_key="k")) as api:
        if resume:
            return continue_round(
                api, job=as_path(job), round_number=0, identity=identity, settings=settings, queued=queued
            )
        return submit_round(
            api,
            iter_jsonl_lines(as_path(source)),
            job=as_path(job),
            round_number=0,
            identity=identity,
            settings=settings,
        )


def _submit_until_done(base_url: str, source: str, job: str, max_queued_requests: int | None = None) -> Any:
    """What the submit operator does: submit, then wait on the queue trigger and create wave after wave."""
    resume, queued = False, None
    while True:
        try:
            return _submit(base_url, source, job, queued, resume, max_queued_requests)
        except QueueWaitNeeded as pause:
            trigger = QueueRoomTrigger(
                identity={"conn_id": "anthropic_default"},
                batch_ids=pause.batch_ids,
                wait=pause.wait.to_json(),
                started_at=time.time(),
                poll_interval=0.2,
            )
            event = asyncio.run(_first_event(trigger))
            assert event["status"] == "room", event
            resume, queued = True, int(event["queued"])


async def _first_event(trigger: QueueRoomTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger yielded no event")


def test_the_room_event_counts_what_ended_while_it_was_held(
    emulator: EmulatorProcess, anthropic_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "SETTLE_SECONDS", SETTLE_SECONDS)  # the hold the other tests go without
    # An event found within the first polls is held (Airflow's defer-exit race); the next wave is
    # sized from its count, so the count must include the batches that ended during the hold.
    emulator.configure(throughput=400, start_delay_seconds=0)
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key="k")
    params = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    sizes = (400, 1000)  # the first ends after about 1 s, the second after about 2.5 s
    batch_ids = [
        client.messages.batches.create(
            requests=[{"custom_id": f"b{size}-{i}", "params": params} for i in range(size)]  # type: ignore[misc]
        ).id
        for size in sizes
    ]
    wait = QueueWait(
        "max_queued_requests", need=400, queued=1400, limit=1400, retry_after=None, pending_chunks=1
    )
    trigger = QueueRoomTrigger(
        identity={"conn_id": "anthropic_default"},
        batch_ids=batch_ids,
        wait=wait.to_json(),
        started_at=time.time(),
        poll_interval=1.0,
    )
    started = time.monotonic()
    event = asyncio.run(_first_event(trigger))
    assert event["status"] == "room"
    assert time.monotonic() - started >= 3.5  # held min(15 s, 4 polls) from its start
    assert event["queued"] == 0, event  # both ended by the end of the hold: the next wave may fill the queue


def test_a_trigger_that_cannot_read_the_job_folder_hands_the_wave_to_the_task(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(throughput=1000, start_delay_seconds=0)
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key="k")
    params = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    batch = client.messages.batches.create(
        requests=[{"custom_id": f"r-{i}", "params": params} for i in range(100)]  # type: ignore[misc]
    )
    wait = QueueWait(
        "max_queued_requests", need=100, queued=100, limit=100, retry_after=None, pending_chunks=1
    )
    trigger = QueueRoomTrigger(
        identity={"conn_id": "anthropic_default"},
        batch_ids=[batch.id],
        wait=wait.to_json(),
        started_at=time.time(),
        poll_interval=0.2,
        job=str(tmp_path / "elsewhere" / "job.submit"),  # a local folder of another host
    )
    event = asyncio.run(_first_event(trigger))
    assert event["status"] == "room" and event["queued"] == 0, event
    assert emulator.batch_count() == 1  # nothing was created here


def test_a_restarted_queue_trigger_watches_every_batch_its_ledger_records(tmp_path: Path) -> None:
    # Airflow re-creates a trigger from the kwargs of its deferral: the batches of the waves it
    # created since are in the ledger only, and must count toward what is queued.
    from airflow_batch.submit.ledger import Ledger, LedgerStore

    job = as_path(str(tmp_path / "job.submit"))
    ledger = Ledger(job_dir=str(job), round=0, fingerprint="f", conn_id="anthropic_default")
    ledger.batches = {
        0: {"batch_id": "msgbatch_a"},
        1: {"batch_id": "msgbatch_b"},
        2: {"batch_id": "msgbatch_c"},
    }
    LedgerStore(job, 0).save(ledger)
    wait = QueueWait("max_queued_requests", need=1, queued=1, limit=1, retry_after=None, pending_chunks=1)
    trigger = QueueRoomTrigger(
        identity={"conn_id": "anthropic_default"},
        batch_ids=["msgbatch_a"],
        wait=wait.to_json(),
        started_at=0.0,
        job=str(job),
    )
    assert trigger._recorded_batches() == ["msgbatch_a", "msgbatch_b", "msgbatch_c"]
    elsewhere = QueueRoomTrigger(
        identity={"conn_id": "anthropic_default"},
        batch_ids=["msgbatch_a"],
        wait=wait.to_json(),
        started_at=0.0,
        job=str(tmp_path / "missing"),
    )
    assert elsewhere._recorded_batches() == ["msgbatch_a"]  # unreadable here: what it was given


@pytest.mark.parametrize("share", [2000, None], ids=["shares", "learned-from-429"])
def test_two_jobs_on_one_queue_both_finish_and_never_overflow_it(
    share: int | None, emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # Each batch starts 2 s after its create: the queue is still full when a fifth batch is asked
    # for, however slowly a loaded machine creates them, so a job without a share meets a refusal.
    emulator.configure(queue_limit=4000, throughput=1000, start_delay_seconds=2)
    manifests: dict[str, Any] = {}
    errors: list[BaseException] = []

    def job(name: str) -> None:
        source = tmp_path / f"{name}.jsonl"
        _write_requests(source, 6000, prefix=name)
        try:
            manifests[name] = _submit_until_done(emulator.base_url, str(source), str(tmp_path / name), share)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert sorted(manifests) == ["first", "second"]
    assert all(len(m["batches"]) == 6 for m in manifests.values())
    assert emulator.batch_count() == 12  # no batch twice
    refused = emulator.stats()["creates_refused"]  # as the emulator counted them, every workspace
    if share is not None:
        assert refused == 0  # the shares kept the jobs apart: no create was refused
    else:
        assert refused >= 1  # they learned the queue from its refusals, and neither failed
    # Each job recorded every refusal it was served: none went unnoticed (or was retried blind).
    assert refused == sum(_refusals_recorded(str(tmp_path / name)) for name in manifests)


def _refusals_recorded(job: str) -> int:
    """Return how many refused creates a job's round-0 ledger recorded."""
    return sum("queue is full" in event for event in read_json(layout.ledger_path(as_path(job), 0))["events"])


def _die_in_second_wave(base_url: str, source: str, job: str) -> None:
    from airflow_batch.submit.ledger import LedgerStore

    save = LedgerStore.save

    def save_then_maybe_die(self: LedgerStore, ledger: Any) -> None:
        save(self, ledger)
        if len(ledger.batches) == 4:  # the first of the second wave is recorded
            os.kill(os.getpid(), signal.SIGKILL)

    LedgerStore.save = save_then_maybe_die  # type: ignore[method-assign]
    _submit_until_done(base_url, source, job)


def test_a_worker_killed_between_two_waves_re_attaches_without_a_duplicate_batch(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # Batches of 1,000 end within ~a second: the worker's second wave starts after the first ends.
    emulator.configure(queue_limit=3000, throughput=5000)
    source = tmp_path / "requests.jsonl"
    _write_requests(source, 8000)
    job = str(tmp_path / "job")
    worker = multiprocessing.get_context("fork").Process(
        target=_die_in_second_wave, args=(emulator.base_url, str(source), job)
    )
    worker.start()
    worker.join(timeout=180)
    assert worker.exitcode == -signal.SIGKILL
    assert emulator.batch_count() == 4

    # The retried task: the whole submit again (it re-attaches), then waves until done.
    manifest = _submit_until_done(emulator.base_url, str(source), job)
    assert emulator.batch_count() == 8
    assert len({batch["batch_id"] for batch in manifest["batches"]}) == 8
    # Every create the emulator refused (the workers learn the queue from them) is in the ledger.
    assert emulator.stats()["creates_refused"] == _refusals_recorded(job)


def test_a_spend_limit_429_fails_the_submit_at_once_and_creates_nothing_more(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    source = tmp_path / "requests.jsonl"
    _write_requests(source, 3000)
    emulator.configure(spend_limit_reached=True)
    with pytest.raises(SpendLimitReachedError) as raised:
        _submit(emulator.base_url, str(source), str(tmp_path / "job"))
    message = str(raised.value)
    assert "enforced_spend_limit_reached" in message
    assert "spend limit, not a rate limit" in message and "Raise it in the Console" in message
    assert emulator.batch_count() == 0
    ledger = read_json(layout.ledger_path(as_path(str(tmp_path / "job")), 0))
    assert ledger["batches"] == {}
