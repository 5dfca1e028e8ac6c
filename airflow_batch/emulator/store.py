"""Durable SQLite store (WAL) of batches, their per-request results and seen cache prefixes.

Layout, in ``<data dir>/emulator.sqlite3``:

- ``batches``: one row per batch: id, sequence number (creation order, the list order),
  its ``processing.Schedule`` columns and, once a read finds it ended, the final counts.
- ``result_chunks``: the requests of a batch in chunks of ``RESULT_CHUNK``, in request
  order. Each row holds the chunk's finished JSONL result lines (built at create
  time, see ``responses``), its custom_ids (newline-joined) and one outcome byte per
  request (``s``/``e``/``x``). Results stream chunk by chunk (flat memory, no
  per-line work for finished chunks) and there is no materialization step: a request
  ends as its stored line if its index is below the number of requests done when the
  batch ended, else as ``canceled``/``expired``.
- ``batches.workspace``: the workspace of the create call (``anthropic-workspace-id``; ``""``
  is the default workspace). Every read names the caller's workspace and sees only its batches.
- ``cache_entries``: prompt-cache prefix keys (scoped by workspace) with the live period of
  each (``written_at``, ``last_used_at``, ``ttl_seconds``, on the simulated processing clock;
  see ``prompt_cache``).
- ``meta``: the number of batches created (also the next sequence number) and the most
  requests queued at once (in batches not ended) since the last reset.

Stores written by an older emulator are upgraded in place when opened (the new columns are
added; their old cache entries count as expired).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from airflow_batch.emulator.processing import (
    BatchState,
    Schedule,
    batch_state,
    done_by,
    ends_at,
    processed_at,
)
from airflow_batch.emulator.prompt_cache import CacheEntry, TimedCacheLedger
from airflow_batch.emulator.responses import (
    ERRORED,
    EXPIRED,
    SUCCEEDED,
    Answerer,
    Behaviours,
    ResultBuilder,
    bare_result_line,
)
from airflow_batch.emulator.validation import BatchRequest

DB_NAME = "emulator.sqlite3"
#: The token counts :meth:`BatchStore.billing` sums per model.
BILLED_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
    "web_search_requests",
    "web_fetch_requests",
)
RESULT_CHUNK = 4_096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    num_requests INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    start_at REAL NOT NULL,
    anchor_time REAL NOT NULL,
    anchor_done INTEGER NOT NULL,
    rate REAL NOT NULL,
    cancel_initiated_at REAL,
    cancel_end REAL,
    final_succeeded INTEGER,
    final_errored INTEGER,
    final_canceled INTEGER,
    final_expired INTEGER,
    workspace TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS result_chunks (
    batch_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    lines BLOB NOT NULL,
    custom_ids BLOB NOT NULL,
    outcomes BLOB NOT NULL,
    PRIMARY KEY (batch_seq, chunk)
);
CREATE TABLE IF NOT EXISTS cache_entries (
    key BLOB PRIMARY KEY,
    written_at REAL NOT NULL DEFAULT 0,
    last_used_at REAL NOT NULL DEFAULT 0,
    ttl_seconds REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('batches_created', 0);
INSERT OR IGNORE INTO meta (name, value) VALUES ('peak_requests_queued', 0);
"""
# Columns added since the first stores were written: (table, column, declaration).
_ADDED_COLUMNS = (
    ("batches", "workspace", "TEXT NOT NULL DEFAULT ''"),
    ("cache_entries", "written_at", "REAL NOT NULL DEFAULT 0"),
    ("cache_entries", "last_used_at", "REAL NOT NULL DEFAULT 0"),
    ("cache_entries", "ttl_seconds", "REAL NOT NULL DEFAULT 0"),
)
_UPSERT_CACHE_ENTRY = (
    "INSERT INTO cache_entries (key, written_at, last_used_at, ttl_seconds) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET written_at = excluded.written_at, "
    "last_used_at = excluded.last_used_at, ttl_seconds = excluded.ttl_seconds"
)

_BATCH_COLUMNS = (
    "seq, id, num_requests, created_at, expires_at, start_at, anchor_time, anchor_done, rate, "
    "cancel_initiated_at, cancel_end, final_succeeded, final_errored, final_canceled, final_expired, "
    "workspace"
)


@dataclass(frozen=True)
class RequestCounts:
    """The ``request_counts`` of a batch."""

    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


@dataclass(frozen=True)
class BatchRecord:
    """A stored batch and its state at the time it was read."""

    id: str
    seq: int
    schedule: Schedule
    state: BatchState
    counts: RequestCounts
    workspace: str = ""


