"""Structural validation of a create body or a message body, with the package's one set of rules.

A body is checked against :mod:`airflow_batch.rules.params` (the rules the submit validation uses
too, so the two cannot drift): any problem raises ``InvalidBatch`` whose message names the
request index, e.g. ``requests.17: custom_id 'a b' must match ^[a-zA-Z0-9_-]{1,64}$`` or
``requests.3.params.system: Expected `str | array | null`, got `int```. A request with
``anthropic-beta`` headers may carry parameters the rules do not know. The first requests of
each create are then checked again, independently, against the SDK's own request types
(:mod:`airflow_batch.emulator.sdk_types`), so a request our rules accept and the API's types
refuse is refused here too, and a test comparing the two can fail. The body is then
decoded again into small working structs (lighter than dicts for 100,000 requests). Semantic
problems a real API reports per request (a model it does not serve) are not checked here:
those requests come back ``errored`` (see ``responses``).

The body of ``POST /v1/messages`` is one request's params, checked by the same types and by
:func:`airflow_batch.rules.params.message_rules` (no batch refusals); its messages name the field
from the top (``max_tokens is missing``, ``messages.0.role: ...``).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from airflow_batch.emulator.sdk_types import sdk_problem
from airflow_batch.rules.params import (
    LenientParams,
    LenientRequest,
    Request,
    batch_rules,
    check_custom_id,
    located,
    message_rules,
)
from airflow_batch.rules.params import Params as CheckedParams


class Message(msgspec.Struct, gc=False):
    """One entry of ``params.messages``."""

    role: str
    content: str | list[dict[str, Any]]


class Params(msgspec.Struct, gc=False):
    """The ``params`` of one request (checked already); fields the emulator does not use are ignored."""

    model: str
    max_tokens: int
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    inference_geo: str | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None


class BatchRequest(msgspec.Struct, gc=False):
    """One entry of ``requests``."""

    custom_id: str
    params: Params


class CreateBody(msgspec.Struct, gc=False):
    """The body of ``POST /v1/messages/batches``."""

    requests: list[BatchRequest]


class _StrictBody(msgspec.Struct):
    requests: list[Request]


class _LenientBody(msgspec.Struct):
    requests: list[LenientRequest]


class CountTokensBody(msgspec.Struct, gc=False):
    """The body of ``POST /v1/messages/count_tokens``."""

    model: str
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class _RawBody(msgspec.Struct):
    requests: list[msgspec.Raw]


#: Requests of each create checked against the SDK's types as well (see :func:`sdk_check`).
SDK_CHECKED = 1_000


class InvalidBatch(ValueError):
    """The create body is structurally invalid; the message is the API error message."""


def _api_path(message: str) -> str:
    """Write indexes the way the API's messages do: ``requests.17.params`` for ``requests[17].params``."""
    return re.sub(r"\[(\d+)\]", r".\1", message)


def decode_body(body: bytes | bytearray, body_type: type[Any]) -> Any:
    """Return ``body`` decoded as ``body_type``; raise InvalidBatch with a located message."""
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidBatch(_api_path(located(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBatch(f"There was an error parsing the body of your request: {exc}") from None
    except RecursionError:
        raise InvalidBatch("There was an error parsing the body of your request: nested too deeply") from None


def parse_create_body(
    body: bytes | bytearray, *, max_requests: int, lenient: bool = False
) -> list[BatchRequest]:
    """Return the requests of a create body, checked structurally; raise InvalidBatch otherwise."""
    checked = decode_body(body, _LenientBody if lenient else _StrictBody).requests
    if not checked:
        raise InvalidBatch("requests: at least one request is required")
    if len(checked) > max_requests:
        raise InvalidBatch(
            f"requests: a batch holds at most {max_requests:,} requests, got {len(checked):,}; "
            "split it into several batches"
        )
    seen: set[str] = set()
    for index, request in enumerate(checked):
        custom_id = request.custom_id
        problem = check_custom_id(custom_id) or batch_rules(request.params, lenient=lenient)
        if problem:
            raise InvalidBatch(f"requests.{index}: {_api_path(problem)}")
        if custom_id in seen:
            raise InvalidBatch(
                f"requests.{index}: custom_id {custom_id!r} is used by an earlier request; "
                "custom_id must be unique within a batch"
            )
        seen.add(custom_id)
    del checked
    sdk_check(body, beta=lenient)
    requests: list[BatchRequest] = decode_body(body, CreateBody).requests
    return requests


def sdk_check(body: bytes | bytearray, *, beta: bool) -> None:
    """Raise InvalidBatch if the SDK's request types refuse one of the first requests of a create body.

    The independent check (:mod:`airflow_batch.emulator.sdk_types`), on the first
    ``SDK_CHECKED`` requests: every request of a job is built by one code path, so a
    disagreement shows in the first ones, and a 100,000-request create stays fast.
    """
    for index, raw in enumerate(decode_body(body, _RawBody).requests[:SDK_CHECKED]):
        problem = sdk_problem(msgspec.json.decode(raw), beta=beta, index=index)
        if problem:
            raise InvalidBatch(problem)


def parse_message_body(body: bytes | bytearray, *, lenient: bool = False) -> Params:
    """Return the body of ``POST /v1/messages``, checked with the shared rules; raise InvalidBatch.

    The message names the field as the API does (``max_tokens: ...``, ``messages.0.content: ...``).
    """
    checked = decode_body(body, LenientParams if lenient else CheckedParams)
    if checked.stream:
        raise InvalidBatch(
            "stream: the emulator answers POST /v1/messages without streaming; send stream: false "
            "(or leave it out)"
        )
    problem = message_rules(checked, lenient=lenient)
    if problem:
        raise InvalidBatch(_api_path(problem.removeprefix("params.")))
    params: Params = decode_body(body, Params)
    return params
