"""Result lines of a Message Batch: parse them, turn them into rows, classify failures.

A results stream is JSONL, one ``MessageBatchIndividualResponse`` per line. The Structs
below declare only the fields a row needs; msgspec skips every other field while decoding,
which is what makes millions of lines cheap. Shapes follow the SDK models
(``anthropic.types.messages``): ``succeeded`` carries a Message, ``errored`` an
ErrorResponse ``{"type": "error", "error": {"type", "message"}, "request_id"}``,
``canceled`` and ``expired`` nothing else.

Result row (one JSON object per line of ``results/{batch_id}.jsonl``)::

    custom_id, batch_id, round, model, text (text blocks joined), stop_reason,
    usage {input_tokens, output_tokens, cache_creation_input_tokens,
           cache_creation_1h_input_tokens, cache_read_input_tokens},
    content (the full content blocks; only with include_content)

Failure row (``failures/{batch_id}.jsonl``)::

    custom_id, batch_id, round, result_type (errored|expired|canceled|missing|invalid_input),
    error_type, message, request_id, retryable
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Generic, TypeVar

import msgspec
from msgspec.structs import astuple

from airflow_batch.manifest import Usage, empty_usage

# Failures worth paying for again: transient server-side errors, requests the batch never
# reached (expired, canceled by our own deadline) and requests with no result line at all.
DEFAULT_RETRYABLE: frozenset[str] = frozenset(
    {
        "api_error",
        "overloaded_error",
        "rate_limit_error",
        "timeout_error",
        "expired",
        "canceled_by_timeout",
        "missing",
    }
)
RESULT_TYPES = ("succeeded", "errored", "expired", "canceled", "missing")

_FAILURE_MESSAGES = {
    "expired": "the batch expired before this request was processed",
    "canceled": "the batch was canceled before this request was processed",
    "missing": "the results of the batch have no line for this request",
}


# ---- result lines (input) -------------------------------------------------------------


class CacheCreation(msgspec.Struct, gc=False):
    """Cache writes split by lifetime."""

    ephemeral_1h_input_tokens: int | None = None


class LineUsage(msgspec.Struct, gc=False):
    """Token usage of one succeeded request, as the API reports it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None


class ContentBlock(msgspec.Struct, gc=False):
    """A content block; only text blocks contribute to a row's ``text``.

    ``text`` stays raw JSON (a string literal): a single text block is copied to the row as
    is, never decoded and re-encoded, which is most of the cost of a line.
    """

    type: str
    text: msgspec.Raw = msgspec.Raw(b'""')


class Message(msgspec.Struct, gc=False):
    """The parts of a Message a result row keeps."""

    model: str = ""
    content: list[ContentBlock] = []
    stop_reason: str | None = None
    usage: LineUsage = msgspec.field(default_factory=LineUsage)


class MessageWithContent(msgspec.Struct, gc=False):
    """A Message whose ``content`` is kept as raw JSON, for rows that include it."""

    model: str = ""
    content: msgspec.Raw = msgspec.Raw(b"[]")
    stop_reason: str | None = None
    usage: LineUsage = msgspec.field(default_factory=LineUsage)


class ErrorObject(msgspec.Struct, gc=False):
    """The inner ``{"type", "message"}`` of an error."""

    type: str = "unknown_error"
    message: str | None = None


class ErrorResponse(msgspec.Struct, gc=False):
    """An ErrorResponse: ``{"type": "error", "error": {...}, "request_id": ...}``."""

    error: ErrorObject = msgspec.field(default_factory=ErrorObject)
    request_id: str | None = None


M = TypeVar("M", Message, MessageWithContent)


class LineResult(msgspec.Struct, Generic[M], gc=False):
    """The ``result`` of a line: its ``type`` and, depending on it, a message or an error."""

    type: str
    message: M | None = None
    error: ErrorResponse | None = None


class ResultLine(msgspec.Struct, Generic[M], gc=False):
    """One line of a results stream."""

    custom_id: str
    result: LineResult[M]


