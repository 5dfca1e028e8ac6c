"""What a round is expected to cost, computed before any batch is created.

Input tokens, local approximation (documented, and the same one the emulator uses): every
text counts ``ceil(characters / 4)`` tokens — the system prompt (a string or each text
block), each message's string content or text block, tool_result contents — and every other
block (tool definitions, tool_use, ...) counts as its compact JSON text; images and documents
count a flat 1,500 tokens. No per-message overhead is added.

Calibration: when a client is given, up to ``sample`` requests (the first ones, so the
figure is reproducible) are sent to ``POST /v1/messages/count_tokens``; the ratio of the
API's count to the local count over that sample scales every input figure, and the
estimate's ``method`` is ``"count_tokens"``. If the endpoint fails (not supported by the
connection, no permission, network), the local approximation stands and ``method`` is
``"approximation"``; the reason is logged.

Output tokens: ``expected_output_tokens`` per request when given, else each request's
``max_tokens`` — an upper bound, so the estimate is pessimistic on output.

Prompt caching: the prompt is read in API order (tools, system, messages); a block with
``cache_control`` closes a cacheable prefix, identified by the model and the prefix content.
The first request with a given prefix writes it (5-minute or 1-hour price by its ``ttl``),
every later request reads it. This is the best case: real batches process requests
concurrently and hit the cache less often (the batch guide reports 30-98 %), so real cache
savings are at most those estimated. The standard-API price of the same tokens is computed
beside the batch price.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch.costs import price_table
from airflow_batch.exceptions import UnknownModelPriceError
from airflow_batch.manifest import CostEstimate, Usage, empty_usage

if TYPE_CHECKING:
    import anthropic

_MEDIA_TOKENS = 1_500
_COUNT_TOKENS_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
_encode = msgspec.json.Encoder().encode
Segment = tuple[int, Any, str | None]


def approx_tokens(text: str) -> int:
    """Return the local token approximation of ``text``: ``ceil(len / 4)``."""
    return (len(text) + 3) // 4


def _block_tokens(block: Any) -> int:
    if not isinstance(block, Mapping):
        return approx_tokens(str(block))
    kind = block.get("type")
    if kind == "text":
        return approx_tokens(str(block.get("text", "")))
    if kind in ("image", "document"):
        return _MEDIA_TOKENS
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            return approx_tokens(content)
        return sum(_block_tokens(item) for item in content)
    if kind == "tool_use":
        return approx_tokens(_encode(block.get("input", {})).decode())
    return approx_tokens(_encode({k: v for k, v in block.items() if k != "cache_control"}).decode())


def _segments(params: Mapping[str, Any]) -> list[Segment]:
    """Return the prompt as (tokens, source, cache ttl or None) in API order."""
    out: list[Segment] = []

    def add_block(block: Any) -> None:
        ttl = None
        if isinstance(block, Mapping) and isinstance(block.get("cache_control"), Mapping):
            ttl = "1h" if block["cache_control"].get("ttl") == "1h" else "5m"
        out.append((_block_tokens(block), block, ttl))

    for tool in params.get("tools") or ():
        add_block({"type": "tool_definition", **tool} if isinstance(tool, Mapping) else tool)
    system = params.get("system")
    if isinstance(system, str):
        out.append((approx_tokens(system), system, None))
    elif isinstance(system, list):
        for block in system:
            add_block(block)
    for message in params.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            out.append((approx_tokens(content), content, None))
        elif isinstance(content, list):
            for block in content:
                add_block(block)
    return out


def _plain_tokens(params: Mapping[str, Any]) -> int | None:
    """Return the input tokens of a prompt of plain strings fast, or None if it has blocks or tools."""
    if "tools" in params:
        return None
    system = params.get("system")
    if system is None:
        total = 0
    elif type(system) is str:
        total = (len(system) + 3) // 4
    else:
        return None
    for message in params["messages"]:
        content = message["content"]
        if type(content) is not str:
            return None
        total += (len(content) + 3) // 4
    return total


def input_tokens(params: Mapping[str, Any]) -> int:
    """Return the local approximation of a request's input tokens (cached or not)."""
    return sum(tokens for tokens, _, _ in _segments(params))


@dataclass
class ModelTally:
    """Expected tokens of the requests of one model."""

    requests: int = 0
    input_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output_tokens: int = 0


