"""The one retry policy of every API call: what is transient, how long to wait, when to give up."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from airflow_batch.api import errors, retry
from airflow_batch.api.retry import RetryPolicy
from airflow_batch.exceptions import BatchesApiError, SpendLimitReachedError


def api_error(
    code: int, headers: dict[str, str] | None = None, *, error_type: str = "some_error", **details: str
) -> anthropic.APIStatusError:
    request = httpx.Request("POST", "http://api.test/v1/messages/batches")
    response = httpx.Response(code, headers=headers or {}, request=request)
    error: dict[str, Any] = {"type": error_type, "message": "boom"}
    if details:
        error["details"] = details
    return anthropic.APIStatusError("boom", response=response, body={"type": "error", "error": error})


class Clock:
    """A fake monotonic clock that the fake sleep advances."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(*faults: BaseException, then: Any = "ok") -> tuple[Callable[[], Any], list[int]]:
    """Return a call that raises ``faults`` in turn and then returns ``then``, and its call count."""
    calls = [0]

    def call() -> Any:
        calls[0] += 1
        if calls[0] <= len(faults):
            raise faults[calls[0] - 1]
        return then

    return call, calls


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (api_error(429), "transient"),
        (api_error(409), "transient"),
        (api_error(500), "transient"),
        (api_error(503), "transient"),
        (api_error(529), "transient"),
        (api_error(408), "transient"),
        (api_error(400), "permanent"),
        (api_error(401), "permanent"),
        (api_error(403), "permanent"),
        (api_error(404), "permanent"),
        (api_error(413), "permanent"),
        (
            api_error(429, error_type="rate_limit_error", error_code="enforced_spend_limit_reached"),
            "permanent",
        ),
        (api_error(500, {"x-should-retry": "false"}), "permanent"),
        (api_error(400, {"x-should-retry": "true"}), "transient"),
        (anthropic.APIConnectionError(request=httpx.Request("GET", "http://x")), "transient"),
        (anthropic.APITimeoutError(request=httpx.Request("GET", "http://x")), "transient"),
        (httpx.ConnectError("refused"), "transient"),
        (ValueError("bug"), "permanent"),
    ],
)
def test_classify_says_which_faults_are_worth_another_try(exc: BaseException, kind: str) -> None:
    assert retry.classify(exc) == kind


def test_retry_after_prefers_milliseconds_header_and_is_capped() -> None:
    assert (
        retry.retry_after_seconds(api_error(429, {"retry-after-ms": "1500", "retry-after": "9"}), 300) == 1.5
    )
    assert retry.retry_after_seconds(api_error(429, {"retry-after": "2"}), 300) == 2.0
    assert retry.retry_after_seconds(api_error(429, {"retry-after": "99999"}), 300) == 300
    assert retry.retry_after_seconds(api_error(500), 300) is None


def test_backoff_grows_is_capped_and_never_undercuts_retry_after() -> None:
    low, high = RetryPolicy(rng=lambda: 0.0), RetryPolicy(rng=lambda: 1.0)
    assert low.backoff(0) == pytest.approx(low.base_seconds / 2)
    assert high.backoff(3) == pytest.approx(high.base_seconds * 8)
    assert high.backoff(30) == high.cap_seconds
    assert low.backoff(0, 5.0) == 5.0
    assert 5.0 <= RetryPolicy().backoff(0, 5.0) <= 5.5


def test_a_transient_fault_is_retried_after_the_retry_after_the_server_asked_for() -> None:
    clock = Clock()
    call, calls = failing(api_error(429, {"retry-after": "7"}), api_error(529))
    policy = RetryPolicy(rng=lambda: 0.0)

    assert retry.call(call, "create the batch of chunk 0", policy, sleep=clock.sleep, clock=clock) == "ok"

    assert calls[0] == 3
    assert clock.sleeps[0] == 7.0  # the server's retry-after, not the 0.25 s backoff
    assert clock.sleeps[1] == pytest.approx(policy.backoff(1))


def test_an_exhausted_budget_raises_naming_the_call_and_the_last_cause() -> None:
    clock = Clock()
    faults = [api_error(500)] * 50 + [api_error(529, error_type="overloaded_error")] * 50
    call, calls = failing(*faults)
    policy = RetryPolicy(budget_seconds=60, rng=lambda: 1.0)

    with pytest.raises(BatchesApiError) as raised:
        retry.call(call, "retrieve batch msgbatch_1", policy, sleep=clock.sleep, clock=clock)

    error = raised.value
    assert error.transient is True and error.status_code in (500, 529)
    assert "retrieve batch msgbatch_1 failed" in str(error) and "retry budget" in str(error)
    assert f"after {calls[0]} tries" in str(error)
    assert clock.now <= 60, "no try starts after the budget"
    assert isinstance(error.__cause__, anthropic.APIStatusError)


def test_permanent_faults_fail_at_once_with_the_fix() -> None:
    clock = Clock()
    call, calls = failing(api_error(401, error_type="authentication_error"))

    with pytest.raises(BatchesApiError, match=r"HTTP 401 authentication_error: boom.*API key") as raised:
        retry.call(call, "create the batch of chunk 2", RetryPolicy(), sleep=clock.sleep, clock=clock)

    assert calls[0] == 1 and clock.sleeps == []
    assert raised.value.transient is False and raised.value.status_code == 401


def test_a_spend_limit_429_is_not_a_rate_limit() -> None:
    fault = api_error(429, error_type="rate_limit_error", error_code="enforced_spend_limit_reached")
    call, calls = failing(fault)

    with pytest.raises(SpendLimitReachedError, match="spend limit, not a rate limit") as raised:
        retry.call(call, "create the batch of chunk 0", RetryPolicy(), sleep=lambda _: None)

    assert calls[0] == 1 and raised.value.error_code == "enforced_spend_limit_reached"
    assert "enforced_spend_limit_reached" in errors.error_cause(fault)


async def test_the_async_call_follows_the_same_policy() -> None:
    faults = [api_error(529), api_error(429, {"retry-after-ms": "60"})]
    started: list[float] = []

    async def call() -> str:
        started.append(time.monotonic())
        if len(started) <= len(faults):
            raise faults[len(started) - 1]
        return "done"

    policy = RetryPolicy(base_seconds=0.01, rng=lambda: 0.0)
    assert await retry.acall(call, "list batches", policy) == "done"

    # Two transient faults, so three tries; the waits are the policy's: its backoff, then the
    # server's retry-after (60 ms, above the 10 ms backoff of the second wait).
    assert len(started) == 3
    waits = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert waits[0] >= policy.backoff(0) and waits[1] >= 0.06


async def test_the_async_call_fails_a_permanent_fault_at_once_and_a_spend_limit_as_its_own_error() -> None:
    tries = [0]

    async def call(fault: BaseException) -> str:
        tries[0] += 1
        raise fault

    with pytest.raises(BatchesApiError, match=r"HTTP 401 authentication_error: boom.*API key"):
        await retry.acall(lambda: call(api_error(401, error_type="authentication_error")), "list batches")
    spend = api_error(429, error_type="rate_limit_error", error_code="enforced_spend_limit_reached")
    with pytest.raises(SpendLimitReachedError, match="spend limit, not a rate limit"):
        await retry.acall(lambda: call(spend), "create the batch of chunk 0")
    assert tries[0] == 2  # one try each: neither is retried
