"""The batch guide's own code runs unchanged against the emulator (real SDK, loopback HTTP)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import batch_guide as guide
import pytest

from airflow_batch.emulator.process import EmulatorProcess


@pytest.fixture
def client(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[anthropic.Anthropic]:
    """The guide's ``anthropic.Anthropic()``, aimed at the emulator by environment alone."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "guide-key")
    with anthropic.Anthropic() as sdk_client:
        yield sdk_client


def test_guide_create_poll_and_download_return_both_reviews(
    client: anthropic.Anthropic, tmp_path: Path
) -> None:
    batch = guide.create_review_batch(client)
    assert batch.id.startswith("msgbatch_")
    ended = guide.poll_until_ended(client, batch.id)
    assert ended.request_counts.succeeded == 2

    results = guide.download_results(client, batch.id)
    assert set(results) == {"review-001", "review-002"}
    assert all(r["status"] == "success" and r["text"] and r["input_tokens"] > 0 for r in results.values())

    out = tmp_path / "batch_results.jsonl"
    guide.stream_results_to_file(client, batch.id, str(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["custom_id"] for r in rows] == ["review-001", "review-002"]
    assert all(r["type"] == "succeeded" and r["usage"]["output_tokens"] > 0 for r in rows)


def test_guide_sharded_submission_collects_every_result(client: anthropic.Anthropic) -> None:
    requests = guide.build_classification_requests([f"第{i}条文本" for i in range(25)])
    batch_ids = guide.submit_batch_jobs(client, requests, chunk_size=10)
    assert len(batch_ids) == 3
    results = guide.wait_for_all_batches(client, batch_ids, poll_interval=0.2)
    assert sorted(results) == [f"text-{i:06d}" for i in range(25)]


def test_guide_cost_estimate_counts_tokens_through_the_api(client: anthropic.Anthropic) -> None:
    requests = guide.build_review_requests(["音质很好", "快递太慢了,差评", "一般般"] * 5)
    estimate = guide.estimate_batch_cost(client, requests)
    assert estimate["estimated_input_tokens"] > 0
    assert estimate["estimated_output_tokens"] == 50 * len(requests)
    assert estimate["estimated_total_cost_usd"] > 0


def test_guide_partial_failures_are_counted_and_only_they_are_resubmitted(
    client: anthropic.Anthropic, emulator: EmulatorProcess
) -> None:
    emulator.configure(error_rate=0.3, error_types=["overloaded_error"], seed=7)
    requests = guide.build_classification_requests([f"text {i}" for i in range(60)])
    batch = client.messages.batches.create(requests=requests)
    guide.poll_until_ended(client, batch.id)

    report = guide.process_batch_results(client, batch.id)
    failed_ids = {item["custom_id"] for items in report["failed"].values() for item in items}
    assert failed_ids, "a 30% error rate over 60 requests must fail some"
    assert len(report["succeeded"]) + len(failed_ids) == 60

    retry_id = guide.retry_failed_requests(requests, failed_ids, client)
    assert retry_id is not None
    retried = guide.poll_until_ended(client, retry_id)
    counts = retried.request_counts
    assert counts.succeeded + counts.errored + counts.expired + counts.canceled == len(failed_ids)


def test_guide_list_cancel_and_expiry_check(client: anthropic.Anthropic, emulator: EmulatorProcess) -> None:
    emulator.configure(start_delay_seconds=3600)
    batch = guide.create_review_batch(client)
    assert batch.id in [b.id for b in guide.list_batches(client)]
    canceled = guide.cancel_batch(client, batch.id)
    assert canceled.processing_status in ("canceling", "ended")
    ended = guide.poll_until_ended(client, batch.id)
    assert ended.request_counts.canceled == 2
    assert 23.9 < guide.check_batch_expiry(ended) <= 24


def cached_document_usage(client: anthropic.Anthropic) -> dict[str, Any]:
    requests = guide.build_cached_document_requests(["文档一的内容", "文档二的内容", "文档三的内容"])
    batch = client.messages.batches.create(requests=requests)
    guide.poll_until_ended(client, batch.id)
    return {r.custom_id: r.result.message.usage for r in client.messages.batches.results(batch.id)}


def test_guide_short_shared_prompt_is_below_the_cache_minimum_and_never_cached(
    client: anthropic.Anthropic,
) -> None:
    # The guide's shared prompt is a few tokens; Haiku 4.5 caches prefixes of 4,096 tokens and
    # more. Like the API, the emulator then neither writes nor reads the cache, with no error.
    usage = cached_document_usage(client)
    assert all(u.cache_creation_input_tokens == u.cache_read_input_tokens == 0 for u in usage.values())
    assert all(u.input_tokens > 0 for u in usage.values())


def test_guide_cached_system_prompt_is_written_once_then_read(
    client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guide, "SHARED_SYSTEM", guide.SHARED_SYSTEM * 1000)  # past the minimum
    usage = cached_document_usage(client)
    assert usage["doc-0"].cache_creation_input_tokens > 4_096
    assert usage["doc-1"].cache_read_input_tokens == usage["doc-0"].cache_creation_input_tokens
    assert usage["doc-2"].cache_creation_input_tokens == 0


def test_guide_product_descriptions_end_to_end(client: anthropic.Anthropic, tmp_path: Path) -> None:
    products = [
        {"id": i, "name": f"产品{i}", "category": "耳机", "features": ["降噪", "长续航"]} for i in range(12)
    ]
    out = tmp_path / "descriptions.jsonl"
    guide.batch_generate_descriptions(products, output_file=str(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(int(r["id"]) for r in rows) == list(range(12))
    assert all(r["description"] for r in rows)
