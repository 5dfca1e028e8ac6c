"""Each landed file is sorted and indexed when it lands; finalize only copies byte ranges (no server).

The merge of the runs must write exactly what the merge of the whole job writes
(:func:`merge_rows`), whatever the order rows landed in, and making a run again (a re-run, a
clear, a landing killed before its marker) must never add or lose a row.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.folder import JobFolder
from airflow_batch.gather import merging, runs
from airflow_batch.gather.finalizing import finalize_job
from airflow_batch.gather.merging import merge_rows
from airflow_batch.gather.runs import job_runs, land_run, merge_runs
from airflow_batch.storage import as_path, iter_jsonl_lines, write_json

USAGE = {"input_tokens": 10, "output_tokens": 2}
COST = {"batch_usd": 0.5, "standard_usd": 1.0, "priced": True, "unpriced_models": []}


def _success(row: int, round_number: int, batch: str) -> dict[str, Any]:
    return {
        "custom_id": f"r{row}",
        "row": row,
        "round": round_number,
        "batch_id": batch,
        "text": "a" * (row % 7),
    }


def _failure(row: int, round_number: int, batch: str, error_type: str = "overloaded_error") -> dict[str, Any]:
    return {
        "custom_id": f"r{row}",
        "row": row,
        "round": round_number,
        "batch_id": batch,
        "result_type": "errored",
        "error_type": error_type,
        "retryable": error_type == "overloaded_error",
    }


def _lines(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(msgspec.json.encode(row) + b"\n" for row in rows)


def _write_round(
    job: Any, number: int, batches: dict[str, tuple[list[Any], list[Any]]], **extra: Any
) -> None:
    results_paths, failures_paths = [], []
    for batch_id, (successes, failures) in batches.items():
        results, fails = (
            layout.results_part(job, number, batch_id),
            layout.failures_part(job, number, batch_id),
        )
        results.parent.mkdir(parents=True, exist_ok=True)
        fails.parent.mkdir(parents=True, exist_ok=True)
        results.write_bytes(_lines(successes))
        fails.write_bytes(_lines(failures))
        results_paths.append(str(results))
        failures_paths.append(str(fails))
    write_json(
        layout.round_manifest_path(job, number),
        {
            "round": number,
            "job_dir": str(job),
            "batches": [{"batch_id": batch_id} for batch_id in batches],
            "results_paths": extra.pop("reused", []) + results_paths,
            "failures_paths": failures_paths,
            "usage": USAGE,
            "cost": COST,
            **extra,
        },
    )


def _job(tmp_path: Path | str, seed: int, shuffled: bool) -> Any:
    """Round 0: three batches of contiguous rows (one landed out of order), a reused file and an
    invalid row; round 1: the retryable failures again, half succeeding; round 2: one of them again."""
    rng = random.Random(seed)
    job = as_path(f"{tmp_path}/job-{seed}")
    reused_rows = {5, 77}
    invalid_row = 150
    failed = set(rng.sample([r for r in range(1, 301) if r not in reused_rows | {invalid_row}], 40))
    batches: dict[str, tuple[list[Any], list[Any]]] = {}
    for number, (low, high) in enumerate(((1, 100), (101, 200), (201, 300))):
        batch = f"msgbatch_{number}"
        rows = [r for r in range(low, high + 1) if r not in reused_rows and r != invalid_row]
        if shuffled and number == 1:
            rng.shuffle(rows)
        batches[batch] = (
            [_success(r, 0, batch) for r in rows if r not in failed],
            [
                _failure(r, 0, batch, "overloaded_error" if r % 3 else "invalid_request_error")
                for r in rows
                if r in failed
            ],
        )
    reused = layout.reused_path(job, 0)
    reused.parent.mkdir(parents=True, exist_ok=True)
    reused.write_bytes(
        _lines(
            [
                {**_success(r, 0, "msgbatch_old"), "reused_from": {"batch_id": "old"}}
                for r in sorted(reused_rows)
            ]
        )
    )
    invalid = layout.invalid_input_path(job, 0)
    invalid.write_bytes(
        _lines([{**_failure(invalid_row, 0, "", "invalid_request_error"), "result_type": "invalid"}])
    )
    _write_round(job, 0, batches, reused=[str(reused)], invalid=1, invalid_path=str(invalid))
    retried = sorted(r for r in failed if r % 3)
    rng.shuffle(retried)
    again = [r for r in retried if r % 2]
    _write_round(
        job,
        1,
        {
            "msgbatch_r1": (
                [_success(r, 1, "msgbatch_r1") for r in retried if not r % 2],
                [_failure(r, 1, "msgbatch_r1", "api_error") for r in again],
            )
        },
    )
    _write_round(job, 2, {"msgbatch_r2": ([], [_failure(again[0], 2, "msgbatch_r2", "overloaded_error")])})
    return job


def _merged_whole(job: Any) -> tuple[bytes, bytes, merging.MergeCounts]:
    rounds = JobFolder(job).read_rounds()
    result_lines = (line for m in rounds for p in m["results_paths"] for line in iter_jsonl_lines(as_path(p)))
    failure_lines = [
        line for m in rounds for p in m["failures_paths"] for line in iter_jsonl_lines(as_path(p))
    ]
    failure_lines += list(iter_jsonl_lines(layout.invalid_input_path(job, 0)))
    results, failures = io.BytesIO(), io.BytesIO()
    counts = merge_rows(result_lines, failure_lines, results, failures, partition_rows=64)
    return results.getvalue(), failures.getvalue(), counts


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merging_the_landed_runs_writes_what_merging_the_whole_job_writes(
    tmp_path: Path, seed: int, shuffled: bool
) -> None:
    job = _job(tmp_path, seed, shuffled)
    found = job_runs(job, JobFolder(job).read_rounds())
    assert found is not None
    results, failures = io.BytesIO(), io.BytesIO()
    counts = merge_runs(found, results, failures)

    assert (results.getvalue(), failures.getvalue(), counts) == _merged_whole(job)
    rows = sorted(
        msgspec.json.decode(line)["row"] for line in (results.getvalue() + failures.getvalue()).splitlines()
    )
    assert rows == list(range(1, 301))  # one row per request
    sorted_copy = layout.sorted_run_path(job, 0, layout.results_part(job, 0, "msgbatch_1"))
    assert sorted_copy.exists() is shuffled  # an ordered part is indexed where it is


def test_finalize_of_a_landed_job_copies_rows_without_decoding_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, 4, shuffled=True)
    expected_results, expected_failures, counts = _merged_whole(job)
    assert job_runs(job, JobFolder(job).read_rounds()) is not None  # every file landed (as the gather does)

    def no_decoding(line: bytes) -> Any:
        raise AssertionError(f"finalize decoded a landed line: {line[:60]!r}")

    monkeypatch.setattr(runs, "_decode_keys", no_decoding)
    monkeypatch.setattr(merging, "decode_key", no_decoding)
    manifest = finalize_job(job, max_failure_rate=1)

    assert layout.final_results_path(job).read_bytes() == expected_results
    assert layout.final_failures_path(job).read_bytes() == expected_failures
    assert (manifest["succeeded"], manifest["failed"]) == (counts.succeeded, counts.failed)
    assert manifest["failures_by_error_type"] == dict(sorted(counts.failures_by_error_type.items()))


def test_a_run_made_again_after_a_kill_or_a_rewrite_never_adds_or_loses_a_row(tmp_path: Path) -> None:
    job = _job(tmp_path, 5, shuffled=True)
    part = layout.results_part(job, 0, "msgbatch_1")
    first = land_run(job, 0, part, "results")
    assert first is not None
    # Killed after the index and the sorted copy, before the marker: made again from the part.
    layout.run_marker_path(job, 0, part).unlink()
    again = land_run(job, 0, part, "results")
    assert again is not None and (again.path, again.lines) == (first.path, first.lines)
    # The batch landed again (its part rewritten, other size): its run follows the part.
    part.write_bytes(b"".join(sorted(part.read_bytes().splitlines(keepends=True))[:10]))
    rewritten = land_run(job, 0, part, "results")
    assert rewritten is not None and rewritten.lines == 10

    finalize_job(job, max_failure_rate=1)
    once = layout.final_results_path(job).read_bytes()
    finalize_job(job, max_failure_rate=1)  # finalize cleared and run again
    assert layout.final_results_path(job).read_bytes() == once
    assert once == _merged_whole(job)[0]


def test_rows_without_a_row_number_are_merged_the_old_way(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    _write_round(
        job, 0, {"msgbatch_0": ([{"custom_id": "b", "round": 0}, {"custom_id": "a", "round": 0}], [])}
    )
    assert job_runs(job, JobFolder(job).read_rounds()) is None
    manifest = finalize_job(job)
    assert manifest["succeeded"] == 2
    assert [
        msgspec.json.decode(line)["custom_id"]
        for line in layout.final_results_path(job).read_bytes().splitlines()
    ] == ["a", "b"]


def test_runs_on_an_object_store_merge_as_on_a_local_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto_s3 import bucket_behind_connection, moto_endpoint

    with bucket_behind_connection(moto_endpoint(), "landed-runs", monkeypatch):
        job = _job("s3://aws_default@landed-runs", 6, shuffled=True)
        expected_results, expected_failures, _ = _merged_whole(job)
        finalize_job(job, max_failure_rate=1)
        assert layout.final_results_path(job).read_bytes() == expected_results
        assert layout.final_failures_path(job).read_bytes() == expected_failures
