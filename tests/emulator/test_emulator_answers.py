"""What batch results say beyond plain text: structured outputs, thinking, tools, server tools,
pause_turn, refusals, stop sequences and the context window, all through the real SDK."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import (
    Message,
    ServerToolUseBlock,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    WebFetchToolResultBlock,
    WebSearchResultBlock,
    WebSearchToolResultBlock,
)
from anthropic.types.messages import MessageBatchIndividualResponse
from emulator_helpers import create_and_wait, raw_result_lines, request, tokens, wait_ended

from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.submit.validation import check_request

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "reviewed_at": {"type": "string", "format": "date"},
        "contact": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "product": {"$ref": "#/$defs/product"},
    },
    "required": ["sentiment", "keywords", "stars", "product"],
    "$defs": {
        "product": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"sku": {"type": "string", "format": "uuid"}, "price": {"type": "number"}},
            "required": ["sku"],
        }
    },
}
STRUCTURED = {"output_config": {"format": {"type": "json_schema", "schema": REVIEW_SCHEMA}}}
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
FETCH = {"type": "web_fetch_20250910", "name": "web_fetch"}
RATE_TOOL = {
    "name": "record_rating",
    "description": "Record the review's rating",
    "input_schema": {
        "type": "object",
        "properties": {
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "label": {"enum": ["a", "b"]},
        },
        "required": ["stars", "label"],
    },
}
validator = jsonschema.Draft202012Validator(REVIEW_SCHEMA)


#: A model that takes adaptive thinking (it came with the 4.6 models: data/model_rules.json).
ADAPTIVE = "claude-sonnet-4-6"


def only(results: dict[str, Any]) -> Message:
    (result,) = results.values()
    assert result.type == "succeeded", result
    message: Message = result.message
    return message


def test_structured_output_is_a_valid_instance_that_differs_by_prompt(client: anthropic.Anthropic) -> None:
    requests = [request(f"s{i}", f"Review number {i}: it works", **STRUCTURED) for i in range(30)]
    results = create_and_wait(client, requests)
    answers = [json.loads(results[f"s{i}"].message.content[0].text) for i in range(30)]

    for answer in answers:
        validator.validate(answer)
    assert len({json.dumps(a, sort_keys=True) for a in answers}) > 20
    again = create_and_wait(client, [request("again", "Review number 7: it works", **STRUCTURED)])
    assert json.loads(only(again).content[0].text) == answers[7]  # type: ignore[union-attr]


def test_structured_output_cut_at_max_tokens_is_truncated_json(client: anthropic.Anthropic) -> None:
    message = only(create_and_wait(client, [request("cut", max_tokens=6, **STRUCTURED)]))

    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.startswith("{") and len(text) <= 24
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def outputs_with_invalid_rate(client: anthropic.Anthropic, emu: EmulatorProcess) -> list[str]:
    emu.reset()
    emu.configure(invalid_output_rate=0.3, seed=5)
    results = create_and_wait(client, [request(f"v{i:03d}", f"text {i}", **STRUCTURED) for i in range(200)])
    return [results[f"v{i:03d}"].message.content[0].text for i in range(200)]


def test_invalid_output_rate_breaks_that_share_of_answers_reproducibly(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    texts = outputs_with_invalid_rate(client, emu)
    not_json = schema_invalid = 0
    for text in texts:
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            not_json += 1
            continue
        schema_invalid += not validator.is_valid(answer)
    invalid = not_json + schema_invalid
    assert 35 <= invalid <= 85  # 30% of 200, give or take
    assert not_json > 0 and schema_invalid > 0
    assert texts == outputs_with_invalid_rate(client, emu)


def test_thinking_comes_first_and_counts_in_output_tokens(client: anthropic.Anthropic) -> None:
    requests = [
        request("enabled", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000),
        request("low", model=ADAPTIVE, thinking={"type": "adaptive"}, output_config={"effort": "low"}),
        request("omitted", model=ADAPTIVE, thinking={"type": "adaptive", "display": "omitted"}),
        request("default-new", model="claude-opus-4-7", thinking={"type": "adaptive"}, max_tokens=2000),
        request("disabled", thinking={"type": "disabled"}),
        request("between", model="claude-sonnet-5-5", thinking={"type": "between_tools"}),
    ]
    results = create_and_wait(client, requests)

    enabled = results["enabled"].message
    thinking, text = enabled.content
    assert isinstance(thinking, ThinkingBlock) and isinstance(text, TextBlock)
    assert thinking.thinking.startswith("Emulated thinking") and len(thinking.signature) >= 40
    details = enabled.usage.output_tokens_details
    assert details.thinking_tokens == 192
    assert enabled.usage.output_tokens == 192 + tokens(text.text)
    assert results["low"].message.usage.output_tokens_details.thinking_tokens == 32
    omitted = results["omitted"].message.content[0]
    assert isinstance(omitted, ThinkingBlock) and omitted.thinking == "" and omitted.signature
    assert results["default-new"].message.content[0].thinking == ""  # Opus 4.7 omits by default
    for plain in ("disabled", "between"):
        message = results[plain].message
        assert [block.type for block in message.content] == ["text"]
        assert message.usage.output_tokens_details is None


def test_thinking_is_cut_at_max_tokens_before_any_text(client: anthropic.Anthropic) -> None:
    adaptive = request("t", model=ADAPTIVE, thinking={"type": "adaptive"}, max_tokens=50)
    message = only(create_and_wait(client, [adaptive]))

    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["thinking"]
    assert message.usage.output_tokens == message.usage.output_tokens_details.thinking_tokens == 50  # type: ignore[union-attr]


def test_forced_tool_choice_answers_with_a_tool_use_block(client: anthropic.Anthropic) -> None:
    other = {"name": "other", "input_schema": {"type": "object", "properties": {}}}
    requests = [
        request("any", tools=[RATE_TOOL, other], tool_choice={"type": "any"}),
        request("named", tools=[other, RATE_TOOL], tool_choice={"type": "tool", "name": "record_rating"}),
        request("auto", tools=[RATE_TOOL], tool_choice={"type": "auto"}),
        request(
            "forced-thinking",
            model=ADAPTIVE,
            tools=[RATE_TOOL],
            tool_choice={"type": "any"},
            thinking={"type": "adaptive"},
        ),
    ]
    results = create_and_wait(client, requests)

    for custom_id in ("any", "named"):
        message = results[custom_id].message
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert isinstance(block, ToolUseBlock)
        assert block.name == "record_rating" and block.id.startswith("toolu_")
        jsonschema.validate(block.input, RATE_TOOL["input_schema"])
    assert [b.type for b in results["auto"].message.content] == ["text"]
    assert results["auto"].message.stop_reason == "end_turn"
    error = results["forced-thinking"].error.error
    assert (error.type, error.message) == (
        "invalid_request_error",
        "Thinking may not be enabled when tool_choice forces tool use.",
    )


def test_web_search_and_fetch_are_answered_with_server_tool_blocks(client: anthropic.Anthropic) -> None:
    question = "What changed at https://example.net/changelog this week?"
    message = only(
        create_and_wait(client, [request("web", question, tools=[SEARCH, FETCH], max_tokens=1000)])
    )

    search_use, search_result, fetch_use, fetch_result, text = message.content
    assert isinstance(search_use, ServerToolUseBlock) and search_use.name == "web_search"
    assert search_use.id.startswith("srvtoolu_") and search_use.input["query"]
    assert isinstance(search_result, WebSearchToolResultBlock) and search_result.tool_use_id == search_use.id
    assert isinstance(search_result.content, list) and len(search_result.content) == 3
    for hit in search_result.content:
        assert isinstance(hit, WebSearchResultBlock)
        assert hit.url.startswith("https://") and hit.title and hit.encrypted_content and hit.page_age
    assert isinstance(fetch_use, ServerToolUseBlock) and fetch_use.input == {
        "url": "https://example.net/changelog"
    }
    assert isinstance(fetch_result, WebFetchToolResultBlock) and fetch_result.tool_use_id == fetch_use.id
    assert fetch_result.content.type == "web_fetch_result"
    assert fetch_result.content.content.source.data  # type: ignore[union-attr]
    assert isinstance(text, TextBlock) and message.stop_reason == "end_turn"
    usage = message.usage
    assert usage.server_tool_use is not None
    assert (usage.server_tool_use.web_search_requests, usage.server_tool_use.web_fetch_requests) == (1, 1)
    assert usage.input_tokens > tokens(question)  # tool results count as input


def test_pause_turn_is_continued_by_sending_the_partial_turn_back(
    client: anthropic.Anthropic, emu: EmulatorProcess
) -> None:
    emu.configure(pause_turn_rate=1.0)
    question = [{"role": "user", "content": "Find this week's news"}]
    paused = only(create_and_wait(client, [request("p", messages=question, tools=[SEARCH])]))

    assert paused.stop_reason == "pause_turn"
    (call,) = paused.content
    assert isinstance(call, ServerToolUseBlock) and call.name == "web_search"
    assert paused.usage.server_tool_use.web_search_requests == 0  # type: ignore[union-attr]
    continued_messages = [*question, paused.to_param()]
    done = only(create_and_wait(client, [request("p", messages=continued_messages, tools=[SEARCH])]))
    assert done.stop_reason == "end_turn"
    result, text = done.content
    assert isinstance(result, WebSearchToolResultBlock) and result.tool_use_id == call.id
    assert isinstance(text, TextBlock)
    assert done.usage.server_tool_use.web_search_requests == 1  # type: ignore[union-attr]
    plain = only(create_and_wait(client, [request("no-tools")]))
    assert plain.stop_reason == "end_turn"  # only requests with server tools pause


def test_refusal_rate_answers_with_stop_details(client: anthropic.Anthropic, emu: EmulatorProcess) -> None:
    emu.configure(refusal_rate=1.0)
    message = only(create_and_wait(client, [request("r", "please do something")]))

    assert message.stop_reason == "refusal"
    assert message.stop_details is not None
    assert (message.stop_details.type, message.stop_details.category) == ("refusal", "general_harms")
    assert message.stop_details.explanation


def test_stop_sequence_ends_the_text_before_it(client: anthropic.Anthropic) -> None:
    message = only(
        create_and_wait(client, [request("s", "alpha beta gamma", stop_sequences=["gamma", "beta"])])
    )

    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "beta"
    assert message.content[0].text.endswith("alpha ")  # type: ignore[union-attr]


def test_context_window_refuses_long_prompts_and_stops_generation_at_its_end(
    client: anthropic.Anthropic,
) -> None:
    window = 200_000  # Haiku 4.5
    requests = [
        request("too-long", "x" * (4 * window + 4)),
        request("at-the-edge", "y" * (4 * (window - 5)), max_tokens=100),
    ]
    results = create_and_wait(client, requests)

    error = results["too-long"].error.error
    assert error.type == "invalid_request_error"
    assert error.message == f"prompt is too long: {window + 1} tokens > {window} maximum"
    edge = results["at-the-edge"].message
    assert edge.stop_reason == "model_context_window_exceeded"
    assert edge.usage.input_tokens + edge.usage.output_tokens == window


def every_block_type() -> list[dict[str, Any]]:
    return [
        request("thinking-text", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000),
        request("tool-use", tools=[RATE_TOOL], tool_choice={"type": "any"}),
        request("server-tools", tools=[SEARCH, FETCH]),
        request("structured", **STRUCTURED),
        request("plain"),
    ]


def test_every_block_type_validates_against_the_sdk_types(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=every_block_type())  # type: ignore[arg-type]
    wait_ended(client, batch.id)
    kinds: set[str] = set()
    for line in raw_result_lines(client, batch.id):
        # Strict pydantic validation of the wire line, not the SDK's lenient construction.
        parsed = MessageBatchIndividualResponse.model_validate(json.loads(line))
        assert parsed.result.type == "succeeded"
        kinds |= {block.type for block in parsed.result.message.content}
    assert kinds == {
        "thinking",
        "text",
        "tool_use",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
    }


async def test_async_client_reads_every_block_type(aclient: anthropic.AsyncAnthropic) -> None:
    batch = await aclient.messages.batches.create(requests=every_block_type())  # type: ignore[arg-type]
    deadline = time.monotonic() + 15
    while (batch := await aclient.messages.batches.retrieve(batch.id)).processing_status != "ended":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    results = {r.custom_id: r.result async for r in await aclient.messages.batches.results(batch.id)}
    classes = {cid: [type(b) for b in r.message.content] for cid, r in results.items()}  # type: ignore[union-attr]
    assert classes["thinking-text"] == [ThinkingBlock, TextBlock]
    assert classes["tool-use"] == [ToolUseBlock]
    assert classes["server-tools"] == [
        ServerToolUseBlock,
        WebSearchToolResultBlock,
        ServerToolUseBlock,
        WebFetchToolResultBlock,
        TextBlock,
    ]
    validator.validate(json.loads(results["structured"].message.content[0].text))  # type: ignore[union-attr]


def test_a_request_its_model_refuses_comes_back_errored_in_the_apis_words(
    client: anthropic.Anthropic,
) -> None:
    # Sent straight to the emulator, past submit: the emulator's own reading of data/model_rules.json.
    results = create_and_wait(
        client,
        [
            request("sampling-new", model="claude-opus-4-7", temperature=0.2),
            request("both-samplers", model="claude-sonnet-4-5", temperature=0.2, top_p=0.9),
            request(
                "budget-new",
                model="claude-opus-4-7",
                max_tokens=4000,
                thinking={"type": "enabled", "budget_tokens": 2048},
            ),
            request("sampling-old", temperature=0.2),
        ],
    )
    messages = {
        custom_id: result.error.error.message
        for custom_id, result in results.items()
        if result.type == "errored"
    }
    assert messages == {
        "sampling-new": "`temperature` is deprecated for this model.",
        "both-samplers": "`temperature` and `top_p` cannot both be specified for this model. "
        "Please use only one.",
        "budget-new": '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" '
        'and "output_config.effort" to control thinking behavior.',
    }
    assert results["sampling-old"].type == "succeeded"
    assert {r.error.error.type for r in results.values() if r.type == "errored"} == {"invalid_request_error"}


def test_the_emulator_refuses_what_the_sdk_types_refuse_even_where_our_rules_accept(
    emu: EmulatorProcess, client: anthropic.Anthropic
) -> None:
    # A job with betas lets a beta parameter pass whatever its shape (our rules); the SDK's beta
    # type says billing_policy needs a type. The emulator checks against the SDK's types too.
    bad = request("beta", billing_policy={})
    assert check_request(bad, lenient=True) is None
    before = emu.batch_count()
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.beta.messages.batches.create(requests=[bad], betas=["mcp-client-2025-11-20"])  # type: ignore[list-item]
    assert "requests.0.params.billing_policy.type: Field required (the SDK's request types)" in str(
        raised.value
    )
    assert emu.batch_count() == before
