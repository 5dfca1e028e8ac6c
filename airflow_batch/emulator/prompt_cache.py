"""The emulator's prompt cache over time: which prefixes are cached when a request is processed.

A cache entry (a prefix key of :mod:`airflow_batch.rules.tokens`) lives ``ttl`` (5 minutes or 1 hour,
from the breakpoint's ``cache_control.ttl``) from its last use, on the emulator's simulated
processing clock: request ``i`` of a batch is processed when the batch's schedule says
(:func:`~airflow_batch.emulator.processing.processed_at`), so a long batch whose requests are
further apart than 5 minutes pays 5-minute writes again, while 1-hour entries survive.

An entry is one live period ``[written_at, last_used_at + ttl_seconds]``: every instant in it is
within ``ttl`` after some use, because each use refreshed the entry before it expired. A use
inside the period is a read and extends it (the entry keeps the longest TTL it was used with);
a use after it is a new write that starts a new period; a use shortly before it (another batch
processed earlier) joins it. Caches are isolated per workspace, as on the API: keys are
scoped by the workspace of the batch.

Decisions are made when a batch is created, in request order, from the schedule it has then;
a later change of pace does not revisit them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from airflow_batch.rules.tokens import Breakpoint, CacheUsage, account_cache

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class CacheEntry:
    """One cached prefix: when its live period began, its last use, and how long it lives after."""

    written_at: float
    last_used_at: float
    ttl_seconds: float

    def live_at(self, t: float) -> bool:
        """Return whether the entry can be read at ``t``."""
        return self.written_at <= t <= self.last_used_at + self.ttl_seconds

    def used_at(self, t: float, ttl_seconds: float) -> CacheEntry:
        """Return the entry after a use at ``t`` with ``ttl_seconds`` (a read, a join or a new write)."""
        if self.live_at(t):
            return CacheEntry(self.written_at, max(self.last_used_at, t), max(self.ttl_seconds, ttl_seconds))
        if t < self.written_at and t + ttl_seconds >= self.written_at:
            return CacheEntry(t, self.last_used_at, max(self.ttl_seconds, ttl_seconds))
        return CacheEntry(t, t, ttl_seconds)


class TimedCacheLedger:
    """The prompt-cache entries one batch reads and writes, looked up lazily, changes kept for commit.

    ``lookup`` returns a stored entry by its (scoped) key. :meth:`account` is what a request's
    usage comes from; :attr:`changed` is what to store once the batch is committed.
    """

    def __init__(self, lookup: Callable[[bytes], CacheEntry | None], scope: str = "") -> None:
        self._lookup = lookup
        self._scope = scope.encode() + b"/" if scope else b""
        self._entries: dict[bytes, CacheEntry | None] = {}
        self.changed: dict[bytes, CacheEntry] = {}
        self._now = 0.0
        self._ttls: dict[bytes, float] = {}

    def account(self, points: Sequence[Breakpoint], now: float, *, min_tokens: int) -> CacheUsage:
        """Return the cache read and writes of a request processed at ``now``, and record its uses."""
        self._now = now
        self._ttls = {point.key: TTL_SECONDS[point.ttl] for point in points}
        return account_cache(points, self, min_tokens=min_tokens)

    def _entry(self, key: bytes) -> CacheEntry | None:
        scoped = self._scope + key
        if scoped not in self._entries:
            self._entries[scoped] = self._lookup(scoped)
        return self._entries[scoped]

    # The CacheLedger protocol of airflow_batch.rules.tokens, at the instant set by ``account``.
    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        entry = self._entry(key)
        return entry is not None and entry.live_at(self._now)

    def add(self, key: bytes) -> None:
        entry = self._entry(key)
        ttl = self._ttls.get(key, TTL_SECONDS["5m"])
        updated = CacheEntry(self._now, self._now, ttl) if entry is None else entry.used_at(self._now, ttl)
        scoped = self._scope + key
        self._entries[scoped] = self.changed[scoped] = updated
