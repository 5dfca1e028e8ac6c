"""The one declaration of a result row and a failure row, and the table columns derived from it.

Every row a job writes is encoded through the Structs below, whatever its origin: a gathered
answer (:mod:`airflow_batch.rows.gathered`), an answer reused from the store or kept from the
canary (:func:`answered_row`, spliced from JSON fragments for speed, with the keys of
:class:`ResultRow`), a request refused before submission (:func:`invalid_input_row`). The
Parquet columns (:mod:`airflow_batch.gather.tables`) take their names, types and nullability
from the same Structs (:func:`table_columns`), so a field a row may leave null (the
``custom_id`` of an invalid input row, the ``batch_id`` of a reused answer) is a nullable
column, never a crash of finalize after the spend.

Result row (one JSON object per line of ``results/{batch_id}.jsonl``)::

    custom_id, row (the request's input row, 1-based), batch_id (null for a reused answer), round,
    model, stop_reason, text (text blocks only, joined; thinking never), usage {input_tokens,
    output_tokens, cache_creation_input_tokens (all writes), cache_creation_1h_input_tokens,
    cache_read_input_tokens, and where present web_search_requests, web_fetch_requests,
    thinking_tokens, inference_geo}, output (the parsed JSON answer, with an output schema),
    tool_calls ([{id, name, input}]), content (the full blocks, with include_content), input
    (passthrough fields of the record), reused_from (where a reused answer came from)

Failure row (``failures/{batch_id}.jsonl``)::

    custom_id (null for an invalid input row without a usable one), row, batch_id, round,
    result_type, error_type, message, request_id, retryable, and for an answer that was billed
    but is not a result: model, stop_reason, text, usage (and content for a paused turn, which
    the retry round continues), input

``result_type``: see :mod:`airflow_batch.rows.failures`.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, NamedTuple, Union, get_args, get_origin

import msgspec

from airflow_batch.rows.failures import INVALID_INPUT

if TYPE_CHECKING:
    from airflow_batch.rows.lines import LineUsage


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


class ToolCall(msgspec.Struct, gc=False):
    """A ``tool_use`` block as a row keeps it."""

    id: str
    name: str
    input: msgspec.Raw


class ResultRow(msgspec.Struct, gc=False, omit_defaults=True):
    """A succeeded request, as written to the results files."""

    custom_id: str
    row: int | None
    batch_id: str | None  # null: answered without a batch of its round (reused, canary)
    round: int
    model: str
    stop_reason: str | None
    text: msgspec.Raw  # a JSON string literal, copied from the answer (see rows.lines.ContentBlock)
    usage: RowUsage
    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET
    content: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    input: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    reused_from: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET  # set only by answered_row


class FailureRow(msgspec.Struct, gc=False, omit_defaults=True):
    """A request without a usable result, as written to the failures files."""

    custom_id: str | None  # null: an invalid input row whose custom_id was missing or unusable
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
result_row_decoder = msgspec.json.Decoder(ResultRow)
failure_row_decoder = msgspec.json.Decoder(FailureRow)
stored_answer_decoder = msgspec.json.Decoder(StoredAnswer)


def stored_answer(row: ResultRow) -> bytes:
    """Return the answer JSON the answer store keeps of a result row (see :class:`StoredAnswer`)."""
    return row_encoder.encode(
        StoredAnswer(row.model, row.stop_reason, row.text, row.output, row.tool_calls, row.content)
    )


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


def invalid_input_row(custom_id: str | None, row: int, round_number: int, message: str) -> bytes:
    """Return the failure row (one JSON line, no newline) of a request refused before submission."""
    return row_encoder.encode(
        FailureRow(custom_id, row, None, round_number, INVALID_INPUT, INVALID_INPUT, message, None, False)
    )


#: The usage of a reused row: nothing was paid for it in this run (the original is under reused_from).
ZERO_USAGE = row_encoder.encode(RowUsage(0, 0, 0, 0, 0))


class AnsweredSplice(NamedTuple):
    """The fragments of a row answered without a batch, for one round (see :func:`answered_row`).

    A row is ``inputs line without its "}"`` + :attr:`after_inputs` + ``answer body`` +
    :attr:`before_usage` + ``usage`` + :attr:`before_source` + ``source`` + ``"}"``.
    """

    after_inputs: bytes
    before_usage: bytes
    before_source: bytes

    @classmethod
    def of_round(cls, round_number: int) -> AnsweredSplice:
        """Return the fragments of round ``round_number``'s rows."""
        return cls(b',"batch_id":null,"round":%d,' % round_number, b',"usage":', b',"reused_from":')


