"""A long prompt shared by the requests of a round is stored once, and sent whole, byte for byte."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import ChunkFileError
from airflow_batch.manifest import JobIdentity
from airflow_batch.storage import as_path
from airflow_batch.submit import chunk_files
from airflow_batch.submit.chunk_files import ChunkBody
from airflow_batch.submit.chunking import PreparedRound, prepare_chunks
from airflow_batch.submit.creating import continue_round
from airflow_batch.submit.queue import QueueWaitNeeded
from airflow_batch.submit.round import SubmitSettings, submit_round
from airflow_batch.submit.shared_prompts import iter_sent_lines

MODEL = "claude-haiku-4-5"
#: About 47 KB, as in the job that kept 1.4 GB of chunk files.
SYSTEM = "You are a meticulous product analyst. Follow the house style guide to the letter. " * 580
DOCUMENT = "Quarterly report, section 4: revenue by region and the notes to it. " * 40


def lines(n: int, *, cached_document: bool = False) -> list[bytes]:
    """Return ``n`` request lines sharing SYSTEM (and, when asked, a cached document block)."""
    encode = msgspec.json.Encoder().encode
    out = []
    for i in range(n):
        content: Any = f"Describe product {i}."
        if cached_document:
            document = {"type": "text", "text": DOCUMENT, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            content = [document, {"type": "text", "text": content}]
        params = {
            "model": MODEL,
            "max_tokens": 16,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": content}],
        }
        out.append(encode({"custom_id": f"p-{i}", "params": params}))
    return out


def prepare(rows: list[bytes], staging: Path, max_requests: int = 20) -> PreparedRound:
    prepared = prepare_chunks(
        rows, staging=as_path(str(staging)), max_requests=max_requests, max_bytes=255_000_000
    )
    assert not prepared.fatal, prepared.report.message(len(rows))
    return prepared


def chunk_file(prepared: PreparedRound, index: int) -> Any:
    return prepared.staging / f"chunk-{index:05d}.jsonl"


@pytest.fixture
def no_sharing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn sharing off: every line is stored whole, as before sharing existed."""
    monkeypatch.setattr(chunk_files, "MIN_SHARED_BYTES", 1 << 40)


@pytest.mark.parametrize("cached_document", [False, True], ids=["system", "system and cached document"])
def test_a_shared_long_prompt_is_stored_once_and_every_body_is_the_requests_as_given(
    tmp_path: Path, cached_document: bool
) -> None:
    rows = lines(50, cached_document=cached_document)
    prepared = prepare(rows, tmp_path / "staging")

    stored = sum(Path(str(chunk_file(prepared, c.index))[7:]).stat().st_size for c in prepared.chunks)
    assert stored < sum(len(line) + 1 for line in rows) / 20
    shared = sorted(p.name for p in (tmp_path / "staging" / layout.SHARED_PROMPTS_DIR).iterdir())
    assert len(shared) == (2 if cached_document else 1)
    assert [c.requests for c in prepared.chunks] == [20, 20, 10]
    for chunk in prepared.chunks:
        sent = rows[chunk.index * 20 : (chunk.index + 1) * 20]
        body = b"".join(ChunkBody(chunk_file(prepared, chunk.index), chunk.bytes, chunk.shared))
        assert body == b'{"requests":[' + b",".join(sent) + b"]}"
        assert len(body) == chunk.bytes
        assert list(iter_sent_lines(chunk_file(prepared, chunk.index))) == sent


def test_sharing_leaves_the_round_fingerprint_and_the_body_sizes_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = lines(30)
    shared = prepare(rows, tmp_path / "shared")
    monkeypatch.setattr(chunk_files, "MIN_SHARED_BYTES", 1 << 40)
    whole = prepare(rows, tmp_path / "whole")

    assert shared.fingerprint == whole.fingerprint
    assert [(c.requests, c.bytes) for c in shared.chunks] == [(c.requests, c.bytes) for c in whole.chunks]
    assert all(c.shared for c in shared.chunks) and not any(c.shared for c in whole.chunks)


def test_a_line_already_holding_the_reference_bytes_is_stored_whole(tmp_path: Path) -> None:
    # A tool's input schema may hold any object, even one shaped like a reference: never expanded.
    schema = {"type": "object", "properties": {"x": {"$shared": "0" * 64}}}
    trap = msgspec.json.decode(lines(1)[0])
    trap["custom_id"] = "trap"
    trap["params"]["tools"] = [{"name": "lookup", "input_schema": schema}]
    rows = [*lines(3), msgspec.json.encode(trap)]
    prepared = prepare(rows, tmp_path / "staging")

    stored = Path(str(chunk_file(prepared, 0))[7:]).read_bytes().splitlines()
    assert stored[-1] == rows[-1]  # whole, though it shares the system prompt
    assert stored[-2] != rows[-2] and len(stored[-2]) < 300  # its neighbour is compacted
    assert list(iter_sent_lines(chunk_file(prepared, 0))) == rows


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_a_missing_or_damaged_shared_prompt_fails_the_body_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    prepared = prepare(lines(5), tmp_path / "staging")
    chunk = prepared.chunks[0]
    path = layout.shared_prompt_path(prepared.staging, chunk.shared[0])
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b'"another prompt"')

    with pytest.raises(ChunkFileError, match=f"{path}.*{damage}"):
        ChunkBody(chunk_file(prepared, 0), chunk.bytes, chunk.shared)
    with pytest.raises(ChunkFileError, match=damage):
        list(iter_sent_lines(chunk_file(prepared, 0)))


