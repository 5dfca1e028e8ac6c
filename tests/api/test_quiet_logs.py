"""Task and triggerer logs carry one line per poll, not one per HTTP request."""

from __future__ import annotations

import logging

import anthropic
import pytest

from airflow_batch.api import AsyncBatchesApi, BatchesApi
from airflow_batch.api.batches import HTTP_LOGGERS
from airflow_batch.emulator.process import EmulatorProcess


@pytest.fixture
def fresh_http_loggers() -> None:
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


async def test_calls_through_our_clients_log_no_per_request_lines(
    emulator: EmulatorProcess, fresh_http_loggers: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # The SDK's HTTP library logs each request at INFO when nothing quiets it.
    raw = anthropic.Anthropic(api_key="k", base_url=emulator.base_url)
    raw.messages.batches.list(limit=1)
    assert any(r.name in HTTP_LOGGERS and "HTTP Request" in r.getMessage() for r in caplog.records)
    caplog.clear()

    with BatchesApi(anthropic.Anthropic(api_key="k", base_url=emulator.base_url)) as api:
        api.model_ids()
    api_async = AsyncBatchesApi(anthropic.AsyncAnthropic(api_key="k", base_url=emulator.base_url))
    await api_async.client.messages.batches.list(limit=1)
    await api_async.close()
    assert [r.getMessage() for r in caplog.records if r.name in HTTP_LOGGERS] == []


def test_a_logger_the_deployment_configured_is_left_alone(
    fresh_http_loggers: None, emulator: EmulatorProcess
) -> None:
    logging.getLogger("httpx2").setLevel(logging.DEBUG)
    BatchesApi(anthropic.Anthropic(api_key="k", base_url=emulator.base_url)).close()
    assert logging.getLogger("httpx2").level == logging.DEBUG
