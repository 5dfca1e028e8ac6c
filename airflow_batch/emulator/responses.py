"""Synthetic, deterministic per-request results and the token approximation.

Token approximation (also used by ``count_tokens``): every text counts
``ceil(len(text) / 4)`` tokens. Texts are the system prompt (string or each text
block), each message's string content or text block, tool_result contents, and each
tool definition / tool_use input / other block as its compact JSON. Images and
documents count a flat 1,500 tokens. There is no per-message overhead and no minimum.

Prompt caching: the prompt is the ordered sequence tools, system, messages. A block
with ``cache_control`` is a breakpoint; the prefix up to it is identified by a hash
of the model and the prefix content. The longest prefix already seen by this emulator
(persisted across restarts) is read (``cache_read_input_tokens``); the tokens between it
and the last breakpoint are written (``cache_creation_input_tokens``), split into
``ephemeral_1h_input_tokens`` / ``ephemeral_5m_input_tokens`` by the ``ttl`` of the
breakpoint closing each segment. ``input_tokens`` is what follows the last breakpoint.
"Seen" is decided in request order when the batch is created.

Response text: ``Emulated response <h>: <echo>`` where ``<h>`` is a CRC32 of the model
and ``<echo>``, the first 160 characters of the last user message (whitespace
collapsed when it holds newlines or tabs); when the system
prompt mentions JSON the text is a JSON object
``{"id", "sentiment", "score", "summary"}`` instead. Output tokens use the same
approximation; when they exceed ``max_tokens`` the text is cut to ``4 * max_tokens``
characters and ``stop_reason`` is ``max_tokens`` (else ``end_turn``).

Outcome: a request whose params a real API would reject (empty ``messages``, a role
other than user/assistant, a model not starting with ``claude-``) is ``errored`` with
``invalid_request_error``. Otherwise a draw ``u`` in [0, 1) from
``blake2b(seed, batch sequence number, custom_id)`` picks an injected error type or
``expired`` by the configured rates, else ``succeeded``. The batch sequence number
(1 for the first batch created since start of the store or reset) makes a resubmitted
``custom_id`` draw again, so retry rounds converge, while a fresh emulator with the
same seed and submissions reproduces every outcome.

Ids: ``msg_`` / ``req_`` + a hash of the batch id + the request index (hex), so a
result line is byte-identical every time it is downloaded.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from airflow_batch.emulator.validation import BatchRequest, Message, Params

SUCCEEDED = b"s"
ERRORED = b"e"
EXPIRED = b"x"

_ECHO_CHARS = 160
_MEDIA_TOKENS = 1_500
_SENTIMENTS = ("positive", "negative", "neutral")
_ERROR_MESSAGES = {
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
    "rate_limit_error": "Rate limited",
    "invalid_request_error": "Invalid request",
    "authentication_error": "Invalid authentication",
    "permission_error": "Permission denied",
    "not_found_error": "Not found",
    "request_too_large": "Request too large",
}
_encode = msgspec.json.Encoder().encode


def approx_tokens(text: str) -> int:
    """Return the approximate token count of ``text``: ``ceil(len / 4)``."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt: its tokens, its source (text or block), and breakpoint TTL if any."""

    tokens: int
    source: str | Mapping[str, Any]
    cache_ttl: str | None

    def identity(self) -> bytes:
        """Return the bytes that identify this piece in a cache prefix key."""
        if isinstance(self.source, str):
            return self.source.encode()
        return _encode({k: v for k, v in self.source.items() if k != "cache_control"})


def _block_segments(block: Mapping[str, Any]) -> Iterator[Segment]:
    kind = block.get("type")
    cache_control = block.get("cache_control")
    ttl = None
    if isinstance(cache_control, Mapping):
        ttl = "1h" if cache_control.get("ttl") == "1h" else "5m"
    if kind == "text":
        tokens = approx_tokens(str(block.get("text", "")))
    elif kind in ("image", "document"):
        tokens = _MEDIA_TOKENS
    elif kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            tokens = approx_tokens(content)
        else:
            tokens = sum(s.tokens for item in content for s in _block_segments(item))
    elif kind == "tool_use":
        tokens = approx_tokens(_encode(block.get("input", {})).decode())
    else:
        tokens = approx_tokens(_encode({k: v for k, v in block.items() if k != "cache_control"}).decode())
    yield Segment(tokens, block, ttl)