def answered_row(inputs_line: bytes, round_number: int, answer: bytes, usage: bytes, source: bytes) -> bytes:
    """Return the result row of a request answered without a batch of its round (one JSON line).

    The row has the request's ``custom_id``, ``row`` and ``input`` (from its inputs line), the
    answer (``model``, ``stop_reason``, ``text``, ``output``, ``tool_calls``; a
    :class:`StoredAnswer`), ``usage``, ``batch_id`` null and ``reused_from``: where the answer
    came from. Spliced from JSON fragments, never decoded: a million reused rows cost a million
    byte joins; the fields are :class:`ResultRow`'s (a test decodes spliced rows with it).
    """
    splice = AnsweredSplice.of_round(round_number)
    return b"%s%s%s%s%s%s%s}" % (
        inputs_line[:-1],
        splice.after_inputs,
        answer[1:-1],
        splice.before_usage,
        usage,
        splice.before_source,
        source,
    )


def reused_row(inputs_line: bytes, round_number: int, answer: bytes, source: bytes) -> bytes:
    """Return the result row of a request answered from the store: zero usage (nothing was paid for
    it in this run); its source (batch, job folder, round, when written, the usage it cost then)
    is ``reused_from``."""
    return answered_row(inputs_line, round_number, answer, ZERO_USAGE, source)


# ---- table columns -------------------------------------------------------------------------


class Column(NamedTuple):
    """A column of the results or failures table, derived from a row field."""

    name: str
    kind: type  # str, int or bool: the Python type of the column's values
    nullable: bool
    source: str = "row"  # "row": the row's own field; "usage": a field of the row's usage


#: Fields kept as raw JSON whose table column holds a decoded scalar: ``text`` is a JSON string
#: literal; ``reused_from``'s column holds where the answer came from (a batch id, or ``canary``).
_SCALAR_OF_RAW = {"text": str, "reused_from": str}
#: Fields of a result row before the passthrough and answer columns, and after them.
RESULT_HEAD = ("custom_id", "row")
RESULT_TAIL = ("model", "stop_reason", "usage", "round", "batch_id", "reused_from")
#: Fields of a failure row after its passthrough columns.
FAILURE_TAIL = ("result_type", "error_type", "message", "request_id", "retryable", "round", "batch_id")
#: The token counts every usage has are columns; the occasional ones (server tools, thinking,
#: residency) stay in the JSONL rows.
USAGE_COLUMNS = tuple(
    field.name for field in msgspec.structs.fields(RowUsage) if field.required and field.type is int
)


def _column(struct: type[msgspec.Struct], name: str) -> list[Column]:
    """Return the column(s) of one field of ``struct`` (the usage field gives one per token count)."""
    fields = {field.name: field for field in msgspec.structs.fields(struct)}
    if name == "usage":
        return [Column(usage, int, False, "usage") for usage in USAGE_COLUMNS]
    field = fields[name]  # a KeyError here is a table naming a field the row does not have
    kind, nullable = field.type, False
    if get_origin(kind) in (Union, types.UnionType):
        options = [option for option in get_args(kind) if option not in (type(None), msgspec.UnsetType)]
        nullable = len(options) < len(get_args(kind))
        (kind,) = options
    kind = _SCALAR_OF_RAW.get(name, kind)
    if kind not in (str, int, bool):
        raise TypeError(f"{struct.__name__}.{name}: {kind!r} is no table column type")
    return [Column(name, kind, nullable)]


def table_columns(struct: type[msgspec.Struct], names: tuple[str, ...]) -> list[Column]:
    """Return the table columns of ``names``, fields of ``struct``, typed from its declaration."""
    return [column for name in names for column in _column(struct, name)]


def reserved_columns() -> set[str]:
    """Return the names of the columns every result or failure row has (no passthrough field may use them)."""
    fixed = [
        *table_columns(ResultRow, RESULT_HEAD),
        *table_columns(ResultRow, RESULT_TAIL),
        *table_columns(FailureRow, FAILURE_TAIL),
    ]
    return {column.name for column in [*fixed, *table_columns(ResultRow, ("text",))]}
