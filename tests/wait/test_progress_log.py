"""The wait logs its progress when it changes (and every few minutes otherwise), with an ETA."""

from __future__ import annotations

from airflow_batch.manifest import BatchStatus, RequestCounts
from airflow_batch.wait import policy


def _status(state: str, processing: int = 0, succeeded: int = 0) -> BatchStatus:
    counts = RequestCounts(processing=processing, succeeded=succeeded, errored=0, canceled=0, expired=0)
    return BatchStatus(processing_status=state, request_counts=counts, expires_at=None, ended_at=None)


def _poll(state: policy.WaitState, now: float, **statuses: BatchStatus) -> list[str]:
    return state.record_poll(policy.CallOutcome(statuses=dict(statuses)), now).info


def test_unchanged_polls_log_nothing_until_a_change_or_five_minutes() -> None:
    state = policy.WaitState(batch_ids=["a", "b"], end_time=10_000.0, poll_interval=10)
    busy = _status("in_progress", processing=50)

    first = _poll(state, 0.0, a=busy, b=busy)
    assert len(first) == 1 and "0/2 batches ended" in first[0]
    assert "an ETA once a batch ends" in first[0]
    assert [_poll(state, t, a=busy, b=busy) for t in (10.0, 20.0, 290.0)] == [[], [], []]
    assert len(_poll(state, 300.0, a=busy, b=busy)) == 1  # still alive: said again after 5 minutes

    changed = _poll(state, 310.0, a=_status("ended", succeeded=50), b=busy)
    assert len(changed) == 1 and "1/2 batches ended" in changed[0]
    # Half the requests ended in 310 s: the other half is due in about as long again.
    assert "ETA ~5 min at the rate so far (5 min elapsed)" in changed[0]
