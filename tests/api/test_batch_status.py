"""The API seam answers with the package's own types, from the sync and the async client alike.

Against the real emulator over loopback with the real SDK clients: a batch read through either
client is the same frozen :class:`BatchStatus`; a batch the API does not have raises
:class:`BatchNotFoundError`; a body that is not a batch (a real HTTP server on loopback that
answers with something else) raises :class:`UnreadableAnswerError`, never "not found".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import msgspec
import pytest

from airflow_batch.api import AsyncBatchesApi, BatchesApi, BatchStatus
from airflow_batch.api.retry import RetryPolicy
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import BatchNotFoundError, UnreadableAnswerError

QUICK = RetryPolicy(budget_seconds=5.0)


def _body(count: int) -> bytes:
    requests = [
        {
            "custom_id": f"r-{index}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"hello {index}"}],
            },
        }
        for index in range(count)
    ]
    return msgspec.json.encode({"requests": requests})


async def test_sync_and_async_clients_answer_the_same_own_frozen_batch_status(
    emulator: EmulatorProcess,
) -> None:
    body = _body(3)
    with BatchesApi(anthropic.Anthropic(api_key="k", base_url=emulator.base_url), policy=QUICK) as api:
        created = api.create([body], len(body), what="create a batch")
        assert created.created_at is not None and not created.adopted
        synced = api.retrieve(created.id)
        listed = next(batch for batch in api.recent_batches() if batch.id == created.id)
        async_api = AsyncBatchesApi(
            anthropic.AsyncAnthropic(api_key="k", base_url=emulator.base_url), policy=QUICK
        )
        try:
            awaited = await async_api.retrieve(created.id)
            page = await async_api.list_page(None)
            canceled = await async_api.cancel(created.id)
        finally:
            await async_api.close()
    for status in (synced, listed, awaited, *[b for b in page.data if b.id == created.id], canceled):
        assert type(status) is BatchStatus
        assert status.id == created.id
        assert status.request_counts.total == 3
        assert isinstance(status.created_at, datetime) and status.created_at.tzinfo is not None
        assert status.created_at.isoformat() == created.created_at
    assert (synced.processing_status, synced.request_counts) == (
        awaited.processing_status,
        awaited.request_counts,
    )
    assert canceled.processing_status in ("canceling", "ended")
    with pytest.raises(AttributeError):
        synced.processing_status = "ended"  # type: ignore[misc]
    record = synced.record()
    assert record["request_counts"] == msgspec.structs.asdict(synced.request_counts)
    assert record["processing_status"] == synced.processing_status


async def test_a_batch_the_api_does_not_have_is_not_found_from_either_client(
    emulator: EmulatorProcess,
) -> None:
    sync_api = BatchesApi(anthropic.Anthropic(api_key="k", base_url=emulator.base_url), policy=QUICK)
    with sync_api, pytest.raises(BatchNotFoundError, match="msgbatch_nope") as sync_error:
        sync_api.retrieve("msgbatch_nope")
    async_api = AsyncBatchesApi(
        anthropic.AsyncAnthropic(api_key="k", base_url=emulator.base_url), policy=QUICK
    )
    try:
        with pytest.raises(BatchNotFoundError, match="msgbatch_nope") as async_error:
            await async_api.retrieve("msgbatch_nope")
    finally:
        await async_api.close()
    assert sync_error.value.status_code == async_error.value.status_code == 404
    assert not sync_error.value.transient


class _NotABatch(BaseHTTPRequestHandler):
    """Answers every GET with 200 and a JSON body that is no batch (a proxy page, another API)."""

    def do_GET(self) -> None:
        body = b'{"type":"message","content":[]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def not_a_batch_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotABatch)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_a_body_that_is_not_a_batch_is_unreadable_not_not_found(not_a_batch_server: str) -> None:
    sync_api = BatchesApi(anthropic.Anthropic(api_key="k", base_url=not_a_batch_server), policy=QUICK)
    with (
        sync_api,
        pytest.raises(UnreadableAnswerError, match=r"retrieve batch msgbatch_1: .*not a batch") as sync_error,
    ):
        sync_api.retrieve("msgbatch_1")
    async_api = AsyncBatchesApi(
        anthropic.AsyncAnthropic(api_key="k", base_url=not_a_batch_server), policy=QUICK
    )
    try:
        with pytest.raises(UnreadableAnswerError, match="not a batch list"):
            await async_api.list_page(None)
    finally:
        await async_api.close()
    assert not isinstance(sync_error.value, BatchNotFoundError)
    assert not sync_error.value.transient
