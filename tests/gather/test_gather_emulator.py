"""Gathering real result streams from the emulator through the SDK: cuts, kills, re-runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.gather.gathering import gather_round
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.storage import as_path
from airflow_batch.submit.round import SubmitSettings, submit_round


def _requests(n: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i:06d}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": f"Name a colour, {i}."}],
            },
        }
        for i in range(n)
    ]


@pytest.fixture
def submitted_round(sync_client: anthropic.Anthropic, tmp_path: Path) -> Callable[[int, int], RoundManifest]:
    """Submit ``n`` requests in batches of ``per_batch`` and wait until they end; return the manifest."""

    def submit(n: int, per_batch: int) -> RoundManifest:
        manifest = submit_round(
            BatchesApi(sync_client),
            _requests(n),
            job=as_path(str(tmp_path / "job")),
            round_number=0,
            identity=JobIdentity("anthropic_default"),
            settings=SubmitSettings(max_requests_per_batch=per_batch, count_tokens_sample=0),
        )
        deadline = time.monotonic() + 60
        for record in manifest["batches"]:
            while sync_client.messages.batches.retrieve(record["batch_id"]).processing_status != "ended":
                assert time.monotonic() < deadline, "batches did not end"
                time.sleep(0.05)
        return manifest

    return submit


def _gathered_ids(manifest: RoundManifest) -> list[str]:
    job = as_path(manifest["job_dir"])
    ids: list[str] = []
    for folder in ("results", "failures"):
        for part in sorted((layout.round_dir(job, 0) / folder).glob("*.jsonl")):
            ids.extend(msgspec.json.decode(line)["custom_id"] for line in part.read_bytes().splitlines())
    return ids


def _leftovers(manifest: RoundManifest) -> list[str]:
    job = as_path(manifest["job_dir"])
    return [
        p.name
        for folder in ("results", "failures")
        for p in (layout.round_dir(job, 0) / folder).glob(".*.tmp")
    ]


def test_results_stream_cut_mid_way_is_downloaded_again_and_nothing_is_lost(
    emulator: EmulatorProcess,
    sync_client: anthropic.Anthropic,
    submitted_round: Callable[[int, int], RoundManifest],
) -> None:
    manifest = submitted_round(3_000, 3_000)
    emulator.configure(http_fault_rate=1.0, http_fault_statuses=["drop"], http_fault_budget=2)

    gathered = gather_round(BatchesApi(sync_client), manifest)

    assert emulator.configure()["http_fault_budget"] == 0  # both cuts happened
    ids = _gathered_ids(manifest)
    assert sorted(ids) == [f"req-{i:06d}" for i in range(3_000)]
    assert gathered["result_counts"]["succeeded"] == 3_000
    assert gathered["result_counts"]["missing"] == 0
    sidecar = layout.gather_stats_path(as_path(manifest["job_dir"]), 0, manifest["batches"][0]["batch_id"])
    stats = json.loads(sidecar.read_text())
    assert stats["attempts"] == 3
    assert _leftovers(manifest) == []


_CHILD = """
import json, sys, logging
import anthropic
from airflow_batch.api import BatchesApi
from airflow_batch.gather.gathering import gather_round
logging.disable(logging.CRITICAL)
manifest = json.load(open(sys.argv[1]))
client = anthropic.Anthropic(base_url=sys.argv[2], api_key="test-key")
gather_round(BatchesApi(client), manifest)
"""


def test_gather_killed_mid_stream_then_run_again_has_no_duplicate_and_no_missing_row(
    emulator: EmulatorProcess,
    sync_client: anthropic.Anthropic,
    submitted_round: Callable[[int, int], RoundManifest],
    tmp_path: Path,
) -> None:
    n = 20_000
    manifest = submitted_round(n, 5_000)
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(json.dumps(manifest))
    results_dir = Path(
        str(layout.round_dir(as_path(manifest["job_dir"]), 0) / "results").removeprefix("file://")
    )

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(manifest_file), emulator.base_url],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + 60
        # Kill as soon as a part file is being written: the child is mid-stream.
        while not any(p.stat().st_size > 0 for p in results_dir.glob(".*.tmp") if p.exists()):
            assert child.poll() is None, "the gather finished before it could be killed"
            assert time.monotonic() < deadline, "the gather never started writing"
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    sidecars = list(results_dir.glob("*.stats.json"))
    assert len(sidecars) < len(manifest["batches"]), "the kill came after the gather had finished"

    gathered = gather_round(BatchesApi(sync_client), manifest)

    ids = _gathered_ids(manifest)
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {f"req-{i:06d}" for i in range(n)}
    assert gathered["result_counts"]["succeeded"] == n
    assert _leftovers(manifest) == []
