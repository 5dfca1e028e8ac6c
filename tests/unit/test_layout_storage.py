from __future__ import annotations

from pathlib import Path

import pytest

from airflow_batch import layout
from airflow_batch.storage import as_path, atomic_writer, iter_jsonl, read_json, write_json


def test_job_dirs_of_runs_tasks_and_map_indexes_never_collide(tmp_path: Path) -> None:
    base = str(tmp_path)
    dirs = {
        str(layout.job_dir(base, "dag", "manual__2026-01-01T00:00:00+00:00", "job.submit")),
        str(layout.job_dir(base, "dag", "backfill__2026-01-01T00:00:00+00:00", "job.submit")),
        str(layout.job_dir(base, "dag", "manual__2026-01-01T00:00:00+00:00", "other.submit")),
        str(layout.job_dir(base, "dag", "manual__2026-01-01T00:00:00+00:00", "job.submit", 0)),
        str(layout.job_dir(base, "dag", "manual__2026-01-01T00:00:00+00:00", "job.submit", 1)),
    }
    assert len(dirs) == 5
    assert all(":" not in d.removeprefix("file://") and "+" not in d for d in dirs)


def test_round_files_sit_under_their_round(tmp_path: Path) -> None:
    job = layout.job_dir(str(tmp_path), "d", "r", "t")
    assert str(layout.chunk_path(job, 1, 7)).endswith("/round-1/chunks/chunk-00007.jsonl")
    assert str(layout.results_part(job, 0, "msgbatch_1")).endswith("/round-0/results/msgbatch_1.jsonl")
    assert str(layout.final_results_path(job)).endswith("/t/results.jsonl")


def test_bare_local_paths_become_file_uris(tmp_path: Path) -> None:
    assert as_path(str(tmp_path)).protocol in ("file", "local", ("file", "local"))
    assert str(as_path(str(tmp_path))).startswith("file://")


def test_atomic_writer_leaves_nothing_behind_when_the_block_fails(tmp_path: Path) -> None:
    target = as_path(str(tmp_path)) / "out" / "rows.jsonl"
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b'{"a": 1}\n')
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_writer_publishes_the_whole_file_on_success(tmp_path: Path) -> None:
    target = as_path(str(tmp_path)) / "rows.jsonl"
    with atomic_writer(target) as handle:
        handle.write(b'{"a": 1}\n\n{"a": 2}\n')
    assert [row["a"] for row in iter_jsonl(target)] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_json_round_trip(tmp_path: Path) -> None:
    target = as_path(str(tmp_path)) / "m.json"
    write_json(target, {"round": 2, "batches": [{"batch_id": "msgbatch_1"}]})
    assert read_json(target) == {"round": 2, "batches": [{"batch_id": "msgbatch_1"}]}
