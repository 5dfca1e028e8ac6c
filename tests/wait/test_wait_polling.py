"""Unit tests of the wait's pure core: summaries, retry policy, deadline decisions, events."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anthropic
import httpx
import pytest

from airflow_batch import polling
from airflow_batch.manifest import BatchStatus, RequestCounts


def status(
    state: str = "in_progress",
    *,
    processing: int = 0,
    succeeded: int = 0,
    errored: int = 0,
    canceled: int = 0,
    expired: int = 0,
    expires_at: str | None = None,
) -> BatchStatus:
    return BatchStatus(
        processing_status=state,
        request_counts=RequestCounts(
            processing=processing, succeeded=succeeded, errored=errored, canceled=canceled, expired=expired
        ),
        expires_at=expires_at,
        ended_at=None,
    )


def api_error(code: int, headers: dict[str, str] | None = None) -> anthropic.APIStatusError:
    request = httpx.Request("GET", "http://api.test/v1/messages/batches/b1")
    response = httpx.Response(code, headers=headers or {}, request=request)
    body = {"type": "error", "error": {"type": "some_error", "message": "boom"}}
    return anthropic.APIStatusError("boom", response=response, body=body)


def test_summarize_sums_counts_and_counts_ended_batches_only_when_ended() -> None:
    statuses = {
        "a": status("ended", succeeded=8, errored=2),
        "b": status("canceling", processing=5),
        "c": status(processing=10),
    }
    progress = polling.summarize(["a", "b", "c", "d"], statuses)
    assert progress["counts"] == {"processing": 15, "succeeded": 8, "errored": 2, "canceled": 0, "expired": 0}
    assert progress["batches_ended"] == 1
    assert progress["batches_canceling"] == 1
    assert progress["batches_unknown"] == 1
    assert progress["percent"] == 40.0


def test_progress_line_names_every_total() -> None:
    progress = polling.summarize(
        ["a", "b"], {"a": status("ended", succeeded=3, expired=1), "b": status(processing=4)}
    )
    line = polling.progress_line(progress)
    for part in (
        "1/2 batches ended",
        "50.0% of 8 requests",
        "processing 4",
        "succeeded 3",
        "errored 0",
        "canceled 0",
        "expired 1",
    ):
        assert part in line


def test_next_to_poll_skips_ended_but_keeps_canceling() -> None:
    statuses = {"a": status("ended"), "b": status("canceling")}
    assert polling.next_to_poll(["a", "b", "c"], statuses) == ["b", "c"]


def test_expiring_batches_lists_only_unfinished_batches_near_expiry() -> None:
    now = time.time()
    soon = datetime.fromtimestamp(now + 3600, UTC).isoformat()
    later = datetime.fromtimestamp(now + 20 * 3600, UTC).isoformat()
    statuses = {
        "a": status(expires_at=soon),
        "b": status(expires_at=later),
        "c": status("ended", expires_at=soon),
    }
    expiring = polling.expiring_batches(statuses, now)
    assert list(expiring) == ["a"]
    assert "a in 0h59m" in polling.expiry_warning(expiring) or "a in 1h00m" in polling.expiry_warning(
        expiring
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (api_error(429), "transient"),
        (api_error(500), "transient"),
        (api_error(529), "transient"),
        (api_error(408), "transient"),
        (api_error(401), "permanent"),
        (api_error(403), "permanent"),
        (api_error(404), "permanent"),
        (anthropic.APIConnectionError(request=httpx.Request("GET", "http://x")), "transient"),
        (httpx.ConnectError("refused"), "transient"),
        (ValueError("bug"), "permanent"),
    ],
)
def test_classify_poll_error(exc: BaseException, kind: str) -> None:
    assert polling.classify_poll_error(exc) == kind


def test_retry_after_prefers_milliseconds_header_and_caps_it() -> None:
    assert polling.retry_after_seconds(api_error(429, {"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert polling.retry_after_seconds(api_error(429, {"retry-after": "2"})) == 2.0
    assert polling.retry_after_seconds(api_error(429, {"retry-after": "99999"})) == polling.RETRY_AFTER_CAP
    assert polling.retry_after_seconds(api_error(500)) is None


def test_backoff_grows_is_capped_and_never_undercuts_retry_after() -> None:
    assert polling.backoff_delay(0, rng=lambda: 0.0) == pytest.approx(polling.BACKOFF_BASE / 2)
    assert polling.backoff_delay(3, rng=lambda: 1.0) == pytest.approx(polling.BACKOFF_BASE * 8)
    assert polling.backoff_delay(30, rng=lambda: 1.0) == polling.BACKOFF_CAP
    assert polling.backoff_delay(0, 5.0, rng=lambda: 0.0) == 5.0
    assert 5.0 <= polling.backoff_delay(0, 5.0) <= 5.5


def test_error_cause_names_status_type_and_message() -> None:
    cause = polling.error_cause(api_error(404))
    assert cause.startswith("HTTP 404 some_error: boom")
    message = polling.permanent_error_message("msgbatch_x", cause)
    assert "msgbatch_x" in message and "HTTP 404" in message and "connection" in message


def test_poll_interval_below_minimum_is_refused_with_the_setting_named() -> None:
    assert polling.validate_poll_interval(1) == 1.0
    with pytest.raises(ValueError, match=r"poll_interval=0\.01"):
        polling.validate_poll_interval(0.01)
    with pytest.raises(ValueError, match="timeout_policy='stop'"):
        polling.validate_timeout_policy("stop")


def state(**kwargs: object) -> polling.WaitState:
    defaults: dict[str, object] = {
        "batch_ids": ["a", "b"],
        "end_time": time.time() + 3600,
        "poll_interval": 5.0,
    }
    defaults.update(kwargs)
    return polling.WaitState(**defaults)  # type: ignore[arg-type]


def test_all_batches_ended_finishes_with_success_and_final_statuses() -> None:
    wait = state()
    decision = wait.record_poll(
        polling.CallOutcome(statuses={"a": status("ended", succeeded=1)}), time.time()
    )
    assert decision.action == "sleep" and decision.sleep == 5.0
    assert wait.pending() == ["b"]
    decision = wait.record_poll(polling.CallOutcome(statuses={"b": status("ended", errored=1)}), time.time())
    assert decision.action == "finish"
    assert decision.event is not None and decision.event["status"] == "success"
    assert set(decision.event["batch_status"]) == {"a", "b"}
    assert wait.phase == "success"


def test_canceling_is_not_ended() -> None:
    wait = state()
    decision = wait.record_poll(
        polling.CallOutcome(statuses={"a": status("ended"), "b": status("canceling")}), time.time()
    )
    assert decision.action == "sleep"


def test_permanent_fault_finishes_with_error_naming_the_batch() -> None:
    wait = state()
    outcome = polling.CallOutcome(statuses={"a": status()}, permanent={"b": "HTTP 404 not_found_error: gone"})
    decision = wait.record_poll(outcome, time.time())
    assert decision.event is not None
    assert decision.event["status"] == "error" and decision.event["batch_id"] == "b"
    assert "b" in decision.event["message"] and "HTTP 404" in decision.event["message"]


def test_transient_faults_only_end_the_wait_after_many_cycles_with_no_answer() -> None:
    wait = state()
    failing = polling.CallOutcome(transient={"a": "HTTP 529", "b": "HTTP 529"}, retry_after=12.0)
    for _ in range(polling.MAX_FAILED_CYCLES - 1):
        decision = wait.record_poll(failing, time.time())
        assert decision.action == "sleep"
        assert decision.sleep == 12.0  # the server asked for longer than poll_interval
        assert decision.warnings
    # one answer resets the count
    wait.record_poll(polling.CallOutcome(statuses={"a": status()}, transient={"b": "HTTP 529"}), time.time())
    assert wait.failed_cycles == 0
    for _ in range(polling.MAX_FAILED_CYCLES):
        decision = wait.record_poll(failing, time.time())
    assert decision.event is not None and decision.event["status"] == "error"
    assert "consecutive polls" in decision.event["message"]


def test_sleep_never_overshoots_the_deadline() -> None:
    now = time.time()
    wait = state(end_time=now + 2.0)
    decision = wait.record_poll(polling.CallOutcome(statuses={"a": status(), "b": status()}), now)
    assert decision.sleep == pytest.approx(2.0)


def test_deadline_with_cancel_policy_asks_to_cancel_then_finishes_with_timeout() -> None:
    now = time.time()
    wait = state(end_time=now - 1)
    decision = wait.record_poll(polling.CallOutcome(statuses={"a": status("ended"), "b": status()}), now)
    assert decision.action == "cancel"
    decision = wait.record_cancel(polling.CallOutcome(statuses={"b": status("canceling")}), now)
    assert decision.event is not None and decision.event["status"] == "timeout"
    assert decision.event["canceled_by_timeout"] == ["b"]
    assert decision.event["timed_out"] is True
    assert "1 of 2 batches not ended" in decision.event["message"]


def test_deadline_with_wait_for_cancel_polls_until_canceled_batches_end() -> None:
    now = time.time()
    wait = state(end_time=now - 1, wait_for_cancel=True)
    assert (
        wait.record_poll(polling.CallOutcome(statuses={"a": status(), "b": status()}), now).action == "cancel"
    )
    decision = wait.record_cancel(
        polling.CallOutcome(statuses={"a": status("canceling"), "b": status("canceling")}), now
    )
    assert decision.action == "sleep"
    decision = wait.record_poll(
        polling.CallOutcome(statuses={"a": status("ended", canceled=1), "b": status("ended", canceled=1)}),
        now,
    )
    assert decision.event is not None and decision.event["status"] == "timeout"
    assert "every canceled batch has ended" in decision.event["message"]


def test_deadline_with_leave_policy_times_out_without_cancel() -> None:
    now = time.time()
    wait = state(end_time=now - 1, timeout_policy="leave")
    decision = wait.record_poll(polling.CallOutcome(statuses={"a": status(), "b": status()}), now)
    assert decision.action == "finish"
    assert decision.event is not None and decision.event["status"] == "timeout"
    assert decision.event["canceled_by_timeout"] == []
    assert "policy 'leave'" in decision.event["message"]


def test_expiry_warning_is_given_once_per_batch() -> None:
    now = time.time()
    soon = datetime.fromtimestamp(now + 600, UTC).isoformat()
    wait = state()
    outcome = polling.CallOutcome(statuses={"a": status(expires_at=soon), "b": status()})
    assert any("near expires_at" in w for w in wait.record_poll(outcome, now).warnings)
    assert not any("near expires_at" in w for w in wait.record_poll(outcome, now).warnings)


def test_validate_event_refuses_unknown_status_and_missing_statuses() -> None:
    with pytest.raises(ValueError, match="unknown wait event status 'done'"):
        polling.validate_event({"status": "done", "batch_status": {}})
    with pytest.raises(ValueError, match="batch_status"):
        polling.validate_event({"status": "success"})
    with pytest.raises(ValueError, match="mapping"):
        polling.validate_event(None)


def test_waited_manifest_adds_final_counts_and_keeps_submit_keys() -> None:
    manifest = {
        "job_dir": "/tmp/j",
        "round": 0,
        "batches": [{"batch_id": "a"}, {"batch_id": "b"}],
        "requests": 4,
    }
    event = {
        "status": "success",
        "batch_status": {"a": status("ended", succeeded=2), "b": status("ended", errored=1, expired=1)},
        "timed_out": False,
        "canceled_by_timeout": [],
    }
    result = polling.waited_manifest(manifest, event, time.time())
    assert result["requests"] == 4 and result["job_dir"] == "/tmp/j"
    assert result["counts"] == {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 1}
    assert result["timed_out"] is False and "waited_at" in result


def test_manifest_without_batches_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"manifest=submit\.output"):
        polling.batch_ids_of({"job_dir": "x"})


def test_list_page_yields_only_the_wanted_batches_and_budget_grows_with_the_round() -> None:
    page = {
        "data": [
            {"id": "a", "processing_status": "ended", "request_counts": {"succeeded": 2}, "expires_at": None},
            {"id": "other-job", "processing_status": "in_progress", "request_counts": {"processing": 9}},
            {"id": "b", "processing_status": "canceling", "request_counts": {"processing": 1}},
        ],
        "has_more": False,
    }
    found = polling.statuses_in_page(page, {"a", "b", "c"})
    assert set(found) == {"a", "b"}
    assert found["a"]["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert found["b"]["processing_status"] == "canceling"
    assert polling.list_page_budget(1000) == 1 + polling.LIST_EXTRA_PAGES
    assert polling.list_page_budget(1001) == 2 + polling.LIST_EXTRA_PAGES


def test_timeout_message_counts_batches_whose_cancel_failed() -> None:
    now = time.time()
    wait = state(end_time=now - 1)
    assert (
        wait.record_poll(polling.CallOutcome(statuses={"a": status(), "b": status()}), now).action == "cancel"
    )
    decision = wait.record_cancel(
        polling.CallOutcome(statuses={"a": status("canceling")}, transient={"b": "HTTP 529"}), now
    )
    assert decision.event is not None
    assert decision.event["canceled_by_timeout"] == ["a"]
    assert "2 of 2 batches not ended" in decision.event["message"]
    assert any("Could not cancel batch b" in w for w in decision.warnings)
