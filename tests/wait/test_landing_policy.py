"""When the wait hands ended batches to the worker: the pure policy, and the trigger carrying it."""

from __future__ import annotations

from typing import Any

from airflow_batch.triggers.batches import BatchesTrigger
from airflow_batch.wait.landing import LANDING, LandingPolicy, landing_event
from airflow_batch.wait.policy import WaitState


def _status(processing_status: str) -> Any:
    counts = {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 0}
    return {
        "processing_status": processing_status,
        "request_counts": counts,
        "expires_at": None,
        "ended_at": None,
    }


def _state(**statuses: str) -> WaitState:
    state = WaitState(batch_ids=["a", "b", "c", "d"], end_time=10_000.0)
    state.statuses = {batch_id: _status(status) for batch_id, status in statuses.items()}
    return state


def test_ended_batches_are_landed_once_enough_wait_or_the_interval_passed() -> None:
    policy = LandingPolicy(interval=300, min_batches=2)
    one_ended = _state(a="ended", b="in_progress", c="in_progress", d="in_progress")

    assert policy.to_land(one_ended, landed=[], since=0, now=10) == []
    assert policy.to_land(one_ended, landed=[], since=0, now=300) == ["a"]
    two_ended = _state(a="ended", b="ended", c="in_progress", d="in_progress")
    assert policy.to_land(two_ended, landed=[], since=0, now=10) == ["a", "b"]
    assert policy.to_land(two_ended, landed=["a", "b"], since=0, now=900) == []


def test_nothing_lands_mid_way_once_every_batch_ended_or_the_deadline_passed() -> None:
    policy = LandingPolicy(interval=1, min_batches=1)
    assert policy.to_land(_state(a="ended", b="ended", c="ended", d="ended"), [], 0, 100) == []
    timed_out = _state(a="ended", b="canceling", c="in_progress", d="in_progress")
    timed_out.timed_out = True
    assert policy.to_land(timed_out, [], 0, 100) == []


def test_the_landing_event_carries_the_state_a_new_trigger_resumes_from() -> None:
    state = _state(a="ended", b="in_progress", c="in_progress", d="in_progress")
    event = landing_event(state, ["a"], landed=[])
    assert event["status"] == LANDING and event["to_land"] == ["a"] and event["landed"] == ["a"]

    resumed = BatchesTrigger.for_state(
        WaitState.from_kwargs(**event["state"]),
        identity={"conn_id": "anthropic_default"},
        land_interval=60,
        land_min_batches=2,
        landed=event["landed"],
    )
    _, kwargs = resumed.serialize()
    assert kwargs["landed"] == ["a"] and kwargs["land_interval"] == 60 and kwargs["land_min_batches"] == 2
    assert list(kwargs["ended"]) == ["a"]
    assert BatchesTrigger(**kwargs).serialize() == resumed.serialize()
    plain = BatchesTrigger.for_state(
        WaitState.from_kwargs(**event["state"]), identity={"conn_id": "anthropic_default"}
    )
    assert "land_interval" not in plain.serialize()[1]


def test_a_round_lands_a_tenth_of_its_batches_at_once_unless_told_otherwise() -> None:
    assert LandingPolicy.for_round(300, None, batches=100).min_batches == 10
    assert LandingPolicy.for_round(300, None, batches=3).min_batches == 1
    assert LandingPolicy.for_round(300, 4, batches=100).min_batches == 4


def test_the_queue_trigger_hands_over_ended_batches_not_landed_and_carries_its_wait() -> None:
    from airflow_batch.submit.queue import QueueWait
    from airflow_batch.triggers.queue import QueueRoomTrigger

    wait = QueueWait(
        "max_queued_requests", need=100, queued=100, limit=100, retry_after=None, pending_chunks=2
    )
    trigger = QueueRoomTrigger(
        identity={"conn_id": "anthropic_default"},
        batch_ids=["a", "b", "c"],
        wait=wait.to_json(),
        started_at=123.0,
        land_interval=60,
        land_min_batches=1,
        landed=["a"],
    )
    statuses = {"a": _status("ended"), "b": _status("ended"), "c": _status("in_progress")}
    to_land = trigger._to_land(statuses, since=0.0)
    assert to_land == ["b"]  # "a" was landed by an earlier landing: never handed back
    event = trigger._landing_event(to_land)
    assert event["status"] == LANDING and event["landed"] == ["a", "b"] and event["started_at"] == 123.0
    assert QueueWait.from_json(event["wait"]) == wait and event["batch_ids"] == ["a", "b", "c"]
    _, kwargs = trigger.serialize()
    assert QueueRoomTrigger(**kwargs).serialize() == trigger.serialize()
    # Without land_interval nothing is handed over: the wait lands the round.
    kwargs.update(land_interval=None)
    assert QueueRoomTrigger(**kwargs)._to_land(statuses, since=0.0) == []
