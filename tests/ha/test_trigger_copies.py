"""Two copies of one trigger at once (what a triggerer that stalled and resumed leaves behind).

Real emulator, real SDK, the triggers' own ``run()``: no Airflow deployment (the chaos tests in
``tests/distributed`` stop real triggerers).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest
from deadlines import until_sync

from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.gather.gathering import GatherConfig, gather_round
from airflow_batch.manifest import JobIdentity
from airflow_batch.spec.job_spec import JobSpec, write_job_spec
from airflow_batch.storage import as_path, iter_jsonl, iter_jsonl_lines
from airflow_batch.submit.creating import manifest_from_ledger
from airflow_batch.submit.ledger import LedgerStore
from airflow_batch.submit.queue import QueueWaitNeeded
from airflow_batch.submit.round import SubmitSettings, submit_round
from airflow_batch.triggers.queue import QueueRoomTrigger

IDENTITY = JobIdentity("anthropic_default", (), None)


def _write_requests(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for i in range(n):
            params = {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Item {i}"}],
            }
            out.write(msgspec.json.encode({"custom_id": f"req-{i:05d}", "params": params}) + b"\n")


async def _first_event(trigger: QueueRoomTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger yielded no event")


def _first_wave(base_url: str, source: Path, job: str, settings: SubmitSettings) -> QueueWaitNeeded:
    # What the submit does first: the spec it writes is where the trigger reads the wave settings.
    write_job_spec(as_path(job), JobSpec(IDENTITY, settings), bound=False)
    with BatchesApi(anthropic.Anthropic(base_url=base_url, api_key="k")) as api:
        try:
            submit_round(
                api, iter_jsonl_lines(as_path(str(source))), job=as_path(job), round_number=0,
                identity=IDENTITY, settings=settings,
            )  # fmt: skip
        except QueueWaitNeeded as pause:
            return pause
    raise AssertionError("the round fit the queue at once")


@pytest.mark.usefixtures("airflow_db")
def test_two_copies_of_the_queue_trigger_create_one_batch_per_chunk(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(throughput=2000, latency_ms=150)  # slow creates: the copies' creates overlap
    source = tmp_path / "requests.jsonl"
    _write_requests(source, 1000)
    job = str(tmp_path / "job")
    settings = SubmitSettings(max_requests_per_batch=100, count_tokens_sample=0, max_queued_requests=300)
    pause = _first_wave(emulator.base_url, source, job, settings)
    assert emulator.batch_count() == 3

    kwargs = {
        "identity": {"conn_id": anthropic_conn}, "batch_ids": pause.batch_ids, "wait": pause.wait.to_json(),
        "started_at": time.time(), "poll_interval": 0.2, "job": job,
    }  # fmt: skip
    copies = [QueueRoomTrigger(**kwargs), QueueRoomTrigger(**kwargs)]  # one deferral, two triggerers

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.wait_for(asyncio.gather(*(_first_event(c) for c in copies)), 240))

    events = asyncio.run(both())

    assert emulator.batch_count() == 10, "one batch per chunk, however the two copies interleaved"
    ledger = LedgerStore(as_path(job), 0).load()
    assert ledger is not None and len(ledger.batches) == 10 and not ledger.intents
    recorded = {str(chunk): entry["batch_id"] for chunk, entry in ledger.batches.items()}
    assert len(set(recorded.values())) == 10
    for event in events:  # each copy fires once every chunk has its batch, naming the same batches
        assert event["status"] == "created", event
        assert event["batches"] == recorded

    # Gathered: every request exactly once, no batch outside the ledger (no slow calls needed now).
    emulator.configure(latency_ms=0)
    submitted = manifest_from_ledger(as_path(job), ledger, IDENTITY)
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="k")) as api:
        until_sync(
            lambda: all(
                api.retrieve(b["batch_id"]).processing_status == "ended" for b in submitted["batches"]
            ),
            deadline=120,
        )
        manifest = gather_round(api, submitted, config=GatherConfig())
    assert "strays" not in manifest
    ids = [row["custom_id"] for path in manifest["results_paths"] for row in iter_jsonl(as_path(path))]
    assert len(ids) == 1000 and len(set(ids)) == 1000


@pytest.mark.parametrize("stray_state", ["ended", "in_progress"])
def test_a_batch_outside_the_ledger_is_found_before_gather_cancelled_and_priced(
    emulator: EmulatorProcess, tmp_path: Path, stray_state: str
) -> None:
    emulator.configure(throughput=5000)
    source = tmp_path / "requests.jsonl"
    _write_requests(source, 200)
    job = str(tmp_path / "job")
    settings = SubmitSettings(max_requests_per_batch=100, count_tokens_sample=0)
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key="k")
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="k")) as api:
        submitted = submit_round(
            api, iter_jsonl_lines(as_path(str(source))), job=as_path(job), round_number=0,
            identity=IDENTITY, settings=settings,
        )  # fmt: skip
    # A writer that stalled after saving its intent for chunk 1 was taken over; the other writer
    # created chunk 1's batch, and the stalled one's create went out when it resumed.
    store = LedgerStore(as_path(job), 0)
    ledger = store.load()
    assert ledger is not None
    ledger.interrupted.append(
        {"chunk": 1, "started_at": ledger.batches[1]["recorded_at"], "requests": 100, "writer": "stalled"}
    )
    store.save(ledger)
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="k")) as api:
        until_sync(
            lambda: all(
                api.retrieve(b["batch_id"]).processing_status == "ended" for b in submitted["batches"]
            ),
            deadline=60,
        )
        if stray_state == "in_progress":
            emulator.configure(start_delay_seconds=600)
        chunk_1 = [msgspec.json.decode(line) for line in source.read_bytes().splitlines()[100:]]
        stray = client.messages.batches.create(requests=chunk_1)
        if stray_state == "ended":
            until_sync(lambda: api.retrieve(stray.id).processing_status == "ended", deadline=60)
        manifest = gather_round(api, submitted, config=GatherConfig())
        again = gather_round(api, submitted, config=GatherConfig())  # a re-run counts it once

    (found,) = manifest["strays"]
    assert found["batch_id"] == stray.id and found["chunk"] == 1
    assert found["chunk_batch"] == submitted["batches"][1]["batch_id"]
    if stray_state == "ended":
        assert found["action"] == "ended before it was found"
        assert found["result_counts"] == {"succeeded": 100}
        assert found["cost"]["batch_usd"] > 0
    else:
        assert found["action"] == "canceled"
        assert client.messages.batches.retrieve(stray.id).cancel_initiated_at is not None
        assert found["result_counts"] == {"canceled": 100}
    batches_only = manifest["cost"]["batch_usd"] - found["cost"]["batch_usd"]
    assert batches_only == pytest.approx(sum(_row_costs(manifest)), abs=1e-9)
    assert again["strays"] == manifest["strays"] and again["cost"] == manifest["cost"]
    ids = [row["custom_id"] for path in manifest["results_paths"] for row in iter_jsonl(as_path(path))]
    assert len(ids) == 200 and len(set(ids)) == 200, "the stray's rows are not results"


def _row_costs(manifest: dict[str, Any]) -> list[float]:
    """Return each result row's cost at Haiku 4.5's batch prices ($0.50 / $2.50 per MTok), from its usage."""
    costs = []
    for path in manifest["results_paths"]:
        for row in iter_jsonl(as_path(path)):
            usage = row["usage"]
            costs.append((usage["input_tokens"] * 0.50 + usage["output_tokens"] * 2.50) / 1e6)
    return costs
