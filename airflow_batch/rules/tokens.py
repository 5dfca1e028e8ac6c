"""How many input tokens a prompt has, and which of its prefixes the prompt cache holds.

One home for the token approximation the estimate and the emulator share. A text counts one
token per character of the CJK scripts (Han ideographs, kana, Hangul, their punctuation and
fullwidth forms) plus ``ceil(other characters / 4)``: the API's tokenizers read English at
about four characters a token but Chinese, Japanese and Korean at one to two characters a
token, so a flat ``characters / 4`` counted the batch guide's Chinese prompts 2-4x short
(budgets, the context-window refusal and the cache minimum all read this count). One per
character sits between the published ``count_tokens`` figures (500 Korean characters: 312
tokens; 1,000 Chinese characters: 1,500-2,000 tokens); calibration corrects the rest. Texts
are the system prompt (a string or each text block), each message's string content or text
block, tool_result contents; every other block (tool definitions, tool_use, ...) counts as its
compact JSON text; images and documents count by their content (pages, pixels:
:func:`airflow_batch.media.media_block_tokens`), never by the length of their base64. No per-message
overhead. The estimate calibrates this against the API's ``count_tokens``; the emulator's own
tokenizer scales it per model family.

Prompt caching: the prompt is read in API order (tools, system, messages). A block with
``cache_control`` is a breakpoint; the prefix up to it is identified by a hash of the model
and the prefix content. A prefix shorter than the model's minimum cacheable length
(``min_cacheable_tokens`` of the model table) is no cache point at all: neither written nor
read, as the API silently does. The longest prefix already cached is read; the tokens between
it and the last breakpoint are written, 5-minute or 1-hour by the ``ttl`` of the breakpoint
that closes each segment. Pure functions over plain data (dicts, or the emulator's structs with
a ``content`` attribute): no I/O, no Airflow.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from airflow_batch.media import media_block_tokens

_encode = msgspec.json.Encoder().encode


#: Characters counted one token each: Hangul Jamo, CJK radicals to Unified Ideographs (with CJK
#: punctuation, kana, Bopomofo), Hangul syllables, compatibility ideographs and forms, fullwidth
#: forms, and the supplementary ideograph planes.
_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f"
    "\uff00-\uffef\U00020000-\U0003ffff]"
)
_drop_cjk = _CJK.sub


def approx_tokens(text: str) -> int:
    """Return the local token approximation of ``text``: CJK characters one each, others ``ceil(n / 4)``."""
    if text.isascii():  # O(1) for a str: the common case costs one length
        return (len(text) + 3) // 4
    other = len(_drop_cjk("", text))
    return len(text) - other + (other + 3) // 4


def _content(message: Any) -> Any:
    return message.get("content") if isinstance(message, Mapping) else getattr(message, "content", None)


def plain_prompt_tokens(system: Any, messages: Sequence[Any]) -> int | None:
    """Return the input tokens of a prompt made of strings only, or None if it has blocks.

    The fast path of the common request (a string system prompt and string messages):
    nothing can be cached, so the count is all there is to know.
    """
    if system is None:
        total = 0
    elif type(system) is str:
        total = (len(system) + 3) // 4 if system.isascii() else approx_tokens(system)
    else:
        return None
    for message in messages:
        content = _content(message)
        if type(content) is not str:
            return None
        total += (len(content) + 3) // 4 if content.isascii() else approx_tokens(content)
    return total


def plain_text_tokens(system: str | None, messages: Sequence[Any]) -> int:
    """Return the input tokens of a prompt whose system and every message's ``.content`` are strings.

    :func:`plain_prompt_tokens` for a request already typed as plain
    (:class:`airflow_batch.rules.params.PlainRequest`): the submit pass's hot loop.
    """
    total = 0 if system is None else (len(system) + 3) // 4 if system.isascii() else approx_tokens(system)
    for message in messages:
        content = message.content
        total += (len(content) + 3) // 4 if content.isascii() else approx_tokens(content)
    return total


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


def block_tokens(block: Any) -> int:
    """Return the approximate tokens of one content block."""
    if not isinstance(block, Mapping):
        return approx_tokens(str(block))
    kind = block.get("type")
    if kind == "text":
        return approx_tokens(str(block.get("text", "")))
    if kind in ("image", "document"):
        return media_block_tokens(block)
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            return approx_tokens(content)
        return sum(block_tokens(item) for item in content)
    if kind == "tool_use":
        return approx_tokens(_encode(block.get("input", {})).decode())
    return approx_tokens(_encode({k: v for k, v in block.items() if k != "cache_control"}).decode())


def _block_segment(block: Any) -> Segment:
    ttl = None
    if isinstance(block, Mapping) and isinstance(block.get("cache_control"), Mapping):
        ttl = "1h" if block["cache_control"].get("ttl") == "1h" else "5m"
    return Segment(block_tokens(block), block, ttl)


def prompt_segments(system: Any, messages: Sequence[Any], tools: Sequence[Any] | None) -> list[Segment]:
    """Return the prompt as ordered segments (tools, system, messages) for tokens and caching."""
    segments: list[Segment] = []
    for tool in tools or ():
        segments.append(
            _block_segment({"type": "tool_definition", **tool} if isinstance(tool, Mapping) else tool)
        )
    if isinstance(system, str):
        segments.append(Segment(approx_tokens(system), system, None))
    elif isinstance(system, list):
        segments.extend(_block_segment(block) for block in system)
    for message in messages:
        content = _content(message)
        if isinstance(content, str):
            segments.append(Segment(approx_tokens(content), content, None))
        elif isinstance(content, list):
            segments.extend(_block_segment(block) for block in content)
    return segments


def input_tokens(params: Mapping[str, Any]) -> int:
    """Return the approximate input tokens of a request's params (cached or not)."""
    segments = prompt_segments(params.get("system"), params.get("messages") or (), params.get("tools"))
    return sum(segment.tokens for segment in segments)


@dataclass(frozen=True)
class Breakpoint:
    """A cache breakpoint: prefix key, tokens up to and including it, and its TTL."""

    key: bytes
    prefix_tokens: int
    ttl: str


def cache_breakpoints(model: str, segments: Sequence[Segment]) -> list[Breakpoint]:
    """Return the cache breakpoints of a prompt in order, keyed by a hash of model + prefix."""
    if not any(segment.cache_ttl for segment in segments):
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


NO_CACHE = CacheUsage()


class CacheLedger(Protocol):
    """The prompt-cache prefixes seen so far (a ``set[bytes]`` will do)."""

    def __contains__(self, key: object) -> bool: ...

    def add(self, key: bytes) -> None: ...


def account_cache(points: Sequence[Breakpoint], seen: CacheLedger, *, min_tokens: int) -> CacheUsage:
    """Return the cache read and writes of a request and mark its breakpoints seen.

    :param min_tokens: the model's minimum cacheable length (0 when not known): breakpoints
        whose prefix is shorter are ignored, neither written nor read.
    """
    if min_tokens > 0:
        points = [point for point in points if point.prefix_tokens >= min_tokens]
    if not points:
        return NO_CACHE
    read = 0
    for point in points:
        if point.key in seen:
            read = point.prefix_tokens
    write_5m = write_1h = 0
    previous = 0
    for point in points:
        if point.prefix_tokens > read:
            written = point.prefix_tokens - max(previous, read)
            if point.ttl == "1h":
                write_1h += written
            else:
                write_5m += written
        previous = point.prefix_tokens
        seen.add(point.key)
    return CacheUsage(read, write_5m, write_1h, points[-1].prefix_tokens)