def _cache_lookup(conn: sqlite3.Connection, key: bytes) -> CacheEntry | None:
    row = conn.execute(
        "SELECT written_at, last_used_at, ttl_seconds FROM cache_entries WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else CacheEntry(*row)


class BatchStore:
    """The emulator's durable state; safe to use from many threads."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        for table, column, declaration in _ADDED_COLUMNS:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        conn.execute("CREATE INDEX IF NOT EXISTS batches_by_workspace ON batches (workspace, seq)")
        # Checkpoint the WAL in the background: done inside COMMIT it would add ~0.5 s
        # to a 100,000-request create.
        self._checkpoint_due = threading.Event()
        self._closed = False
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, daemon=True, name="wal-checkpoint"
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        try:
            while not self._closed:
                self._checkpoint_due.wait(timeout=30)
                self._checkpoint_due.clear()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def close(self) -> None:
        """Checkpoint the WAL and stop the background checkpointer."""
        self._closed = True
        self._checkpoint_due.set()
        self._checkpointer.join(timeout=30)
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._checkpoint_due.set()

    def create_batch(
        self,
        *,
        batch_id: str,
        requests: Sequence[BatchRequest],
        schedule: Schedule,
        seed: int,
        error_rates: dict[str, float],
        expire_rate: float,
        behaviours: Behaviours,
        workspace: str = "",
        queued_after: int = 0,
    ) -> BatchRecord:
        """Store a new batch and the result of each request, all in one transaction.

        ``queued_after`` is the number of requests queued once this batch is (for the peak).
        """
        with self._write() as conn:
            seq = conn.execute("SELECT value + 1 FROM meta WHERE name = 'batches_created'").fetchone()[0]
            conn.execute("UPDATE meta SET value = ? WHERE name = 'batches_created'", (seq,))
            conn.execute(
                "UPDATE meta SET value = MAX(value, ?) WHERE name = 'peak_requests_queued'", (queued_after,)
            )
            conn.execute(
                "INSERT INTO batches (seq, id, num_requests, created_at, expires_at, start_at, anchor_time, "
                "anchor_done, rate, workspace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    batch_id,
                    schedule.num_requests,
                    schedule.created_at,
                    schedule.expires_at,
                    schedule.start_at,
                    schedule.anchor_time,
                    schedule.anchor_done,
                    schedule.rate,
                    workspace,
                ),
            )
            ledger = TimedCacheLedger(partial(_cache_lookup, conn), scope=workspace)
            builder = ResultBuilder(
                batch_id=batch_id,
                batch_seq=seq,
                seed=seed,
                error_rates=error_rates,
                expire_rate=expire_rate,
                answerer=Answerer(ledger, behaviours),
                processed_at=partial(processed_at, schedule),
            )
            insert = (
                "INSERT INTO result_chunks (batch_seq, chunk, lines, custom_ids, outcomes) "
                "VALUES (?, ?, ?, ?, ?)"
            )
            build = builder.build
            for chunk, start in enumerate(range(0, len(requests), RESULT_CHUNK)):
                part = requests[start : start + RESULT_CHUNK]
                outcomes, lines = zip(*(build(start + i, r) for i, r in enumerate(part)), strict=True)
                custom_ids = "\n".join(r.custom_id for r in part).encode()
                conn.execute(insert, (seq, chunk, b"".join(lines), custom_ids, b"".join(outcomes)))
            _save_cache_entries(conn, ledger)
        record = self.get(batch_id, now=schedule.created_at, workspace=workspace)
        assert record is not None
        return record

    @contextmanager
    def prompt_cache(self, workspace: str = "") -> Iterator[TimedCacheLedger]:
        """Yield the prompt cache of ``workspace`` for one answer; store its changes on exit."""
        with self._write() as conn:
            ledger = TimedCacheLedger(partial(_cache_lookup, conn), scope=workspace)
            yield ledger
            _save_cache_entries(conn, ledger)

    def _record(self, row: sqlite3.Row | tuple, now: float) -> BatchRecord:
        (seq, batch_id, n, created, expires, start, anchor_time, anchor_done, rate, cancel_at, cancel_end,
         f_succeeded, f_errored, f_canceled, f_expired, workspace) = row  # fmt: skip
        schedule = Schedule(n, created, expires, start, anchor_time, anchor_done, rate, cancel_at, cancel_end)
        state = batch_state(schedule, now)
        if state.status != "ended":
            counts = RequestCounts(n, 0, 0, 0, 0)
        elif f_succeeded is not None:
            counts = RequestCounts(0, f_succeeded, f_errored, f_canceled, f_expired)
        else:
            counts = self._finalize(seq, state)
        return BatchRecord(batch_id, seq, schedule, state, counts, workspace)

    def _finalize(self, seq: int, state: BatchState) -> RequestCounts:
        """Count the outcomes of an ended batch once and keep them with the batch."""
        rows = (
            self._conn()
            .execute("SELECT outcomes FROM result_chunks WHERE batch_seq = ? ORDER BY chunk", (seq,))
            .fetchall()
        )
        outcomes = b"".join(row[0] for row in rows)
        done = outcomes[: state.done_at_end]
        rest = len(outcomes) - len(done)
        counts = RequestCounts(
            processing=0,
            succeeded=done.count(SUCCEEDED),
            errored=done.count(ERRORED),
            canceled=rest if state.end_reason == "canceled" else 0,
            expired=done.count(EXPIRED) + (rest if state.end_reason == "expired" else 0),
        )
        with self._write() as conn:
            conn.execute(
                "UPDATE batches SET final_succeeded = ?, final_errored = ?, final_canceled = ?, "
                "final_expired = ? WHERE seq = ?",
                (counts.succeeded, counts.errored, counts.canceled, counts.expired, seq),
            )
        return counts

    def get(self, batch_id: str, *, now: float, workspace: str = "") -> BatchRecord | None:
        """Return the batch of ``workspace`` as of ``now``, or None if it has no such batch."""
        row = (
            self._conn()
            .execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ? AND workspace = ?", (batch_id, workspace)
            )
            .fetchone()
        )
        return None if row is None else self._record(row, now)

    def seq_of(self, batch_id: str, workspace: str = "") -> int | None:
        """Return the sequence number of a batch of ``workspace``, or None."""
        row = (
            self._conn()
            .execute("SELECT seq FROM batches WHERE id = ? AND workspace = ?", (batch_id, workspace))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def list_page(
        self, *, limit: int, after_seq: int | None, before_seq: int | None, now: float, workspace: str = ""
    ) -> tuple[list[BatchRecord], bool]:
        """Return a page of ``workspace``'s batches newest first and whether more exist that way."""
        conn = self._conn()
        if before_seq is not None:
            rows = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE workspace = ? AND seq > ? "
                "ORDER BY seq ASC LIMIT ?",
                (workspace, before_seq, limit + 1),
            ).fetchall()
            has_more = len(rows) > limit
            rows = list(reversed(rows[:limit]))
        else:
            rows = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE workspace = ? AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (workspace, after_seq if after_seq is not None else 2**62, limit + 1),
            ).fetchall()
            has_more = len(rows) > limit
            rows = rows[:limit]
        return [self._record(row, now) for row in rows], has_more

    def save_schedule(self, seq: int, schedule: Schedule) -> None:
        """Persist a changed schedule (cancel, new pace or start delay)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE batches SET start_at = ?, anchor_time = ?, anchor_done = ?, rate = ?, "
                "cancel_initiated_at = ?, cancel_end = ? WHERE seq = ?",
                (
                    schedule.start_at,
                    schedule.anchor_time,
                    schedule.anchor_done,
                    schedule.rate,
                    schedule.cancel_initiated_at,
                    schedule.cancel_end,
                    seq,
                ),
            )

    def queue(self, now: float) -> list[tuple[float, int]]:
        """Return ``(ends_at, requests)`` of every batch not ended at ``now``, in every workspace.

        What the organisation's processing queue holds: the requests of unended batches. Read on
        every create, so it reads the schedules alone (no counts, no finalizing).
        """
        rows = (
            self._conn()
            .execute(
                "SELECT num_requests, created_at, expires_at, start_at, anchor_time, anchor_done, rate, "
                "cancel_initiated_at, cancel_end FROM batches WHERE final_succeeded IS NULL"
            )
            .fetchall()
        )
        queue = [(ends_at(Schedule(*row)), row[0]) for row in rows]
        return [(end, requests) for end, requests in queue if end > now]

    def unfinished(self, now: float) -> list[BatchRecord]:
        """Return the batches not ended at ``now`` (in every workspace)."""
        rows = (
            self._conn()
            .execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE final_succeeded IS NULL")
            .fetchall()
        )
        records = [self._record(row, now) for row in rows]
        return [r for r in records if r.state.status != "ended"]

    def delete(self, seq: int) -> None:
        """Delete a batch and its requests."""
        with self._write() as conn:
            conn.execute("DELETE FROM result_chunks WHERE batch_seq = ?", (seq,))
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def result_chunks(self, seq: int, done_at_end: int, rest_type: bytes) -> Iterator[bytes]:
        """Yield the JSONL results of a batch in request order, a chunk at a time.

        Requests at index ``done_at_end`` and later come back as ``rest_type``
        (``canceled`` or ``expired``) instead of their stored line.
        """
        conn = self._conn()
        chunk = 0
        while True:
            row = conn.execute(
                "SELECT lines, custom_ids FROM result_chunks WHERE batch_seq = ? AND chunk = ?", (seq, chunk)
            ).fetchone()
            if row is None:
                return
            lines, custom_ids = row
            start = chunk * RESULT_CHUNK
            done_here = done_at_end - start
            if done_here >= RESULT_CHUNK:
                yield lines
                chunk += 1
                continue
            ids = custom_ids.split(b"\n")
            if done_here >= len(ids):
                yield lines
            else:
                kept = lines.split(b"\n")[: max(done_here, 0)]
                head = b"".join(line + b"\n" for line in kept)
                yield head + b"".join(bare_result_line(cid, rest_type) for cid in ids[max(done_here, 0) :])
            chunk += 1

    def stats(self, now: float) -> dict[str, int]:
        """Return counts of batches created (since reset), stored, stored requests, cache entries,
        requests queued at ``now`` (in unended batches) and the most queued at once since reset."""
        conn = self._conn()
        created = conn.execute("SELECT value FROM meta WHERE name = 'batches_created'").fetchone()[0]
        peak = conn.execute("SELECT value FROM meta WHERE name = 'peak_requests_queued'").fetchone()[0]
        stored, requests = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(num_requests), 0) FROM batches"
        ).fetchone()
        cache = conn.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0]
        return {
            "batches_created": created,
            "batches_stored": stored,
            "requests_stored": requests,
            "cache_entries": cache,
            "requests_queued": sum(requests for _, requests in self.queue(now)),
            "peak_requests_queued": peak,
        }

    def billing(self, now: float) -> dict[str, object]:
        """Return what the batches stored have been billed by ``now``: the succeeded requests
        processed so far (canceled batches' too) and their token usage per model.

        The usage keys are the job manifest's (``cache_creation_1h_input_tokens``,
        ``web_search_requests``...), summed from each billed result line's own ``usage``: an
        account kept apart from any client's, for checking that a job's reported cost covers
        every batch it paid for.
        """
        conn = self._conn()
        requests = 0
        usage_by_model: dict[str, dict[str, int]] = {}
        for row in conn.execute(f"SELECT {_BATCH_COLUMNS} FROM batches").fetchall():
            record = self._record(row, now)
            ended = record.state.status == "ended"
            done = record.state.done_at_end if ended else done_by(record.schedule, now)
            chunks = conn.execute(
                "SELECT chunk, lines, outcomes FROM result_chunks WHERE batch_seq = ? AND chunk * ? < ? "
                "ORDER BY chunk",
                (record.seq, RESULT_CHUNK, done),
            )
            for chunk, lines, outcomes in chunks:
                billed = outcomes[: done - chunk * RESULT_CHUNK]
                for line, outcome in zip(lines.split(b"\n"), billed, strict=False):
                    if outcome == SUCCEEDED[0]:
                        requests += 1
                        _add_billed_usage(usage_by_model, json.loads(line)["result"]["message"])
        return {"requests": requests, "usage_by_model": usage_by_model}

    def reset(self) -> None:
        """Forget every batch, result and cache entry, and restart the sequence numbers."""
        with self._write() as conn:
            conn.execute("DELETE FROM result_chunks")
            conn.execute("DELETE FROM batches")
            conn.execute("DELETE FROM cache_entries")
            conn.execute(
                "UPDATE meta SET value = 0 WHERE name IN ('batches_created', 'peak_requests_queued')"
            )


def _save_cache_entries(conn: sqlite3.Connection, ledger: TimedCacheLedger) -> None:
    conn.executemany(
        _UPSERT_CACHE_ENTRY,
        [(key, e.written_at, e.last_used_at, e.ttl_seconds) for key, e in ledger.changed.items()],
    )


def _add_billed_usage(usage_by_model: dict[str, dict[str, int]], message: dict[str, Any]) -> None:
    """Add the usage of one billed answer to its model's totals."""
    usage = message["usage"]
    tools = usage.get("server_tool_use") or {}
    total = usage_by_model.setdefault(message["model"], dict.fromkeys(BILLED_USAGE_KEYS, 0))
    total["input_tokens"] += usage["input_tokens"]
    total["output_tokens"] += usage["output_tokens"]
    total["cache_creation_input_tokens"] += usage.get("cache_creation_input_tokens") or 0
    total["cache_creation_1h_input_tokens"] += (usage.get("cache_creation") or {}).get(
        "ephemeral_1h_input_tokens", 0
    )
    total["cache_read_input_tokens"] += usage.get("cache_read_input_tokens") or 0
    total["web_search_requests"] += tools.get("web_search_requests", 0)
    total["web_fetch_requests"] += tools.get("web_fetch_requests", 0)