class CustomIdOnly(msgspec.Struct, gc=False):
    """Any JSONL row reduced to its ``custom_id`` (requests, result and failure rows)."""

    custom_id: str


line_decoder = msgspec.json.Decoder(ResultLine[Message])
line_with_content_decoder = msgspec.json.Decoder(ResultLine[MessageWithContent])
custom_id_decoder = msgspec.json.Decoder(CustomIdOnly)
_blocks_decoder = msgspec.json.Decoder(list[ContentBlock])
_str_decoder = msgspec.json.Decoder(str)


# ---- rows (output) --------------------------------------------------------------------


class RowUsage(msgspec.Struct, gc=False):
    """Token usage of one result row."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int


class ResultRow(msgspec.Struct, gc=False):
    """A succeeded request, as written to the results files."""

    custom_id: str
    batch_id: str
    round: int
    model: str
    text: msgspec.Raw  # a JSON string literal, see ContentBlock
    stop_reason: str | None
    usage: RowUsage
    content: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class FailureRow(msgspec.Struct, gc=False):
    """A request without a usable result, as written to the failures files."""

    custom_id: str
    batch_id: str | None
    round: int
    result_type: str
    error_type: str | None
    message: str | None
    request_id: str | None
    retryable: bool


row_encoder = msgspec.json.Encoder()
failure_row_decoder = msgspec.json.Decoder(FailureRow)


def classify_failure(
    result_type: str,
    error_type: str | None,
    *,
    canceled_by_timeout: bool,
    retryable_types: Iterable[str] = DEFAULT_RETRYABLE,
) -> bool:
    """Return True when a failed request is worth resubmitting.

    ``retryable_types`` names error types (``overloaded_error``...) and the pseudo-types
    ``expired``, ``missing``, ``canceled_by_timeout`` and ``canceled`` (any cancel). An
    error type in neither default set is not retried: paying again for an unknown failure
    is the user's choice, made by adding it to ``retryable_types``.
    """
    allowed = retryable_types if isinstance(retryable_types, (set, frozenset)) else set(retryable_types)
    if result_type == "errored":
        return error_type is not None and error_type in allowed
    if result_type == "canceled":
        return "canceled" in allowed or (canceled_by_timeout and "canceled_by_timeout" in allowed)
    if result_type in ("expired", "missing"):
        return result_type in allowed
    return False


def text_of(content: list[ContentBlock] | msgspec.Raw) -> msgspec.Raw:
    """Return the text blocks of Message content (decoded or raw JSON) joined, as a JSON string."""
    blocks = _blocks_decoder.decode(content) if isinstance(content, msgspec.Raw) else content
    texts = [block.text for block in blocks if block.type == "text"]
    if len(texts) == 1:
        return texts[0]
    return msgspec.Raw(row_encoder.encode("".join(_str_decoder.decode(text) for text in texts)))


def to_usage(usage: LineUsage) -> RowUsage:
    """Return a row's usage from the API's, with absent counts as 0."""
    cache_creation = usage.cache_creation
    return RowUsage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens or 0,
        (cache_creation.ephemeral_1h_input_tokens or 0) if cache_creation is not None else 0,
        usage.cache_read_input_tokens or 0,
    )


def to_result_rows(lines: list[Any], *, batch_id: str, round_number: int) -> list[ResultRow]:
    """Return the result rows of ``succeeded`` lines (``ResultLine`` objects).

    Lines decoded with :data:`line_with_content_decoder` give rows with the full ``content``.
    This is the hot loop of a gather, hence a comprehension with the common case (a single
    text block, copied as raw JSON) inlined.
    """
    try:
        if lines and isinstance(lines[0].result.message.content, msgspec.Raw):  # type: ignore[union-attr]
            return [
                ResultRow(
                    line.custom_id,
                    batch_id,
                    round_number,
                    (message := line.result.message).model,
                    text_of(message.content),
                    message.stop_reason,
                    to_usage(message.usage),
                    message.content,
                )
                for line in lines
            ]
        return [
            ResultRow(
                line.custom_id,
                batch_id,
                round_number,
                (message := line.result.message).model,
                (
                    content[0].text
                    if len(content := message.content) == 1 and content[0].type == "text"
                    else text_of(content)
                ),
                message.stop_reason,
                to_usage(message.usage),
            )
            for line in lines
        ]
    except AttributeError:
        bad = next(line for line in lines if line.result.message is None)
        raise ValueError(
            f"custom_id {bad.custom_id!r} in batch {batch_id}: a succeeded result has no message"
        ) from None


def to_result_row(line: ResultLine[Any], *, batch_id: str, round_number: int) -> ResultRow:
    """Return the result row of one ``succeeded`` line."""
    return to_result_rows([line], batch_id=batch_id, round_number=round_number)[0]


def to_failure_row(
    line: ResultLine[Any],
    *,
    batch_id: str,
    round_number: int,
    canceled_by_timeout: bool = False,
    retryable_types: Iterable[str] = DEFAULT_RETRYABLE,
) -> FailureRow:
    """Return the failure row of an ``errored``, ``expired`` or ``canceled`` line."""
    result_type = line.result.type
    error_type = message = request_id = None
    if result_type == "errored":
        response = line.result.error or ErrorResponse()
        error_type, message, request_id = response.error.type, response.error.message, response.request_id
    else:
        message = _FAILURE_MESSAGES.get(result_type, f"unexpected result type {result_type!r}")
        if result_type == "canceled" and canceled_by_timeout:
            message = "canceled by the wait deadline before this request was processed"
    return FailureRow(
        custom_id=line.custom_id,
        batch_id=batch_id,
        round=round_number,
        result_type=result_type,
        error_type=error_type,
        message=message,
        request_id=request_id,
        retryable=classify_failure(
            result_type, error_type, canceled_by_timeout=canceled_by_timeout, retryable_types=retryable_types
        ),
    )


def missing_row(
    custom_id: str, *, batch_id: str, round_number: int, retryable_types: Iterable[str] = DEFAULT_RETRYABLE
) -> FailureRow:
    """Return the failure row of a request whose batch returned no line for it."""
    return FailureRow(
        custom_id=custom_id,
        batch_id=batch_id,
        round=round_number,
        result_type="missing",
        error_type=None,
        message=_FAILURE_MESSAGES["missing"],
        request_id=None,
        retryable=classify_failure(
            "missing", None, canceled_by_timeout=False, retryable_types=retryable_types
        ),
    )


# ---- blocks of lines ------------------------------------------------------------------


class BlockSettings(msgspec.Struct, frozen=True):
    """How the lines of one batch become rows; the same for every block of the batch."""

    batch_id: str
    round_number: int
    canceled_by_timeout: bool = False
    include_content: bool = False
    retryable_types: frozenset[str] = DEFAULT_RETRYABLE


class BlockRows(msgspec.Struct):
    """The rows of a block of result lines, encoded as JSONL, with their counts and usage."""

    results: bytes
    failures: bytes
    result_counts: dict[str, int]
    error_types: dict[str, int]
    retryable: int
    usage_by_model: dict[str, Usage]


SLICE_BYTES = 1 << 17
"""Lines decoded at a time: small enough for their objects to stay in the CPU's cache and
in the allocator's warm memory, which makes decoding ~2x faster than megabyte blocks."""


