"""Message Batches requests: the checks every request must pass, and requests built from records.

A request is ``{"custom_id": str, "params": {...Messages API body...}}``. :func:`check_request`
returns the first rule a request breaks (or None); the rules are those the API enforces on
a batch create, checked here so that a bad row fails the task before anything is spent.

Data engineers usually hold records (rows with fields), not requests. :func:`records_to_requests`
turns each record into a request with a ``str.format_map`` prompt template over the record's
fields and/or a callable, taking ``custom_id`` from a named field. A record that cannot be
turned into a request (missing field, invalid id) becomes an :class:`InvalidRow` naming the
reason, so it is reported with its row number like any other invalid request; an invalid
``custom_id`` is never rewritten into a valid one, because rewriting can make two ids collide.

:class:`RequestDefaults` fills ``model``, ``max_tokens`` and ``system`` into the params of
every request that lacks them. With ``cache_system_prompt`` the default system prompt is sent
as a text block marked ``cache_control: ephemeral``: the first request that carries it writes
the prompt cache and the following ones read it (the batch guide's prompt-caching pattern).
Only the default system prompt is marked: a per-request system prompt is unique to its
request, and marking it would pay the cache-write premium for nothing.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_match_custom_id = re.compile(r"[a-zA-Z0-9_-]{1,64}").fullmatch
MAX_REQUESTS_PER_BATCH = 100_000
#: The API limit is 256 MB of request body per batch create; we stay a little under it.
MAX_BYTES_PER_BATCH = 256_000_000 - 1_000_000

_ROLES = frozenset(("user", "assistant"))
_REQUEST_KEYS = frozenset(("custom_id", "params"))
RequestBuilder = Callable[[Mapping[str, Any]], Any]


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


def cached_system(system: str | list[Any]) -> list[Any]:
    """Return ``system`` as text blocks whose last block carries ``cache_control: ephemeral``."""
    if isinstance(system, str):
        return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    if any(isinstance(block, Mapping) and "cache_control" in block for block in system):
        return list(system)
    if not system or not isinstance(system[-1], Mapping):
        return list(system)
    return [*system[:-1], {**system[-1], "cache_control": {"type": "ephemeral"}}]


@dataclass(frozen=True)
class RequestDefaults:
    """Values put into the params of every request that lacks them."""

    model: str | None = None
    max_tokens: int | None = None
    system: str | list[Any] | None = None
    cache_system_prompt: bool = True

    def __post_init__(self) -> None:
        # Built once: the same list object is shared by every request's params.
        if self.system is not None and self.cache_system_prompt:
            object.__setattr__(self, "_system_value", cached_system(self.system))
        else:
            object.__setattr__(self, "_system_value", self.system)

    @property
    def empty(self) -> bool:
        """Return True when there is nothing to apply."""
        return self.model is None and self.max_tokens is None and self.system is None

    def apply(self, request: Any) -> Any:
        """Return ``request`` with the defaults filled into its params (a new dict if changed)."""
        if self.empty or not isinstance(request, Mapping):
            return request
        params = request.get("params")
        if not isinstance(params, Mapping):
            return request
        missing = (
            (self.model is not None and "model" not in params)
            or (self.max_tokens is not None and "max_tokens" not in params)
            or (self.system is not None and "system" not in params)
        )
        if not missing:
            return request
        filled = dict(params)
        if self.model is not None:
            filled.setdefault("model", self.model)
        if self.max_tokens is not None:
            filled.setdefault("max_tokens", self.max_tokens)
        if self.system is not None and "system" not in filled:
            filled["system"] = self._system_value  # type: ignore[attr-defined]
        return {**request, "params": filled}


def template_fields(template: str) -> list[str]:
    """Return the record fields a ``str.format`` template refers to (top-level names)."""
    names: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name or name.isdigit():
            raise ValueError(f"prompt_template field {{{field}}} must name a record field, e.g. {{text}}")
        if name not in names:
            names.append(name)
    return names


def _record_custom_id(record: Mapping[str, Any], field: str) -> str | InvalidRow:
    if field not in record:
        return InvalidRow(f"record has no field {field!r} to use as custom_id (custom_id_field={field!r})")
    value = record[field]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    problem = check_custom_id(value)
    if problem:
        return InvalidRow(f"field {field!r}: {problem}", value if isinstance(value, str) else None)
    return str(value)


def _params_from_builder(result: Any) -> dict[str, Any] | str:
    if isinstance(result, str):
        return {"messages": [{"role": "user", "content": result}]}
    if isinstance(result, list):
        return {"messages": result}
    if isinstance(result, Mapping):
        return dict(result)
    return f"request_builder returned {type(result).__name__}; return a params dict, a messages list or a str"


def records_to_requests(
    records: Iterable[Any],
    *,
    prompt_template: str | None = None,
    request_builder: RequestBuilder | None = None,
    custom_id_field: str = "custom_id",
) -> Iterator[dict[str, Any] | InvalidRow]:
    """Yield one request (or :class:`InvalidRow`) per record, in order.

    With ``prompt_template`` the user message is ``prompt_template.format_map(record)``. With
    ``request_builder`` the callable receives the record and returns the params (a dict), the
    messages (a list) or the user message (a str); with both, the template gives the user
    message and the builder returns extra params merged on top (e.g. ``temperature``).
    """
    if prompt_template is None and request_builder is None:
        raise ValueError("records need prompt_template= and/or request_builder= to become requests")
    fields = template_fields(prompt_template) if prompt_template is not None else []
    for record in records:
        if isinstance(record, InvalidRow):
            yield record
            continue
        if not isinstance(record, Mapping):
            yield InvalidRow(f"a record must be a JSON object, got {type(record).__name__}")
            continue
        custom_id = _record_custom_id(record, custom_id_field)
        if isinstance(custom_id, InvalidRow):
            yield custom_id
            continue
        missing = [name for name in fields if name not in record]
        if missing:
            yield InvalidRow(f"record has no field {missing[0]!r} used by prompt_template", custom_id)
            continue
        params: dict[str, Any] = {}
        if prompt_template is not None:
            try:
                text = prompt_template.format_map(record)
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                yield InvalidRow(f"prompt_template cannot be filled from this record: {exc!r}", custom_id)
                continue
            params["messages"] = [{"role": "user", "content": text}]
        if request_builder is not None:
            try:
                built = _params_from_builder(request_builder(record))
            except Exception as exc:
                yield InvalidRow(f"request_builder raised {exc!r}", custom_id)
                continue
            if isinstance(built, str):
                yield InvalidRow(built, custom_id)
                continue
            if prompt_template is not None and "messages" in built:
                yield InvalidRow(
                    "request_builder returned messages although prompt_template builds them; "
                    "return only extra params, or drop prompt_template",
                    custom_id,
                )
                continue
            params.update(built)
        yield {"custom_id": custom_id, "params": params}