@dataclass
class TokenTally:
    """Token counts accumulated one request at a time while the input streams by."""

    expected_output_tokens: int | None = None
    sample_size: int = 20
    models: dict[str, ModelTally] = field(default_factory=dict)
    sample: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    _seen_prefixes: set[bytes] = field(default_factory=set)

    def add(self, params: Mapping[str, Any], may_cache: bool = True) -> None:
        """Count one valid request's params; ``may_cache=False`` skips the cache walk (no cache_control)."""
        model = str(params["model"])
        tally = self.models.get(model)
        if tally is None:
            tally = self.models[model] = ModelTally()
        tally.requests += 1
        expected = self.expected_output_tokens
        tally.output_tokens += expected if expected is not None else int(params["max_tokens"])
        total = _plain_tokens(params)
        if total is None or may_cache:
            segments = _segments(params)
            total = sum(tokens for tokens, _, _ in segments)
            cached = self._account_cache(model, segments, tally) if may_cache else 0
        else:
            cached = 0
        if len(self.sample) < self.sample_size:
            self.sample.append((dict(params), total))
        tally.input_tokens += total - cached

    def add_plain(self, model: str, max_tokens: int, tokens: int, line: bytes) -> None:
        """Count a request without cache_control whose input ``tokens`` are already known.

        ``line`` is the request's JSON; it is decoded only while the calibration sample fills.
        """
        tally = self.models.get(model)
        if tally is None:
            tally = self.models[model] = ModelTally()
        tally.requests += 1
        expected = self.expected_output_tokens
        tally.output_tokens += expected if expected is not None else max_tokens
        tally.input_tokens += tokens
        if len(self.sample) < self.sample_size:
            self.sample.append((msgspec.json.decode(line)["params"], tokens))

    def _account_cache(
        self, model: str, segments: list[tuple[int, Any, str | None]], tally: ModelTally
    ) -> int:
        """Count cache writes/reads of one request; return the tokens covered by cached prefixes."""
        if not any(ttl for _, _, ttl in segments):
            return 0
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        points: list[tuple[bytes, int, str]] = []
        prefix = 0
        for tokens, source, ttl in segments:
            prefix += tokens
            identity = (
                source.encode()
                if isinstance(source, str)
                else _encode({k: v for k, v in source.items() if k != "cache_control"})
            )
            digest.update(len(identity).to_bytes(8, "big") + identity)
            if ttl:
                points.append((digest.copy().digest(), prefix, ttl))
        read = max((tokens for key, tokens, _ in points if key in self._seen_prefixes), default=0)
        previous = 0
        for key, tokens, ttl in points:
            if tokens > read:
                written = tokens - max(previous, read)
                if ttl == "1h":
                    tally.cache_write_1h += written
                else:
                    tally.cache_write_5m += written
            previous = tokens
            self._seen_prefixes.add(key)
        tally.cache_read += read
        return points[-1][1]


@dataclass(frozen=True)
class Calibration:
    """How local token counts compare with the API's ``count_tokens`` on a sample."""

    method: str
    ratio: float
    detail: str


def calibrate(
    client: anthropic.Anthropic | None, sample: list[tuple[dict[str, Any], int]], log: logging.Logger
) -> Calibration:
    """Return the API/local token ratio over ``sample``, or 1.0 with method "approximation"."""
    if client is None or not sample:
        return Calibration("approximation", 1.0, "no client or no sample")
    import anthropic

    counting = client.with_options(max_retries=1, timeout=30.0)
    api_total = local_total = 0
    try:
        for params, local in sample:
            body = {key: params[key] for key in _COUNT_TOKENS_KEYS if key in params}
            api_total += counting.messages.count_tokens(**body).input_tokens
            local_total += local
    except (anthropic.APIError, TypeError) as exc:
        log.info("count_tokens not available (%s); using the local approximation", exc)
        return Calibration("approximation", 1.0, f"count_tokens failed: {exc}")
    if local_total == 0:
        return Calibration("approximation", 1.0, "sample has no text")
    ratio = api_total / local_total
    detail = f"count_tokens on {len(sample)} requests: {api_total} tokens vs {local_total} locally"
    return Calibration("count_tokens", ratio, detail)


def _usage(tally: ModelTally, ratio: float) -> Usage:
    usage = empty_usage()
    usage["input_tokens"] = math.ceil(tally.input_tokens * ratio)
    usage["output_tokens"] = tally.output_tokens
    usage["cache_creation_1h_input_tokens"] = math.ceil(tally.cache_write_1h * ratio)
    usage["cache_creation_input_tokens"] = math.ceil((tally.cache_write_5m + tally.cache_write_1h) * ratio)
    usage["cache_read_input_tokens"] = math.ceil(tally.cache_read * ratio)
    return usage


def estimate_cost(
    tally: TokenTally,
    *,
    prices: Mapping[str, Mapping[str, Any]] | None = None,
    client: anthropic.Anthropic | None = None,
    require_prices: bool = False,
    log: logging.Logger | None = None,
) -> CostEstimate:
    """Return the expected usage and its batch and standard price, logging both.

    :param require_prices: raise :class:`UnknownModelPriceError` when a model has no price
        (set when a budget must be checked: an unpriced model makes the check impossible).
    """
    log = log or logging.getLogger(__name__)
    calibration = calibrate(client, tally.sample, log)
    table = price_table(prices)
    by_model = {model: _usage(model_tally, calibration.ratio) for model, model_tally in tally.models.items()}
    figures = table.cost(by_model)
    if not figures["priced"]:
        message = (
            f"no price for model(s) {', '.join(figures['unpriced_models'])} in the price table "
            f"({table.source}, {table.as_of}); add them with prices={{model: {{'input': .., 'output': ..}}}}"
        )
        if require_prices:
            raise UnknownModelPriceError(message + " — the budget max_cost_usd cannot be checked otherwise")
        log.warning("%s; the estimate covers priced models only", message)
    total = empty_usage()
    for usage in by_model.values():
        for key in total:
            total[key] += usage[key]  # type: ignore[literal-required]
    estimate = CostEstimate(
        batch_usd=figures["batch_usd"],
        standard_usd=figures["standard_usd"],
        priced=figures["priced"],
        unpriced_models=figures["unpriced_models"],
        method=calibration.method,
        usage=total,
    )
    output_basis = (
        f"{tally.expected_output_tokens} expected output tokens per request"
        if tally.expected_output_tokens is not None
        else "max_tokens per request (an upper bound)"
    )
    log.info(
        "Cost estimate: $%.4f at batch prices ($%.4f on the standard API) for %d requests; "
        "input %d, cache write %d, cache read %d, output %d tokens (output from %s); "
        "input by %s (%s); prices: %s, %s",
        estimate["batch_usd"],
        estimate["standard_usd"],
        sum(model_tally.requests for model_tally in tally.models.values()),
        total["input_tokens"],
        total["cache_creation_input_tokens"],
        total["cache_read_input_tokens"],
        total["output_tokens"],
        output_basis,
        calibration.method,
        calibration.detail,
        table.source,
        table.as_of,
    )
    return estimate
