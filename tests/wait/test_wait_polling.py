"""Unit tests of the wait's pure core (summaries, deadline decisions, events) and the API retry policy."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
import pytest

from airflow_batch.api.status import decode_page
from airflow_batch.manifest import BatchStatus, RequestCounts
from airflow_batch.wait import events, policy
from airflow_batch.wait import progress as wait_progress


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


def test_summarize_sums_counts_and_counts_ended_batches_only_when_ended() -> None:
    statuses = {
        "a": status("ended", succeeded=8, errored=2),
        "b": status("canceling", processing=5),
        "c": status(processing=10),
    }
    progress = wait_progress.summarize(["a", "b", "c", "d"], statuses)
    assert progress["counts"] == {"processing": 15, "succeeded": 8, "errored": 2, "canceled": 0, "expired": 0}
    assert progress["batches_ended"] == 1
    assert progress["batches_canceling"] == 1
    assert progress["batches_unknown"] == 1
    assert progress["percent"] == 40.0


def test_progress_line_names_every_total() -> None:
    progress = wait_progress.summarize(
        ["a", "b"], {"a": status("ended", succeeded=3, expired=1), "b": status(processing=4)}
    )
    line = wait_progress.progress_line(progress)
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
    assert policy.next_to_poll(["a", "b", "c"], statuses) == ["b", "c"]


def test_expiring_batches_lists_only_unfinished_batches_near_expiry() -> None:
    now = time.time()
    soon = datetime.fromtimestamp(now + 3600, UTC).isoformat()
    later = datetime.fromtimestamp(now + 20 * 3600, UTC).isoformat()
    statuses = {
        "a": status(expires_at=soon),
        "b": status(expires_at=later),
        "c": status("ended", expires_at=soon),
    }
    expiring = policy.expiring_batches(statuses, now)
    assert list(expiring) == ["a"]
    assert "a in 0h59m" in policy.expiry_warning(expiring) or "a in 1h00m" in policy.expiry_warning(expiring)


def test_poll_interval_below_a_second_is_refused_against_the_real_api_only() -> None:
    assert policy.validate_poll_interval(1, local=False) == 1.0
    assert policy.validate_poll_interval(0.01, local=True) == 0.01
    assert policy.validate_poll_interval(0.01) == 0.01  # at parse time the base URL is not known yet
    with pytest.raises(ValueError, match=r"poll_interval=0\.01: at least 1 second"):
        policy.validate_poll_interval(0.01, local=False)
    with pytest.raises(ValueError, match="positive"):
        policy.validate_poll_interval(0)
    with pytest.raises(ValueError, match="timeout_policy='stop'"):
        policy.validate_timeout_policy("stop")


def state(**kwargs: object) -> policy.WaitState:
    defaults: dict[str, object] = {
        "batch_ids": ["a", "b"],
        "end_time": time.time() + 3600,
        "poll_interval": 5.0,
    }
    defaults.update(kwargs)
    return policy.WaitState(**defaults)  # type: ignore[arg-type]


def test_all_batches_ended_finishes_with_success_and_final_statuses() -> None:
    wait = state()
    decision = wait.record_poll(policy.CallOutcome(statuses={"a": status("ended", succeeded=1)}), time.time())
    assert decision.action == "sleep" and decision.sleep == 5.0
    assert wait.pending() == ["b"]
    decision = wait.record_poll(policy.CallOutcome(statuses={"b": status("ended", errored=1)}), time.time())
    assert decision.action == "finish"
    assert decision.event is not None and decision.event["status"] == "success"
    assert set(decision.event["batch_status"]) == {"a", "b"}
    assert wait.phase == "success"


def test_canceling_is_not_ended() -> None:
    wait = state()
    decision = wait.record_poll(
        policy.CallOutcome(statuses={"a": status("ended"), "b": status("canceling")}), time.time()
    )
    assert decision.action == "sleep"


def test_permanent_fault_finishes_with_error_naming_the_batch() -> None:
    wait = state()
    outcome = policy.CallOutcome(statuses={"a": status()}, permanent={"b": "HTTP 404 not_found_error: gone"})
    decision = wait.record_poll(outcome, time.time())
    assert decision.event is not None
    assert decision.event["status"] == "error" and decision.event["batch_id"] == "b"
    assert "b" in decision.event["message"] and "HTTP 404" in decision.event["message"]


def test_transient_faults_only_end_the_wait_after_many_cycles_with_no_answer() -> None:
    wait = state()
    failing = policy.CallOutcome(transient={"a": "HTTP 529", "b": "HTTP 529"})
    for _ in range(policy.MAX_FAILED_CYCLES - 1):
        decision = wait.record_poll(failing, time.time())
        assert decision.action == "sleep"
        assert decision.warnings
    # one answer resets the count
    wait.record_poll(policy.CallOutcome(statuses={"a": status()}, transient={"b": "HTTP 529"}), time.time())
    assert wait.failed_cycles == 0
    for _ in range(policy.MAX_FAILED_CYCLES):
        decision = wait.record_poll(failing, time.time())
    assert decision.event is not None and decision.event["status"] == "error"
    assert "consecutive polls" in decision.event["message"]


def test_sleep_never_overshoots_the_deadline() -> None:
    now = time.time()
    wait = state(end_time=now + 2.0)
    decision = wait.record_poll(policy.CallOutcome(statuses={"a": status(), "b": status()}), now)
    assert decision.sleep == pytest.approx(2.0)


def test_deadline_with_cancel_policy_asks_to_cancel_then_finishes_with_timeout() -> None:
    now = time.time()
    wait = state(end_time=now - 1)
    decision = wait.record_poll(policy.CallOutcome(statuses={"a": status("ended"), "b": status()}), now)
    assert decision.action == "cancel"
    decision = wait.record_cancel(policy.CallOutcome(statuses={"b": status("canceling")}), now)
    assert decision.event is not None and decision.event["status"] == "timeout"
    assert decision.event["canceled_by_timeout"] == ["b"]
    assert decision.event["timed_out"] is True
    assert "1 of 2 batches not ended" in decision.event["message"]


def test_deadline_with_wait_for_cancel_polls_until_canceled_batches_end() -> None:
    now = time.time()
    wait = state(end_time=now - 1, wait_for_cancel=True)
    assert (
        wait.record_poll(policy.CallOutcome(statuses={"a": status(), "b": status()}), now).action == "cancel"
    )
    decision = wait.record_cancel(
        policy.CallOutcome(statuses={"a": status("canceling"), "b": status("canceling")}), now
    )
    assert decision.action == "sleep"
    decision = wait.record_poll(
        policy.CallOutcome(statuses={"a": status("ended", canceled=1), "b": status("ended", canceled=1)}),
        now,
    )
    assert decision.event is not None and decision.event["status"] == "timeout"
    assert "every canceled batch has ended" in decision.event["message"]


def test_deadline_with_leave_policy_times_out_without_cancel() -> None:
    now = time.time()
    wait = state(end_time=now - 1, timeout_policy="leave")
    decision = wait.record_poll(policy.CallOutcome(statuses={"a": status(), "b": status()}), now)
    assert decision.action == "finish"
    assert decision.event is not None and decision.event["status"] == "timeout"
    assert decision.event["canceled_by_timeout"] == []
    assert "policy 'leave'" in decision.event["message"]


def test_expiry_warning_is_given_once_per_batch() -> None:
    now = time.time()
    soon = datetime.fromtimestamp(now + 600, UTC).isoformat()
    wait = state()
    outcome = policy.CallOutcome(statuses={"a": status(expires_at=soon), "b": status()})
    assert any("near expires_at" in w for w in wait.record_poll(outcome, now).warnings)
    assert not any("near expires_at" in w for w in wait.record_poll(outcome, now).warnings)


def test_validate_event_refuses_unknown_status_and_missing_statuses() -> None:
    with pytest.raises(ValueError, match="unknown wait event status 'done'"):
        events.validate_event({"status": "done", "batch_status": {}})
    with pytest.raises(ValueError, match="batch_status"):
        events.validate_event({"status": "success"})
    with pytest.raises(ValueError, match="mapping"):
        events.validate_event(None)


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
    result = events.waited_manifest(manifest, event, time.time())
    assert result["requests"] == 4 and result["job_dir"] == "/tmp/j"
    assert result["counts"] == {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 1}
    assert result["timed_out"] is False and "waited_at" in result


def test_manifest_without_batches_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"manifest=submit\.output"):
        events.batch_ids_of({"job_dir": "x"})


def test_list_page_yields_only_the_wanted_batches_and_budget_grows_with_the_round() -> None:
    page = decode_page(
        msgspec.json.encode(
            {
                "data": [
                    {
                        "id": "a",
                        "processing_status": "ended",
                        "request_counts": {"succeeded": 2},
                        "expires_at": None,
                    },
                    {
                        "id": "other-job",
                        "processing_status": "in_progress",
                        "request_counts": {"processing": 9},
                    },
                    {"id": "b", "processing_status": "canceling", "request_counts": {"processing": 1}},
                ],
                "has_more": False,
            }
        ),
        "list batches",
    )
    found = policy.statuses_in_page(page, {"a", "b", "c"})
    assert set(found) == {"a", "b"}
    assert found["a"]["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert found["b"]["processing_status"] == "canceling"
    assert policy.list_page_budget(1000, 1000) == 1 + policy.LIST_EXTRA_PAGES
    assert policy.list_page_budget(1001, 1000) == 2 + policy.LIST_EXTRA_PAGES


def test_timeout_message_counts_batches_whose_cancel_failed() -> None:
    now = time.time()
    wait = state(end_time=now - 1)
    assert (
        wait.record_poll(policy.CallOutcome(statuses={"a": status(), "b": status()}), now).action == "cancel"
    )
    decision = wait.record_cancel(
        policy.CallOutcome(statuses={"a": status("canceling")}, transient={"b": "HTTP 529"}), now
    )
    assert decision.event is not None
    assert decision.event["canceled_by_timeout"] == ["a"]
    assert "2 of 2 batches not ended" in decision.event["message"]
    assert any("Could not cancel batch b" in w for w in decision.warnings)
