"""BatchesTrigger against the emulator with the real async SDK: no Airflow DB needed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import anthropic
import pytest
import structlog.testing
from airflow.sdk._shared.module_loading import import_string
from deadlines import until
from wait_support import first_event

from airflow_batch import layout, storage
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.triggers.batches import BatchesTrigger
from airflow_batch.wait import kill

CreateBatches = Callable[[Sequence[int]], list[str]]


def trigger(conn_id: str, batch_ids: list[str], *, timeout: float = 60, **kwargs: object) -> BatchesTrigger:
    return BatchesTrigger(
        identity={"conn_id": conn_id},
        batch_ids=batch_ids,
        end_time=time.time() + timeout,
        poll_interval=kwargs.pop("poll_interval", 0.2),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def statuses_on_server(client: anthropic.Anthropic, batch_ids: list[str]) -> dict[str, str]:
    return {batch_id: client.messages.batches.retrieve(batch_id).processing_status for batch_id in batch_ids}


async def test_trigger_waits_for_batches_ending_at_different_times_and_reports_progress(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    tmp_path: object,
) -> None:
    emulator.configure(throughput=20)  # requests/s per batch: sizes below end after ~0.05 s, 0.5 s, 2 s
    ids = create_batches([1, 10, 40])
    job_dir = str(tmp_path)
    with structlog.testing.capture_logs() as logs:  # the trigger logs through Airflow's structlog
        event = await first_event(trigger(anthropic_conn, ids, job_dir=job_dir, round_number=0))

    assert event["status"] == "success", event["message"]
    assert set(event["batch_status"]) == set(ids)
    assert all(s["processing_status"] == "ended" for s in event["batch_status"].values())
    assert sum(s["request_counts"]["succeeded"] for s in event["batch_status"].values()) == 51
    progress_lines = [str(log["event"]) for log in logs if "batches ended" in str(log["event"])]
    assert len(progress_lines) >= 2, "one progress line per poll"
    assert "3/3 batches ended, 100.0% of 51 requests done" in progress_lines[-1]
    assert any("3/3" not in line for line in progress_lines), "batches ended at different polls"
    progress = storage.read_json(layout.progress_path(storage.as_path(job_dir), 0))
    assert progress["phase"] == "success"
    assert progress["batches_ended"] == progress["batches_total"] == 3
    assert progress["counts"]["succeeded"] == 51


@pytest.mark.parametrize(
    "sizes",
    [[2, 5, 10, 20, 30, 3, 8, 12], [10, 20, 40] * 4],
    ids=["retrieve-each", "list-pages"],  # more than polling.LIST_THRESHOLD batches are read from list pages
)
async def test_trigger_survives_injected_http_faults_and_latency(
    sizes: list[int], emulator: EmulatorProcess, anthropic_conn: str, create_batches: CreateBatches
) -> None:
    emulator.configure(throughput=15)  # the largest batch takes 2-3 s: many polls, so many faults
    ids = create_batches(sizes)
    emulator.configure(
        http_fault_rate=0.3,
        http_fault_statuses=[429, 500, 529],
        latency_ms=20,
        retry_after_seconds=0.2,
        http_fault_budget=10_000,  # counts down with every injected fault
    )
    event = await first_event(trigger(anthropic_conn, ids))

    assert event["status"] == "success", event["message"]
    assert emulator.configure()["http_fault_budget"] < 10_000, "faults were injected"
    assert sum(s["request_counts"]["succeeded"] for s in event["batch_status"].values()) == sum(sizes)


@pytest.mark.parametrize("batches", [1, 12], ids=["retrieve-each", "list-pages"])
async def test_missing_batch_ends_the_wait_with_an_error_naming_it(
    batches: int, emulator: EmulatorProcess, anthropic_conn: str, create_batches: CreateBatches
) -> None:
    emulator.configure(throughput=1)
    ids = [*create_batches([5] * batches), "msgbatch_does_not_exist_0000000"]
    # A poll interval longer than the deadline of first_event: only an end without a second poll passes.
    event = await first_event(trigger(anthropic_conn, ids, poll_interval=120), deadline=60)

    assert event["status"] == "error"
    assert event["batch_id"] == "msgbatch_does_not_exist_0000000"
    assert "msgbatch_does_not_exist_0000000" in event["message"] and "HTTP 404" in event["message"]


async def test_deadline_ends_with_timeout_and_cancels_unfinished_batches(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
) -> None:
    emulator.configure(throughput=1000)
    done = create_batches([1])
    emulator.configure(start_delay_seconds=600)
    slow = create_batches([5, 5])
    event = await first_event(trigger(anthropic_conn, done + slow, timeout=1.0))

    assert event["status"] == "timeout"
    assert event["timed_out"] is True
    assert sorted(event["canceled_by_timeout"]) == sorted(slow)
    assert "2 of 3 batches not ended" in event["message"]
    on_server = statuses_on_server(sync_client, slow)
    assert set(on_server.values()) <= {"canceling", "ended"}
    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is not None for b in slow)
    assert sync_client.messages.batches.retrieve(done[0]).cancel_initiated_at is None


async def test_deadline_with_wait_for_cancel_returns_once_canceled_batches_ended(
    emulator: EmulatorProcess, anthropic_conn: str, create_batches: CreateBatches
) -> None:
    emulator.configure(start_delay_seconds=600, cancel_delay_seconds=0.5)
    ids = create_batches([3, 4])
    event = await first_event(
        trigger(anthropic_conn, ids, timeout=0.5, wait_for_cancel=True, cancel_grace=30)
    )

    assert event["status"] == "timeout"
    assert all(s["processing_status"] == "ended" for s in event["batch_status"].values())
    assert sum(s["request_counts"]["canceled"] for s in event["batch_status"].values()) == 7
    assert sorted(event["canceled_by_timeout"]) == sorted(ids)


async def test_trigger_log_names_the_triggerer_that_runs_it(
    emulator: EmulatorProcess, anthropic_conn: str, create_batches: CreateBatches
) -> None:
    emulator.configure(start_delay_seconds=600)
    ids = create_batches([1])
    unnamed = trigger(anthropic_conn, ids, timeout=0, timeout_policy="leave")
    named = trigger(anthropic_conn, ids, timeout=0, timeout_policy="leave")
    named.triggerer_job_id = 7  # what a triggerer that knows its job id sets
    with structlog.testing.capture_logs() as logs:
        await first_event(unnamed)
        await first_event(named)

    watching = [str(log["event"]) for log in logs if str(log["event"]).startswith("Watching")]
    where = f"host {socket.gethostname()}, pid {os.getpid()}"
    assert len(watching) == 2
    assert f"Watching 1 batches (0 already ended) on the triggerer on {where};" in watching[0]
    assert f"on triggerer job 7 ({where});" in watching[1]
    assert "None" not in watching[0]


async def test_deadline_with_leave_policy_keeps_batches_running(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
) -> None:
    emulator.configure(start_delay_seconds=600)
    ids = create_batches([2])
    event = await first_event(trigger(anthropic_conn, ids, timeout=0.5, timeout_policy="leave"))

    assert event["status"] == "timeout"
    assert event["canceled_by_timeout"] == []
    assert statuses_on_server(sync_client, ids) == {ids[0]: "in_progress"}


def _a_task_instance() -> SimpleNamespace:
    return SimpleNamespace(dag_id="job", run_id="manual__1", task_id="wait", map_index=-1)


async def _cancelled_with_user_action(watcher: BatchesTrigger) -> None:
    task = asyncio.create_task(first_event(watcher))
    await until(lambda: len(watcher.state.statuses) == len(watcher.state.batch_ids))
    task.cancel()  # what the triggerer does first on a "user action" cancel, before it awaits on_kill()
    with pytest.raises(asyncio.CancelledError):
        await task
    await watcher.on_kill()


async def test_user_kill_cancels_the_unfinished_batches(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.configure(throughput=1000)
    done = create_batches([1])
    emulator.configure(start_delay_seconds=600)
    slow = create_batches([4, 6])
    watcher = trigger(anthropic_conn, done + slow)
    watcher.task_instance = _a_task_instance()

    # The API server's answer to the trigger runner's GetTaskStates after a user marked the task failed.
    async def failed(ti: object) -> str:
        return "failed"

    monkeypatch.setattr(kill, "read_task_state", failed)
    await _cancelled_with_user_action(watcher)

    assert set(statuses_on_server(sync_client, slow).values()) <= {"canceling", "ended"}
    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is not None for b in slow)
    assert sync_client.messages.batches.retrieve(done[0]).cancel_initiated_at is None


@pytest.mark.parametrize(
    ("state_answer", "why"),
    [
        ("deferred", "still deferred"),  # another triggerer took the trigger over (Airflow 3.3 on_kill)
        (None, "no task instance"),
    ],
)
async def test_on_kill_of_a_trigger_moved_to_another_triggerer_cancels_nothing(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    monkeypatch: pytest.MonkeyPatch,
    state_answer: object,
    why: str,
) -> None:
    emulator.configure(start_delay_seconds=600)
    slow = create_batches([4, 6])
    watcher = trigger(anthropic_conn, slow)
    if state_answer is not None:
        watcher.task_instance = _a_task_instance()

    async def answer(ti: object) -> object:
        if isinstance(state_answer, Exception):
            raise state_answer
        return state_answer

    monkeypatch.setattr(kill, "read_task_state", answer)
    with structlog.testing.capture_logs() as logs:
        await _cancelled_with_user_action(watcher)

    assert statuses_on_server(sync_client, slow) == {b: "in_progress" for b in slow}
    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is None for b in slow)
    said = [str(log["event"]) for log in logs if "cancelling nothing" in str(log["event"])]
    assert len(said) == 1 and why in said[0], said


async def test_on_kill_without_a_stall_cancels_when_the_state_cannot_be_read_and_says_why(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.configure(start_delay_seconds=600)
    slow = create_batches([4, 6])
    watcher = trigger(anthropic_conn, slow)
    watcher.task_instance = _a_task_instance()

    async def unanswered(ti: object) -> str:
        await asyncio.sleep(60)  # the supervisor's answer comes too late
        return "failed"

    monkeypatch.setattr(kill, "read_task_state", unanswered)
    with structlog.testing.capture_logs() as logs:
        await _cancelled_with_user_action(watcher)

    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is not None for b in slow)
    said = [str(log["event"]) for log in logs if "could not be read" in str(log["event"])]
    assert len(said) == 1 and "did not stand still" in said[0], said


async def test_on_kill_right_after_the_triggerers_loop_stood_still_cancels_nothing_and_asks_nobody(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.configure(start_delay_seconds=600)
    slow = create_batches([4, 6])
    watcher = trigger(anthropic_conn, slow)
    watcher.task_instance = _a_task_instance()

    async def no_question(ti: object) -> str:
        raise AssertionError("a resumed triggerer must not ask the API server (its answer stalls)")

    monkeypatch.setattr(kill, "read_task_state", no_question)
    task = asyncio.create_task(first_event(watcher))
    await until(lambda: len(watcher.state.statuses) == 2)
    # What SIGSTOP past the health threshold (30 s here, so 15 s counts) leaves behind: no tick for 20 s.
    watcher.stall.last_tick -= 20
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with structlog.testing.capture_logs() as logs:
        await watcher.on_kill()

    assert all(sync_client.messages.batches.retrieve(b).cancel_initiated_at is None for b in slow)
    said = [str(log["event"]) for log in logs if "cancelling nothing" in str(log["event"])]
    assert len(said) == 1 and re.search(r"stood still for (19|20) s", said[0]), said


async def test_triggerer_restart_resumes_from_serialized_kwargs_without_canceling(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    create_batches: CreateBatches,
    sync_client: anthropic.Anthropic,
) -> None:
    emulator.configure(throughput=20)
    ids = create_batches([1, 60])  # ends after ~0.05 s and ~3 s
    first = trigger(anthropic_conn, ids)
    task = asyncio.create_task(first_event(first))
    await until(lambda: len(first.state.ended_statuses()) == 1)
    task.cancel()  # a triggerer restart cancels run() and never calls on_kill()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert statuses_on_server(sync_client, [ids[1]]) == {ids[1]: "in_progress"}

    classpath, kwargs = first.serialize()
    kwargs = json.loads(json.dumps(kwargs))  # what the metadata DB keeps
    second = import_string(classpath)(**kwargs)
    assert second.state.end_time == first.state.end_time, "the deadline survives the restart"
    assert second.state.pending() == [ids[1]], "an ended batch is never asked about again"
    event = await first_event(second)

    assert event["status"] == "success"
    assert event["batch_status"][ids[1]]["request_counts"]["succeeded"] == 60


async def test_emulator_restart_mid_wait_still_ends_in_success(
    emulator: EmulatorProcess, anthropic_conn: str, create_batches: CreateBatches
) -> None:
    emulator.configure(throughput=10)
    ids = create_batches([30, 5])  # ~3 s and ~0.5 s
    watcher = trigger(anthropic_conn, ids)
    task = asyncio.create_task(first_event(watcher))
    await until(lambda: len(watcher.state.statuses) == 2)
    await asyncio.to_thread(emulator.restart)
    event = await task

    assert event["status"] == "success", event["message"]
    assert sum(s["request_counts"]["succeeded"] for s in event["batch_status"].values()) == 35
