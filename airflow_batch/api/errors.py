"""What a failed API call says: its status, error type and code, and the fix to suggest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _error_body(exc: BaseException) -> Mapping[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            return inner
    return {}


def http_status(exc: BaseException) -> int | None:
    """Return the HTTP status of a failed call, or None when no response came back."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def error_type(exc: BaseException) -> str | None:
    """Return the API's ``error.type`` (``rate_limit_error``...), if the response had one."""
    value = _error_body(exc).get("type")
    return str(value) if value else None


def error_code(exc: BaseException) -> str | None:
    """Return ``error.details.error_code`` (``enforced_spend_limit_reached``...), if any."""
    details = _error_body(exc).get("details")
    if isinstance(details, Mapping) and details.get("error_code"):
        return str(details["error_code"])
    return None


def is_queue_full(exc: BaseException) -> bool:
    """Return whether a 429 says the organisation's processing queue is full (not a request rate).

    The API answers such a create ``rate_limit_error`` with a message about the processing
    queue; a spend-limit 429 carries an ``error_code`` instead.
    """
    if http_status(exc) != 429 or error_type(exc) not in (None, "rate_limit_error") or error_code(exc):
        return False
    message = str(_error_body(exc).get("message") or getattr(exc, "message", "") or "")
    return "queue" in message.lower()


def error_cause(exc: BaseException) -> str:
    """Return a one-line description: status, error type and code, message, request id."""
    status = http_status(exc)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    parts = [f"HTTP {status}"]
    parts += [value for value in (error_type(exc), error_code(exc)) if value]
    text = " ".join(parts) + f": {getattr(exc, 'message', exc)}"
    request_id = getattr(exc, "request_id", None)
    if request_id:
        text += f" (request_id {request_id})"
    return text


def fix_hint(exc: BaseException) -> str:
    """Return the likely fix of a permanent fault, as a sentence starting with a space (or "")."""
    status = http_status(exc)
    code = error_code(exc)
    if code in ("enforced_spend_limit_reached", "linked_organization_spend_limit_reached"):
        return (
            " This is the organisation's spend limit, not a rate limit: retrying fails until the "
            "limit changes. Raise it in the Console (Settings > Limits) or wait for the next period; "
            "nothing more was submitted."
        )
    if code == "contract_spend_limit_reached":
        return (
            " This is the spend limit of the organisation's contract, not a rate limit: retrying fails "
            "until it changes; contact your account team. Nothing more was submitted."
        )
    if status in (401, 403):
        return " Check the API key (password) of the Anthropic connection and its workspace."
    if status == 404:
        return (
            " It does not exist for this API key and base URL: check that the connection points at "
            "the workspace (or emulator) that created it."
        )
    if status == 413:
        return " The request body is too large: lower max_bytes_per_batch."
    if status == 400:
        return " The API refused the request as invalid; the message says which field."
    return ""
