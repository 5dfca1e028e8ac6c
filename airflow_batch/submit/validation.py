"""The checks every Message Batches request must pass before anything is spent.

A request is ``{"custom_id": str, "params": {...Messages API body...}}``. :func:`check_request`
returns the first rule a request breaks (or None); the rules are those the API enforces on
a batch create, checked here so that a bad row fails the task before anything is spent.
A :class:`Problem` names the row (its 1-based line number) and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_match_custom_id = re.compile(r"[a-zA-Z0-9_-]{1,64}").fullmatch
MAX_REQUESTS_PER_BATCH = 100_000
#: The API limit is 256 MB of request body per batch create; we stay a little under it.
MAX_BYTES_PER_BATCH = 256_000_000 - 1_000_000

_ROLES = frozenset(("user", "assistant"))
_REQUEST_KEYS = frozenset(("custom_id", "params"))


@dataclass(frozen=True)
class Problem:
    """One invalid input row: its position, its custom_id when it has one, and the rule it breaks."""

    index: int
    custom_id: str | None
    rule: str

    def __str__(self) -> str:
        cid = f"custom_id {self.custom_id!r}" if self.custom_id is not None else "no custom_id"
        return f"request {self.index} ({cid}): {self.rule}"


@dataclass(frozen=True)
class InvalidRow:
    """A row that could not be turned into a request; it is reported, never submitted."""

    rule: str
    custom_id: str | None = None


def describe_problems(problems: list[Problem], total: int, *, shown: int = 20) -> str:
    """Return an error message listing the first ``shown`` problems and how many there are."""
    lines = [f"{total} invalid request(s); nothing was submitted. Fix these rows and re-run:"]
    lines += [f"  {problem}" for problem in problems[:shown]]
    if total > shown:
        lines.append(f"  ... and {total - shown} more")
    return "\n".join(lines)


def custom_id_of(request: Any) -> str | None:
    """Return the request's custom_id if it is a string, else None (for error messages)."""
    if isinstance(request, Mapping):
        value = request.get("custom_id")
        if isinstance(value, str):
            return value
    return None


def check_custom_id(value: Any) -> str | None:
    """Return why ``value`` is not a valid custom_id, or None if it is one."""
    if not isinstance(value, str):
        return f"custom_id must be a string matching {CUSTOM_ID_PATTERN.pattern}, got {type(value).__name__}"
    if not CUSTOM_ID_PATTERN.match(value):
        return f"custom_id {value!r} must match {CUSTOM_ID_PATTERN.pattern}"
    return None


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "params.messages must be a non-empty list of messages"
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"params.messages[{position}] must be an object with role and content"
        if message.get("role") not in _ROLES:
            return f"params.messages[{position}].role must be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, (str, list)) or not content:
            return f"params.messages[{position}].content must be a non-empty string or list of blocks"
    return None


def _is_plainly_valid(request: Any) -> bool:
    """Return True for a valid request made of plain dicts and lists (the common case, checked fast)."""
    if type(request) is not dict or len(request) != 2:
        return False
    custom_id = request.get("custom_id")
    params = request.get("params")
    if type(custom_id) is not str or type(params) is not dict or not _match_custom_id(custom_id):
        return False
    model = params.get("model")
    max_tokens = params.get("max_tokens")
    messages = params.get("messages")
    if (
        type(model) is not str
        or not model
        or type(max_tokens) is not int
        or max_tokens < 1
        or type(messages) is not list
        or not messages
        or params.get("stream") is True
    ):
        return False
    for message in messages:
        if type(message) is not dict or message.get("role") not in _ROLES:
            return False
        content = message.get("content")
        if not content or (type(content) is not str and type(content) is not list):
            return False
    return True


def check_request(request: Any) -> str | None:
    """Return the first rule ``request`` breaks as a Message Batches request, or None if valid.

    Checked: the object shape (only ``custom_id`` and ``params``), the custom_id pattern,
    ``params`` being a Messages body with a ``model``, an integer ``max_tokens >= 1`` and a
    non-empty ``messages`` list of user/assistant messages, and no ``stream: true``
    (batches do not stream). Uniqueness and size are checked by the caller, which sees
    the whole job.
    """
    if _is_plainly_valid(request):
        return None
    if not isinstance(request, Mapping):
        return "a request must be a JSON object with custom_id and params"
    if "custom_id" not in request:
        return "custom_id is missing"
    problem = check_custom_id(request["custom_id"])
    if problem:
        return problem
    extra = request.keys() - _REQUEST_KEYS
    if extra:
        return f"unknown field {sorted(extra)[0]!r}: a request has only custom_id and params"
    params = request.get("params")
    if not isinstance(params, Mapping):
        return "params must be an object (a Messages API request body)"
    model = params.get("model")
    if not isinstance(model, str) or not model:
        return "params.model is missing: set it in the request or pass model= to the operator"
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "params.max_tokens must be an integer >= 1: set it in the request or pass max_tokens="
    if params.get("stream") is True:
        return "params.stream must not be true: batch requests do not stream"
    return _check_messages(params.get("messages"))
