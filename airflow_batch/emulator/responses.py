"""Synthetic, deterministic per-request results and the token approximation.

Tokens and prompt caching follow :mod:`airflow_batch.tokens` (the approximation the
estimate uses too, also answered by ``count_tokens``): the longest cached prefix already
seen by this emulator (persisted across restarts) is read (``cache_read_input_tokens``);
the tokens between it and the last breakpoint are written (``cache_creation_input_tokens``),
split into ``ephemeral_1h_input_tokens`` / ``ephemeral_5m_input_tokens`` by the ``ttl`` of
the breakpoint closing each segment. ``input_tokens`` is what follows the last breakpoint.
"Seen" is decided in request order when the batch is created.

Response text: ``Emulated response <h>: <echo>`` where ``<h>`` is a CRC32 of the model
and ``<echo>``, the first 160 characters of the last user message (whitespace
collapsed when it holds newlines or tabs); when the system
prompt mentions JSON the text is a JSON object
``{"id", "sentiment", "score", "summary"}`` instead. Output tokens use the same
approximation; when they exceed ``max_tokens`` the text is cut to ``4 * max_tokens``
characters and ``stop_reason`` is ``max_tokens`` (else ``end_turn``).

Outcome: a request for a model the emulator does not serve (see ``models``) is ``errored``
with ``invalid_request_error``. Otherwise a draw ``u`` in [0, 1) from
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
from collections.abc import Mapping
from typing import Any

import msgspec

from airflow_batch.emulator.models import is_served
from airflow_batch.emulator.validation import BatchRequest, Params
from airflow_batch.tokens import (
    NO_CACHE,
    CacheLedger,
    account_cache,
    cache_breakpoints,
    plain_prompt_tokens,
    prompt_segments,
)

SUCCEEDED = b"s"
ERRORED = b"e"
EXPIRED = b"x"

_ECHO_CHARS = 160
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


def semantic_error(request: BatchRequest) -> str | None:
    """Return the per-request ``invalid_request_error`` message a real API would give, or None.

    The structure was checked when the batch was created; what is left is what only the
    serving side knows: whether it serves the model.
    """
    if not is_served(request.params.model):
        return f"model: {request.params.model!r} is not a model this API serves"
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
        total = plain_prompt_tokens(params.system, params.messages) if params.tools is None else None
        if total is not None:
            cache = NO_CACHE
        else:
            segments = prompt_segments(params.system, params.messages, params.tools)
            total = sum(segment.tokens for segment in segments)
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
