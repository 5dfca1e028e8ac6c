"""The ledger's fence on a local disk: a writer that lost the round finds out at its next save."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_batch import layout
from airflow_batch.exceptions import LedgerFencedOutError
from airflow_batch.storage import FenceLost, as_path, read_json, replace_json_fenced
from airflow_batch.submit.ledger import Ledger, LedgerStore


def _ledger(job: str) -> Ledger:
    return Ledger(job_dir=job, round=0, fingerprint="f", conn_id="anthropic_default")


def test_a_writer_that_lost_the_ledger_cannot_save_over_the_other(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    LedgerStore(job, 0).save(_ledger(str(job)))
    first, second = LedgerStore(job, 0), LedgerStore(job, 0)
    mine, theirs = first.load(), second.load()
    assert mine is not None and theirs is not None and mine.generation == theirs.generation == 1

    theirs.batches[0] = {"batch_id": "msgbatch_theirs"}
    second.save(theirs)
    mine.batches[0] = {"batch_id": "msgbatch_mine"}
    with pytest.raises(LedgerFencedOutError, match="another writer saved the ledger"):
        first.save(mine)

    stored = read_json(layout.ledger_path(job, 0))
    assert stored["batches"] == {"0": {"batch_id": "msgbatch_theirs"}}, "the loser overwrote nothing"
    assert stored["generation"] == 2
    again = first.load()  # reading again makes it a writer of the current version
    assert again is not None
    again.batches[1] = {"batch_id": "msgbatch_next"}
    first.save(again)
    assert read_json(layout.ledger_path(job, 0))["generation"] == 3


def test_a_new_ledger_after_archive_is_not_mistaken_for_the_old_one(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    LedgerStore(job, 0).save(_ledger(str(job)))
    stale = LedgerStore(job, 0)
    old = stale.load()
    assert old is not None
    fresh_store = LedgerStore(job, 0)
    fresh_store.load()
    fresh_store.archive()
    fresh = _ledger(str(job))
    fresh.created_at = "2026-12-05T00:00:00+00:00"
    fresh_store.save(fresh)  # generation 1 again, but another ledger
    with pytest.raises(LedgerFencedOutError):
        stale.save(old)


def test_a_first_save_refuses_when_another_writer_created_the_ledger_meanwhile(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    first, second = LedgerStore(job, 0), LedgerStore(job, 0)
    assert first.load() is None and second.load() is None
    second.save(_ledger(str(job)))
    with pytest.raises(LedgerFencedOutError):
        first.save(_ledger(str(job)))


def _increment(path: str, times: int) -> int:
    """Add 1 to the counter ``times`` times, reading again after each lost race; return the losses."""
    target = as_path(path)
    lost = 0
    done = 0
    while done < times:
        current = read_json(target) if target.exists() else {"count": 0}
        try:
            replace_json_fenced(
                target,
                {"count": current["count"] + 1},
                lambda stored, seen=current: (stored or {"count": 0}) == seen,
            )
            done += 1
        except FenceLost:
            lost += 1
    return lost


def _pool(processes: int) -> Any:
    """Return a pool of fresh processes that start without importing Airflow each.

    Not fork: a fork of a test process with threads running (fsspec's IO loop, logging) can
    inherit a held lock and hang its children. Forkserver: a fresh single-threaded server imports
    what the workers run (so Airflow) once and each worker forks from it, where spawn paid seconds
    a worker. The preload names installed modules: Python 3.11's forkserver ignores the parent's
    ``sys.path`` and skips a module it cannot import, and this one is importable only from the
    test directories pytest put on the path.
    """
    context = multiprocessing.get_context("forkserver")
    modules = ["folder", "history", "layout", "storage", "submit.ledger"]
    context.set_forkserver_preload([f"airflow_batch.{module}" for module in modules])
    return context.Pool(processes)


def test_fenced_writes_from_several_processes_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "counter.json")
    with _pool(4) as pool:
        losses = pool.starmap(_increment, [(path, 20)] * 4)
    # Unfenced read-modify-writes from four processes lose increments; fenced ones read again instead.
    assert read_json(as_path(path))["count"] == 80, f"every increment counted once ({sum(losses)} retries)"


def _finish_jobs(path: str, first: int, count: int) -> None:
    from airflow_batch.folder import JobFolder
    from airflow_batch.history import record_run

    for n in range(first, first + count):
        folder = JobFolder(f"{os.path.dirname(path)}/job-{n}")
        folder.write_spec({"history_path": path})
        usage = {"output_tokens": 5}
        manifest = {"job_dir": str(folder), "finalized_at": "t", "succeeded": 1, "usage": usage}
        record_run(folder, manifest)  # type: ignore[arg-type]


def test_a_history_shared_by_mapped_finalizes_keeps_every_run(tmp_path: Path) -> None:
    from airflow_batch.folder import read_task_history
    from airflow_batch.history import KEEP

    path = str(tmp_path / "history.json")
    with _pool(4) as pool:
        pool.starmap(_finish_jobs, [(path, 0, 3), (path, 3, 3), (path, 6, 3), (path, 9, 3)])
    kept = {entry["job_dir"] for entry in read_task_history(as_path(path))}
    assert len(kept) == 12 <= KEEP, "every run of the four finalizes kept"
