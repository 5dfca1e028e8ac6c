"""What the API accepts as a batch request: one set of structural rules for submit and the emulator.

A batch request is ``{"custom_id": str, "params": {...Messages API body...}}``. The shape of
``params`` is declared here as msgspec types (the structure: field names, types, tool choice
and thinking forms; content blocks in :mod:`~airflow_batch.rules.blocks`, tools checked in
:mod:`~airflow_batch.rules.tools`), and :func:`batch_rules` adds what a type
cannot say (a full-match ``custom_id``, ``max_tokens`` bounds, a thinking budget below
``max_tokens``, what a *batch* refuses: ``stream: true`` and ``speed``). The submit
validation and the emulator's create validation both decode with these types and call
:func:`batch_rules`, so the two cannot drift: whatever the emulator refuses, submit refuses
first, before any spend, naming the row. A single Messages API call (the emulator's
``POST /v1/messages``) is checked by :func:`message_rules`: the same rules without the
batch's own refusals.

Unknown fields are refused, as the API refuses them ("Extra inputs are not permitted"),
except in a job that sends ``anthropic-beta`` headers: a beta may add parameters or tool
types this table does not know yet, so with betas an unknown top-level parameter or tool
type passes (every field this table knows is still checked).

Pure: no I/O, no Airflow.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from airflow_batch.rules.blocks import BLOCK_TYPES, CacheControl, ContentBlock, TextBlock
from airflow_batch.rules.tools import check_tool

CUSTOM_ID_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""What a ``custom_id`` must fully match (a trailing newline included is not a match)."""
_full_match_custom_id = CUSTOM_ID_PATTERN.fullmatch
MIN_THINKING_BUDGET = 1_024


