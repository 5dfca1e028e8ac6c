"""``POST /v1/messages`` (the canary's endpoint): the batch results' answers at the standard API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from anthropic.types import TextBlock, ThinkingBlock, ToolUseBlock
from emulator_helpers import create_and_wait, request, tokens

from airflow_batch.emulator.process import EmulatorProcess

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "label": {"enum": ["spam", "ham"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "score"],
}
PARAMS: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 300,
    "messages": [{"role": "user", "content": "Is this spam? Win a prize now"}],
}


@pytest.fixture
def no_retry(emu: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def test_a_message_is_the_same_answer_as_in_a_batch_at_the_standard_tier(client: anthropic.Anthropic) -> None:
    message = client.messages.create(**PARAMS)
    batched = create_and_wait(client, [{"custom_id": "same", "params": PARAMS}])["same"].message

    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.content == batched.content and message.stop_reason == "end_turn"
    assert message.usage.service_tier == "standard" and batched.usage.service_tier == "batch"
    assert (
        message.usage.input_tokens == batched.usage.input_tokens == tokens(PARAMS["messages"][0]["content"])
    )
    assert message.usage.output_tokens == batched.usage.output_tokens


async def test_async_client_gets_structured_output_thinking_and_tool_calls(
    aclient: anthropic.AsyncAnthropic,
) -> None:
    structured = await aclient.messages.create(
        **PARAMS, output_config={"format": {"type": "json_schema", "schema": SCHEMA}}
    )
    jsonschema.validate(json.loads(structured.content[0].text), SCHEMA)  # type: ignore[union-attr]
    adaptive = {**PARAMS, "model": "claude-sonnet-4-6", "max_tokens": 2000}  # adaptive came with 4.6
    thinking = await aclient.messages.create(**adaptive, thinking={"type": "adaptive"})
    assert [type(b) for b in thinking.content] == [ThinkingBlock, TextBlock]
    assert thinking.usage.output_tokens_details.thinking_tokens == 192  # type: ignore[union-attr]
    tool = {"name": "classify", "input_schema": SCHEMA}
    called = await aclient.messages.create(
        **PARAMS, tools=[tool], tool_choice={"type": "tool", "name": "classify"}
    )  # type: ignore[list-item]
    assert called.stop_reason == "tool_use" and isinstance(called.content[0], ToolUseBlock)
    jsonschema.validate(called.content[0].input, SCHEMA)


def test_stream_true_is_a_clear_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="without streaming"):
        client.messages.create(**PARAMS, stream=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**PARAMS, "max_tokens": 0}, "max_tokens must be an integer >= 1"),
        ({k: v for k, v in PARAMS.items() if k != "max_tokens"}, "max_tokens is missing"),
        (
            {**PARAMS, "messages": [{"role": "robot", "content": "x"}]},
            "messages.0.role: Invalid enum value 'robot'",
        ),
        ({**PARAMS, "temprature": 0.5}, "Object contains unknown field `temprature`"),
        (
            {**PARAMS, "tools": [{"type": "web_search_20250305", "name": "search"}]},
            "tools.0: a web_search_20250305",
        ),
    ],
)
def test_structural_problems_are_400s_naming_the_field(
    emu: EmulatorProcess, body: dict[str, Any], message: str
) -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    response = httpx.post(f"{emu.base_url}/v1/messages", json=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


def test_an_unknown_model_is_404_and_a_prompt_over_the_window_is_400(no_retry: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError, match="model: claude-haiku-9-9"):
        no_retry.messages.create(**{**PARAMS, "model": "claude-haiku-9-9"})
    too_long = [{"role": "user", "content": "x" * (4 * 200_001)}]
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long: 200001 tokens > 200000 maximum"):
        no_retry.messages.create(**{**PARAMS, "messages": too_long})


def test_fault_settings_apply_to_messages(no_retry: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(error_types={"overloaded_error": 1.0})
    with pytest.raises(anthropic.InternalServerError) as caught:
        no_retry.messages.create(**PARAMS)
    assert caught.value.status_code == 529 and caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    emu.configure(error_types={}, refusal_rate=1.0)
    assert no_retry.messages.create(**PARAMS).stop_reason == "refusal"
    emu.configure(refusal_rate=0.0, invalid_output_rate=1.0)
    texts = [
        no_retry.messages.create(
            **PARAMS, output_config={"format": {"type": "json_schema", "schema": SCHEMA}}
        )
        .content[0]
        .text  # type: ignore[union-attr]
        for _ in range(6)
    ]
    for text in texts:
        with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
            jsonschema.validate(json.loads(text), SCHEMA)


def test_messages_read_and_write_the_prompt_cache(client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "c" * 20_000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    first = client.messages.create(**PARAMS, system=system)  # type: ignore[arg-type]
    second = client.messages.create(**PARAMS, system=system)  # type: ignore[arg-type]
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 5_000  # type: ignore[union-attr]
    assert (second.usage.cache_read_input_tokens, second.usage.cache_creation_input_tokens) == (5_000, 0)
    batched = create_and_wait(client, [request("b", system=system)])["b"].message
    assert batched.usage.cache_read_input_tokens == 5_000
