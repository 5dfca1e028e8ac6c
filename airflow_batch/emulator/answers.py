"""What a synthetic answer says: its content blocks, its stop reason and its output tokens.

Pure and deterministic: the same request gets the same answer (ids and the processing time
aside), whether it comes in a batch or through ``POST /v1/messages``.

Text: ``Emulated response <h>: <echo>`` where ``<h>`` is a CRC32 of the model and ``<echo>``,
the first 160 characters of the last user message (whitespace collapsed when it holds
newlines or tabs); when the system prompt mentions JSON, a JSON object
``{"id", "sentiment", "score", "summary"}`` instead. With structured outputs
(``output_config.format`` of type ``json_schema``) the text is a JSON instance of the schema
(:mod:`~airflow_batch.emulator.schema_instance`), seeded by a hash of the model, system
prompt, messages and schema, so different prompts get different valid values.

Content, in order:

- ``thinking`` (``{"type": "enabled"|"adaptive"}``; not ``disabled``/``between_tools``): a
  thinking block with a ``signature`` before anything else. Its tokens, by ``output_config.
  effort`` (low 32, medium 96, high — the default — 192, xhigh 320, max 512; at most
  ``budget_tokens``), count in ``output_tokens`` and in ``output_tokens_details.
  thinking_tokens``. With ``display: "omitted"`` (the default on Claude 4.7 and later, see
  ``thinking_display`` in the model table) the thinking text is empty; the tokens still count.
- a refusal (drawn at ``refusal_rate``): the first half of the text, ``stop_reason:
  "refusal"`` and ``stop_details {"type": "refusal", "category", "explanation"}``.
- ``tool_choice`` forcing a tool (``any``: the first custom tool; ``tool``: the named one): one
  ``tool_use`` block (``toolu_…`` id) whose ``input`` is an instance of the tool's
  ``input_schema``, ``stop_reason: "tool_use"``. ``auto``/``none`` get a text answer.
- server tools (``web_search_*``, ``web_fetch_*``): per tool a ``server_tool_use`` block
  (``srvtoolu_…``) and its result (``web_search_tool_result`` with three
  ``web_search_result``; ``web_fetch_tool_result`` with a text document), then the text; the
  results count as input tokens, the calls in ``usage.server_tool_use``. At ``pause_turn_rate``
  the answer is the first ``server_tool_use`` alone with ``stop_reason: "pause_turn"``. A
  request whose last message is an assistant turn holding ``server_tool_use`` blocks without
  their results (a paused turn sent back, as the API documents) is continued: the missing
  results, then the text; it never pauses again.
- structured outputs drawn at ``invalid_output_rate`` break the schema: a third of them are
  not JSON (prose around the JSON), the rest are JSON that violates the schema in one place.
- ``stop_sequences``: the text ends before the first one it contains, ``stop_reason:
  "stop_sequence"``.

Output tokens are counted by the model's tokenizer. Generation stops at ``max_tokens`` (the
block under way is cut: text and thinking at the character budget, a tool call with an empty
``input``; ``stop_reason: "max_tokens"``), or earlier where the prompt plus the output would
pass the model's context window (``stop_reason: "model_context_window_exceeded"``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from airflow_batch.emulator.schema_instance import schema_instance, schema_violation
from airflow_batch.emulator.tokenizer import Tokenizer
from airflow_batch.emulator.validation import Message, Params
from airflow_batch.rules.tools import SERVER_TOOL_NAMES

_ECHO_CHARS = 160
_SENTIMENTS = ("positive", "negative", "neutral")
_THINKING_TOKENS = {"low": 32, "medium": 96, "high": 192, "xhigh": 320, "max": 512}
_SEARCH_RESULTS = 3
_URL = re.compile(r"https?://[^\s\"'<>]+")
_encode = msgspec.json.Encoder().encode


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content if b.get("type") == "text")


def _last_user_text(params: Params, limit: int | None) -> str:
    for message in reversed(params.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content if limit is None else content[:limit]
            text = _text_of(content)
            return text if limit is None else text[:limit]
    return ""


def _echo(params: Params) -> str:
    raw = _last_user_text(params, 2 * _ECHO_CHARS)
    return raw[:_ECHO_CHARS] if raw.isprintable() else " ".join(raw.split())[:_ECHO_CHARS]


def synthetic_text(params: Params, model_code: int | None = None) -> str:
    """Return the deterministic reply text for a request (before any ``max_tokens`` cut).

    ``model_code`` is ``zlib.crc32`` of the model name, passed in by callers that cache it.
    """
    echo = _echo(params)
    if model_code is None:
        model_code = zlib.crc32(params.model.encode())
    code = zlib.crc32(echo.encode(), model_code)
    system = params.system
    if system is not None and "json" in _text_of(system).lower():
        return _encode(
            {
                "id": f"{code:08x}",
                "sentiment": _SENTIMENTS[code % 3],
                "score": round((code >> 8) % 101 / 100, 2),
                "summary": echo,
            }
        ).decode()
    return f"Emulated response {code:08x}: {echo}"


def needs_full_answer(params: Params) -> bool:
    """Return whether a request needs more than the one plain text block of the fast path."""
    return (
        params.thinking is not None
        or params.tools is not None
        or params.output_config is not None
        or params.stop_sequences is not None
        or params.inference_geo is not None
        or params.messages[-1].role == "assistant"
    )


def semantic_problem(params: Params) -> str | None:
    """Return the ``invalid_request_error`` message the API gives for a well-formed request, or None.

    What only the serving side refuses (the model is checked by the caller): thinking with a
    ``tool_choice`` that forces a tool.
    """
    if params.thinking is None or params.tool_choice is None:
        return None
    forced = params.tool_choice.get("type") in ("any", "tool")
    if params.thinking.get("type") in ("enabled", "adaptive") and forced:
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


@dataclass(frozen=True)
class Turn:
    """What decides an answer besides the request: its id, when it is processed, injected behaviours."""

    message_id: str
    processed_at: float
    refusal: bool = False
    pause_turn: bool = False
    invalid_output: float | None = None
    """A draw in [0, 1) choosing how a structured answer is invalid; None: it is valid."""


@dataclass
class Answer:
    """The generated part of a Message: content, stop, output tokens, server tool use."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    stop_details: dict[str, Any] | None = None
    output_tokens: int = 0
    thinking_tokens: int | None = None
    tool_result_tokens: int = 0
    """Tokens of server tool results: the API counts them as input tokens."""
    web_search_requests: int = 0
    web_fetch_requests: int = 0

    @property
    def uses_server_tools(self) -> bool:
        """Return whether the answer called a server tool (its usage then has ``server_tool_use``)."""
        return self.web_search_requests + self.web_fetch_requests > 0 or any(
            block["type"] == "server_tool_use" for block in self.content
        )


