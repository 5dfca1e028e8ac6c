"""The kinds of failure row, and which of them are worth paying for again."""

from __future__ import annotations

from collections.abc import Iterable

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
#: The ``result_type`` (and ``error_type``) of a request refused before submission.
INVALID_INPUT = "invalid_input"
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
FAILURE_MESSAGES = {
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
    return result_type in allowed and result_type != INVALID_INPUT
