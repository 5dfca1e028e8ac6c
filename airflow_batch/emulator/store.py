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
- ``cache_entries``: prompt-cache prefix keys seen so far.
- ``meta``: the number of batches created (also the next sequence number).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from airflow_batch.emulator.processing import BatchState, Schedule, batch_state
from airflow_batch.emulator.responses import ERRORED, EXPIRED, SUCCEEDED, ResultBuilder, bare_result_line
from airflow_batch.emulator.validation import BatchRequest

DB_NAME = "emulator.sqlite3"
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
    final_expired INTEGER
);
CREATE TABLE IF NOT EXISTS result_chunks (
    batch_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    lines BLOB NOT NULL,
    custom_ids BLOB NOT NULL,
    outcomes BLOB NOT NULL,
    PRIMARY KEY (batch_seq, chunk)
);
CREATE TABLE IF NOT EXISTS cache_entries (key BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('batches_created', 0);
"""

_BATCH_COLUMNS = (
    "seq, id, num_requests, created_at, expires_at, start_at, anchor_time, anchor_done, rate, "
    "cancel_initiated_at, cancel_end, final_succeeded, final_errored, final_canceled, final_expired"
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


class _StoredCacheLedger:
    """The seen prompt-cache prefixes, read through from SQLite and written at commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._known: dict[bytes, bool] = {}
        self.new: list[bytes] = []

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        if key not in self._known:
            row = self._conn.execute("SELECT 1 FROM cache_entries WHERE key = ?", (key,)).fetchone()
            self._known[key] = row is not None
        return self._known[key]

    def add(self, key: bytes) -> None:
        if key not in self:
            self._known[key] = True
            self.new.append(key)


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
    ) -> BatchRecord:
        """Store a new batch and the result of each request, all in one transaction."""
        with self._write() as conn:
            seq = conn.execute("SELECT value + 1 FROM meta WHERE name = 'batches_created'").fetchone()[0]
            conn.execute("UPDATE meta SET value = ? WHERE name = 'batches_created'", (seq,))
            conn.execute(
                "INSERT INTO batches (seq, id, num_requests, created_at, expires_at, start_at, anchor_time, "
                "anchor_done, rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            ledger = _StoredCacheLedger(conn)
            builder = ResultBuilder(
                batch_id=batch_id,
                batch_seq=seq,
                seed=seed,
                error_rates=error_rates,
                expire_rate=expire_rate,
                seen_cache_keys=ledger,
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
            conn.executemany(
                "INSERT OR IGNORE INTO cache_entries (key) VALUES (?)", [(k,) for k in ledger.new]
            )
        record = self.get(batch_id, now=schedule.created_at)
        assert record is not None
        return record

    def _record(self, row: sqlite3.Row | tuple, now: float) -> BatchRecord:
        (seq, batch_id, n, created, expires, start, anchor_time, anchor_done, rate, cancel_at, cancel_end,
         f_succeeded, f_errored, f_canceled, f_expired) = row  # fmt: skip
        schedule = Schedule(n, created, expires, start, anchor_time, anchor_done, rate, cancel_at, cancel_end)
        state = batch_state(schedule, now)
        if state.status != "ended":
            counts = RequestCounts(n, 0, 0, 0, 0)
        elif f_succeeded is not None:
            counts = RequestCounts(0, f_succeeded, f_errored, f_canceled, f_expired)
        else:
            counts = self._finalize(seq, state)
        return BatchRecord(batch_id, seq, schedule, state, counts)

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

    def get(self, batch_id: str, *, now: float) -> BatchRecord | None:
        """Return the batch as of ``now``, or None if there is no such batch."""
        row = (
            self._conn().execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
        )
        return None if row is None else self._record(row, now)

    def seq_of(self, batch_id: str) -> int | None:
        """Return the sequence number of a batch, or None."""
        row = self._conn().execute("SELECT seq FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else int(row[0])

    def list_page(
        self, *, limit: int, after_seq: int | None, before_seq: int | None, now: float
    ) -> tuple[list[BatchRecord], bool]:
        """Return a page newest first and whether more exist in the paging direction."""
        conn = self._conn()
        if before_seq is not None:
            rows = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE seq > ? ORDER BY seq ASC LIMIT ?",
                (before_seq, limit + 1),
            ).fetchall()
            has_more = len(rows) > limit
            rows = list(reversed(rows[:limit]))
        else:
            rows = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (after_seq if after_seq is not None else 2**62, limit + 1),
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

    def unfinished(self, now: float) -> list[BatchRecord]:
        """Return the batches not ended at ``now``."""
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

    def stats(self) -> dict[str, int]:
        """Return counts of batches created (ever, since reset), stored, and stored requests."""
        conn = self._conn()
        created = conn.execute("SELECT value FROM meta WHERE name = 'batches_created'").fetchone()[0]
        stored, requests = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(num_requests), 0) FROM batches"
        ).fetchone()
        cache = conn.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0]
        return {
            "batches_created": created,
            "batches_stored": stored,
            "requests_stored": requests,
            "cache_entries": cache,
        }

    def reset(self) -> None:
        """Forget every batch, result and cache entry, and restart the sequence numbers."""
        with self._write() as conn:
            conn.execute("DELETE FROM result_chunks")
            conn.execute("DELETE FROM batches")
            conn.execute("DELETE FROM cache_entries")
            conn.execute("UPDATE meta SET value = 0 WHERE name = 'batches_created'")
