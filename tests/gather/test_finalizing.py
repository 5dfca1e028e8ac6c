"""Unit tests of merging rounds into the job's final files (no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.exceptions import FailureRateExceededError
from airflow_batch.gather.finalizing import check_failure_rate, finalize_job
from airflow_batch.storage import as_path, write_json

USAGE = {
    "input_tokens": 10,
    "output_tokens": 2,
    "cache_creation_input_tokens": 0,
    "cache_creation_1h_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def _success(custom_id: str, round_number: int) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "batch_id": f"msgbatch_{round_number}",
        "round": round_number,
        "model": "claude-haiku-4-5",
        "text": f"answer {custom_id} round {round_number}",
        "stop_reason": "end_turn",
        "usage": USAGE,
    }


def _failure(custom_id: str, round_number: int, error_type: str, retryable: bool) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "batch_id": f"msgbatch_{round_number}",
        "round": round_number,
        "result_type": "errored",
        "error_type": error_type,
        "message": "m",
        "request_id": "req_1",
        "retryable": retryable,
    }


def _write_round(
    job: Any, number: int, successes: list[dict[str, Any]], failures: list[dict[str, Any]]
) -> None:
    batch_id = f"msgbatch_{number}"
    results = layout.results_part(job, number, batch_id)
    fails = layout.failures_part(job, number, batch_id)
    results.parent.mkdir(parents=True, exist_ok=True)
    fails.parent.mkdir(parents=True, exist_ok=True)
    results.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in successes))
    fails.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in failures))
    write_json(
        layout.round_manifest_path(job, number),
        {
            "round": number,
            "job_dir": str(job),
            "batches": [{"batch_id": batch_id}],
            "requests": len(successes) + len(failures),
            "results_paths": [str(results)],
            "failures_paths": [str(fails)],
            "usage": USAGE,
            "usage_by_model": {"claude-haiku-4-5": USAGE},
            "cost": {"batch_usd": 0.5, "standard_usd": 1.0, "priced": True, "unpriced_models": []},
            "submitted_at": f"2026-01-01T00:0{number}:00+00:00",
            "gathered_at": f"2026-01-01T00:0{number}:30+00:00",
        },
    )


def _rows(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]


def test_finalize_keeps_one_row_per_custom_id_and_only_final_failures(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    _write_round(
        job,
        0,
        [_success("a", 0), _success("b", 0)],
        [
            _failure("c", 0, "overloaded_error", True),
            _failure("d", 0, "invalid_request_error", False),
            _failure("e", 0, "overloaded_error", True),
        ],
    )
    # Round 1 retried c and e: c succeeds, e fails again with another retryable error.
    _write_round(job, 1, [_success("c", 1)], [_failure("e", 1, "api_error", True)])
    # A round that was never gathered (no manifest) must not be read.
    manifest = finalize_job(job, max_failure_rate=0.5)

    results = _rows(layout.final_results_path(job))
    failures = _rows(layout.final_failures_path(job))
    assert sorted(r["custom_id"] for r in results) == ["a", "b", "c"]
    assert next(r for r in results if r["custom_id"] == "c")["round"] == 1
    assert sorted((f["custom_id"], f["error_type"], f["round"]) for f in failures) == [
        ("d", "invalid_request_error", 0),
        ("e", "api_error", 1),  # the latest failure is reported
    ]
    assert (manifest["requests"], manifest["succeeded"], manifest["failed"]) == (5, 3, 2)
    assert manifest["failure_rate"] == pytest.approx(0.4)
    assert manifest["retryable_left"] == 1
    assert manifest["cost"]["batch_usd"] == pytest.approx(1.0)
    assert manifest["usage"]["input_tokens"] == 20
    assert [r["duration_seconds"] for r in manifest["rounds"]] == [30.0, 30.0]
    stored = msgspec.json.decode(layout.final_manifest_path(job).read_bytes())
    assert stored["succeeded"] == 3 and stored["max_failure_rate"] == 0.5


def test_failure_rate_above_the_limit_fails_after_the_files_are_written(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    _write_round(job, 0, [_success("a", 0)], [_failure("b", 0, "invalid_request_error", False)])
    manifest = finalize_job(job, max_failure_rate=0.25)
    assert layout.final_results_path(job).exists() and layout.final_failures_path(job).exists()
    with pytest.raises(FailureRateExceededError, match="1 of 2 requests failed"):
        check_failure_rate(manifest)
    check_failure_rate({**manifest, "max_failure_rate": 0.5})


def test_finalize_without_a_gathered_round_names_the_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"round-0/manifest\.json"):
        finalize_job(str(tmp_path / "nothing"))


def _big_job(job: Any, requests: int) -> None:
    """Round 0: every 10th request failed (retryable); round 1: those succeeded. Rows out of order."""
    import random

    order = list(range(1, requests + 1))
    random.Random(requests).shuffle(order)
    successes = [{**_success(f"r{i}", 0), "row": i} for i in order if i % 10]
    failures = [{**_failure(f"r{i}", 0, "overloaded_error", True), "row": i} for i in order if not i % 10]
    _write_round(job, 0, successes, failures)
    _write_round(job, 1, [{**_success(f"r{i}", 1), "row": i} for i in order if not i % 10], [])


def _finalize_peak(tmp_path: Path, requests: int) -> int:
    import tracemalloc

    job = as_path(str(tmp_path / f"job-{requests}"))
    _big_job(job, requests)
    tracemalloc.start()
    try:
        manifest = finalize_job(job)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert manifest["succeeded"] == requests and manifest["failed"] == 0
    rows = [
        msgspec.json.decode(line)["row"] for line in layout.final_results_path(job).read_bytes().splitlines()
    ]
    assert rows == list(range(1, requests + 1))  # one row per request, in input order
    return peak


def test_finalize_memory_does_not_grow_with_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_batch.gather import merging, runs

    # Partitions of 10,000 rows and copies of 1 MB: the fixed buffers at sizes a small job fills
    # (at the 8 MB copy default, 20,000 rows peak at 12.0 MB and 60,000 at 18.0 only because the
    # smaller job never filled the copy buffer); tracemalloc makes each row slow, so the jobs stay small.
    monkeypatch.setattr(merging, "PARTITION_ROWS", 10_000)
    monkeypatch.setattr(runs, "COPY_BYTES", 1 << 20)
    small = _finalize_peak(tmp_path, 20_000)
    large = _finalize_peak(tmp_path, 50_000)
    # Two and a half times the rows, the same memory: one partition at a time (11.9 and 12.9 MB).
    assert large < 1.25 * small, (small, large)
    assert large < 24 * 2**20, large
