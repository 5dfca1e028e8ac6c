"""Waves that fit the processing queue, and when the next may go (pure; no server)."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from airflow_batch.api import retry
from airflow_batch.api.errors import is_queue_full
from airflow_batch.exceptions import QueueFullError, SpendLimitReachedError
from airflow_batch.submit.queue import (
    DEFAULT_QUEUE_RETRY_SECONDS,
    MAX_QUEUE_WAIT_SECONDS,
    QueueWait,
    queued_requests,
    room_ready,
    wave,
)
from airflow_batch.submit.round import SubmitSettings


def test_a_wave_takes_the_pending_chunks_in_order_while_they_fit() -> None:
    assert wave([1000, 1000, 1000, 1000], queued=0, limit=3000) == 3
    assert wave([1000, 1000], queued=2500, limit=3000) == 0
    assert wave([400, 1000, 100], queued=0, limit=1000) == 1  # order is kept: no skipping ahead
    assert wave([1000] * 7, queued=10**9, limit=None) == 7  # no share: all, the API decides


def test_a_request_counts_as_queued_until_its_batch_ends() -> None:
    statuses = {
        "a": {"processing_status": "in_progress", "request_counts": {"processing": 700, "succeeded": 300}},
        "b": {"processing_status": "canceling", "request_counts": {"processing": 50}},
        "c": {"processing_status": "ended", "request_counts": {"processing": 0, "succeeded": 1000}},
    }
    assert queued_requests(statuses) == 1050


def test_with_a_share_the_next_wave_goes_as_soon_as_it_fits() -> None:
    wait = QueueWait(
        "max_queued_requests", need=1000, queued=3000, limit=3000, retry_after=None, pending_chunks=9
    )
    assert not room_ready(wait, queued=2001, waited=5)
    assert room_ready(wait, queued=2000, waited=0)


def test_learned_from_a_full_queue_the_next_wave_waits_for_its_own_room_and_the_retry_after() -> None:
    wait = QueueWait("queue_full", need=1000, queued=3000, limit=None, retry_after=20, pending_chunks=9)
    assert not room_ready(wait, queued=1500, waited=10)  # room freed, but the API said 20 s
    assert room_ready(wait, queued=2000, waited=20)
    assert not room_ready(wait, queued=2500, waited=300)  # not enough of our own ended yet
    assert room_ready(wait, queued=2500, waited=MAX_QUEUE_WAIT_SECONDS)  # others' batches end too
    # None of our own queued: the queue is held by other jobs; ask again after the wait asked for.
    idle = QueueWait("queue_full", need=1000, queued=0, limit=None, retry_after=None, pending_chunks=9)
    assert not room_ready(idle, queued=0, waited=DEFAULT_QUEUE_RETRY_SECONDS - 1)
    assert room_ready(idle, queued=0, waited=DEFAULT_QUEUE_RETRY_SECONDS)


def test_the_wait_round_trips_through_a_trigger_s_kwargs() -> None:
    wait = QueueWait("queue_full", need=5, queued=7, limit=None, retry_after=1.5, pending_chunks=2)
    assert QueueWait.from_json(wait.to_json()) == wait


def test_a_share_smaller_than_one_batch_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="below max_requests_per_batch"):
        SubmitSettings(max_requests_per_batch=5000, max_queued_requests=3000)


def rate_limited(
    message: str, headers: dict[str, str] | None = None, **details: str
) -> anthropic.APIStatusError:
    request = httpx.Request("POST", "http://api.test/v1/messages/batches")
    response = httpx.Response(429, headers=headers or {}, request=request)
    error: dict[str, object] = {"type": "rate_limit_error", "message": message}
    if details:
        error["details"] = details
    return anthropic.APIStatusError(message, response=response, body={"type": "error", "error": error})


def test_a_full_queue_is_not_retried_in_place_but_handed_back_with_its_retry_after() -> None:
    full = rate_limited(
        "Number of batch requests in processing queue exceeds your limit", {"retry-after": "42"}
    )
    assert is_queue_full(full)
    with pytest.raises(QueueFullError) as raised:
        retry.call(lambda: (_ for _ in ()).throw(full), "create the batch of chunk 3", sleep=lambda s: None)
    assert raised.value.retry_after == 42 and raised.value.transient


def test_a_request_rate_429_is_retried_and_a_spend_limit_429_fails_at_once() -> None:
    assert not is_queue_full(rate_limited("Number of requests has exceeded your rate limit"))
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise rate_limited("Number of requests has exceeded your rate limit", {"retry-after": "0"})
        return "ok"

    assert retry.call(flaky, "create", sleep=lambda s: None) == "ok"
    spent = rate_limited("You have reached your API usage limits", error_code="enforced_spend_limit_reached")
    assert not is_queue_full(spent)
    with pytest.raises(SpendLimitReachedError, match="spend limit, not a rate limit"):
        retry.call(lambda: (_ for _ in ()).throw(spent), "create", sleep=lambda s: None)
    contract = rate_limited("Contract spend limit reached", error_code="contract_spend_limit_reached")
    with pytest.raises(SpendLimitReachedError, match="contract"):
        retry.call(lambda: (_ for _ in ()).throw(contract), "create", sleep=lambda s: None)