def prompt_segments(
    system: str | list[dict[str, Any]] | None,
    messages: list[Message],
    tools: list[dict[str, Any]] | None,
) -> list[Segment]:
    """Return the prompt as ordered segments (tools, system, messages) for tokens and caching."""
    segments: list[Segment] = []
    for tool in tools or ():
        segments.extend(_block_segments({"type": "tool_definition", **tool}))
    if isinstance(system, str):
        segments.append(Segment(approx_tokens(system), system, None))
    elif system:
        for block in system:
            segments.extend(_block_segments(block))
    for message in messages:
        content = message.content
        if isinstance(content, str):
            segments.append(Segment(approx_tokens(content), content, None))
        else:
            for block in content:
                segments.extend(_block_segments(block))
    return segments


def count_input_tokens(segments: Iterable[Segment]) -> int:
    """Return the total input tokens of a prompt (what ``count_tokens`` answers)."""
    return sum(s.tokens for s in segments)


@dataclass(frozen=True)
class Breakpoint:
    """A cache breakpoint: prefix key, tokens up to and including it, and its TTL."""

    key: bytes
    prefix_tokens: int
    ttl: str


def cache_breakpoints(model: str, segments: list[Segment]) -> list[Breakpoint]:
    """Return the cache breakpoints of a prompt in order, keyed by a hash of model + prefix."""
    if not any(s.cache_ttl for s in segments):
        return []
    digest = hashlib.blake2b(model.encode(), digest_size=16)
    points: list[Breakpoint] = []
    total = 0
    for segment in segments:
        total += segment.tokens
        identity = segment.identity()
        digest.update(len(identity).to_bytes(8, "big") + identity)
        if segment.cache_ttl:
            points.append(Breakpoint(digest.copy().digest(), total, segment.cache_ttl))
    return points


