"""What a round is expected to cost, computed before any batch is created.

Input tokens: the local approximation of :mod:`airflow_batch.rules.tokens` (the one the emulator
uses too), accumulated one request at a time while the input streams by.

Calibration: given a ``count_tokens`` callable (the API's ``POST /v1/messages/count_tokens``),
up to ``sample`` requests (the first ones, so the figure is reproducible) are counted by the
API; the ratio of its count to the local count over that sample scales every input figure,
and the estimate's ``method`` is ``"count_tokens"``. If counting fails (not supported by the
connection, no permission, network), the local approximation stands and ``method`` is
``"approximation"``; the reason is logged.

Output tokens: two figures. The **upper bound** prices each request's ``max_tokens`` (a
request can never cost more); the **expected** figure prices ``expected_output_tokens`` per
request (capped at the request's ``max_tokens``) when an expected length is known: given by
the user, observed in earlier runs of the same task, or measured by a canary. ``batch_usd``
and ``standard_usd`` are the upper bound; ``expected_batch_usd`` / ``expected_standard_usd``
the expected figure and ``expected_basis`` where its output length came from.

Prompt caching: the first request with a given cacheable prefix writes it (5-minute or
1-hour price by its ``ttl``; the estimate's ``cache_ttl`` and its log line say which), every
later request reads it. A prefix shorter than the model's minimum cacheable length
(``min_cacheable_tokens`` of the model table, compared with the local count) is neither
written nor read, as the API does. This is the best case: real
batches process requests concurrently and hit the cache less often (the batch guide reports
30-98 %), so real cache savings are at most those estimated. The standard-API price of the
same tokens is computed beside the batch price.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from airflow_batch.manifest import CostEstimate, Usage, empty_usage, sum_usages
from airflow_batch.rules.costs import PriceTable
from airflow_batch.rules.tokens import (
    Segment,
    account_cache,
    cache_breakpoints,
    plain_prompt_tokens,
    prompt_segments,
)

_COUNT_TOKENS_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
CountTokens = Callable[[Mapping[str, Any]], int]


def _no_minimum(model: str) -> int | None:
    return None


@dataclass(slots=True)
class ModelTally:
    """Expected tokens of the requests of one model.

    Requests and output tokens derive from ``max_tokens_counts`` (one count per request, the
    submit pass's only per-request work here), so the expected output can be priced again for
    a new length.
    """

    input_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    #: Expected output tokens per request, capped at each request's max_tokens (None: max_tokens).
    expected: int | None = None
    #: ``max_tokens -> requests``.
    max_tokens_counts: dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Return how many requests were counted."""
        return sum(self.max_tokens_counts.values())

    @property
    def max_output_tokens(self) -> int:
        """Return the upper bound of the output: every request's max_tokens."""
        return sum(max_tokens * requests for max_tokens, requests in self.max_tokens_counts.items())

    @property
    def output_tokens(self) -> int:
        """Return the expected output: min(max_tokens, expected) per request, else max_tokens."""
        expected = self.expected
        return sum(
            (min(expected, max_tokens) if expected is not None else max_tokens) * requests
            for max_tokens, requests in self.max_tokens_counts.items()
        )

    def expect(self, expected: int | None) -> None:
        """Price ``output_tokens`` at ``expected`` output tokens per request (None: max_tokens)."""
        self.expected = expected


@dataclass
class TokenTally:
    """Token counts accumulated one request at a time while the input streams by.

    ``min_cacheable`` returns a model's minimum cacheable prompt length (None: not known).
    """

    expected_output_tokens: int | None = None
    #: Where ``expected_output_tokens`` comes from ("expected_output_tokens", "observed ...", "canary").
    expected_basis: str | None = None
    sample_size: int = 20
    min_cacheable: Callable[[str], int | None] = _no_minimum
    models: dict[str, ModelTally] = field(default_factory=dict)
    sample: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    #: The calibration once measured: every later estimate of the round uses the same ratio (the
    #: canary's budget check and the round's agree, and count_tokens is asked once).
    calibration: Calibration | None = None
    _seen_prefixes: set[bytes] = field(default_factory=set)
    _measured: tuple[Any, list[Segment] | None] | None = None

    def _model(self, model: str, max_tokens: int, requests: int = 1) -> ModelTally:
        tally = self.models.get(model)
        if tally is None:
            tally = self.models[model] = ModelTally(expected=self.expected_output_tokens)
        counts = tally.max_tokens_counts
        counts[max_tokens] = counts.get(max_tokens, 0) + requests
        return tally

    def expect(self, tokens: int, basis: str) -> None:
        """Price the expected figure at ``tokens`` output tokens per request, saying where they come from."""
        self.expected_output_tokens = tokens
        self.expected_basis = basis
        for tally in self.models.values():
            tally.expect(tokens)

    def measure(self, params: Mapping[str, Any]) -> int:
        """Return the approximate input tokens of params (the :meth:`add` that follows reuses the work)."""
        total = None if "tools" in params else plain_prompt_tokens(params.get("system"), params["messages"])
        segments = None
        if total is None:
            segments = prompt_segments(params.get("system"), params["messages"], params.get("tools"))
            total = sum(segment.tokens for segment in segments)
        self._measured = (params, segments)
        return total

    def add(self, params: Mapping[str, Any], may_cache: bool = True) -> None:
        """Count one valid request's params; ``may_cache=False`` skips the cache walk (no cache_control)."""
        model = str(params["model"])
        tally = self._model(model, int(params["max_tokens"]))
        measured = self._measured[1] if self._measured is not None and self._measured[0] is params else None
        self._measured = None
        total = None if "tools" in params else plain_prompt_tokens(params.get("system"), params["messages"])
        cached = 0
        if total is None or may_cache:
            segments = measured or prompt_segments(
                params.get("system"), params["messages"], params.get("tools")
            )
            total = sum(segment.tokens for segment in segments)
            if may_cache:
                cache = account_cache(
                    cache_breakpoints(model, segments),
                    self._seen_prefixes,
                    min_tokens=self.min_cacheable(model) or 0,
                )
                tally.cache_read += cache.read
                tally.cache_write_5m += cache.write_5m
                tally.cache_write_1h += cache.write_1h
                cached = cache.cached_prefix
        if len(self.sample) < self.sample_size:
            self.sample.append((dict(params), total))
        tally.input_tokens += total - cached

    def add_plain(self, model: str, max_tokens: int, tokens: int, line: bytes) -> None:
        """Count a request without cache_control whose input ``tokens`` are already known.

        ``line`` is the request's JSON; it is decoded only while the calibration sample fills.
        """
        self._model(model, max_tokens).input_tokens += tokens
        if len(self.sample) < self.sample_size:
            self.sample.append((msgspec.json.decode(line)["params"], tokens))

    def add_plain_run(self, model: str, max_tokens: int, requests: int, tokens: int) -> None:
        """Count ``requests`` plain requests of one model and ``max_tokens`` with ``tokens`` input in all.

        The submit pass's hot path, once the calibration sample is full (see :meth:`sampling`).
        """
        self._model(model, max_tokens, requests).input_tokens += tokens

    @property
    def sampling(self) -> bool:
        """Return whether the calibration sample still takes requests (:meth:`add_plain` fills it)."""
        return len(self.sample) < self.sample_size


@dataclass(frozen=True)
class Calibration:
    """How local token counts compare with the API's ``count_tokens`` on a sample."""

    method: str
    ratio: float
    detail: str


def calibrate(
    count_tokens: CountTokens | None, sample: list[tuple[dict[str, Any], int]], log: logging.Logger
) -> Calibration:
    """Return the API/local token ratio over ``sample``, or 1.0 with method "approximation"."""
    if count_tokens is None or not sample:
        return Calibration("approximation", 1.0, "no token counting or no sample")
    api_total = local_total = 0
    try:
        for params, local in sample:
            api_total += count_tokens({key: params[key] for key in _COUNT_TOKENS_KEYS if key in params})
            local_total += local
    except Exception as exc:  # counting is optional: any failure leaves the approximation
        log.info("count_tokens not available (%s); using the local approximation", exc)
        return Calibration("approximation", 1.0, f"count_tokens failed: {exc}")
    if local_total == 0:
        return Calibration("approximation", 1.0, "sample has no text")
    ratio = api_total / local_total
    detail = f"count_tokens on {len(sample)} requests: {api_total} tokens vs {local_total} locally"
    return Calibration("count_tokens", ratio, detail)


def _usage(tally: ModelTally, ratio: float, *, upper_bound: bool) -> Usage:
    usage = empty_usage()
    usage["input_tokens"] = math.ceil(tally.input_tokens * ratio)
    usage["output_tokens"] = tally.max_output_tokens if upper_bound else tally.output_tokens
    usage["cache_creation_1h_input_tokens"] = math.ceil(tally.cache_write_1h * ratio)
    usage["cache_creation_input_tokens"] = math.ceil((tally.cache_write_5m + tally.cache_write_1h) * ratio)
    usage["cache_read_input_tokens"] = math.ceil(tally.cache_read * ratio)
    return usage


def cache_ttl_of(usage: Usage) -> str | None:
    """Return the cache TTL(s) whose write price ``usage`` pays: ``"1h"``, ``"5m"``, ``"5m+1h"``, or None."""
    writes_1h = usage["cache_creation_1h_input_tokens"]
    writes_5m = usage["cache_creation_input_tokens"] - writes_1h
    ttls = [ttl for ttl, writes in (("5m", writes_5m), ("1h", writes_1h)) if writes > 0]
    return "+".join(ttls) or None


def estimate_cost(
    tally: TokenTally,
    table: PriceTable,
    *,
    count_tokens: CountTokens | None = None,
    log: logging.Logger | None = None,
) -> CostEstimate:
    """Return the expected usage and its batch and standard price, logging both.

    A model the table cannot price is listed in ``unpriced_models`` (``priced`` is False);
    whether that is acceptable is the caller's decision.
    """
    log = log or logging.getLogger(__name__)
    calibration = tally.calibration or calibrate(count_tokens, tally.sample, log)
    tally.calibration = calibration
    ratio = calibration.ratio
    by_model = {model: _usage(one, ratio, upper_bound=True) for model, one in tally.models.items()}
    figures = table.cost(by_model)
    total = sum_usages(by_model.values())
    ttl = cache_ttl_of(total)
    estimate = CostEstimate(
        batch_usd=figures["batch_usd"],
        standard_usd=figures["standard_usd"],
        priced=figures["priced"],
        unpriced_models=figures["unpriced_models"],
        method=calibration.method,
        cache_ttl=ttl,
        usage=total,
        expected_batch_usd=None,
        expected_standard_usd=None,
        expected_basis=None,
        expected_output_tokens=None,
        expected_usage=None,
    )
    expected_line = ""
    if tally.expected_output_tokens is not None:
        expected_by_model = {
            model: _usage(one, ratio, upper_bound=False) for model, one in tally.models.items()
        }
        expected = table.cost(expected_by_model)
        estimate["expected_batch_usd"] = expected["batch_usd"]
        estimate["expected_standard_usd"] = expected["standard_usd"]
        estimate["expected_basis"] = tally.expected_basis or "expected_output_tokens"
        estimate["expected_output_tokens"] = tally.expected_output_tokens
        estimate["expected_usage"] = sum_usages(expected_by_model.values())
        expected_line = (
            f"; expected ${expected['batch_usd']:.4f} with {tally.expected_output_tokens} output tokens per "
            f"request ({estimate['expected_basis']})"
        )
    requests = sum(model_tally.requests for model_tally in tally.models.values())
    if requests:  # a round answered without a batch (reuse, canary) has nothing to estimate
        log_estimate(log, estimate, requests, expected_line, calibration, table)
    return estimate


def log_estimate(
    log: logging.Logger,
    estimate: CostEstimate,
    requests: int,
    expected_line: str,
    calibration: Calibration,
    table: PriceTable,
) -> None:
    """Log the estimate in two short lines: the money, then the tokens and where the figures come from."""
    total = estimate["usage"]
    log.info(
        "Cost estimate: up to $%.4f at batch prices ($%.4f standard) for %d requests at their max_tokens%s",
        estimate["batch_usd"],
        estimate["standard_usd"],
        requests,
        expected_line,
    )
    log.info(
        "  tokens: input %d, cache write %d (%s), cache read %d; input by %s; prices as of %s",
        total["input_tokens"],
        total["cache_creation_input_tokens"],
        f"priced at the {estimate['cache_ttl']} cache TTL" if estimate["cache_ttl"] else "no prompt cached",
        total["cache_read_input_tokens"],
        calibration.method,
        table.as_of,
    )
    log.debug("estimate calibration: %s; price table: %s", calibration.detail, table.source)
