"""Result lines of a Message Batch: parse them, turn them into rows, classify failures.

A results stream is JSONL, one ``MessageBatchIndividualResponse`` per line. The Structs
below declare only the fields a row needs; msgspec skips every other field while decoding,
which is what makes millions of lines cheap. Shapes follow the SDK models
(``anthropic.types.messages``): ``succeeded`` carries a Message, ``errored`` an
ErrorResponse ``{"type": "error", "error": {"type", "message"}, "request_id"}``,
``canceled`` and ``expired`` nothing else.

The common answer (text blocks only, a normal stop) takes the fast path: its text block is
copied as raw JSON, never decoded and re-encoded. Any other answer (tool calls, a paused or
refused turn, several blocks) takes a slower path that reads the line again in full.

Result row (one JSON object per line of ``results/{batch_id}.jsonl``)::

    custom_id, row (the request's input row, 1-based), batch_id, round, model, stop_reason,
    text (text blocks only, joined; thinking never), usage {input_tokens, output_tokens,
    cache_creation_input_tokens (all writes), cache_creation_1h_input_tokens, cache_read_input_tokens,
    and where present web_search_requests, web_fetch_requests, thinking_tokens, inference_geo},
    output (the parsed JSON answer, with an output schema), tool_calls ([{id, name, input}]),
    content (the full blocks, with include_content), input (passthrough fields of the record)

Failure row (``failures/{batch_id}.jsonl``)::

    custom_id, row, batch_id, round, result_type, error_type, message, request_id, retryable,
    and for an answer that was billed but is not a result: model, stop_reason, text, usage
    (and content for a paused turn, which the retry round continues), input

``result_type``: errored, expired, canceled, missing (no line at all), invalid_input (refused
before submission), invalid_output (not JSON of the job's schema, or a line that cannot be read),
paused (``pause_turn``), refused (``refusal``), context_window_exceeded
(``model_context_window_exceeded``).

One bad answer is one failure row, never a failed batch: a line that is not valid JSON or UTF-8
(a lone surrogate escape, a stray byte) is an ``invalid_output`` failure of its ``custom_id``
(a line without a readable id is left to be reported ``missing``), and an answer too deeply
nested to check, or that cannot be decoded, is an ``invalid_output`` failure too. Checking
takes bounded time (see :mod:`airflow_batch.schema`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from airflow_batch.costs import usage_key
from airflow_batch.manifest import Usage, empty_usage

if TYPE_CHECKING:
    from airflow_batch.schema import Validator

log = logging.getLogger(__name__)

# Failures worth paying for again: transient server-side errors, requests the batch never
# reached (expired, canceled by our own deadline), requests with no result line at all, a
# paused server-tool turn (the retry continues it) and an answer not valid for the schema.
DEFAULT_RETRYABLE: frozenset[str] = frozenset(
    {
        "api_error",
        "overloaded_error",
        "rate_limit_error",
        "timeout_error",
        "expired",
        "canceled_by_timeout",
        "missing",
        "paused",
        "invalid_output",
    }
)
RESULT_TYPES = (
    "succeeded",
    "errored",
    "expired",
    "canceled",
    "missing",
    "invalid_output",
    "paused",
    "refused",
    "context_window_exceeded",
)
#: Stop reasons of an answer that is a result; any other makes the answer a failure.
NORMAL_STOPS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", None})
#: Failure kind of each stop reason that ends an answer without a result.
FAILED_STOPS = {
    "pause_turn": "paused",
    "refusal": "refused",
    "model_context_window_exceeded": "context_window_exceeded",
}
#: The ``error_type`` of a request our own wait deadline cancelled; any other ``canceled`` row was
#: cancelled outside this job (in the Console, by another process).
CANCELED_BY_TIMEOUT = "canceled_by_timeout"
_FAILURE_MESSAGES = {
    "expired": "the batch expired before this request was processed",
    "canceled": "the batch was canceled before this request was processed",
    "missing": "the results of the batch have no line for this request",
    "paused": "a server tool paused the turn (stop_reason pause_turn); a retry round continues it",
    "refused": "the model declined to answer (stop_reason refusal)",
    "context_window_exceeded": (
        "the answer stopped at the model's context window (stop_reason model_context_window_exceeded); "
        "shorten the input or lower max_tokens"
    ),
}


# ---- result lines (input) -------------------------------------------------------------


class CacheCreation(msgspec.Struct, gc=False):
    """Cache writes split by lifetime."""

    ephemeral_1h_input_tokens: int | None = None


class ServerToolUsage(msgspec.Struct, gc=False):
    """Server tool requests an answer made (billed per request)."""

    web_search_requests: int = 0
    web_fetch_requests: int = 0


class OutputDetails(msgspec.Struct, gc=False):
    """What the output tokens were spent on."""

    thinking_tokens: int = 0


class LineUsage(msgspec.Struct, gc=False):
    """Token usage of one succeeded request, as the API reports it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None
    server_tool_use: ServerToolUsage | None = None
    output_tokens_details: OutputDetails | None = None
    inference_geo: str | None = None


