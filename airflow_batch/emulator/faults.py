"""Emulator configuration: simulated processing speed and seeded fault injection.

Every setting has one name used everywhere: the key of ``POST /_emulator/config``,
the CLI flag (``error_rate`` -> ``--error-rate``) and the environment variable
(``AIRFLOW_BATCH_EMULATOR_ERROR_RATE``). Precedence at start: defaults < environment
< ``--config JSON`` < individual flags; at runtime ``POST /_emulator/config``.

When settings take effect:

- ``throughput`` re-paces batches still in progress from the moment of the change
  (work already done is kept), ``start_delay_seconds`` also moves the start of batches
  that have not started yet; both apply to new batches.
- ``error_rate``/``error_types``/``expire_rate``/``refusal_rate``/``pause_turn_rate``/
  ``invalid_output_rate``/``seed``/``ttl_seconds`` are read when a batch is created: its
  per-request outcomes are fixed then, so they are reproducible. ``POST /v1/messages`` reads
  them at each call.
- ``clock_offset_seconds`` moves the emulator's clock at once, for every batch: advance it past
  29 days to see a batch's results archived (``archived_at`` set, results answered 404).
- HTTP faults (``http_fault_*``, ``batch_http_faults``) and ``latency_ms`` apply to
  every later API call (``/v1/...``), never to ``/_emulator/*``.
- The organisation's limits (``queue_limit``, ``create_rate_per_minute``,
  ``spend_limit_reached``) apply to every later create (the spend limit to
  ``POST /v1/messages`` too).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

ENV_PREFIX = "AIRFLOW_BATCH_EMULATOR_"

ERROR_TYPES = (
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
)
HTTP_FAULT_STATUSES = (429, 500, 529, "drop", "lost")
DROP = "drop"
LOST = "lost"


class ConfigError(ValueError):
    """A configuration key or value the emulator cannot use; the message names it."""


@dataclass(frozen=True)
class EmulatorConfig:
    """Settings of one emulator; see the module docstring for when each applies."""

    throughput: float = 10_000.0
    """Requests processed per second per batch; 0 pauses processing (batches then expire)."""
    latency_ms: float = 0.0
    """Delay added to every API call."""
    start_delay_seconds: float = 0.0
    """Time from creation until a batch's first request completes."""
    start_stagger_seconds: float = 0.0
    """Each batch created after a reset starts this much later than the one before it (added to
    ``start_delay_seconds``): a round's batches then end that far apart."""
    cancel_delay_seconds: float = 0.0
    """Time a batch stays ``canceling`` after a cancel before it ends."""
    ttl_seconds: float = 86_400.0
    """Batches not finished this long after creation end with the rest ``expired``."""
    clock_offset_seconds: float = 0.0
    """Seconds the emulator's clock runs ahead of the wall clock: batches progress, expire and
    are archived (results gone 29 days after creation) as if that much time had passed."""
    error_rate: float = 0.0
    """Fraction of requests that come back ``errored``, split evenly over ``error_types``."""
    error_types: tuple[str, ...] | dict[str, float] = ("overloaded_error",)
    """Error types for ``error_rate``, or a mapping type -> rate (then ``error_rate`` is ignored)."""
    expire_rate: float = 0.0
    """Fraction of requests that come back ``expired`` even though their batch finishes."""
    http_fault_rate: float = 0.0
    """Probability that an API call fails with one of ``http_fault_statuses``."""
    http_fault_statuses: tuple[int | str, ...] = (429, 529)
    """Statuses to inject: 429 (with ``retry-after``), 500, 529, ``drop`` (a results stream cut
    mid-way) or ``lost`` (a create that stores its batch, then cuts the connection before the
    response: what a timeout after the commit looks like to a client)."""
    http_fault_budget: int | None = None
    """Inject at most this many more HTTP faults (``None``: no limit); counts down."""
    retry_after_seconds: float = 1.0
    """Value of ``retry-after`` (and ``retry-after-ms``) on injected 429s."""
    batch_http_faults: dict[str, int] = field(default_factory=dict)
    """Batch id -> HTTP status returned by every API call naming that batch."""
    seed: int = 0
    """Seed of every random choice: per-request outcomes and HTTP faults."""
    max_requests: int = 100_000
    """Most requests accepted in one batch."""
    max_body_bytes: int = 256 * 1024 * 1024
    """Largest create body accepted; larger ones get 413 ``request_too_large``."""
    max_file_bytes: int = 500_000_000
    """Largest Files API upload accepted (the API's 500 MB); larger ones get 413."""
    refusal_rate: float = 0.0
    """Fraction of answers that are refusals (``stop_reason: "refusal"`` with ``stop_details``)."""
    pause_turn_rate: float = 0.0
    """Fraction of answers with server tools (web search/fetch) that pause (``pause_turn``)."""
    invalid_output_rate: float = 0.0
    """Fraction of structured-output answers that break their schema or are not JSON."""
    queue_limit: int | None = None
    """Most requests in unended batches at once, all workspaces together (the organisation's
    processing queue); a create past it gets 429. ``None``: no limit."""
    create_rate_per_minute: int | None = None
    """Most creates accepted in any 60 seconds; one more gets 429. ``None``: no limit."""
    spend_limit_reached: bool = False
    """Answer every create (and ``POST /v1/messages``) with the spend-limit 429."""

    def error_rates(self) -> dict[str, float]:
        """Return the per-request error rate of each error type."""
        if isinstance(self.error_types, dict):
            return dict(self.error_types)
        if not self.error_types or self.error_rate <= 0:
            return {}
        share = self.error_rate / len(self.error_types)
        return dict.fromkeys(self.error_types, share)

    def to_json(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready mapping (the ``/_emulator/config`` body)."""
        out = asdict(self)
        out["error_types"] = (
            dict(self.error_types) if isinstance(self.error_types, dict) else list(self.error_types)
        )
        out["http_fault_statuses"] = list(self.http_fault_statuses)
        return out

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """Return a copy with ``changes`` applied and validated; raise ConfigError naming a bad key."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown emulator setting(s) {unknown}; known settings: {sorted(known)}")
        parsed = {name: _parse_value(name, value) for name, value in changes.items()}
        return replace(self, **parsed)


