"""Our request rules checked against an independent source: the request types the installed SDK generates.

``airflow_batch.rules.params`` is what submit and the emulator both apply; these tests compare it with
``anthropic.types.message_create_params.MessageCreateParamsNonStreaming`` (and the beta one),
and the per-model rules with their data file, so a disagreement with the API's own types fails here.
"""

from __future__ import annotations

import json
import typing
from importlib import resources
from typing import Any

import pytest
from anthropic.types.beta.message_create_params import (
    MessageCreateParamsNonStreaming as BetaMessageCreateParams,
)
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming

from airflow_batch.emulator.models import refusal
from airflow_batch.emulator.sdk_types import sdk_problem
from airflow_batch.rules.costs import PriceTable
from airflow_batch.rules.models import default_rules
from airflow_batch.rules.params import Params
from airflow_batch.submit.validation import check_request

MODEL = "claude-haiku-4-5"

#: Parameters we accept that the SDK's types do not have, each with the reason it is kept.
KEPT_ON_PURPOSE = {
    name: "the SDK 2.13 types dropped it, but the API still takes it on models before Claude Opus 4.7; "
    "data/model_rules.json says which model takes it, and submit and the emulator check it per model"
    for name in ("temperature", "top_p", "top_k")
}
#: Parameters of the SDK's types we refuse in a request, each with the reason.
REFUSED_ON_PURPOSE = {
    "user_profile_id": "the SDK sends it as the anthropic-user-profile-id header, not in the body; "
    "a batch request's params carry no headers",
    "workspace_id": "the SDK sends it as the anthropic-workspace-id header; a job's workspace is its "
    "connection's, for the whole batch",
}
#: Beta-type parameters that are no request field at all.
NOT_A_FIELD = {"betas": "the SDK sends it as the anthropic-beta header (the job's betas=)"}


def sdk_fields(typed_dict: Any) -> set[str]:
    return set(typing.get_type_hints(typed_dict))


