"""Benchmark: finalize from the runs made as batches landed, against merging the whole job (issue 25).

Run: ``.venv/bin/python bench/bench_finalize_runs.py [--requests 1000000]``

A job folder is written without a server: round 0 in batches of 100,000 rows (1% failed,
retryable), round 1 retrying those failures (half succeed again). Timed: making every file's
run (what the landings do as batches end, spread over the run), finalize from the runs (the
tail), and finalize merging the whole job the old way (what the tail was).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import msgspec

from airflow_batch import layout
from airflow_batch.folder import JobFolder
from airflow_batch.gather import finalizing
from airflow_batch.gather.finalizing import finalize_job
from airflow_batch.gather.runs import job_runs
from airflow_batch.storage import as_path, write_json

BATCH = 100_000
USAGE = {
    "input_tokens": 12,
    "output_tokens": 5,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def result(row: int, round_number: int, batch: str) -> bytes:
    return msgspec.json.encode(
        {
            "custom_id": f"r{row:09d}", "row": row, "batch_id": batch, "round": round_number,
            "model": "claude-haiku-4-5", "text": "Label: positive.", "stop_reason": "end_turn",
            "usage": USAGE,
        }
    ) + b"\n"  # fmt: skip


def failure(row: int, round_number: int, batch: str) -> bytes:
    return msgspec.json.encode(
        {
            "custom_id": f"r{row:09d}", "row": row, "batch_id": batch, "round": round_number,
            "result_type": "errored", "error_type": "overloaded_error", "retryable": True,
        }
    ) + b"\n"  # fmt: skip


def write_round(job: object, number: int, parts: dict[str, tuple[bytes, bytes]]) -> None:
    results_paths, failures_paths = [], []
    for batch, (results, failures) in parts.items():
        for path, data, paths in (
            (layout.results_part(job, number, batch), results, results_paths),  # type: ignore[arg-type]
            (layout.failures_part(job, number, batch), failures, failures_paths),  # type: ignore[arg-type]
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(str(path))
    write_json(
        layout.round_manifest_path(job, number),  # type: ignore[arg-type]
        {
            "round": number,
            "job_dir": str(job),
            "results_paths": results_paths,
            "failures_paths": failures_paths,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    job = as_path(tempfile.mkdtemp(prefix="airflow-batch-runs-") + "/job")
    failed: list[int] = []
    parts = {}
    for start in range(1, args.requests + 1, BATCH):
        batch = f"msgbatch_{start // BATCH:04d}"
        rows = range(start, min(start + BATCH, args.requests + 1))
        parts[batch] = (
            b"".join(result(r, 0, batch) for r in rows if r % 100),
            b"".join(failure(r, 0, batch) for r in rows if not r % 100),
        )
        failed += [r for r in rows if not r % 100]
    write_round(job, 0, parts)
    retry = "msgbatch_retry"
    again = b"".join(failure(r, 1, retry) for r in failed if not r % 200)
    write_round(job, 1, {retry: (b"".join(result(r, 1, retry) for r in failed if r % 200), again)})

    started = time.perf_counter()
    assert job_runs(job, JobFolder(job).read_rounds()) is not None
    landing = time.perf_counter() - started
    started = time.perf_counter()
    manifest = finalize_job(job, max_failure_rate=1)
    from_runs = time.perf_counter() - started
    finalizing.job_runs = lambda job, rounds: None  # type: ignore[assignment]  # the old merge
    started = time.perf_counter()
    finalize_job(job, max_failure_rate=1)
    whole = time.perf_counter() - started
    print(f"{args.requests:,} requests ({manifest['succeeded']:,} succeeded, {manifest['failed']:,} failed)")
    print(f"runs made as batches land (all files): {landing:.1f} s")
    print(f"finalize from the runs (the tail):     {from_runs:.1f} s")
    print(f"finalize merging the whole job:        {whole:.1f} s")


if __name__ == "__main__":
    main()