def block_rows(block: bytes, settings: BlockSettings, seen: set[str]) -> BlockRows:
    """Turn a block of complete result lines into encoded result and failure rows.

    ``seen`` holds the ``custom_id`` of every line kept so far in the batch; the block's
    are added to it. A line whose id is already there is dropped: a repeated ``custom_id``
    keeps its first line only. Raises ValueError naming the batch for a line that is not
    valid JSON or a succeeded result without a message.
    """
    out = BlockRows(b"", b"", {}, {}, 0, {})
    results: list[bytes] = []
    failures: list[bytes] = []
    view = memoryview(block)
    start = 0
    while start < len(block):
        end = block.find(b"\n", start + SLICE_BYTES) + 1 or len(block)
        _add_slice(out, results, failures, view[start:end], settings, seen)
        start = end
    out.results = b"".join(results)
    out.failures = b"".join(failures)
    return out


def _add_slice(
    out: BlockRows,
    results: list[bytes],
    failures: list[bytes],
    lines_json: memoryview,
    settings: BlockSettings,
    seen: set[str],
) -> None:
    """Add the rows of a slice of lines to ``out``, and the ids it keeps to ``seen``."""
    batch_id = settings.batch_id
    decoder = line_with_content_decoder if settings.include_content else line_decoder
    try:
        lines: list[Any] = decoder.decode_lines(lines_json)
    except msgspec.DecodeError as exc:
        raise ValueError(f"batch {batch_id}: a results line is not valid JSON ({exc})") from None
    fresh = set(map(_custom_id_of, lines))
    if len(fresh) == len(lines) and seen.isdisjoint(fresh):
        seen |= fresh
    else:
        lines = _first_lines(lines, seen)
    types = list(map(_result_type_of, lines))
    if types.count("succeeded") == len(lines):
        succeeded = lines
    else:
        succeeded = [line for line, kind in zip(lines, types, strict=True) if kind == "succeeded"]
    if succeeded:
        rows = to_result_rows(succeeded, batch_id=batch_id, round_number=settings.round_number)
        out.result_counts["succeeded"] = out.result_counts.get("succeeded", 0) + len(rows)
        _sum_usage_by_model(out.usage_by_model, rows)
        results.append(row_encoder.encode_lines(rows))
    if len(succeeded) != len(lines):
        failure_rows = [
            to_failure_row(
                line,
                batch_id=batch_id,
                round_number=settings.round_number,
                canceled_by_timeout=settings.canceled_by_timeout,
                retryable_types=settings.retryable_types,
            )
            for line in lines
            if line.result.type != "succeeded"
        ]
        _count_failures(out, failure_rows)
        failures.append(row_encoder.encode_lines(failure_rows))