class _Budget:
    """Output tokens left before ``max_tokens`` or the context window stops generation."""

    def __init__(self, tokens: int, limit_reason: str, tokenizer: Tokenizer) -> None:
        self.left = tokens
        self.limit_reason = limit_reason
        self.tokenizer = tokenizer
        self.spent = 0
        self.exhausted = False

    def take(self, tokens: int) -> int:
        """Spend up to ``tokens``; return how many were granted (fewer means generation stops)."""
        granted = min(tokens, self.left)
        self.left -= granted
        self.spent += granted
        if granted < tokens:
            self.exhausted = True
        return granted


def compose(
    params: Params,
    turn: Turn,
    *,
    tokenizer: Tokenizer,
    prompt_tokens: int,
    context_window: int | None,
    thinking_display: str,
) -> Answer:
    """Return the answer to a well-formed request whose prompt counts ``prompt_tokens``."""
    budget_tokens, limit_reason = params.max_tokens, "max_tokens"
    if context_window is not None and prompt_tokens + budget_tokens > context_window:
        budget_tokens, limit_reason = max(context_window - prompt_tokens, 0), "model_context_window_exceeded"
    budget = _Budget(budget_tokens, limit_reason, tokenizer)
    answer = Answer()
    code = zlib.crc32(_echo(params).encode(), zlib.crc32(params.model.encode()))
    stop = _generate(params, turn, answer, budget, code, thinking_display)
    answer.output_tokens = budget.spent
    answer.stop_reason = budget.limit_reason if budget.exhausted else stop
    return answer