class ContentBlock(msgspec.Struct, gc=False):
    """A content block; only text blocks contribute to a row's ``text``.

    ``text`` stays raw JSON (a string literal): a single text block is copied to the row as
    is, never decoded and re-encoded, which is most of the cost of a line.
    """

    type: str
    text: msgspec.Raw = msgspec.Raw(b'""')


class ToolCall(msgspec.Struct, gc=False):
    """A ``tool_use`` block as a row keeps it."""

    id: str
    name: str
    input: msgspec.Raw


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
    stop_details: dict[str, Any] | None = None


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
_blocks_decoder = msgspec.json.Decoder(list[dict[str, Any]])
_str_decoder = msgspec.json.Decoder(str)
_strs_decoder = msgspec.json.Decoder(list[str])


# ---- rows (output) --------------------------------------------------------------------


class RowUsage(msgspec.Struct, gc=False, omit_defaults=True):
    """Token usage of one row; the counts an answer did not use are left out."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    thinking_tokens: int = 0
    inference_geo: str | None = None


class ResultRow(msgspec.Struct, gc=False, omit_defaults=True):
    """A succeeded request, as written to the results files."""

    custom_id: str
    row: int | None
    batch_id: str
    round: int
    model: str
    stop_reason: str | None
    text: msgspec.Raw  # a JSON string literal, see ContentBlock
    usage: RowUsage
    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET
    content: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    input: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class FailureRow(msgspec.Struct, gc=False, omit_defaults=True):
    """A request without a usable result, as written to the failures files."""

    custom_id: str
    row: int | None
    batch_id: str | None
    round: int
    result_type: str
    error_type: str | None
    message: str | None
    request_id: str | None
    retryable: bool
    # An answer that was billed but is no result (paused, refused, invalid output...):
    model: str | None = None
    stop_reason: str | None = None
    text: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    usage: RowUsage | None = None
    content: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    input: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class StoredAnswer(msgspec.Struct, gc=False, omit_defaults=True):
    """What the answer store keeps of a result row: the answer, without what belongs to one run."""

    model: str
    stop_reason: str | None
    text: msgspec.Raw
    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET
    content: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


row_encoder = msgspec.json.Encoder()
failure_row_decoder = msgspec.json.Decoder(FailureRow)


def stored_answer(row: ResultRow) -> bytes:
    """Return the answer JSON the answer store keeps of a result row (see :class:`StoredAnswer`)."""
    return row_encoder.encode(
        StoredAnswer(row.model, row.stop_reason, row.text, row.output, row.tool_calls, row.content)
    )


_stored_answer_decoder = msgspec.json.Decoder(StoredAnswer)
_str_decoder = msgspec.json.Decoder(str)


@dataclass(frozen=True)
class ReuseCheck:
    """Judges an answer read back from the answer store exactly as gather judges a fresh one.

    A store is written by other jobs, other versions and possibly a stranger, so nothing in it is
    taken as stored: the answer must decode, must not be a failed stop (refusal, paused turn,
    context window), with an output schema its text must be valid JSON of the schema (its
    ``output`` is derived again from the text, as gather derives it), and with
    ``include_content`` it must carry its content blocks.
    """

    validator: Validator | None = None
    include_content: bool = False

    def __call__(self, answer: bytes) -> bytes | str:
        """Return the answer to splice into a result row, or why it cannot be reused."""
        try:
            stored = _stored_answer_decoder.decode(answer)
            text = _str_decoder.decode(stored.text)
        except msgspec.DecodeError as exc:
            return f"the stored answer is damaged ({exc})"
        kind = FAILED_STOPS.get(stored.stop_reason or "")
        if kind is not None:
            return f"the stored answer is a {kind} answer (stop_reason {stored.stop_reason!r})"
        if self.include_content and stored.content is msgspec.UNSET:
            return "the stored answer has no content blocks and this job keeps them (include_content=True)"
        if not self.include_content:
            stored.content = msgspec.UNSET
        stored.output = msgspec.UNSET  # derived again below, never taken as stored
        if self.validator is not None and stored.tool_calls is msgspec.UNSET:
            problem = self.validator.check(text)
            if problem is not None:
                return f"the stored answer is not valid for this job's output schema: {problem}"
            stored.output = msgspec.Raw(text.encode())
        return row_encoder.encode(stored)


def classify_failure(
    result_type: str,
    error_type: str | None,
    *,
    canceled_by_timeout: bool,
    retryable_types: Iterable[str] = DEFAULT_RETRYABLE,
) -> bool:
    """Return True when a failed request is worth resubmitting.

    ``retryable_types`` names error types (``overloaded_error``...) and the kinds
    ``expired``, ``missing``, ``canceled_by_timeout``, ``canceled`` (any cancel), ``paused``,
    ``invalid_output``, ``refused`` and ``context_window_exceeded``. An error type in neither
    default set is not retried: paying again for an unknown failure is the user's choice,
    made by adding it to ``retryable_types``.
    """
    allowed = retryable_types if isinstance(retryable_types, (set, frozenset)) else set(retryable_types)
    if result_type == "errored":
        return error_type is not None and error_type in allowed
    if result_type == "canceled":
        return "canceled" in allowed or (canceled_by_timeout and "canceled_by_timeout" in allowed)
    return result_type in allowed and result_type != "invalid_input"


def text_of(content: list[ContentBlock] | msgspec.Raw) -> msgspec.Raw:
    """Return the text blocks of Message content (decoded or raw JSON) joined, as a JSON string."""
    if isinstance(content, msgspec.Raw):
        blocks = _blocks_decoder.decode(content)
        texts = [block.get("text", "") for block in blocks if block.get("type") == "text"]
        return msgspec.Raw(row_encoder.encode("".join(texts)))
    texts = [block.text for block in content if block.type == "text"]
    if len(texts) == 1:
        return texts[0]
    return msgspec.Raw(row_encoder.encode("".join(_str_decoder.decode(text) for text in texts)))


def to_usage(usage: LineUsage) -> RowUsage:
    """Return a row's usage from the API's, with absent counts as 0."""
    cache_creation = usage.cache_creation
    tools = usage.server_tool_use
    details = usage.output_tokens_details
    return RowUsage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens or 0,
        (cache_creation.ephemeral_1h_input_tokens or 0) if cache_creation is not None else 0,
        usage.cache_read_input_tokens or 0,
        tools.web_search_requests if tools is not None else 0,
        tools.web_fetch_requests if tools is not None else 0,
        details.thinking_tokens if details is not None else 0,
        usage.inference_geo,
    )


# ---- blocks of lines ------------------------------------------------------------------


class InputMeta(msgspec.Struct, gc=False):
    """What submit recorded of a request (a line of its chunk's inputs twin): its input row, its
    passthrough fields (raw JSON) and, with an answer store, its fingerprint.

    Decoded straight from the twin and kept as is: a gather looks one up per row."""

    custom_id: str = ""
    row: int | None = None
    # Not ``Raw | None``: msgspec 0.22 decodes that union as null only. No passthrough fields
    # is an empty (falsy) Raw.
    input: msgspec.Raw = msgspec.Raw()
    fingerprint: str | None = None


@dataclass(frozen=True)
class BlockSettings:
    """How the lines of one batch become rows; the same for every block of the batch.

    :param inputs: ``custom_id -> (input row, passthrough fields)`` of the batch's requests.
    :param validator: the job's compiled output schema, when it has one.
    :param long_prompt_above: ``model -> input tokens above which it is priced at its
        long-prompt tier`` (None: no tier).
    :param residency_geos: ``inference_geo`` values priced with the data-residency multiplier.
    :param keep_rows: keep the result row objects in :attr:`BlockRows.result_rows` (answer store).
    """

    batch_id: str
    round_number: int
    canceled_by_timeout: bool = False
    include_content: bool = False
    retryable_types: frozenset[str] = DEFAULT_RETRYABLE
    inputs: Mapping[str, InputMeta] = field(default_factory=dict)
    validator: Validator | None = None
    long_prompt_above: Callable[[str], int | None] = lambda model: None
    residency_geos: frozenset[str] = frozenset()
    keep_rows: bool = False


@dataclass
class BlockRows:
    """The rows of a block of result lines, encoded as JSONL, with their counts and usage."""

    results: bytes = b""
    failures: bytes = b""
    result_counts: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    retryable: int = 0
    usage_by_model: dict[str, Usage] = field(default_factory=dict)
    #: Per model: rows by result type, and the retryable failures by type. ``""``: a failure whose
    #: result names no model (errored, expired, canceled, missing).
    counts_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    retryable_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The result rows themselves, for the answer store (kept only when asked: ``keep_rows``).
    result_rows: list[ResultRow] = field(default_factory=list)


SLICE_BYTES = 1 << 17
"""Lines decoded at a time: small enough for their objects to stay in the CPU's cache and
in the allocator's warm memory, which makes decoding ~2x faster than megabyte blocks."""


def block_rows(block: bytes, settings: BlockSettings, seen: set[str]) -> BlockRows:
    """Turn a block of complete result lines into encoded result and failure rows.

    ``seen`` holds the ``custom_id`` of every line kept so far in the batch; the block's
    are added to it. A line whose id is already there is dropped: a repeated ``custom_id``
    keeps its first line only. Never raises for a line: one that cannot be read is a failure
    row of its own (see the module docstring).
    """
    out = BlockRows()
    # Answers are copied as raw JSON, so nothing else would notice invalid UTF-8 in one; with a
    # schema every answer is decoded (and so checked) anyway. An ASCII block needs no check.
    checked_utf8 = settings.validator is None and not block.isascii()
    results: list[bytes] = []
    failures: list[bytes] = []
    view = memoryview(block)
    start = 0
    while start < len(block):
        end = block.find(b"\n", start + SLICE_BYTES) + 1 or len(block)
        _add_slice(out, results, failures, view[start:end], settings, seen, checked_utf8)
        start = end
    out.results = b"".join(results)
    out.failures = b"".join(failures)
    return out


def _is_plain(message: Message) -> bool:
    """Return whether an answer takes the fast path: text blocks only, and a normal stop."""
    return message.stop_reason in NORMAL_STOPS and all(block.type == "text" for block in message.content)


def _add_slice(
    out: BlockRows,
    results: list[bytes],
    failures: list[bytes],
    lines_json: memoryview,
    settings: BlockSettings,
    seen: set[str],
    checked_utf8: bool = False,
) -> None:
    """Add the rows of a slice of lines to ``out``, and the ids it keeps to ``seen``."""
    unreadable: list[FailureRow] = []
    try:
        if checked_utf8:
            str(lines_json, "utf-8")
        lines: list[Any] = line_decoder.decode_lines(lines_json)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        lines, unreadable = _lines_one_by_one(lines_json, settings)
    fresh = set(map(_custom_id_of, lines))
    if len(fresh) == len(lines) and seen.isdisjoint(fresh) and not unreadable:
        seen |= fresh
    else:
        unreadable = _first_lines(unreadable, seen)
        lines = _first_lines(lines, seen)
    plain: list[Any] = []
    other: list[Any] = []
    fast = not settings.include_content
    for line in lines:  # the hot loop: _is_plain inlined for the common one-text-block answer
        result = line.result
        if result.type != "succeeded":
            other.append(line)
            continue
        message = result.message
        if message is None:  # _other_row makes it a failure of its own
            other.append(line)
            continue
        content = message.content
        if (
            fast
            and message.stop_reason in NORMAL_STOPS
            and ((len(content) == 1 and content[0].type == "text") or _is_plain(message))
        ):
            plain.append(line)
        else:
            other.append(line)
    rows, failure_rows = _plain_rows(plain, settings)
    failure_rows += unreadable
    if other:
        full = _full_lines(lines_json, {line.custom_id for line in other if line.result.type == "succeeded"})
        for line in other:
            try:
                row = _other_row(line, full.get(line.custom_id), settings)
            except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:  # e.g. a 5,000-deep tool input
                row = _unreadable_row(line.custom_id, f"the answer cannot be read ({exc})", settings)
            (rows if isinstance(row, ResultRow) else failure_rows).append(row)
    if rows:
        if settings.keep_rows:
            out.result_rows.extend(rows)
        out.result_counts["succeeded"] = out.result_counts.get("succeeded", 0) + len(rows)
        for model, count in Counter(map(_model_of, rows)).items():  # counted in C: the hot path
            by_type = out.counts_by_model.setdefault(model, {})
            by_type["succeeded"] = by_type.get("succeeded", 0) + count
        _sum_usage(out.usage_by_model, rows, settings)
        results.append(row_encoder.encode_lines(rows))
    if failure_rows:
        _count_failures(out, failure_rows)
        billed = [row for row in failure_rows if row.usage is not None]
        if billed:
            _sum_usage(out.usage_by_model, billed, settings)
        failures.append(row_encoder.encode_lines(failure_rows))


def _plain_rows(lines: list[Any], settings: BlockSettings) -> tuple[list[Any], list[Any]]:
    """Return the rows of plain answers (the hot loop of a gather, hence one comprehension)."""
    batch_id, number, inputs = settings.batch_id, settings.round_number, settings.inputs
    rows = [
        ResultRow(
            line.custom_id,
            (meta := inputs.get(line.custom_id, _NO_META)).row,
            batch_id,
            number,
            (message := line.result.message).model,
            message.stop_reason,
            (
                content[0].text
                if len(content := message.content) == 1 and content[0].type == "text"
                else text_of(content)
            ),
            to_usage(message.usage),
            input=meta.input or msgspec.UNSET,
        )
        for line in lines
    ]
    if settings.validator is None:
        return rows, []
    return _checked(rows, settings)


_NO_META = InputMeta()


def _checked(rows: list[ResultRow], settings: BlockSettings) -> tuple[list[Any], list[Any]]:
    """Return the rows whose text is valid for the schema (with ``output``) and invalid_output failures."""
    assert settings.validator is not None
    check, decode = settings.validator.check, settings.validator.decode
    valid: list[Any] = []
    invalid: list[Any] = []
    try:  # the answers' string literals decoded in one call: half the cost of one call per row
        texts: list[Any] = _strs_decoder.decode(b"[" + b",".join([row.text for row in rows]) + b"]")
    except (msgspec.DecodeError, UnicodeDecodeError):
        texts = [_text_or_none(row.text) for row in rows]
    for row, text in zip(rows, texts, strict=True):
        if text is None:  # billed, so its usage counts; its text is not kept
            failure = _billed_failure(row, "invalid_output", "the answer is not valid text (UTF-8)", settings)
            failure.text = failure.content = msgspec.UNSET
            invalid.append(failure)
            continue
        if decode is not None:  # the compiled schema: valid unless it raises
            try:
                decode(text)
            except (msgspec.DecodeError, RecursionError):  # ValidationError included; check() says why
                pass
            else:
                row.output = msgspec.Raw(text)
                valid.append(row)
                continue
        problem = check(text)
        if problem is None:
            row.output = msgspec.Raw(text)
            valid.append(row)
            continue
        cut = row.stop_reason == "max_tokens"
        message = f"the answer is not valid for the output schema: {problem}"
        if cut:
            message += (
                f"; it was cut at max_tokens ({row.usage.output_tokens:,} output tokens): raise max_tokens, "
                "a retry with the same limit would be cut again"
            )
        invalid.append(_billed_failure(row, "invalid_output", message, settings, retryable=not cut))
    return valid, invalid


def _text_or_none(text: msgspec.Raw) -> str | None:
    """Return an answer's text decoded, or None when its string literal cannot be decoded."""
    try:
        decoded: str = _str_decoder.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return decoded


_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([a-zA-Z0-9_-]{1,64})"')


def _lines_one_by_one(lines_json: memoryview, settings: BlockSettings) -> tuple[list[Any], list[FailureRow]]:
    """Return the readable lines of a slice, and a failure row for each line that cannot be read.

    The slow path of a slice holding a line msgspec refused (or, in a job without a schema, a
    line that is not UTF-8): each line is decoded alone, so only the bad one fails.
    """
    lines: list[Any] = []
    unreadable: list[FailureRow] = []
    for raw in bytes(lines_json).split(b"\n"):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
            lines.append(line_decoder.decode(raw))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            found = _CUSTOM_ID.search(raw)
            if found is None:  # no id to report it under: its request is reported missing
                log.warning(
                    "batch %s: skipped a results line with no readable custom_id (%s)", settings.batch_id, exc
                )
                continue
            why = f"the result line cannot be read ({exc}); it is not valid JSON or UTF-8"
            unreadable.append(_unreadable_row(found[1].decode(), why, settings))
    return lines, unreadable


def _unreadable_row(custom_id: str, message: str, settings: BlockSettings) -> FailureRow:
    """Return the ``invalid_output`` failure of an answer that cannot be read (nothing of it is kept)."""
    meta = settings.inputs.get(custom_id, _NO_META)
    return FailureRow(
        custom_id,
        meta.row,
        settings.batch_id,
        settings.round_number,
        "invalid_output",
        None,
        message,
        None,
        classify_failure(
            "invalid_output", None, canceled_by_timeout=False, retryable_types=settings.retryable_types
        ),
        input=meta.input or msgspec.UNSET,
    )


def _billed_failure(
    row: ResultRow, kind: str, message: str, settings: BlockSettings, *, retryable: bool | None = None
) -> FailureRow:
    """Return the failure row of an answer that was billed but is not a result."""
    if retryable is None:
        retryable = classify_failure(
            kind, None, canceled_by_timeout=False, retryable_types=settings.retryable_types
        )
    else:
        retryable = retryable and kind in settings.retryable_types
    return FailureRow(
        row.custom_id,
        row.row,
        row.batch_id,
        row.round,
        kind,
        None,
        message,
        None,
        retryable,
        model=row.model,
        stop_reason=row.stop_reason,
        text=row.text,
        usage=row.usage,
        content=row.content,
        input=row.input,
    )


def _full_lines(lines_json: memoryview, ids: set[str]) -> dict[str, ResultLine[MessageWithContent]]:
    """Return the lines of ``ids`` decoded in full (content as raw JSON): the slow path."""
    if not ids:
        return {}
    found: dict[str, ResultLine[MessageWithContent]] = {}
    for raw in bytes(lines_json).split(b"\n"):
        try:
            if raw.strip() and custom_id_decoder.decode(raw).custom_id in ids:
                line = line_with_content_decoder.decode(raw)
                found.setdefault(line.custom_id, line)
        except (msgspec.DecodeError, RecursionError):
            continue  # an unreadable line of the slice: already a failure row of its own
    return found


def _other_row(line: Any, full: ResultLine[MessageWithContent] | None, settings: BlockSettings) -> Any:
    """Return the row of an answer off the fast path, or the failure row of a failed line."""
    meta = settings.inputs.get(line.custom_id, _NO_META)
    if line.result.type != "succeeded":
        return to_failure_row(line, settings, meta)
    if full is None or full.result.message is None:
        why = "the answer cannot be read in full" if full is None else "a succeeded result has no message"
        return _unreadable_row(line.custom_id, why, settings)
    message = full.result.message
    blocks = _blocks_decoder.decode(message.content)
    tool_calls = [
        ToolCall(block["id"], block["name"], msgspec.Raw(row_encoder.encode(block.get("input", {}))))
        for block in blocks
        if block.get("type") == "tool_use"
    ]
    row = ResultRow(
        line.custom_id,
        meta.row,
        settings.batch_id,
        settings.round_number,
        message.model,
        message.stop_reason,
        text_of(message.content),
        to_usage(message.usage),
        tool_calls=tool_calls or msgspec.UNSET,
        content=message.content if settings.include_content else msgspec.UNSET,
        input=meta.input or msgspec.UNSET,
    )
    kind = FAILED_STOPS.get(message.stop_reason or "")
    if kind == "paused":
        row.content = message.content  # the retry round continues the turn with it
        return _billed_failure(row, kind, _FAILURE_MESSAGES[kind], settings)
    if kind is not None:
        detail = ""
        if message.stop_details:
            category = message.stop_details.get("category")
            explanation = message.stop_details.get("explanation")
            detail = "".join(f" ({part})" for part in (category, explanation) if part)
        return _billed_failure(row, kind, _FAILURE_MESSAGES[kind] + detail, settings)
    if settings.validator is not None and not tool_calls:
        valid, invalid = _checked([row], settings)
        return (valid or invalid)[0]
    return row


def answer_row(line: ResultLine[MessageWithContent], settings: BlockSettings) -> ResultRow | FailureRow:
    """Return the row of one succeeded line decoded in full: a result, or the failure it is.

    The canary's answers go through here, so they are judged exactly as a batch's are.
    """
    return _other_row(line, line, settings)  # type: ignore[no-any-return]


def to_failure_row(line: ResultLine[Any], settings: BlockSettings, meta: InputMeta = _NO_META) -> FailureRow:
    """Return the failure row of an ``errored``, ``expired`` or ``canceled`` line."""
    result_type = line.result.type
    error_type = message = request_id = None
    if result_type == "errored":
        response = line.result.error or ErrorResponse()
        error_type, message, request_id = response.error.type, response.error.message, response.request_id
    else:
        message = _FAILURE_MESSAGES.get(result_type, f"unexpected result type {result_type!r}")
        if result_type == "canceled" and settings.canceled_by_timeout:
            # Our own cancel: marked so that cancels by anyone else can be counted apart.
            error_type = CANCELED_BY_TIMEOUT
            message = "canceled by the wait deadline before this request was processed"
    return FailureRow(
        custom_id=line.custom_id,
        row=meta.row,
        batch_id=settings.batch_id,
        round=settings.round_number,
        result_type=result_type,
        error_type=error_type,
        message=message,
        request_id=request_id,
        retryable=classify_failure(
            result_type,
            error_type,
            canceled_by_timeout=settings.canceled_by_timeout,
            retryable_types=settings.retryable_types,
        ),
        input=meta.input or msgspec.UNSET,
    )


def missing_rows(
    custom_ids: Iterable[str],
    settings: BlockSettings,
    *,
    error_type: str | None = None,
    message: str = _FAILURE_MESSAGES["missing"],
) -> BlockRows:
    """Return the failure rows of requests whose batch returned no line for them.

    ``error_type`` and ``message`` say why when the whole batch has none (its results are gone).
    """
    retryable = classify_failure(
        "missing", None, canceled_by_timeout=False, retryable_types=settings.retryable_types
    )
    failures = [
        FailureRow(
            custom_id,
            (meta := settings.inputs.get(custom_id, _NO_META)).row,
            settings.batch_id,
            settings.round_number,
            "missing",
            error_type,
            message,
            None,
            retryable,
            input=meta.input or msgspec.UNSET,
        )
        for custom_id in custom_ids
    ]
    out = BlockRows()
    _count_failures(out, failures)
    out.failures = row_encoder.encode_lines(failures)
    return out


_Keyed = TypeVar("_Keyed", ResultLine[Any], FailureRow)


def _first_lines(lines: list[_Keyed], seen: set[str]) -> list[_Keyed]:
    """Return the lines (or rows) whose ``custom_id`` is not in ``seen``, adding each kept id to it."""
    kept: list[_Keyed] = []
    for line in lines:
        if line.custom_id not in seen:
            seen.add(line.custom_id)
            kept.append(line)
    return kept


_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
    "web_search_requests",
    "web_fetch_requests",
    "thinking_tokens",
)
_USAGE_COLUMNS = [(name, attrgetter(name)) for name in _USAGE_KEYS]


