"""Structural validation of a create body, done synchronously as the real API does.

A body is decoded with msgspec straight into small structs (fast, and lighter than
dicts for 100,000 requests), then checked in one pass. Any problem raises
``InvalidBatch`` whose message names the request index, e.g.
``requests.17: custom_id 'a b' must match ^[a-zA-Z0-9_-]{1,64}$``. Semantic problems a
real API reports per request (empty ``messages``, an unknown role, a non-Claude model)
are not checked here: those requests come back ``errored`` (see ``responses``).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$")


class Message(msgspec.Struct, gc=False):
    """One entry of ``params.messages``."""

    role: str
    content: str | list[dict[str, Any]]


class Params(msgspec.Struct, gc=False):
    """The ``params`` of one batch request; fields the emulator does not use are ignored."""

    model: str
    max_tokens: int
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    stream: bool | None = None


class BatchRequest(msgspec.Struct, gc=False):
    """One entry of ``requests``."""

    custom_id: str
    params: Params


class CreateBody(msgspec.Struct, gc=False):
    """The body of ``POST /v1/messages/batches``."""

    requests: list[BatchRequest]


class CountTokensBody(msgspec.Struct, gc=False):
    """The body of ``POST /v1/messages/count_tokens``."""

    model: str
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class InvalidBatch(ValueError):
    """The create body is structurally invalid; the message is the API error message."""


def _msgspec_message(exc: msgspec.MsgspecError) -> str:
    """Turn ``... - at `$.requests[17].params``` into ``requests.17.params: ...``."""
    match = _MSGSPEC_PATH.match(str(exc))
    if not match:
        return str(exc)
    path = re.sub(r"\[(\d+)\]", r".\1", match["path"]).lstrip(".")
    return f"{path}: {match['message']}" if path else match["message"]


def decode_body(body: bytes | bytearray, body_type: type[Any]) -> Any:
    """Return ``body`` decoded as ``body_type``; raise InvalidBatch with a located message."""
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidBatch(_msgspec_message(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidBatch(f"There was an error parsing the body of your request: {exc}") from None


def parse_create_body(body: bytes | bytearray, *, max_requests: int) -> list[BatchRequest]:
    """Return the requests of a create body, checked structurally; raise InvalidBatch otherwise."""
    requests = decode_body(body, CreateBody).requests
    if not requests:
        raise InvalidBatch("requests: at least one request is required")
    if len(requests) > max_requests:
        raise InvalidBatch(
            f"requests: a batch holds at most {max_requests:,} requests, got {len(requests):,}; "
            "split it into several batches"
        )
    seen: set[str] = set()
    match_custom_id = CUSTOM_ID_PATTERN.match
    for index, request in enumerate(requests):
        custom_id = request.custom_id
        if not match_custom_id(custom_id):
            raise InvalidBatch(
                f"requests.{index}: custom_id {custom_id!r} must match {CUSTOM_ID_PATTERN.pattern}"
            )
        if custom_id in seen:
            raise InvalidBatch(
                f"requests.{index}: custom_id {custom_id!r} is used by an earlier request; "
                "custom_id must be unique within a batch"
            )
        seen.add(custom_id)
        params = request.params
        if params.max_tokens < 1:
            raise InvalidBatch(f"requests.{index}.params.max_tokens: must be >= 1, got {params.max_tokens}")
        if params.stream:
            raise InvalidBatch(f"requests.{index}.params.stream: streaming is not supported in batches")
    return requests