@dataclass(frozen=True)
class CacheUsage:
    """Cache accounting of one request."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    cached_prefix: int = 0


class CacheLedger(Protocol):
    """The prompt-cache prefixes this emulator has seen (a ``set[bytes]`` will do)."""

    def __contains__(self, key: object) -> bool: ...

    def add(self, key: bytes) -> None: ...


def account_cache(points: list[Breakpoint], seen: CacheLedger) -> CacheUsage:
    """Return the cache read/write of a request and mark its breakpoints seen."""
    if not points:
        return CacheUsage()
    read = 0
    for point in points:
        if point.key in seen:
            read = point.prefix_tokens
    write_5m = write_1h = 0
    previous = 0
    for point in points:
        if point.prefix_tokens > read:
            segment = point.prefix_tokens - max(previous, read)
            if point.ttl == "1h":
                write_1h += segment
            else:
                write_5m += segment
        previous = point.prefix_tokens
        seen.add(point.key)
    return CacheUsage(read, write_5m, write_1h, points[-1].prefix_tokens)


_NO_CACHE = CacheUsage()


def semantic_error(request: BatchRequest) -> str | None:
    """Return the per-request ``invalid_request_error`` message a real API would give, or None."""
    params = request.params
    if not params.model.startswith("claude-"):
        return f"model: {params.model!r} is not a known model; model names start with 'claude-'"
    if not params.messages:
        return "messages: at least one message is required"
    for index, message in enumerate(params.messages):
        if message.role not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant', got {message.role!r}"
    return None


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content if b.get("type") == "text")


def synthetic_text(params: Params, model_code: int | None = None) -> str:
    """Return the deterministic reply text for a request (before any ``max_tokens`` cut).

    ``model_code`` is ``zlib.crc32`` of the model name, passed in by callers that cache it.
    """
    raw = ""
    for message in reversed(params.messages):
        if message.role == "user":
            content = message.content
            raw = (
                content[: 2 * _ECHO_CHARS]
                if isinstance(content, str)
                else _text_of(content)[: 2 * _ECHO_CHARS]
            )
            break
    echo = raw[:_ECHO_CHARS] if raw.isprintable() else " ".join(raw.split())[:_ECHO_CHARS]
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


def outcome_draw(seed: int, batch_seq: int, custom_id: str) -> float:
    """Return the reproducible draw in [0, 1) that decides a request's injected outcome."""
    digest = hashlib.blake2b(f"{seed}:{batch_seq}:{custom_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


_SUCCEEDED_LINE = (
    b'{"custom_id":"%s","result":{"type":"succeeded","message":{"id":"msg_%s%08x","type":"message",'
    b'"role":"assistant","model":%s,"content":[{"type":"text","text":%s}],"stop_reason":"%s",'
    b'"stop_sequence":null,"usage":{"input_tokens":%d,"cache_creation_input_tokens":%d,'
    b'"cache_read_input_tokens":%d,"cache_creation":{"ephemeral_5m_input_tokens":%d,'
    b'"ephemeral_1h_input_tokens":%d},"output_tokens":%d,"service_tier":"batch"}}}}\n'
)
_ERRORED_LINE = (
    b'{"custom_id":"%s","result":{"type":"errored","error":{"type":"error","error":{"type":"%s",'
    b'"message":%s},"request_id":"req_%s%08x"}}}\n'
)
_BARE_LINE = b'{"custom_id":"%s","result":{"type":"%s"}}\n'


def bare_result_line(custom_id: bytes, result_type: bytes) -> bytes:
    """Return the result line of a ``canceled`` or ``expired`` request."""
    return _BARE_LINE % (custom_id, result_type)


class ResultBuilder:
    """Builds each request's finished JSONL result line of one batch, at create time.

    Lines are formatted from byte templates rather than encoded from dicts: this runs
    100,000 times inside one create call.
    """

    def __init__(
        self,
        *,
        batch_id: str,
        batch_seq: int,
        seed: int,
        error_rates: Mapping[str, float],
        expire_rate: float,
        seen_cache_keys: CacheLedger,
    ) -> None:
        self._batch_seq = batch_seq
        self._seed = seed
        # Message and request ids: a hash of the batch id plus the request index.
        self._id_prefix = hashlib.blake2b(batch_id.encode(), digest_size=8).hexdigest().encode()
        self._thresholds: list[tuple[float, bytes]] = []
        cumulative = 0.0
        for error_type, rate in sorted(error_rates.items()):
            cumulative += rate
            self._thresholds.append((cumulative, error_type.encode()))
        self._expire_limit = cumulative + expire_rate
        self._seen = seen_cache_keys
        self._models: dict[str, tuple[bytes, int]] = {}

    def build(self, index: int, request: BatchRequest) -> tuple[bytes, bytes]:
        """Return ``(outcome, line)`` for one request; outcome is SUCCEEDED/ERRORED/EXPIRED."""
        custom_id = request.custom_id.encode()
        problem = semantic_error(request)
        if problem is not None:
            return ERRORED, _ERRORED_LINE % (
                custom_id,
                b"invalid_request_error",
                _encode(problem),
                self._id_prefix,
                index,
            )
        if self._expire_limit > 0:
            draw = outcome_draw(self._seed, self._batch_seq, request.custom_id)
            for limit, error_type in self._thresholds:
                if draw < limit:
                    message = _encode(_ERROR_MESSAGES[error_type.decode()])
                    return ERRORED, _ERRORED_LINE % (custom_id, error_type, message, self._id_prefix, index)
            if draw < self._expire_limit:
                return EXPIRED, bare_result_line(custom_id, b"expired")
        return SUCCEEDED, self._succeeded(index, custom_id, request.params)

    def _succeeded(self, index: int, custom_id: bytes, params: Params) -> bytes:
        system = params.system
        # Plain strings only (the common case): no blocks, so no cache breakpoints.
        plain = params.tools is None and (system is None or isinstance(system, str))
        total = 0
        for message in params.messages:
            content = message.content
            if not isinstance(content, str):
                plain = False
                break
            total += (len(content) + 3) // 4
        if plain:
            if system:
                total += (len(system) + 3) // 4
            cache = _NO_CACHE
        else:
            segments = prompt_segments(system, params.messages, params.tools)
            total = count_input_tokens(segments)
            cache = account_cache(cache_breakpoints(params.model, segments), self._seen)
        model = self._models.get(params.model)
        if model is None:
            model = self._models[params.model] = (_encode(params.model), zlib.crc32(params.model.encode()))
        text = synthetic_text(params, model[1])
        output_tokens = (len(text) + 3) // 4
        stop_reason = b"end_turn"
        if output_tokens > params.max_tokens:
            text = text[: 4 * params.max_tokens]
            output_tokens = params.max_tokens
            stop_reason = b"max_tokens"
        return _SUCCEEDED_LINE % (
            custom_id,
            self._id_prefix,
            index,
            model[0],
            _encode(text),
            stop_reason,
            total - cache.cached_prefix,
            cache.write_5m + cache.write_1h,
            cache.read,
            cache.write_5m,
            cache.write_1h,
            output_tokens,
        )