def _row_key(row: Any, settings: BlockSettings) -> str:
    """Return the usage key of a row: its model, price tier and residency region."""
    usage = row.usage
    threshold = settings.long_prompt_above(row.model)
    long_prompt = threshold is not None and (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens > threshold
    )
    geo = usage.inference_geo if usage.inference_geo in settings.residency_geos else None
    return usage_key(row.model, long_prompt=long_prompt, geo=geo)


def _sum_usage(usage_by_key: dict[str, Usage], rows: list[Any], settings: BlockSettings) -> None:
    """Add the usage of rows into per-key totals (a column at a time: the fastest way)."""
    models = set(map(_model_of, rows))
    usages = list(map(_usage_of, rows))
    groups: dict[str, list[RowUsage]] = {}
    if any(map(_geo_of, usages)) or any(settings.long_prompt_above(model) is not None for model in models):
        for row in rows:
            groups.setdefault(_row_key(row, settings), []).append(row.usage)
    elif len(models) == 1:  # the common case: one model, and the key is the model
        groups[models.pop()] = usages
    else:
        for row in rows:
            groups.setdefault(row.model, []).append(row.usage)
    for key, group in groups.items():
        total = usage_by_key.setdefault(key, empty_usage())
        for name, column in _USAGE_COLUMNS:
            total[name] += sum(map(column, group))  # type: ignore[literal-required]


def _count_failures(out: BlockRows, failures: list[FailureRow]) -> None:
    """Add failure rows to the counts per result type and error type, and to ``retryable``."""
    counts, error_types = out.result_counts, out.error_types
    for failure in failures:
        counts[failure.result_type] = counts.get(failure.result_type, 0) + 1
        if failure.error_type is not None:
            error_types[failure.error_type] = error_types.get(failure.error_type, 0) + 1
        by_type = out.counts_by_model.setdefault(failure.model or "", {})
        by_type[failure.result_type] = by_type.get(failure.result_type, 0) + 1
        if failure.retryable:
            out.retryable += 1
            retried = out.retryable_by_model.setdefault(failure.model or "", {})
            retried[failure.result_type] = retried.get(failure.result_type, 0) + 1


_model_of = attrgetter("model")
_usage_of = attrgetter("usage")
_geo_of = attrgetter("inference_geo")
_custom_id_of = attrgetter("custom_id")
