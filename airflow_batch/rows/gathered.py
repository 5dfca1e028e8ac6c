"""Result lines of a Message Batch turned into rows (:mod:`airflow_batch.rows.contract`).

A block of a results stream (JSONL, one line per request; :mod:`airflow_batch.rows.lines`) is
decoded a slice at a time. The common answer (text blocks only, a normal stop) takes the fast
path: its text block is copied as raw JSON, never decoded and re-encoded. Any other answer
(tool calls, a paused or refused turn, several blocks) takes a slower path that reads the line
again in full. Failure rows are built in :mod:`airflow_batch.rows.failure_rows`, counts and
usage summed in :mod:`airflow_batch.rows.tally`.

One bad answer is one failure row, never a failed batch: a line that is not valid JSON or UTF-8
(a lone surrogate escape, a stray byte) is an ``invalid_output`` failure of its ``custom_id``
(a line without a readable id is left to be reported ``missing``), and an answer too deeply
nested to check, or that cannot be decoded, is an ``invalid_output`` failure too. Checking
takes bounded time (see :mod:`airflow_batch.rules.schema`).
"""

from __future__ import annotations

import logging
import re
from operator import attrgetter
from typing import Any, TypeVar

import msgspec

from airflow_batch.rows.block import NO_META, BlockRows, BlockSettings
from airflow_batch.rows.contract import FailureRow, ResultRow, ToolCall, row_encoder, to_usage
from airflow_batch.rows.failure_rows import billed_failure, to_failure_row, unreadable_row
from airflow_batch.rows.failures import FAILED_STOPS, FAILURE_MESSAGES, NORMAL_STOPS
from airflow_batch.rows.lines import (
    ContentBlock,
    Message,
    MessageWithContent,
    ResultLine,
    custom_id_decoder,
    line_decoder,
    line_with_content_decoder,
)
from airflow_batch.rows.tally import count_failures, count_succeeded, sum_usage

log = logging.getLogger(__name__)
_blocks_decoder = msgspec.json.Decoder(list[dict[str, Any]])
_str_decoder = msgspec.json.Decoder(str)
_strs_decoder = msgspec.json.Decoder(list[str])


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
                row = unreadable_row(line.custom_id, f"the answer cannot be read ({exc})", settings)
            (rows if isinstance(row, ResultRow) else failure_rows).append(row)
    if rows:
        if settings.keep_rows:
            out.result_rows.extend(rows)
        count_succeeded(out, rows)
        sum_usage(out.usage_by_model, rows, settings)
        results.append(row_encoder.encode_lines(rows))
    if failure_rows:
        count_failures(out, failure_rows)
        billed = [row for row in failure_rows if row.usage is not None]
        if billed:
            sum_usage(out.usage_by_model, billed, settings)
        failures.append(row_encoder.encode_lines(failure_rows))


def _plain_rows(lines: list[Any], settings: BlockSettings) -> tuple[list[Any], list[Any]]:
    """Return the rows of plain answers (the hot loop of a gather, hence one comprehension)."""
    batch_id, number, inputs = settings.batch_id, settings.round_number, settings.inputs
    rows = [
        ResultRow(
            line.custom_id,
            (meta := inputs.get(line.custom_id, NO_META)).row,
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
            failure = billed_failure(row, "invalid_output", "the answer is not valid text (UTF-8)", settings)
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
        invalid.append(billed_failure(row, "invalid_output", message, settings, retryable=not cut))
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
            unreadable.append(unreadable_row(found[1].decode(), why, settings))
    return lines, unreadable


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
    meta = settings.inputs.get(line.custom_id, NO_META)
    if line.result.type != "succeeded":
        return to_failure_row(line, settings, meta)
    if full is None or full.result.message is None:
        why = "the answer cannot be read in full" if full is None else "a succeeded result has no message"
        return unreadable_row(line.custom_id, why, settings)
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
        return billed_failure(row, kind, FAILURE_MESSAGES[kind], settings)
    if kind is not None:
        detail = ""
        if message.stop_details:
            category = message.stop_details.get("category")
            explanation = message.stop_details.get("explanation")
            detail = "".join(f" ({part})" for part in (category, explanation) if part)
        return billed_failure(row, kind, FAILURE_MESSAGES[kind] + detail, settings)
    if settings.validator is not None and not tool_calls:
        valid, invalid = _checked([row], settings)
        return (valid or invalid)[0]
    return row


def answer_row(line: ResultLine[MessageWithContent], settings: BlockSettings) -> ResultRow | FailureRow:
    """Return the row of one succeeded line decoded in full: a result, or the failure it is.

    The canary's answers go through here, so they are judged exactly as a batch's are.
    """
    return _other_row(line, line, settings)  # type: ignore[no-any-return]


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


_Keyed = TypeVar("_Keyed", ResultLine[Any], FailureRow)


def _first_lines(lines: list[_Keyed], seen: set[str]) -> list[_Keyed]:
    """Return the lines (or rows) whose ``custom_id`` is not in ``seen``, adding each kept id to it."""
    kept: list[_Keyed] = []
    for line in lines:
        custom_id = line.custom_id
        if custom_id not in seen:
            if custom_id is not None:  # always, for a gather's rows (only invalid input may lack one)
                seen.add(custom_id)
            kept.append(line)
    return kept


_custom_id_of = attrgetter("custom_id")
