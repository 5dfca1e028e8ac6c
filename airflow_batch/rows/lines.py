"""The lines of a batch's results stream, as the package's own frozen types.

A results stream is JSONL, one individual response per line. The Structs below declare only the
fields a row needs; msgspec skips every other field while decoding, which is what makes millions
of lines cheap. Shapes follow the API's wire format (the SDK's batch result models): ``succeeded``
carries a Message, ``errored`` an ErrorResponse ``{"type": "error", "error": {"type", "message"},
"request_id"}``, ``canceled`` and ``expired`` nothing else. The stream's bytes
(:meth:`airflow_batch.api.BatchesApi.download_results`) are decoded a block at a time
(:mod:`airflow_batch.rows.gathered`), never through the SDK's models; this module imports neither
the SDK nor Airflow.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec


class CacheCreation(msgspec.Struct, frozen=True, gc=False):
    """Cache writes split by lifetime."""

    ephemeral_1h_input_tokens: int | None = None


class ServerToolUsage(msgspec.Struct, frozen=True, gc=False):
    """Server tool requests an answer made (billed per request)."""

    web_search_requests: int = 0
    web_fetch_requests: int = 0


class OutputDetails(msgspec.Struct, frozen=True, gc=False):
    """What the output tokens were spent on."""

    thinking_tokens: int = 0


class LineUsage(msgspec.Struct, frozen=True, gc=False):
    """Token usage of one succeeded request, as the API reports it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None
    server_tool_use: ServerToolUsage | None = None
    output_tokens_details: OutputDetails | None = None
    inference_geo: str | None = None


class ContentBlock(msgspec.Struct, frozen=True, gc=False):
    """A content block; only text blocks contribute to a row's ``text``.

    ``text`` stays raw JSON (a string literal): a single text block is copied to the row as
    is, never decoded and re-encoded, which is most of the cost of a line.
    """

    type: str
    text: msgspec.Raw = msgspec.Raw(b'""')


class Message(msgspec.Struct, frozen=True, gc=False):
    """The parts of a Message a result row keeps."""

    model: str = ""
    content: list[ContentBlock] = []
    stop_reason: str | None = None
    usage: LineUsage = msgspec.field(default_factory=LineUsage)


class MessageWithContent(msgspec.Struct, frozen=True, gc=False):
    """A Message whose ``content`` is kept as raw JSON, for rows that include it."""

    model: str = ""
    content: msgspec.Raw = msgspec.Raw(b"[]")
    stop_reason: str | None = None
    usage: LineUsage = msgspec.field(default_factory=LineUsage)
    stop_details: dict[str, Any] | None = None


class ErrorObject(msgspec.Struct, frozen=True, gc=False):
    """The inner ``{"type", "message"}`` of an error."""

    type: str = "unknown_error"
    message: str | None = None


class ErrorResponse(msgspec.Struct, frozen=True, gc=False):
    """An ErrorResponse: ``{"type": "error", "error": {...}, "request_id": ...}``."""

    error: ErrorObject = msgspec.field(default_factory=ErrorObject)
    request_id: str | None = None


M = TypeVar("M", Message, MessageWithContent)


class LineResult(msgspec.Struct, Generic[M], frozen=True, gc=False):
    """The ``result`` of a line: its ``type`` and, depending on it, a message or an error."""

    type: str
    message: M | None = None
    error: ErrorResponse | None = None


class ResultLine(msgspec.Struct, Generic[M], frozen=True, gc=False):
    """One line of a results stream."""

    custom_id: str
    result: LineResult[M]


class CustomIdOnly(msgspec.Struct, frozen=True, gc=False):
    """Any JSONL row reduced to its ``custom_id`` (requests, result and failure rows)."""

    custom_id: str


line_decoder = msgspec.json.Decoder(ResultLine[Message])
line_with_content_decoder = msgspec.json.Decoder(ResultLine[MessageWithContent])
custom_id_decoder = msgspec.json.Decoder(CustomIdOnly)
