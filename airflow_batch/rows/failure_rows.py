"""The failure rows of a gather: failed lines, billed non-results, unreadable and missing lines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from airflow_batch.rows.block import NO_META, BlockRows, BlockSettings, InputMeta
from airflow_batch.rows.contract import FailureRow, ResultRow, row_encoder
from airflow_batch.rows.failures import CANCELED_BY_TIMEOUT, FAILURE_MESSAGES, classify_failure
from airflow_batch.rows.lines import ErrorResponse, ResultLine
from airflow_batch.rows.tally import count_failures


def unreadable_row(custom_id: str, message: str, settings: BlockSettings) -> FailureRow:
    """Return the ``invalid_output`` failure of an answer that cannot be read (nothing of it is kept)."""
    meta = settings.inputs.get(custom_id, NO_META)
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


def billed_failure(
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


def to_failure_row(line: ResultLine[Any], settings: BlockSettings, meta: InputMeta = NO_META) -> FailureRow:
    """Return the failure row of an ``errored``, ``expired`` or ``canceled`` line."""
    result_type = line.result.type
    error_type = message = request_id = None
    if result_type == "errored":
        response = line.result.error or ErrorResponse()
        error_type, message, request_id = response.error.type, response.error.message, response.request_id
    else:
        message = FAILURE_MESSAGES.get(result_type, f"unexpected result type {result_type!r}")
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
    message: str = FAILURE_MESSAGES["missing"],
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
            (meta := settings.inputs.get(custom_id, NO_META)).row,
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
    count_failures(out, failures)
    out.failures = row_encoder.encode_lines(failures)
    return out