# ---- against the emulator, with the real SDK -----------------------------------------------


def submit(client: anthropic.Anthropic, rows: list[bytes], job: Path, **settings: Any) -> Any:
    settings.setdefault("count_tokens_sample", 0)
    return submit_round(
        BatchesApi(client), rows, job=as_path(str(job)), round_number=0,
        identity=JobIdentity("anthropic_default"), settings=SubmitSettings(**settings),
    )  # fmt: skip


def answers(client: anthropic.Anthropic, manifest: Any) -> dict[str, Any]:
    """Return each request's answer text and usage once every batch of the round ended."""
    ids = [b["batch_id"] for b in manifest["batches"]]
    deadline = time.monotonic() + 60
    while any(client.messages.batches.retrieve(i).processing_status != "ended" for i in ids):
        assert time.monotonic() < deadline, "batches did not end within 60 s"
    found = {}
    for batch_id in ids:
        for result in client.messages.batches.results(batch_id):
            assert result.result.type == "succeeded"
            message, usage = result.result.message, result.result.message.usage
            # The second job reads the first one's prompt cache: compare all input tokens, however split.
            prompt = (
                usage.input_tokens
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
            found[result.custom_id] = ([b.model_dump() for b in message.content], prompt, usage.output_tokens)
    return found


def test_the_emulator_answers_requests_sent_from_shared_prompts_as_it_answers_them_whole(
    emulator: EmulatorProcess,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = lines(12, cached_document=True)
    before = emulator.batch_count()
    shared = submit(sync_client, rows, tmp_path / "shared", max_requests_per_batch=5)
    assert any((tmp_path / "shared" / "round-0" / "chunks" / layout.SHARED_PROMPTS_DIR).iterdir())
    with monkeypatch.context() as whole_lines:
        whole_lines.setattr(chunk_files, "MIN_SHARED_BYTES", 1 << 40)
        whole = submit(sync_client, rows, tmp_path / "whole", max_requests_per_batch=5)
    assert not (tmp_path / "whole" / "round-0" / "chunks" / layout.SHARED_PROMPTS_DIR).exists()
    assert emulator.batch_count() - before == 6

    # The emulator's answer and usage derive from the request it parsed (model, system, messages).
    got, expected = answers(sync_client, shared), answers(sync_client, whole)
    assert got == expected and len(got) == 12
    assert shared["fingerprint"] == whole["fingerprint"]

    again = submit(sync_client, rows, tmp_path / "shared", max_requests_per_batch=5)
    assert [b["batch_id"] for b in again["batches"]] == [b["batch_id"] for b in shared["batches"]]
    assert emulator.batch_count() - before == 6  # re-attached: nothing created twice


def test_a_damaged_shared_prompt_stops_the_next_wave_before_any_create_naming_the_file(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    emulator.configure(throughput=0)
    job = tmp_path / "job"
    settings = SubmitSettings(max_requests_per_batch=5, max_queued_requests=5, count_tokens_sample=0)
    with pytest.raises(QueueWaitNeeded):
        submit_round(
            BatchesApi(sync_client), lines(12), job=as_path(str(job)), round_number=0,
            identity=JobIdentity("anthropic_default"), settings=settings,
        )  # fmt: skip
    assert emulator.batch_count() == 1
    (damaged,) = (job / "round-0" / "chunks" / layout.SHARED_PROMPTS_DIR).iterdir()
    damaged.write_bytes(b'"not the prompt"')

    with pytest.raises(ChunkFileError, match=f"{damaged.name}.*damaged"):
        continue_round(
            BatchesApi(sync_client), job=as_path(str(job)), round_number=0,
            identity=JobIdentity("anthropic_default"), settings=settings, queued=0,
        )  # fmt: skip
    assert emulator.batch_count() == 1


def test_a_retry_round_resends_the_original_requests_whole(tmp_path: Path) -> None:
    from airflow_batch.submit.retrying import original_requests

    rows = lines(6)
    prepared = prepare(rows, tmp_path / "staging")
    job = as_path(str(tmp_path / "job"))
    chunk = layout.chunk_path(job, 0, 0)
    chunk.parent.mkdir(parents=True)
    chunk_file(prepared, 0).rename(chunk)
    (prepared.staging / layout.SHARED_PROMPTS_DIR).rename(chunk.parent / layout.SHARED_PROMPTS_DIR)
    failures = layout.failures_part(job, 0, "batch-1")
    failures.parent.mkdir(parents=True)
    row = {"row": 0, "batch_id": "batch-1", "round": 0, "result_type": "expired", "error_type": None}
    failures.write_bytes(
        b"".join(
            msgspec.json.encode(
                {**row, "custom_id": f"p-{i}", "message": "x", "request_id": None, "retryable": True}
            )
            + b"\n"
            for i in (1, 4)
        )
    )
    manifest = {
        "job_dir": str(job),
        "round": 0,
        "batches": [{"batch_id": "batch-1", "chunk": 0, "chunk_path": str(chunk)}],
    }

    assert [c.request for c in original_requests(manifest)] == [rows[1], rows[4]]
