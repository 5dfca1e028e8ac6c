"""Synthetic, deterministic answers: batch result lines and ``POST /v1/messages`` responses.

What an answer says (text, thinking, tool calls, server tools, structured outputs, stop
reasons) is :mod:`~airflow_batch.emulator.answers`; this module adds the prompt's tokens,
prompt caching, the outcome draws and the wire form.

Tokens are counted by the model's tokenizer (:mod:`~airflow_batch.emulator.tokenizer`: the
local approximation of :mod:`airflow_batch.rules.tokens`, scaled per model family), as
``count_tokens`` counts them. Prompt caching follows :mod:`airflow_batch.rules.tokens` with time
(:mod:`~airflow_batch.emulator.prompt_cache`): the longest cached prefix still live when the
request is processed is read (``cache_read_input_tokens``); the tokens between it and the
last breakpoint are written (``cache_creation_input_tokens``), split into
``ephemeral_1h_input_tokens`` / ``ephemeral_5m_input_tokens`` by the ``ttl`` of the
breakpoint closing each segment; a prefix below the model's ``min_cacheable_tokens`` is
neither. ``input_tokens`` is what follows the last breakpoint, plus server tool results.

Outcome: a request for a model the emulator does not serve (see ``models``), with thinking
and a forced ``tool_choice``, or whose prompt is longer than the model's context window
(``prompt is too long: N tokens > W maximum``, as the API words it) is ``errored`` with
``invalid_request_error``. Otherwise a draw ``u`` in [0, 1) from ``blake2b(seed, batch
sequence number, custom_id)`` picks an injected error type or ``expired`` by the configured
rates, else ``succeeded``; further draws of the same kind (salted with what they decide)
pick refusals, ``pause_turn`` and invalid structured outputs at their rates. The batch
sequence number (1 for the first batch created since start of the store or reset) makes a
resubmitted ``custom_id`` draw again, so retry rounds converge, while a fresh emulator with
the same seed and submissions reproduces every outcome. ``POST /v1/messages`` draws the same
way with batch number 0 and ``message-<n>`` (its n-th call since start or reset) as id.

Ids: ``msg_`` / ``req_`` + a hash of the batch id + the request index (hex), so a result line
is byte-identical every time it is downloaded. A request answered with one text block (no
thinking, tools, structured output, stop sequences, ``inference_geo``, continuation or
injected behaviour) takes the fast path: its line is formatted from a byte template, since
this runs 100,000 times inside one create call; every other answer is encoded from a dict.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from airflow_batch.emulator.answers import Turn, compose, needs_full_answer, semantic_problem, synthetic_text
from airflow_batch.emulator.files import scoped_file_problem
from airflow_batch.emulator.models import model_entry, refusal
from airflow_batch.emulator.prompt_cache import TimedCacheLedger
from airflow_batch.emulator.tokenizer import Tokenizer, tokenizer_for
from airflow_batch.emulator.validation import BatchRequest, Params
from airflow_batch.rules.models import SAMPLING_PARAMETERS
from airflow_batch.rules.tokens import NO_CACHE, CacheUsage, cache_breakpoints

SUCCEEDED = b"s"
ERRORED = b"e"
EXPIRED = b"x"

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


def outcome_draw(seed: int, batch_seq: int, custom_id: str) -> float:
    """Return the reproducible draw in [0, 1) that decides a request's injected outcome."""
    digest = hashlib.blake2b(f"{seed}:{batch_seq}:{custom_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def error_message(error_type: str) -> str:
    """Return the message of an injected error of ``error_type``."""
    return _ERROR_MESSAGES[error_type]


def _thresholds(error_rates: Mapping[str, float]) -> list[tuple[float, str]]:
    """Return each error type with the cumulative rate below which a draw picks it."""
    thresholds: list[tuple[float, str]] = []
    cumulative = 0.0
    for error_type, rate in sorted(error_rates.items()):
        cumulative += rate
        thresholds.append((cumulative, error_type))
    return thresholds


def injected_error(draw: float, error_rates: Mapping[str, float]) -> str | None:
    """Return the error type a draw in [0, 1) picks at ``error_rates``, or None."""
    return next((error_type for limit, error_type in _thresholds(error_rates) if draw < limit), None)


@dataclass(frozen=True)
class Behaviours:
    """The rates of injected answer behaviours (see ``faults.EmulatorConfig``)."""

    refusal_rate: float = 0.0
    pause_turn_rate: float = 0.0
    invalid_output_rate: float = 0.0


@dataclass(frozen=True)
class ModelFacts:
    """What answering a model needs, looked up once per model of a batch."""

    name: bytes
    """The model id as a JSON string."""
    code: int
    """``zlib.crc32`` of the model id (seeds the synthetic text)."""
    tokenizer: Tokenizer
    context_window: int | None
    min_cacheable_tokens: int
    thinking_display: str


class Prompt(NamedTuple):
    """A request's prompt as the model counts it: all its tokens and their cache accounting."""

    tokens: int
    cache: CacheUsage


class Answerer:
    """Answers checked requests: the model's facts, the prompt's tokens and cache, the Message.

    ``cache`` is the prompt cache the answers read and write; ``behaviours`` the injection rates.
    """

    def __init__(self, cache: TimedCacheLedger, behaviours: Behaviours) -> None:
        self.cache = cache
        self.behaviours = behaviours
        self._models: dict[str, ModelFacts | None] = {}

    def facts(self, model: str) -> ModelFacts | None:
        """Return what answering ``model`` needs, or None when the emulator does not serve it."""
        if model not in self._models:
            entry = model_entry(model)
            self._models[model] = (
                ModelFacts(
                    name=_encode(model),
                    code=zlib.crc32(model.encode()),
                    tokenizer=tokenizer_for(model),
                    context_window=entry.context_window,
                    min_cacheable_tokens=entry.min_cacheable_tokens or 0,
                    thinking_display=entry.thinking_display,
                )
                if entry is not None
                else None
            )
        return self._models[model]

    def prompt(self, params: Params, facts: ModelFacts, processed_at: Callable[[], float]) -> Prompt:
        """Return the prompt's tokens and, if it has breakpoints, its cache reads and writes.

        ``processed_at`` is called only for a prompt with breakpoints: when the request is processed.
        """
        tokenizer = facts.tokenizer
        plain = (
            tokenizer.plain_prompt_tokens(params.system, params.messages) if params.tools is None else None
        )
        if plain is not None:
            return Prompt(plain, NO_CACHE)
        segments = tokenizer.segments(params.system, params.messages, params.tools)
        total = sum(segment.tokens for segment in segments)
        if facts.context_window is not None and total > facts.context_window:
            return Prompt(total, NO_CACHE)  # refused: nothing is cached
        points = cache_breakpoints(params.model, segments)
        if not points:
            return Prompt(total, NO_CACHE)
        cache = self.cache.account(points, processed_at(), min_tokens=facts.min_cacheable_tokens)
        return Prompt(total, cache)

    def turn(
        self, params: Params, message_id: str, processed_at: float, draw: Callable[[str], float]
    ) -> Turn:
        """Return the turn of a request: its ids and clock, and which behaviours the draws inject."""
        rates = self.behaviours
        refusal = rates.refusal_rate > 0 and draw("refusal") < rates.refusal_rate
        pause = (
            bool(params.tools) and rates.pause_turn_rate > 0 and draw("pause_turn") < rates.pause_turn_rate
        )
        invalid: float | None = None
        output_format = (params.output_config or {}).get("format") or {}
        if rates.invalid_output_rate > 0 and output_format.get("type") == "json_schema":
            u = draw("invalid_output")
            invalid = u / rates.invalid_output_rate if u < rates.invalid_output_rate else None
        return Turn(message_id, processed_at, refusal=refusal, pause_turn=pause, invalid_output=invalid)

    def message(
        self, params: Params, facts: ModelFacts, prompt: Prompt, turn: Turn, *, service_tier: str
    ) -> dict[str, Any]:
        """Return the Message object answering a request (any content, any stop reason)."""
        answer = compose(
            params,
            turn,
            tokenizer=facts.tokenizer,
            prompt_tokens=prompt.tokens,
            context_window=facts.context_window,
            thinking_display=facts.thinking_display,
        )
        cache = prompt.cache
        usage: dict[str, Any] = {
            "input_tokens": prompt.tokens - cache.cached_prefix + answer.tool_result_tokens,
            "cache_creation_input_tokens": cache.write_5m + cache.write_1h,
            "cache_read_input_tokens": cache.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.write_5m,
                "ephemeral_1h_input_tokens": cache.write_1h,
            },
            "output_tokens": answer.output_tokens,
        }
        if answer.thinking_tokens is not None:
            usage["output_tokens_details"] = {"thinking_tokens": answer.thinking_tokens}
        if answer.uses_server_tools:
            usage["server_tool_use"] = {
                "web_search_requests": answer.web_search_requests,
                "web_fetch_requests": answer.web_fetch_requests,
            }
        usage["service_tier"] = service_tier
        if params.inference_geo is not None:
            usage["inference_geo"] = params.inference_geo
        return {
            "id": turn.message_id,
            "type": "message",
            "role": "assistant",
            "model": params.model,
            "content": answer.content,
            "stop_reason": answer.stop_reason,
            "stop_sequence": answer.stop_sequence,
            "stop_details": answer.stop_details,
            "usage": usage,
        }