def _generate(
    params: Params, turn: Turn, answer: Answer, budget: _Budget, code: int, thinking_display: str
) -> str:
    """Append the answer's blocks while the budget lasts; return the stop reason if it does."""
    thinking = params.thinking or {}
    if thinking.get("type") in ("enabled", "adaptive"):
        _think(params, turn, answer, budget, code, thinking.get("display") or thinking_display)
        if budget.exhausted:
            return "max_tokens"
    if turn.refusal:
        text = synthetic_text(params)
        _text(answer, budget, text[: len(text) // 2])
        answer.stop_details = {
            "type": "refusal",
            "category": "general_harms",
            "explanation": "The emulator refused this request (refusal_rate).",
        }
        return "refusal"
    tools = params.tools or []
    choice = params.tool_choice or {}
    server = [
        tool for tool in tools if SERVER_TOOL_NAMES.get(str(tool.get("type"))) in ("web_search", "web_fetch")
    ]
    forced = _forced_tool(choice, tools, server)
    if forced is not None and forced not in server:
        _tool_use(answer, budget, turn, forced, code)
        return "tool_use"
    if forced is not None:
        server = [forced]
    pending = _pending_server_tools(params.messages[-1])
    if pending:
        for block in pending:
            _server_result(answer, budget, turn, params, block, code)
    elif server:
        if turn.pause_turn:
            _server_call(answer, budget, turn, params, server[0], code)
            return "pause_turn"
        for tool in server:
            call = _server_call(answer, budget, turn, params, tool, code)
            if budget.exhausted:
                return "max_tokens"
            _server_result(answer, budget, turn, params, call, code)
    text, stop_sequence = _final_text(params, turn, code)
    _text(answer, budget, text)
    if stop_sequence is not None and not budget.exhausted:
        answer.stop_sequence = stop_sequence
        return "stop_sequence"
    return "end_turn"


def _think(params: Params, turn: Turn, answer: Answer, budget: _Budget, code: int, display: str) -> None:
    effort = str((params.output_config or {}).get("effort") or "high")
    wanted = _THINKING_TOKENS.get(effort, _THINKING_TOKENS["high"])
    if params.thinking and "budget_tokens" in params.thinking:
        wanted = min(wanted, int(params.thinking["budget_tokens"]))
    granted = budget.take(wanted)
    text = ""
    if display != "omitted":
        sentence = f"Emulated thinking {code:08x}: the request asks about {_echo(params)!r}. "
        repeats = 8 * granted // max(len(sentence), 1) + 1  # more than enough at any token ratio >= 0.5
        text = budget.tokenizer.within(sentence * repeats, granted)
    digest = hashlib.blake2b(f"{turn.message_id}:{code}:{granted}".encode(), digest_size=48).digest()
    answer.content.append(
        {"type": "thinking", "thinking": text, "signature": base64.b64encode(digest).decode()}
    )
    answer.thinking_tokens = granted


def _text(answer: Answer, budget: _Budget, text: str) -> None:
    tokens = budget.tokenizer.text_tokens(text)
    granted = budget.take(tokens)
    if granted < tokens:
        text = budget.tokenizer.within(text, granted)
    answer.content.append({"type": "text", "text": text})


def _final_text(params: Params, turn: Turn, code: int) -> tuple[str, str | None]:
    """Return the answer's closing text and the stop sequence that ended it, if any."""
    output_format = (params.output_config or {}).get("format") or {}
    if output_format.get("type") == "json_schema":
        text = _structured_text(params, turn, output_format.get("schema") or {})
    else:
        text = synthetic_text(params)
    hits = [(text.find(s), s) for s in params.stop_sequences or () if s and s in text]
    if not hits:
        return text, None
    position, sequence = min(hits)
    return text[:position], sequence


def _structured_text(params: Params, turn: Turn, schema: dict[str, Any]) -> str:
    seed = hashlib.blake2b(
        _encode([params.model, params.system, [m.content for m in params.messages], schema]), digest_size=8
    ).digest()
    if turn.invalid_output is None:
        return _encode(schema_instance(schema, seed)).decode()
    broken = schema_violation(schema, seed) if turn.invalid_output >= 1 / 3 else None
    if broken is None:
        return "Here is the JSON you asked for:\n" + _encode(schema_instance(schema, seed)).decode()
    return _encode(broken[0]).decode()


def _forced_tool(
    choice: dict[str, Any], tools: list[dict[str, Any]], server: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Return the tool ``tool_choice`` forces: the named one; for ``any`` the first custom tool,
    else the first web search or fetch tool."""
    kind = choice.get("type")
    if kind == "tool":
        return next((tool for tool in tools if tool.get("name") == choice.get("name")), None)
    if kind == "any":
        custom = [tool for tool in tools if tool.get("type") in (None, "custom")]
        return next(iter(custom or server), None)
    return None


def _tool_use(answer: Answer, budget: _Budget, turn: Turn, tool: dict[str, Any], code: int) -> None:
    name = str(tool.get("name"))
    value = schema_instance(tool.get("input_schema") or {"type": "object"}, f"{code}:{name}")
    tokens = budget.tokenizer.text_tokens(_encode(value).decode())
    if budget.take(tokens) < tokens:
        value = {}
    answer.content.append(
        {"type": "tool_use", "id": _block_id("toolu_", turn, name), "name": name, "input": value}
    )


def _block_id(prefix: str, turn: Turn, salt: str) -> str:
    return prefix + hashlib.blake2b(f"{turn.message_id}:{salt}".encode(), digest_size=12).hexdigest()


def _pending_server_tools(last: Message) -> list[dict[str, Any]]:
    """Return the ``server_tool_use`` blocks of a last assistant turn that have no result yet."""
    if last.role != "assistant" or isinstance(last.content, str):
        return []
    answered = {
        block.get("tool_use_id") for block in last.content if block.get("type", "").endswith("_tool_result")
    }
    return [
        block
        for block in last.content
        if block.get("type") == "server_tool_use"
        and block.get("id") not in answered
        and block.get("name") in ("web_search", "web_fetch")
    ]


def _server_call(
    answer: Answer, budget: _Budget, turn: Turn, params: Params, tool: dict[str, Any], code: int
) -> dict[str, Any]:
    name = SERVER_TOOL_NAMES[str(tool.get("type"))]
    if name == "web_search":
        tool_input: dict[str, Any] = {"query": _echo(params)[:80] or "emulated search"}
    else:
        found = _URL.search(_last_user_text(params, None))
        tool_input = {"url": found.group(0) if found else f"https://{_domain(tool)}/emulated/{code:08x}"}
    budget.take(budget.tokenizer.text_tokens(_encode(tool_input).decode()))
    call = {
        "type": "server_tool_use",
        "id": _block_id("srvtoolu_", turn, name),
        "name": name,
        "input": tool_input,
    }
    answer.content.append(call)
    return call


def _server_result(
    answer: Answer, budget: _Budget, turn: Turn, params: Params, call: dict[str, Any], code: int
) -> None:
    """Append the result of a server tool call (counted as input tokens and as a server tool request)."""
    name = call.get("name")
    tool = next((t for t in params.tools or () if SERVER_TOOL_NAMES.get(str(t.get("type"))) == name), {})
    tool_input = call.get("input") or {}
    when = datetime.fromtimestamp(turn.processed_at, UTC)
    if name == "web_search":
        query = str(tool_input.get("query", ""))
        domain = _domain(tool)
        content: Any = [
            {
                "type": "web_search_result",
                "url": f"https://{domain}/emulated/{code:08x}/{n}",
                "title": f"Emulated result {n} for {query[:60]!r}",
                "encrypted_content": base64.b64encode(
                    hashlib.blake2b(f"{code}:{query}:{n}".encode(), digest_size=48).digest()
                ).decode(),
                "page_age": (when - timedelta(days=3 * n)).strftime("%B %d, %Y"),
            }
            for n in range(1, _SEARCH_RESULTS + 1)
        ]
        block = {"type": "web_search_tool_result", "tool_use_id": call["id"], "content": content}
        answer.web_search_requests += 1
    else:
        url = str(tool_input.get("url", ""))
        content = {
            "type": "web_fetch_result",
            "url": url,
            "retrieved_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "content": {
                "type": "document",
                "source": {
                    "type": "text",
                    "media_type": "text/plain",
                    "data": f"Emulated page {code:08x} at {url}.",
                },
                "title": f"Emulated page {code:08x}",
            },
        }
        block = {"type": "web_fetch_tool_result", "tool_use_id": call["id"], "content": content}
        answer.web_fetch_requests += 1
    answer.tool_result_tokens += budget.tokenizer.text_tokens(_encode(content).decode())
    answer.content.append(block)


def _domain(tool: dict[str, Any]) -> str:
    allowed = tool.get("allowed_domains") or []
    if allowed:
        return str(allowed[0])
    blocked = set(tool.get("blocked_domains") or ())
    return "example.org" if "example.com" in blocked else "example.com"