class Message(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of ``messages``."""

    role: Literal["user", "assistant"]  # the API's; a system prompt goes in ``system``
    content: str | list[ContentBlock]


# ---- choices and configs -----------------------------------------------------------------


class _Choice(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """A ``tool_choice``, told apart by its ``type``."""


class ToolChoiceAuto(_Choice, tag="auto"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Choice, tag="any"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Choice, tag="tool"):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Choice, tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class _Thinking(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """A ``thinking`` configuration, told apart by its ``type``."""


class ThinkingEnabled(_Thinking, tag="enabled"):
    budget_tokens: int
    display: Literal["summarized", "omitted", "updates"] | None = None


class ThinkingAdaptive(_Thinking, tag="adaptive"):
    display: Literal["summarized", "omitted", "updates"] | None = None


class ThinkingDisabled(_Thinking, tag="disabled"):
    pass


class ThinkingBetweenTools(_Thinking, tag="between_tools"):
    pass


Thinking = ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled | ThinkingBetweenTools


def thinking_type(thinking: Thinking | None) -> str | None:
    """Return the ``type`` of a typed ``thinking`` configuration, None without one."""
    return None if thinking is None else str(type(thinking).__struct_config__.tag)


class JsonSchemaFormat(msgspec.Struct, tag_field="type", tag="json_schema", forbid_unknown_fields=True):
    """``output_config.format``: structured outputs."""

    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonSchemaFormat | None = None
    task_budget: dict[str, Any] | None = None


class Metadata(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str | None = None


class Params(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The ``params`` of a batch request: a Messages API body as the API accepts it."""

    model: str
    max_tokens: int
    messages: list[Message]
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    inference_geo: str | None = None
    cache_control: CacheControl | None = None
    container: str | dict[str, Any] | None = None
    stream: bool | None = None
    speed: str | None = None
    diagnostics: Any = None
    # Parameters of betas (context_management, mcp_servers, compaction, ...) are not fields:
    # the SDK's non-beta request type has none of them, and a job with betas lets unknown
    # parameters pass (LenientParams), their shape being the beta's business.


class LenientParams(Params, forbid_unknown_fields=False):
    """:class:`Params` that lets unknown top-level fields pass (a job that sends beta headers)."""


class Request(msgspec.Struct, forbid_unknown_fields=True):
    """A batch request: its id and its Messages API body."""

    custom_id: str
    params: Params


class LenientRequest(msgspec.Struct, forbid_unknown_fields=True):
    custom_id: str
    params: LenientParams


KNOWN_PARAMS = frozenset(Params.__struct_fields__)


# ---- the plain request: the common row, checked by its type alone ---------------------------------


class PlainMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A :class:`Message` of a plain request: a user or assistant turn of non-empty text."""

    role: Literal["user", "assistant"]
    content: Annotated[str, msgspec.Meta(min_length=1)]


class PlainParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """:class:`Params` of the common request, whose every rule its type states.

    A model, ``max_tokens >= 1``, non-empty text messages, an optional string system prompt and
    nothing else: no field a rule of :func:`batch_rules` (or a model's rules) reads beyond the
    model's limits. Its fields are the first of :class:`Params`, in the same order, so both encode
    a request alike (its fingerprint does not depend on which type decoded it).
    """

    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[PlainMessage], msgspec.Meta(min_length=1)]
    system: str | None = None


class PlainRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A batch request a plain line decodes to: valid as soon as it decodes (see :func:`decode_plain`)."""

    custom_id: str  # checked by decode_plain: a pattern in the type costs twice the call
    params: PlainParams


_plain_line = msgspec.json.Decoder(PlainRequest).decode


def decode_plain(line: bytes) -> PlainRequest | None:
    """Return a JSONL line as a :class:`PlainRequest`, or None when it is not one.

    The submit pass's fast path (one typed decode instead of decode + rules): a line it returns
    breaks none of :func:`batch_rules`; None says nothing (the line may be valid, or not).
    """
    try:
        request: PlainRequest = _plain_line(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    return request if _full_match_custom_id(request.custom_id) else None


# ---- tools ---------------------------------------------------------------------------------


def check_custom_id(value: Any) -> str | None:
    """Return why ``value`` is not a valid ``custom_id``, or None if it is one."""
    if not isinstance(value, str):
        return (
            f"custom_id must be a string matching ^{CUSTOM_ID_PATTERN.pattern}$, got {type(value).__name__}"
        )
    if not _full_match_custom_id(value):
        return f"custom_id {value!r} must match ^{CUSTOM_ID_PATTERN.pattern}$"
    return None


def batch_rules(params: Params, *, lenient: bool = False, max_output_tokens: int | None = None) -> str | None:
    """Return the first rule of a batch request ``params`` breaks beyond its types, or None.

    :param max_output_tokens: the model's largest ``max_tokens`` in a batch, when known.
    """
    if params.stream:
        return "params.stream must not be true: batch requests do not stream"
    if params.speed is not None:
        return "params.speed is not accepted in a batch (fast mode is not available with the Batch API)"
    return message_rules(params, lenient=lenient, max_output_tokens=max_output_tokens)


def message_rules(
    params: Params, *, lenient: bool = False, max_output_tokens: int | None = None
) -> str | None:
    """Return the first rule a Messages API body breaks beyond its types, batch or not, or None.

    What :func:`batch_rules` checks too, without the batch's own refusals (``stream``, ``speed``);
    the messages name fields as ``params.<field>``.
    """
    if not params.model:
        return "params.model is missing: set it in the request or pass model= to the operator"
    if params.max_tokens < 1:
        return "params.max_tokens must be an integer >= 1: set it in the request or pass max_tokens="
    if max_output_tokens is not None and params.max_tokens > max_output_tokens:
        return (
            f"params.max_tokens {params.max_tokens:,} is above the {max_output_tokens:,} output tokens "
            f"{params.model} can produce in a batch"
        )
    if not params.messages:
        return "params.messages must be a non-empty list of messages"
    for position, message in enumerate(params.messages):
        if not message.content:
            return f"params.messages[{position}].content must be a non-empty string or list of blocks"
    thinking = params.thinking
    if isinstance(thinking, ThinkingEnabled):
        if thinking.budget_tokens < MIN_THINKING_BUDGET:
            budget = thinking.budget_tokens
            return f"params.thinking.budget_tokens must be >= {MIN_THINKING_BUDGET:,}, got {budget:,}"
        if thinking.budget_tokens >= params.max_tokens:
            return (
                f"params.thinking.budget_tokens ({thinking.budget_tokens:,}) must be below max_tokens "
                f"({params.max_tokens:,}): thinking counts toward max_tokens"
            )
    for position, tool in enumerate(params.tools or ()):
        problem = check_tool(tool, lenient=lenient)
        if problem:
            return f"params.tools[{position}]: {problem}"
    choice = params.tool_choice
    if isinstance(choice, ToolChoiceTool) and choice.name not in {
        tool.get("name") for tool in params.tools or () if isinstance(tool, Mapping)
    }:
        return f"params.tool_choice names the tool {choice.name!r}, which params.tools does not define"
    if isinstance(choice, (ToolChoiceAny, ToolChoiceTool)) and not params.tools:
        return "params.tool_choice forces a tool call but params.tools is empty"
    return None


# ---- decoding with located messages -----------------------------------------------------------

_MSGSPEC_PATH = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_MISSING_HINTS = {
    "params.model": ": set it in the request or pass model= to the operator",
    "params.max_tokens": ": set it in the request or pass max_tokens= to the operator",
}
_strict_line = msgspec.json.Decoder(Request)
_lenient_line = msgspec.json.Decoder(LenientRequest)


def located(exc: msgspec.MsgspecError, prefix: str = "") -> str:
    """Turn msgspec's ``... - at `$.params.system``` into ``params.system: ...`` (with ``prefix``)."""
    match = _MSGSPEC_PATH.match(str(exc))
    if not match:  # a problem of the top-level object itself
        missing = _MISSING_FIELD.match(str(exc))
        return f"{prefix}{missing['field']} is missing" if missing else f"{prefix}{exc}"
    path = prefix + match["path"].lstrip(".")
    message = match["message"]
    missing = _MISSING_FIELD.match(message)
    if missing:
        name = f"{path}.{missing['field']}" if path else missing["field"]
        return f"{name} is missing" + _MISSING_HINTS.get(name, "")
    if message.startswith("Invalid value") and path.endswith(".type") and ".content[" in path:
        message += f" (content block types: {', '.join(BLOCK_TYPES)})"
    elif unknown := _UNKNOWN_FIELD.match(message):
        message += "; the API refuses fields it does not know"
        if path.endswith("params"):
            close = difflib.get_close_matches(unknown["field"], sorted(Params.__struct_fields__), n=1)
            message += f" (did you mean {close[0]!r}?)" if close else ""
    return f"{path}: {message}" if path else message


_decode_any = msgspec.json.Decoder().decode


#: What a line that is not JSON at all raises while it is decoded (a ValidationError is JSON of
#: another shape). ``msgspec.ValidationError`` subclasses ``DecodeError``: catch it first.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _undecodable(exc: BaseException) -> str:
    """Return what is wrong with a line that does not decode at all."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8: {exc}"
    if isinstance(exc, RecursionError):
        return "not valid JSON: nested too deeply"
    return f"not valid JSON: {exc}"


def loads(line: bytes | bytearray | memoryview) -> Any:
    """Return a JSON line decoded to plain data; raise ``ValueError`` saying what is wrong with it."""
    try:
        return _decode_any(line)
    except _UNDECODABLE as exc:
        raise ValueError(_undecodable(exc)) from None


def decode_line(line: bytes, *, lenient: bool = False) -> Request:
    """Return a JSONL line decoded as a :class:`Request`; raise ``ValueError`` with a located message."""
    try:
        return (_lenient_line if lenient else _strict_line).decode(line)  # type: ignore[return-value]
    except msgspec.ValidationError as exc:
        raise ValueError(located(exc)) from None
    except _UNDECODABLE as exc:
        raise ValueError(_undecodable(exc)) from None


def convert_request(obj: Any, *, lenient: bool = False) -> Request:
    """Return a decoded row (dicts and lists) checked as a :class:`Request`; raise ``ValueError``."""
    try:
        return msgspec.convert(obj, LenientRequest if lenient else Request)  # type: ignore[return-value]
    except msgspec.ValidationError as exc:
        raise ValueError(located(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