def request_problem(params: Params, facts: ModelFacts | None) -> str | None:
    """Return the ``invalid_request_error`` a well-formed request gets before its prompt is counted."""
    if facts is None:
        return f"model: {params.model!r} is not a model this API serves"
    values = (params.temperature, params.top_p, params.top_k)
    sampling = {
        name: value for name, value in zip(SAMPLING_PARAMETERS, values, strict=True) if value is not None
    }
    return (
        refusal(params.model, sampling, params.thinking)
        or semantic_problem(params)
        or scoped_file_problem(params.messages)
    )


def prompt_problem(prompt: Prompt, facts: ModelFacts) -> str | None:
    """Return the ``invalid_request_error`` of a prompt longer than the model's context window."""
    if facts.context_window is not None and prompt.tokens > facts.context_window:
        return f"prompt is too long: {prompt.tokens} tokens > {facts.context_window} maximum"
    return None


_SUCCEEDED_LINE = (
    b'{"custom_id":"%s","result":{"type":"succeeded","message":{"id":"msg_%s%08x","type":"message",'
    b'"role":"assistant","model":%s,"content":[{"type":"text","text":%s}],"stop_reason":"%s",'
    b'"stop_sequence":null,"usage":{"input_tokens":%d,"cache_creation_input_tokens":%d,'
    b'"cache_read_input_tokens":%d,"cache_creation":{"ephemeral_5m_input_tokens":%d,'
    b'"ephemeral_1h_input_tokens":%d},"output_tokens":%d,"service_tier":"batch"}}}}\n'
)
_MESSAGE_LINE = b'{"custom_id":"%s","result":{"type":"succeeded","message":%s}}\n'
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

    ``processed_at(i)`` is when request ``i`` is processed on the batch's schedule (the prompt
    cache's clock).
    """

    def __init__(
        self,
        *,
        batch_id: str,
        batch_seq: int,
        seed: int,
        error_rates: Mapping[str, float],
        expire_rate: float,
        answerer: Answerer,
        processed_at: Callable[[int], float],
    ) -> None:
        self._batch_seq = batch_seq
        self._seed = seed
        # Message and request ids: a hash of the batch id plus the request index.
        self._id_prefix = hashlib.blake2b(batch_id.encode(), digest_size=8).hexdigest().encode()
        self._thresholds = [(limit, error_type.encode()) for limit, error_type in _thresholds(error_rates)]
        self._expire_limit = (self._thresholds[-1][0] if self._thresholds else 0.0) + expire_rate
        self._answerer = answerer
        self._processed_at = processed_at
        self._refusal_rate = answerer.behaviours.refusal_rate

    def _errored(self, index: int, custom_id: bytes, error_type: bytes, message: str) -> tuple[bytes, bytes]:
        return ERRORED, _ERRORED_LINE % (custom_id, error_type, _encode(message), self._id_prefix, index)

    def build(self, index: int, request: BatchRequest) -> tuple[bytes, bytes]:
        """Return ``(outcome, line)`` for one request; outcome is SUCCEEDED/ERRORED/EXPIRED."""
        custom_id = request.custom_id.encode()
        params = request.params
        facts = self._answerer.facts(params.model)
        problem = request_problem(params, facts)
        if problem is not None:
            return self._errored(index, custom_id, b"invalid_request_error", problem)
        assert facts is not None
        if self._expire_limit > 0:
            draw = outcome_draw(self._seed, self._batch_seq, request.custom_id)
            for limit, error_type in self._thresholds:
                if draw < limit:
                    return self._errored(index, custom_id, error_type, _ERROR_MESSAGES[error_type.decode()])
            if draw < self._expire_limit:
                return EXPIRED, bare_result_line(custom_id, b"expired")
        prompt = self._answerer.prompt(params, facts, lambda: self._processed_at(index))
        problem = prompt_problem(prompt, facts)
        if problem is not None:
            return self._errored(index, custom_id, b"invalid_request_error", problem)
        window = facts.context_window
        if (
            needs_full_answer(params)
            or (window is not None and prompt.tokens + params.max_tokens > window)
            or (self._refusal_rate > 0 and self._draw(request.custom_id, "refusal") < self._refusal_rate)
        ):
            return SUCCEEDED, self._full(index, custom_id, request, facts, prompt)
        return SUCCEEDED, self._plain(index, custom_id, params, facts, prompt.tokens, prompt.cache)

    def _draw(self, custom_id: str, purpose: str) -> float:
        return outcome_draw(self._seed, self._batch_seq, f"{custom_id}:{purpose}")

    def _full(
        self, index: int, custom_id: bytes, request: BatchRequest, facts: ModelFacts, prompt: Prompt
    ) -> bytes:
        message_id = f"msg_{self._id_prefix.decode()}{index:08x}"
        turn = self._answerer.turn(
            request.params,
            message_id,
            self._processed_at(index),
            lambda purpose: self._draw(request.custom_id, purpose),
        )
        message = self._answerer.message(request.params, facts, prompt, turn, service_tier="batch")
        return _MESSAGE_LINE % (custom_id, _encode(message))

    def _plain(
        self, index: int, custom_id: bytes, params: Params, facts: ModelFacts, total: int, cache: CacheUsage
    ) -> bytes:
        text = synthetic_text(params, facts.code)
        tokenizer = facts.tokenizer
        output_tokens = tokenizer.text_tokens(text)
        stop_reason = b"end_turn"
        if output_tokens > params.max_tokens:
            text = tokenizer.within(text, params.max_tokens)
            output_tokens = params.max_tokens
            stop_reason = b"max_tokens"
        return _SUCCEEDED_LINE % (
            custom_id,
            self._id_prefix,
            index,
            facts.name,
            _encode(text),
            stop_reason,
            total - cache.cached_prefix,
            cache.write_5m + cache.write_1h,
            cache.read,
            cache.write_5m,
            cache.write_1h,
            output_tokens,
        )
