"""The Message Batches API surface of the emulator, driven by the real SDK over loopback."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import anthropic
import httpx
import pytest
from emulator_helpers import request, tokens, wait_ended

from airflow_batch.emulator.process import EmulatorProcess


def test_create_retrieve_and_results_with_sync_client(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[request(f"r{i}", f"text {i}") for i in range(3)])

    assert batch.id.startswith("msgbatch_")
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3
    assert batch.results_url is None
    assert batch.created_at.tzinfo is not None
    assert batch.expires_at - batch.created_at == timedelta(hours=24)
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.succeeded == 3
    assert ended.request_counts.processing == 0
    assert ended.ended_at is not None and ended.ended_at >= ended.created_at
    assert ended.archived_at is None and ended.cancel_initiated_at is None

    results = list(client.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == ["r0", "r1", "r2"]
    message = results[0].result.message  # type: ignore[union-attr]
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.model == "claude-haiku-4-5"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert "text 0" in message.content[0].text  # type: ignore[union-attr]
    assert message.usage.input_tokens == tokens("text 0")


async def test_full_cycle_with_async_client(aclient: anthropic.AsyncAnthropic, emu: EmulatorProcess) -> None:
    emu.configure(throughput=0)
    held = await aclient.messages.batches.create(requests=[request("held")])
    canceling = await aclient.messages.batches.cancel(held.id)
    assert canceling.processing_status == "canceling"
    emu.configure(throughput=1_000_000_000)
    batch = await aclient.messages.batches.create(requests=[request("a"), request("b")])

    deadline = time.monotonic() + 15
    while (batch := await aclient.messages.batches.retrieve(batch.id)).processing_status != "ended":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    results = [r async for r in await aclient.messages.batches.results(batch.id)]
    assert [r.result.type for r in results] == ["succeeded", "succeeded"]

    listed = [b.id async for b in aclient.messages.batches.list()]
    assert listed == [batch.id, held.id]
    deleted = await aclient.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        await aclient.messages.batches.retrieve(batch.id)
    count = await aclient.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "12345678"}]
    )
    assert count.input_tokens == 2


def test_list_is_newest_first_and_pages_both_ways(client: anthropic.Anthropic) -> None:
    ids = [client.messages.batches.create(requests=[request("x")]).id for _ in range(5)]
    newest_first = ids[::-1]

    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert (page.first_id, page.last_id, page.has_more) == (newest_first[0], newest_first[1], True)
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # auto-paging
    older = client.messages.batches.list(limit=2, after_id=newest_first[3])
    assert [b.id for b in older.data] == newest_first[4:]
    assert older.has_more is False
    newer = client.messages.batches.list(limit=2, before_id=newest_first[3])
    assert [b.id for b in newer.data] == newest_first[1:3]
    assert newer.has_more is True
    backwards = client.messages.batches.list(limit=1, before_id=newest_first[4])
    assert [b.id for b in backwards] == newest_first[3::-1]  # each page is newer than the last
    assert client.messages.batches.list().has_more is False


@pytest.mark.parametrize("limit", [0, 1001])
def test_list_limit_out_of_range_is_rejected(client: anthropic.Anthropic, limit: int) -> None:
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        client.messages.batches.list(limit=limit)


def test_cancel_goes_canceling_then_ended_with_rest_canceled(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(throughput=0, cancel_delay_seconds=0.2)
    batch = client.messages.batches.create(requests=[request(f"c{i}") for i in range(4)])

    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.request_counts.processing == 4
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.canceled == 4
    assert ended.request_counts.processing == 0
    assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}
    again = client.messages.batches.cancel(batch.id)
    assert again.processing_status == "ended"


def test_cancel_keeps_requests_done_before_it(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    # Processing goes on while the batch is canceling (0.5 s here, 100 requests/s): some requests
    # are done by the time the cancel ends, whatever the machine's speed, and the rest are canceled.
    emu.configure(throughput=100, cancel_delay_seconds=0.5)
    batch = client.messages.batches.create(requests=[request(f"c{i:03d}") for i in range(200)])

    client.messages.batches.cancel(batch.id)
    counts = wait_ended(client, batch.id).request_counts
    assert counts.succeeded > 0 and counts.canceled > 0
    assert counts.succeeded + counts.canceled == 200
    types = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert types == ["succeeded"] * counts.succeeded + ["canceled"] * counts.canceled


def test_delete_only_once_ended(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(throughput=0)
    batch = client.messages.batches.create(requests=[request("d")])

    with pytest.raises(anthropic.BadRequestError, match="cannot be deleted while it is in_progress"):
        client.messages.batches.delete(batch.id)
    client.messages.batches.cancel(batch.id)
    wait_ended(client, batch.id)
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.delete(batch.id)


def test_results_of_every_type_parse_in_the_sdk(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(
        error_types={"overloaded_error": 0.2, "invalid_request_error": 0.1}, expire_rate=0.1, seed=7
    )
    requests = [request(f"m{i:03d}") for i in range(200)]
    requests.append(request("bad-model", model="gpt-4"))
    requests.append(request("unserved-model", model="claude-haiku-9-9"))
    batch = client.messages.batches.create(requests=requests)

    counts = wait_ended(client, batch.id).request_counts
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    types = [r.type for r in results.values()]
    assert (counts.succeeded, counts.errored, counts.expired) == (
        types.count("succeeded"),
        types.count("errored"),
        types.count("expired"),
    )
    assert counts.succeeded > 100 and counts.expired > 5
    error_types = {r.error.error.type for r in results.values() if r.type == "errored"}
    assert error_types == {"overloaded_error", "invalid_request_error"}
    for custom_id, field in [("bad-model", "model"), ("unserved-model", "model")]:
        result = results[custom_id]
        assert result.type == "errored"
        assert result.error.error.type == "invalid_request_error"
        assert result.error.error.message.startswith(field)
        assert result.error.request_id and result.error.request_id.startswith("req_")


def test_batch_not_finished_within_ttl_ends_expired(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(throughput=0, ttl_seconds=0.3)
    batch = client.messages.batches.create(requests=[request("e1"), request("e2")])

    assert abs(batch.expires_at - batch.created_at - timedelta(seconds=0.3)) <= timedelta(microseconds=1)
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.expired == 2
    assert ended.ended_at == ended.expires_at
    assert [r.result.type for r in client.messages.batches.results(batch.id)] == ["expired", "expired"]


def test_outcomes_are_reproducible_for_a_seed(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    def outcomes() -> list[str]:
        emu.reset()
        emu.configure(error_rate=0.3, error_types=["overloaded_error", "api_error"], expire_rate=0.1, seed=11)
        batch = client.messages.batches.create(requests=[request(f"o{i}") for i in range(100)])
        wait_ended(client, batch.id)
        return [
            r.result.error.error.type if r.result.type == "errored" else r.result.type
            for r in client.messages.batches.results(batch.id)
        ]

    first = outcomes()
    assert first == outcomes()
    assert {"succeeded", "overloaded_error", "api_error", "expired"} <= set(first)


def test_resubmitted_custom_ids_draw_again(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(error_rate=0.5, seed=3)
    ids = [f"retry{i}" for i in range(40)]
    first = client.messages.batches.create(requests=[request(i) for i in ids])
    wait_ended(client, first.id)
    failed = [r.custom_id for r in client.messages.batches.results(first.id) if r.result.type == "errored"]
    second = client.messages.batches.create(requests=[request(i) for i in failed])
    wait_ended(client, second.id)

    again = [r.custom_id for r in client.messages.batches.results(second.id) if r.result.type == "errored"]
    assert failed and len(again) < len(failed)


def test_prompt_cache_is_written_once_then_read(client: anthropic.Anthropic) -> None:
    shared = "You are a careful reviewer. " * 600  # 4,200 tokens: Haiku 4.5 caches from 4,096
    system = [{"type": "text", "text": shared, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    batch = client.messages.batches.create(
        requests=[request("w", "first", system=system), request("r", "second", system=system)]
    )
    wait_ended(client, batch.id)
    write, read = [r.result.message.usage for r in client.messages.batches.results(batch.id)]  # type: ignore[union-attr]

    shared_tokens = tokens(shared)
    assert write.cache_creation_input_tokens == shared_tokens
    assert write.cache_creation.ephemeral_1h_input_tokens == shared_tokens  # type: ignore[union-attr]
    assert write.cache_creation.ephemeral_5m_input_tokens == 0  # type: ignore[union-attr]
    assert write.cache_read_input_tokens == 0
    assert read.cache_read_input_tokens == shared_tokens
    assert read.cache_creation_input_tokens == 0
    assert write.input_tokens == read.input_tokens == tokens("second")

    later = client.messages.batches.create(requests=[request("later", "third", system=system)])
    wait_ended(client, later.id)
    usage = next(iter(client.messages.batches.results(later.id))).result.message.usage  # type: ignore[union-attr]
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (shared_tokens, 0)


def test_five_minute_cache_block_in_message_content(client: anthropic.Anthropic) -> None:
    content = [
        {"type": "text", "text": "document " * 2000, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "question"},
    ]
    batch = client.messages.batches.create(
        requests=[request("c", messages=[{"role": "user", "content": content}])]
    )
    wait_ended(client, batch.id)
    usage = next(iter(client.messages.batches.results(batch.id))).result.message.usage  # type: ignore[union-attr]

    assert usage.cache_creation.ephemeral_5m_input_tokens == tokens("document " * 2000)  # type: ignore[union-attr]
    assert usage.input_tokens == 2


def test_max_tokens_cuts_the_reply(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[request("cut", "a long question " * 20, max_tokens=3)])
    wait_ended(client, batch.id)
    message = next(iter(client.messages.batches.results(batch.id))).result.message  # type: ignore[union-attr]

    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert len(message.content[0].text) <= 12  # type: ignore[union-attr]


def test_json_system_prompt_gets_json_text(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(
        requests=[request("j", "Great product!", system="Reply with JSON: {sentiment, score}")]
    )
    wait_ended(client, batch.id)
    message = next(iter(client.messages.batches.results(batch.id))).result.message  # type: ignore[union-attr]

    reply = json.loads(message.content[0].text)  # type: ignore[union-attr]
    assert reply["sentiment"] in {"positive", "negative", "neutral"}
    assert reply["summary"] == "Great product!"


def test_count_tokens_matches_result_usage(client: anthropic.Anthropic) -> None:
    params = {
        "model": "claude-haiku-4-5",
        "system": "Be brief and exact.",
        "messages": [{"role": "user", "content": "How many tokens is this sentence?"}],
    }
    counted = client.messages.count_tokens(**params).input_tokens  # type: ignore[arg-type]
    batch = client.messages.batches.create(
        requests=[{"custom_id": "t", "params": {**params, "max_tokens": 50}}]
    )
    wait_ended(client, batch.id)
    usage = next(iter(client.messages.batches.results(batch.id))).result.message.usage  # type: ignore[union-attr]

    expected = tokens("Be brief and exact.") + tokens("How many tokens is this sentence?")
    assert counted == usage.input_tokens == expected


def test_version_1_style_headers_work_with_raw_http(emu: EmulatorProcess) -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=emu.base_url, headers=headers) as http:
        created = http.post("/v1/messages/batches", json={"requests": [request("v1")]})
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        deadline = time.monotonic() + 15
        while (batch := http.get(f"/v1/messages/batches/{batch_id}").json())["processing_status"] != "ended":
            assert time.monotonic() < deadline
        results = http.get(batch["results_url"])

    assert results.status_code == 200
    assert json.loads(results.text)["result"]["type"] == "succeeded"
    for key in ("created_at", "expires_at", "ended_at"):
        assert batch[key].endswith("Z")
        datetime.fromisoformat(batch[key])


def test_missing_version_header_is_rejected(emu: EmulatorProcess) -> None:
    response = httpx.get(f"{emu.base_url}/v1/messages/batches", headers={"x-api-key": "k"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "anthropic-version: header is required"


def test_results_url_uses_the_host_the_client_used(emu: EmulatorProcess) -> None:
    localhost_url = emu.base_url.replace("127.0.0.1", "localhost")
    with anthropic.Anthropic(base_url=localhost_url, api_key="k") as local:
        batch = local.messages.batches.create(requests=[request("h")])
        ended = wait_ended(local, batch.id)

    assert ended.results_url == f"{localhost_url}/v1/messages/batches/{batch.id}/results"


def test_results_stream_is_jsonl_without_empty_lines(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    batch = client.messages.batches.create(requests=[request(f"s{i:05d}") for i in range(9_000)])
    wait_ended(client, batch.id)

    with client.messages.batches.with_streaming_response.results(batch.id) as response:
        assert response.http_response.headers["content-type"] == "application/x-jsonl"
        body = b"".join(response.http_response.iter_bytes())
    lines = body.split(b"\n")
    assert lines[-1] == b""
    assert all(lines[:-1])
    assert [json.loads(line)["custom_id"] for line in lines[:-1]] == [f"s{i:05d}" for i in range(9_000)]


def test_every_response_has_a_request_id(emu: EmulatorProcess) -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    ok = httpx.get(f"{emu.base_url}/v1/messages/batches", headers=headers)
    missing = httpx.get(f"{emu.base_url}/v1/messages/batches/msgbatch_nope", headers=headers)
    unknown_route = httpx.get(f"{emu.base_url}/v2/nothing", headers=headers)

    for response in (ok, missing, unknown_route):
        assert response.headers["request-id"].startswith("req_")
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "No batch with id 'msgbatch_nope'"},
        "request_id": missing.headers["request-id"],
    }
    assert unknown_route.json()["error"]["type"] == "not_found_error"


def test_results_before_the_batch_ended_are_refused(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(throughput=0)
    batch = client.messages.batches.create(requests=[request("p")])

    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)
    direct = httpx.get(
        f"{emu.base_url}/v1/messages/batches/{batch.id}/results",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    assert direct.status_code == 400


def test_throughput_change_speeds_up_a_running_batch(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(throughput=0)
    batch = client.messages.batches.create(requests=[request("slow")])
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"

    emu.configure(throughput=1_000_000)
    assert wait_ended(client, batch.id).request_counts.succeeded == 1


def test_start_delay_holds_the_batch(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(start_delay_seconds=0.3)
    batch = client.messages.batches.create(requests=[request("late")])

    ended = wait_ended(client, batch.id)
    assert ended.ended_at - ended.created_at >= timedelta(seconds=0.3)  # type: ignore[operator]
    assert datetime.now(UTC) >= ended.ended_at  # type: ignore[operator]


def test_results_are_archived_29_days_after_creation_on_the_emulator_clock(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    batch = client.messages.batches.create(requests=[request("kept")])
    ended = wait_ended(client, batch.id)
    assert ended.archived_at is None

    emu.configure(clock_offset_seconds=29 * 86_400 - 60)
    assert client.messages.batches.retrieve(batch.id).archived_at is None
    assert [r.custom_id for r in client.messages.batches.results(batch.id)] == ["kept"]

    emu.configure(clock_offset_seconds=29 * 86_400 + 1)
    archived = client.messages.batches.retrieve(batch.id)
    assert archived.processing_status == "ended"
    assert archived.archived_at == archived.created_at + timedelta(days=29)
    listed = next(b for b in client.messages.batches.list(limit=10).data if b.id == batch.id)
    assert listed.archived_at == archived.archived_at
    with pytest.raises(anthropic.NotFoundError, match="no longer available: it was archived"):
        list(client.messages.batches.results(batch.id))
    fresh = client.messages.batches.create(requests=[request("new")])
    assert wait_ended(client, fresh.id).archived_at is None


def test_start_stagger_makes_each_later_batch_start_later(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(start_stagger_seconds=600)
    first = client.messages.batches.create(requests=[request("first")])
    second = client.messages.batches.create(requests=[request("second")])

    assert wait_ended(client, first.id).request_counts.succeeded == 1
    assert client.messages.batches.retrieve(second.id).processing_status == "in_progress"
