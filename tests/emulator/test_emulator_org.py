"""Workspaces, beta headers and the organisation's limits: processing queue, create rate, spend."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from emulator_helpers import create_and_wait, request, wait_ended

from airflow_batch.emulator.faults import EmulatorConfig
from airflow_batch.emulator.process import EmulatorProcess

WORKSPACE_A = "wrkspc_011AAAAAAAAAAAAAAAAAAAAA"
WORKSPACE_B = "wrkspc_011BBBBBBBBBBBBBBBBBBBBB"


@pytest.fixture
def no_retry(emu: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    """A client that surfaces a 429 at once instead of sleeping its retry-after."""
    with anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def requests(n: int, prefix: str = "q") -> list[dict[str, object]]:
    return [request(f"{prefix}{i}") for i in range(n)]


# ---- workspaces ------------------------------------------------------------------------------


def test_each_workspace_sees_only_its_own_batches(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(throughput=0)
    default = client.messages.batches.create(requests=[request("d")])
    in_a = client.messages.batches.create(requests=[request("a")], workspace_id=WORKSPACE_A)
    in_b = client.messages.batches.create(requests=[request("b")], workspace_id=WORKSPACE_B)

    assert [b.id for b in client.messages.batches.list()] == [default.id]
    assert [b.id for b in client.messages.batches.list(workspace_id=WORKSPACE_A)] == [in_a.id]
    assert client.messages.batches.retrieve(in_b.id, workspace_id=WORKSPACE_B).id == in_b.id
    for batch_id, workspace in [(in_a.id, WORKSPACE_B), (in_a.id, None), (default.id, WORKSPACE_A)]:
        options = {"workspace_id": workspace} if workspace else {}
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch_id, **options)
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.cancel(batch_id, **options)
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.delete(batch_id, **options)
    with pytest.raises(anthropic.BadRequestError, match="after_id"):
        client.messages.batches.list(after_id=in_a.id, workspace_id=WORKSPACE_B)
    client.messages.batches.cancel(in_a.id, workspace_id=WORKSPACE_A)
    wait_ended(client, in_a.id, workspace_id=WORKSPACE_A)
    with pytest.raises(anthropic.NotFoundError):
        list(client.messages.batches.results(in_a.id))
    results_url = client.messages.batches.retrieve(in_a.id, workspace_id=WORKSPACE_A).results_url
    assert results_url is not None
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    for workspace, status in [(None, 404), (WORKSPACE_B, 404), (WORKSPACE_A, 200)]:
        sent = {**headers, "anthropic-workspace-id": workspace} if workspace else headers
        assert httpx.get(results_url, headers=sent).status_code == status
    assert [r.result.type for r in client.messages.batches.results(in_a.id, workspace_id=WORKSPACE_A)] == [
        "canceled"
    ]


def test_errors_echo_the_workspace_header(no_retry: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        no_retry.messages.batches.retrieve("msgbatch_nope", workspace_id=WORKSPACE_A)
    assert caught.value.workspace_id == WORKSPACE_A


def test_every_api_call_is_counted_by_workspace_and_route_whatever_its_answer(
    no_retry: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    created = no_retry.messages.batches.create(requests=[request("a")], workspace_id=WORKSPACE_A)
    no_retry.messages.batches.retrieve(created.id, workspace_id=WORKSPACE_A)
    with pytest.raises(anthropic.NotFoundError):
        no_retry.messages.batches.retrieve(created.id)  # from the default workspace: a 404, counted
    assert httpx.get(emu.base_url + "/v1/messages/batches").status_code == 401  # no key: counted too

    assert emu.calls() == {
        WORKSPACE_A: {"GET /v1/messages/batches/{batch_id}": 1, "POST /v1/messages/batches": 1},
        "": {"GET /v1/messages/batches": 1, "GET /v1/messages/batches/{batch_id}": 1},
    }
    emu.reset()
    assert emu.calls() == {}


# ---- betas -------------------------------------------------------------------------------------


def test_known_betas_pass_are_logged_and_make_validation_lenient(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    betas = "output-300k-2026-03-24, interleaved-thinking-2025-05-14"
    future_param = request("beta", some_future_parameter={"on": True})
    results = create_and_wait(client, [future_param], extra_headers={"anthropic-beta": betas})
    assert results["beta"].type == "succeeded"

    deadline = time.monotonic() + 10
    wanted = (
        "anthropic-beta output-300k-2026-03-24,interleaved-thinking-2025-05-14 on POST /v1/messages/batches"
    )
    while wanted not in emu.log_path.read_text():
        assert time.monotonic() < deadline, emu.log_path.read_text()[-2000:]
        time.sleep(0.05)
    with pytest.raises(anthropic.BadRequestError, match="some_future_parameter"):
        client.messages.batches.create(requests=[future_param])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "header", ["no-such-beta-2026-01-01", "output-300k-2026-03-24,no-such-beta-2026-01-01"]
)
def test_an_unknown_beta_is_refused_as_the_api_documents(
    client: anthropic.Anthropic, emu: EmulatorProcess, header: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(requests=[request("x")], extra_headers={"anthropic-beta": header})
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error",
        "message": "Unsupported beta header: no-such-beta-2026-01-01",
    }
    with pytest.raises(anthropic.BadRequestError, match="Unsupported beta header"):
        client.messages.batches.list(extra_headers={"anthropic-beta": header})
    assert emu.batch_count() == 0


def test_the_beta_list_is_the_sdks() -> None:
    import typing

    from anthropic.types.anthropic_beta_param import AnthropicBetaParam

    from airflow_batch.emulator.betas import KNOWN_BETAS

    literal = next(
        arg for arg in typing.get_args(AnthropicBetaParam) if typing.get_origin(arg) is typing.Literal
    )
    assert set(typing.get_args(literal)) == KNOWN_BETAS


# ---- the organisation's processing queue ------------------------------------------------------


def test_a_create_past_the_queue_limit_is_429_with_retry_after_and_stores_nothing(
    no_retry: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    # Held 30 s before the first request completes, then 1,000 requests/s: each batch ends ~31 s in.
    emu.configure(queue_limit=3000, start_delay_seconds=30, throughput=1000)
    for n in range(3):
        no_retry.messages.batches.create(requests=requests(1000, f"b{n}-"))  # type: ignore[arg-type]

    with pytest.raises(anthropic.RateLimitError) as caught:
        no_retry.messages.batches.create(requests=[request("one-more")])
    error = caught.value
    assert "processing queue" in (error.api_message or "")
    assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert 25 <= int(error.response.headers["retry-after"]) <= 32
    stats = emu.stats()
    assert stats["batches_created"] == 3
    assert (stats["requests_queued"], stats["peak_requests_queued"]) == (3000, 3000)

    emu.configure(start_delay_seconds=0, throughput=1_000_000_000)  # the queue drains
    deadline = time.monotonic() + 15
    while emu.stats()["requests_queued"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert no_retry.messages.batches.create(requests=requests(3000)).request_counts.processing == 3000  # type: ignore[arg-type]
    assert emu.stats()["peak_requests_queued"] == 3000


def test_retry_after_counts_until_enough_queued_requests_end(
    no_retry: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    # 10 s before the first request completes, then 10 requests/s per batch.
    emu.configure(queue_limit=1000, start_delay_seconds=10, throughput=10)
    no_retry.messages.batches.create(requests=requests(500, "long-"))  # type: ignore[arg-type]  # ends ~60 s in
    no_retry.messages.batches.create(requests=requests(100, "short-"))  # type: ignore[arg-type]  # ends ~20 s in

    with pytest.raises(anthropic.RateLimitError) as small:  # 600 + 500 > 1,000: the short batch must end
        no_retry.messages.batches.create(requests=requests(500))  # type: ignore[arg-type]
    assert 17 <= int(small.value.response.headers["retry-after"]) <= 21
    with pytest.raises(anthropic.RateLimitError) as large:  # 600 + 900: both must end
        no_retry.messages.batches.create(requests=requests(900))  # type: ignore[arg-type]
    assert 57 <= int(large.value.response.headers["retry-after"]) <= 61


def test_a_batch_larger_than_the_whole_queue_is_told_it_can_never_fit(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(queue_limit=10)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.batches.create(requests=requests(11))  # type: ignore[arg-type]
    assert "can never be queued" in (caught.value.api_message or "")
    assert "retry-after" not in caught.value.response.headers
    assert caught.value.response.headers["x-should-retry"] == "false"  # so the SDK did not retry
    assert emu.stats()["http_faults_injected"] == 0 and emu.batch_count() == 0


def test_creates_past_the_rate_limit_are_429_until_the_minute_rolls(
    no_retry: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(create_rate_per_minute=2)
    no_retry.messages.batches.create(requests=[request("a")])
    no_retry.messages.batches.create(requests=[request("b")])

    with pytest.raises(anthropic.RateLimitError) as caught:
        no_retry.messages.batches.create(requests=[request("c")])
    assert "rate limit of 2 batch creates per minute" in (caught.value.api_message or "")
    assert 55 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert emu.batch_count() == 2
    emu.configure(create_rate_per_minute=3)
    assert no_retry.messages.batches.create(requests=[request("c")]).id


def test_spend_limit_answers_every_create_429_with_its_error_code_and_no_retry_after(
    no_retry: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(spend_limit_reached=True)
    with pytest.raises(anthropic.EnforcedSpendLimitReachedError) as caught:  # the SDK's own class for it
        no_retry.messages.batches.create(requests=[request("x")])
    error = caught.value
    assert error.status_code == 429 and error.error_code == "enforced_spend_limit_reached"
    message = error.api_message or ""
    assert message.startswith("You have reached your API usage limits: your organization has crossed")
    assert "You will regain access on " in message and message.endswith(" at 00:00 UTC.")
    assert "retry-after" not in error.response.headers
    with pytest.raises(anthropic.RateLimitError):
        no_retry.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert emu.batch_count() == 0
    emu.configure(spend_limit_reached=False)
    assert no_retry.messages.batches.create(requests=[request("x")]).id


def test_limit_settings_come_from_config_env_and_reject_bad_values(emu: EmulatorProcess) -> None:
    config = EmulatorConfig().updated({"queue_limit": "3000", "create_rate_per_minute": None})
    assert (config.queue_limit, config.create_rate_per_minute, config.spend_limit_reached) == (
        3000,
        None,
        False,
    )
    assert EmulatorConfig().updated({"spend_limit_reached": "true"}).spend_limit_reached is True
    for bad in ({"queue_limit": 0}, {"spend_limit_reached": "maybe"}, {"invalid_output_rate": 2}):
        response = httpx.post(f"{emu.base_url}/_emulator/config", json=bad)
        assert response.status_code == 400 and next(iter(bad)) in response.json()["error"]["message"]


# ---- billing -----------------------------------------------------------------------------------


def test_billing_counts_the_succeeded_requests_processed_and_their_usage_per_model(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(error_types={"overloaded_error": 0.3}, seed=3)
    results = create_and_wait(client, requests(20, "bill"))
    emu.configure(throughput=0)
    unprocessed = client.messages.batches.create(requests=requests(5, "unbilled"))  # type: ignore[arg-type]
    client.messages.batches.cancel(unprocessed.id)
    wait_ended(client, unprocessed.id)

    succeeded = [result.message for result in results.values() if result.type == "succeeded"]
    assert 0 < len(succeeded) < 20
    assert emu.billing() == {
        "requests": len(succeeded),
        "usage_by_model": {
            "claude-haiku-4-5": {
                "input_tokens": sum(m.usage.input_tokens for m in succeeded),
                "output_tokens": sum(m.usage.output_tokens for m in succeeded),
                "cache_creation_input_tokens": 0,
                "cache_creation_1h_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "web_search_requests": 0,
                "web_fetch_requests": 0,
            }
        },
    }