def req(cid: str = "r1", **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    body.update(params)
    return {"custom_id": cid, "params": body}


def test_every_parameter_we_accept_is_in_the_sdk_request_type_or_kept_on_purpose() -> None:
    ours = set(Params.__struct_fields__)
    assert ours - sdk_fields(MessageCreateParamsNonStreaming) == set(KEPT_ON_PURPOSE)


def test_every_parameter_of_the_sdk_request_type_is_accepted_or_refused_on_purpose() -> None:
    ours = set(Params.__struct_fields__)
    assert sdk_fields(MessageCreateParamsNonStreaming) - ours == set(REFUSED_ON_PURPOSE)
    for name in REFUSED_ON_PURPOSE:
        assert "unknown field" in str(check_request(req(**{name: "x"})))


def test_beta_parameters_pass_only_in_a_job_with_betas() -> None:
    beta_only = (
        sdk_fields(BetaMessageCreateParams) - sdk_fields(MessageCreateParamsNonStreaming) - set(NOT_A_FIELD)
    )
    assert {"context_management", "mcp_servers", "compaction"} <= beta_only
    for name in sorted(beta_only):
        request = req(**{name: {}})
        assert "unknown field" in str(check_request(request)), name  # as the non-beta type refuses it
        assert check_request(request, lenient=True) is None, name
        assert "Extra inputs are not permitted" in str(sdk_problem(request, beta=False)), name


# Structurally bad requests: our rules and the SDK's types must both refuse each, at the same field.
BAD = {
    "system not a string or blocks": (req(system=5), "params.system"),
    "malformed tool": (req(tools=[{"name": "lookup", "input_schema": "x"}]), "params.tools"),
    "non-boolean stream": (req(stream="no"), "params.stream"),
    "unknown block type": (
        req(messages=[{"role": "user", "content": [{"type": "video"}]}]),
        "params.messages",
    ),
    "text block without text": (
        req(messages=[{"role": "user", "content": [{"type": "text", "txt": "x"}]}]),
        "params.messages",
    ),
    "misspelt parameter": (req(temprature=0.1), "temprature"),
    "max_tokens a string": (req(max_tokens="5"), "params.max_tokens"),
    "unknown cache ttl": (
        req(system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]),
        "params.system",
    ),
    "beta parameter without betas": (req(context_management={"edits": []}), "context_management"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_the_sdk_types_refuse_what_our_rules_refuse_at_the_same_field(case: str) -> None:
    request, field = BAD[case]
    ours = check_request(request)
    theirs = sdk_problem(request, beta=False)
    assert ours is not None and field in ours.replace("[", ".").replace("]", "")
    assert theirs is not None and field in theirs


# Requests our rules accept: the SDK's types must accept each too.
GOOD = {
    "plain": req(),
    "every block and option": req(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "document", "source": {"type": "file", "file_id": "file_1"}, "title": "T"},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
        ],
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        max_tokens=4000,
        tools=[
            {"name": "lookup", "description": "Find", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
        tool_choice={"type": "auto"},
        thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        metadata={"user_id": "u1"},
        stop_sequences=["END"],
        service_tier="auto",
        inference_geo="us",
        temperature=0.2,
    ),
    "adaptive thinking": req(model="claude-sonnet-4-6", thinking={"type": "adaptive", "display": "omitted"}),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_requests_our_rules_accept_pass_the_sdk_types(case: str) -> None:
    assert check_request(GOOD[case]) is None
    assert sdk_problem(GOOD[case], beta=False) is None


# ---- per-model rules: data with their source -------------------------------------------------


def test_model_rules_are_data_with_a_source_for_families_of_the_model_table() -> None:
    raw = json.loads(resources.files("airflow_batch").joinpath("data/model_rules.json").read_text())
    assert raw["source"] and raw["as_of"]
    assert set(default_rules().families) <= set(PriceTable.default().prices)


@pytest.mark.parametrize(
    ("model", "params", "ours", "api"),
    [
        (
            "claude-opus-4-7",
            {"temperature": 0.2},
            "takes no sampling parameters",
            "`temperature` is deprecated",
        ),
        ("claude-sonnet-5-5", {"top_k": 5}, "takes no sampling parameters", "`top_k` is deprecated"),
        ("claude-sonnet-4-5-20250929", {"temperature": 0.2, "top_p": 0.9}, "not both", "cannot both"),
        (
            "claude-opus-4-7",
            {"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2048}},
            "'enabled' is not supported",
            '"thinking.type.enabled" is not supported',
        ),
        (
            "claude-opus-5-5",
            {"thinking": {"type": "disabled"}},
            "'disabled' is not supported",
            "not supported",
        ),
        (
            "claude-haiku-4-5",
            {"thinking": {"type": "adaptive"}},
            "'adaptive' is not supported",
            "not supported",
        ),
    ],
)
def test_a_request_its_model_refuses_is_refused_by_submit_and_the_emulator(
    model: str, params: dict[str, Any], ours: str, api: str
) -> None:
    problem = check_request(req(model=model, **params))
    assert problem is not None and ours in problem and model in problem
    sampling = {name: params[name] for name in ("temperature", "top_p", "top_k") if name in params}
    answer = refusal(model, sampling, params.get("thinking"))
    assert answer is not None and api in answer


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("claude-haiku-4-5", {"temperature": 0.2, "top_p": 0.9, "top_k": 5}),
        ("claude-opus-4-6", {"temperature": 0.2, "thinking": {"type": "adaptive"}}),
        ("claude-sonnet-5-5", {"thinking": {"type": "between_tools"}}),
        ("claude-opus-4-7", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}}),
    ],
)
def test_a_request_its_model_takes_passes_submit_and_the_emulator(model: str, params: dict[str, Any]) -> None:
    assert check_request(req(model=model, **params)) is None
    sampling = {name: params[name] for name in ("temperature", "top_p", "top_k") if name in params}
    assert refusal(model, sampling, params.get("thinking")) is None