def missing_rows(custom_ids: Iterable[str], settings: BlockSettings) -> BlockRows:
    """Return the failure rows of requests whose batch returned no line for them."""
    failures = [
        missing_row(
            custom_id,
            batch_id=settings.batch_id,
            round_number=settings.round_number,
            retryable_types=settings.retryable_types,
        )
        for custom_id in custom_ids
    ]
    out = BlockRows(b"", b"", {}, {}, 0, {})
    _count_failures(out, failures)
    out.failures = row_encoder.encode_lines(failures)
    return out


def _first_lines(lines: list[ResultLine[Any]], seen: set[str]) -> list[ResultLine[Any]]:
    """Return the lines whose ``custom_id`` is not in ``seen``, adding each kept id to it."""
    kept: list[ResultLine[Any]] = []
    for line in lines:
        if line.custom_id not in seen:
            seen.add(line.custom_id)
            kept.append(line)
    return kept


def _sum_usage_by_model(usage_by_model: dict[str, Usage], rows: list[ResultRow]) -> None:
    """Add the usage of result rows into per-model totals (columns summed, the fastest way)."""
    models = set(map(_model_of, rows))
    for model in models:
        usages = [row.usage for row in rows if len(models) == 1 or row.model == model]
        total = usage_by_model.setdefault(model, empty_usage())
        for key, column in zip(_USAGE_KEYS, zip(*map(astuple, usages), strict=True), strict=True):
            total[key] += sum(column)  # type: ignore[literal-required]


def _count_failures(out: BlockRows, failures: list[FailureRow]) -> None:
    """Add failure rows to the counts per result type and error type, and to ``retryable``."""
    counts, error_types = out.result_counts, out.error_types
    for failure in failures:
        counts[failure.result_type] = counts.get(failure.result_type, 0) + 1
        if failure.error_type is not None:
            error_types[failure.error_type] = error_types.get(failure.error_type, 0) + 1
        if failure.retryable:
            out.retryable += 1


_model_of = attrgetter("model")
_custom_id_of = attrgetter("custom_id")
_result_type_of = attrgetter("result.type")
_USAGE_KEYS = RowUsage.__struct_fields__