def _parse_value(name: str, value: Any) -> Any:
    try:
        return _PARSERS[name](value)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {value!r} is not valid ({exc})") from None


def _non_negative_float(value: Any) -> float:
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError("must be a finite number >= 0")
    return number


def _rate(value: Any) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError("must be between 0 and 1")
    return number


def _positive_int(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be an integer >= 1")
    return number


def _optional_budget(value: Any) -> int | None:
    if value is None or value == "":
        return None
    number = int(value)
    if number < 0:
        raise ValueError("must be an integer >= 0 or null")
    return number


def _optional_limit(value: Any) -> int | None:
    if value is None or value == "" or str(value).lower() in ("none", "null"):
        return None
    number = int(value)
    if number < 1:
        raise ValueError("must be an integer >= 1 or null (no limit)")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _error_types(value: Any) -> tuple[str, ...] | dict[str, float]:
    """Accept a list, a comma string ``a,b``, a mapping, or a string ``a=0.05,b=0.01``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if any("=" in p for p in parts):
            value = {k.strip(): v for k, v in (p.split("=", 1) for p in parts)}
        else:
            value = parts
    if isinstance(value, Mapping):
        rates = {str(k): _rate(v) for k, v in value.items()}
        _check_error_types(rates)
        if sum(rates.values()) > 1:
            raise ValueError("the rates add up to more than 1")
        return rates
    types = tuple(str(v) for v in value)
    _check_error_types(types)
    return types


def _check_error_types(types: Any) -> None:
    bad = [t for t in types if t not in ERROR_TYPES]
    if bad:
        raise ValueError(f"unknown error type(s) {bad}; use {list(ERROR_TYPES)}")


def _fault_statuses(value: Any) -> tuple[int | str, ...]:
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    statuses: list[int | str] = []
    for item in value:
        text = str(item).lower()
        status: int | str = text if text in (DROP, LOST) else int(item)
        if status not in HTTP_FAULT_STATUSES:
            raise ValueError(f"unsupported status {item!r}; use {list(HTTP_FAULT_STATUSES)}")
        statuses.append(status)
    return tuple(statuses)


def _batch_faults(value: Any) -> dict[str, int]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of batch id to HTTP status")
    return {str(k): int(v) for k, v in value.items()}


_PARSERS: dict[str, Any] = {
    "throughput": _non_negative_float,
    "latency_ms": _non_negative_float,
    "start_delay_seconds": _non_negative_float,
    "start_stagger_seconds": _non_negative_float,
    "cancel_delay_seconds": _non_negative_float,
    "ttl_seconds": _non_negative_float,
    "clock_offset_seconds": _non_negative_float,
    "error_rate": _rate,
    "error_types": _error_types,
    "expire_rate": _rate,
    "http_fault_rate": _rate,
    "http_fault_statuses": _fault_statuses,
    "http_fault_budget": _optional_budget,
    "retry_after_seconds": _non_negative_float,
    "batch_http_faults": _batch_faults,
    "seed": int,
    "max_requests": _positive_int,
    "max_body_bytes": _positive_int,
    "max_file_bytes": _positive_int,
    "refusal_rate": _rate,
    "pause_turn_rate": _rate,
    "invalid_output_rate": _rate,
    "queue_limit": _optional_limit,
    "create_rate_per_minute": _optional_limit,
    "spend_limit_reached": _bool,
}


def config_names() -> list[str]:
    """Return every setting name, in declaration order."""
    return [f.name for f in fields(EmulatorConfig)]


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the settings given as ``AIRFLOW_BATCH_EMULATOR_<NAME>`` environment variables."""
    env = os.environ if environ is None else environ
    return {
        name: env[ENV_PREFIX + name.upper()] for name in config_names() if ENV_PREFIX + name.upper() in env
    }


class FaultInjector:
    """Holds the live config and decides, reproducibly from ``seed``, which API calls fail."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        self.injected = 0  # HTTP faults served since start

    @property
    def config(self) -> EmulatorConfig:
        """Return the current settings."""
        return self._config

    def replace_config(self, config: EmulatorConfig) -> None:
        """Install new settings; a new ``seed`` restarts the HTTP fault sequence."""
        with self._lock:
            if config.seed != self._config.seed:
                self._rng = random.Random(config.seed)
            self._config = config

    def restart(self) -> None:
        """Start the HTTP fault sequence and its count over, as a freshly started emulator would."""
        with self._lock:
            self._rng = random.Random(self._config.seed)
            self.injected = 0

    def http_fault(self, *, results_stream: bool = False, create: bool = False) -> int | str | None:
        """Return the fault to inject into this API call (a status, ``drop`` or ``lost``), or None.

        ``drop`` only applies to a results stream and ``lost`` only to a create; other calls
        choose among the numeric statuses.
        """
        with self._lock:
            cfg = self._config
            choices = [
                s for s in cfg.http_fault_statuses if (s != DROP or results_stream) and (s != LOST or create)
            ]
            if cfg.http_fault_rate <= 0 or not choices or cfg.http_fault_budget == 0:
                return None
            if self._rng.random() >= cfg.http_fault_rate:
                return None
            if cfg.http_fault_budget is not None:
                self._config = replace(cfg, http_fault_budget=cfg.http_fault_budget - 1)
            self.injected += 1
            return self._rng.choice(choices)
