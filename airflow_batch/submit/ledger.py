"""The re-attach ledger: which batch carries each chunk of a round, recorded as it is created.

Two records, because they survive different things:

``{job}/round-{r}/ledger.json`` (the durable record). Rewritten atomically after every change.
It lives in the job folder, whose path is derived from (dag, run, task, map index), so a
task retry (try_number + 1) and a clear of the task instance both find it: nothing in
Airflow deletes it. It is lost only if the job folder is deleted, or if ``output_path`` is a
local path and the next attempt runs on another machine.

Airflow's ``task_state_store`` (a mirror, when the context has one). Airflow 3.3 keys it by
(dag run, task, map index); a retry shares the rows, and ``clear_task_instances`` does not
delete them. They are deleted when the dag run is deleted, when the task is marked success
with ``[state_store] clear_on_success = True`` (default False), or after
``default_retention_days`` unless stored with ``NEVER_EXPIRE`` (we do). Because the state
store lives in the metadata DB it also covers the case the file cannot: a local
``output_path`` and a retry on another worker. The ledger read at start is the union of both
(the file wins on a conflict).

Lost create responses. The SDK would retry a create after a timeout or a dropped
connection, when the batch may already exist; our create call turns the SDK's retries off
and retries itself: an error status from the API (429, 5xx: nothing was created) after its
``retry-after``, a lost response only after looking for the batch it may have made (below).

Intent records close most of the remaining gap. Before each create call the ledger records
"submitting chunk N at T"; the batch id replaces it the moment the API answers. If the
worker dies between the API creating the batch and the ledger write (or the response is
lost), the re-run finds an intent without a batch id, lists the batches created since T and
adopts the single one with the chunk's request count that no ledger entry claims (see
:func:`airflow_batch.submit.round.find_orphan`). The Batches API has no idempotency key and no
metadata on batches, so this match is by time and size: if two candidates match, none is
adopted, a warning names them, and the chunk is submitted again (one batch may then be paid
twice; cancel the named one if it is ours).

One writer at a time. Two processes can hold the same round at once: two copies of the queue
trigger (a triggerer that stalled past its health threshold resumes beside the one that took
its trigger over), or a retried task beside its old process. Every save is fenced: the file
carries a ``generation`` that each save raises by one, and a save is a conditional write that
succeeds only if the stored ledger is still the one this store last read or wrote
(:func:`~airflow_batch.storage.replace_json_fenced`: a lock on a local disk, a conditional put
on S3). A writer that lost ownership finds out at its next save, raises
:class:`~airflow_batch.exceptions.LedgerFencedOutError` and stops, before its next create: an
intent is saved (fenced) before every create. An intent also names its writer: a writer that
finds another's intent without a batch looks for the batch it may have made (above) and, when
it finds none, records the intent as ``interrupted`` before replacing it, so the sweep before
gather (:mod:`airflow_batch.gather.strays`) knows which chunks may have a second batch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_batch.exceptions import LedgerFencedOutError
from airflow_batch.folder import JobFolder
from airflow_batch.manifest import LEDGER_VERSION, BatchRecord, CanaryRecord, CostEstimate
from airflow_batch.storage import FenceLost

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def utcnow() -> str:
    """Return the current UTC time as an ISO-8601 string."""
    return datetime.now(UTC).isoformat()


def state_key(round_number: int) -> str:
    """Return the ``task_state_store`` key mirroring the ledger of a round."""
    return f"airflow_batch.ledger.round-{round_number}"


@dataclass
class Ledger:
    """The batches of one round of one job, keyed by chunk index."""

    job_dir: str
    round: int
    fingerprint: str
    conn_id: str
    chunks: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[int, dict[str, Any]] = field(default_factory=dict)
    intents: dict[int, dict[str, Any]] = field(default_factory=dict)
    estimate: CostEstimate | None = None
    created_at: str = field(default_factory=utcnow)
    events: list[str] = field(default_factory=list)
    #: Rows skipped as invalid (skip_invalid) and where they are, for the round manifest.
    invalid: int = 0
    invalid_path: str | None = None
    #: Requests of this round the processing queue held when it last refused a create, and when.
    learned_queue_limit: int | None = None
    learned_at: str | None = None
    #: Requests answered from the answer store, and where their rows are (reused.jsonl).
    reused: int = 0
    reused_path: str | None = None
    #: What the round's canary did and cost, when it had one.
    canary: CanaryRecord | None = None
    #: Requests sent in the round's batches, by model (lineage counts per model from it).
    requests_by_model: dict[str, int] = field(default_factory=dict)
    #: Raised by one at every save; a save succeeds only over the generation its writer last saw.
    generation: int = 0
    #: Intents replaced without a batch recorded from them (their writer stalled or died
    #: mid-create): the chunks a second batch may exist for.
    interrupted: list[dict[str, Any]] = field(default_factory=list)
    #: Batches of this job the API holds that no chunk records (found before gather), by id.
    strays: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def binding(self) -> bool:
        """Return True once money may have been spent: a batch id, an intent, or a canary is recorded.

        A canary that ran is never sent again: a re-run re-attaches to the round it decided.
        """
        return bool(self.batches or self.intents or self.canary)

    def batch_id(self, chunk: int) -> str | None:
        """Return the batch id recorded for ``chunk``, if any."""
        entry = self.batches.get(chunk)
        return entry["batch_id"] if entry else None

    def claimed(self) -> set[str]:
        """Return every batch id this ledger records."""
        return {entry["batch_id"] for entry in self.batches.values()}

    def batch_records(self, job: ObjectStoragePath) -> list[BatchRecord]:
        """Return the record of each chunk that has its batch (every chunk, once the round is
        created; the waves so far while it waits for queue room), in chunk order."""
        folder = JobFolder(job)
        return [
            BatchRecord(
                chunk=int(chunk["chunk"]),
                batch_id=self.batches[int(chunk["chunk"])]["batch_id"],
                requests=int(chunk["requests"]),
                bytes=int(chunk["bytes"]),
                chunk_path=str(folder.chunk_path(self.round, int(chunk["chunk"]))),
            )
            for chunk in self.chunks
            if int(chunk["chunk"]) in self.batches
        ]

    def to_json(self) -> dict[str, Any]:
        """Return the ledger as a JSON document."""
        return {
            "version": LEDGER_VERSION,
            "job_dir": self.job_dir,
            "round": self.round,
            "fingerprint": self.fingerprint,
            "conn_id": self.conn_id,
            "created_at": self.created_at,
            "updated_at": utcnow(),
            "chunks": self.chunks,
            "batches": {str(chunk): entry for chunk, entry in sorted(self.batches.items())},
            "intents": {str(chunk): entry for chunk, entry in sorted(self.intents.items())},
            "estimate": self.estimate,
            "events": self.events,
            "invalid": self.invalid,
            "invalid_path": self.invalid_path,
            "learned_queue_limit": self.learned_queue_limit,
            "learned_at": self.learned_at,
            "reused": self.reused,
            "reused_path": self.reused_path,
            "canary": self.canary,
            "requests_by_model": self.requests_by_model,
            "generation": self.generation,
            "interrupted": self.interrupted,
            "strays": self.strays,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        """Return the ledger stored in ``data``."""
        return cls(
            job_dir=data["job_dir"],
            round=int(data["round"]),
            fingerprint=data["fingerprint"],
            conn_id=data.get("conn_id", ""),
            chunks=list(data.get("chunks", [])),
            batches={int(chunk): dict(entry) for chunk, entry in data.get("batches", {}).items()},
            intents={int(chunk): dict(entry) for chunk, entry in data.get("intents", {}).items()},
            estimate=data.get("estimate"),
            created_at=data.get("created_at", utcnow()),
            events=list(data.get("events", [])),
            invalid=int(data.get("invalid", 0)),
            invalid_path=data.get("invalid_path"),
            learned_queue_limit=data.get("learned_queue_limit"),
            learned_at=data.get("learned_at"),
            reused=int(data.get("reused", 0)),
            reused_path=data.get("reused_path"),
            canary=data.get("canary"),
            requests_by_model={str(k): int(v) for k, v in data.get("requests_by_model", {}).items()},
            generation=int(data.get("generation", 0)),
            interrupted=list(data.get("interrupted", [])),
            strays={str(k): dict(v) for k, v in data.get("strays", {}).items()},
        )


def _fence_of(document: Any | None) -> tuple[str, int] | None:
    """Return what identifies one saved version of a ledger: its creation and its generation."""
    if not isinstance(document, dict):
        return None
    return str(document.get("created_at")), int(document.get("generation", 0))


def writer_name() -> str:
    """Return a name for this writer, unique across processes and hosts (for intents and logs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LedgerStore:
    """Reads and writes the ledger of one round: the job-folder file, mirrored to the state store.

    Saves are fenced (see the module's docstring): a store saves only over the version it
    loaded or last saved itself.
    """

    def __init__(self, job: ObjectStoragePath, round_number: int, state_store: Any | None = None) -> None:
        self.job = job
        self.round = round_number
        self.folder = JobFolder(job)
        self.state_store = state_store
        self.writer = writer_name()
        #: The stored version this store may save over (None: no ledger file is expected).
        self.fence: tuple[str, int] | None = None

    def load(self) -> Ledger | None:
        """Return the recorded ledger (file and state store merged), or None if there is none."""
        stored = self.folder.read_ledger(self.round)
        self.fence = _fence_of(stored)
        ledger = Ledger.from_json(stored) if stored is not None else None
        mirrored = self._load_mirror()
        if mirrored is None:
            return ledger
        if ledger is None:
            ledger = Ledger(
                job_dir=str(mirrored.get("job_dir", self.job)),
                round=self.round,
                fingerprint=mirrored["fingerprint"],
                conn_id=mirrored.get("conn_id", ""),
            )
            ledger.events.append(f"{utcnow()} ledger file missing; rebuilt from task_state_store")
        if mirrored["fingerprint"] != ledger.fingerprint:
            return ledger
        for chunk, batch_id in mirrored.get("batches", {}).items():
            ledger.batches.setdefault(int(chunk), {"batch_id": batch_id, "source": "task_state_store"})
        for chunk, started_at in mirrored.get("intents", {}).items():
            if int(chunk) not in ledger.batches:
                ledger.intents.setdefault(int(chunk), {"started_at": started_at})
        return ledger

    def _load_mirror(self) -> dict[str, Any] | None:
        if self.state_store is None:
            return None
        value = self.state_store.get(state_key(self.round))
        if isinstance(value, dict) and isinstance(value.get("fingerprint"), str):
            return value
        return None

    def save(self, ledger: Ledger) -> None:
        """Write the ledger file atomically over the version this store holds, then its mirror.

        Raises :class:`~airflow_batch.exceptions.LedgerFencedOutError` when another writer saved
        the ledger since this store loaded or saved it: this writer must stop.
        """
        expected = self.fence
        ledger.generation = (expected[1] if expected is not None else 0) + 1
        document = ledger.to_json()
        try:
            self.folder.replace_ledger(self.round, document, lambda current: _fence_of(current) == expected)
        except FenceLost as lost:
            raise LedgerFencedOutError(
                f"round {self.round} of {self.job}: another writer saved the ledger since this one "
                f"({self.writer}) read it at generation {expected[1] if expected else 0}; this writer stops "
                "and creates nothing more (the other one carries the round on)"
            ) from lost
        self.fence = _fence_of(document)
        if self.state_store is None:
            return
        value = {
            "job_dir": ledger.job_dir,
            "fingerprint": ledger.fingerprint,
            "conn_id": ledger.conn_id,
            "batches": {str(chunk): entry["batch_id"] for chunk, entry in ledger.batches.items()},
            "intents": {str(chunk): entry["started_at"] for chunk, entry in ledger.intents.items()},
        }
        self._set_mirror(value)

    def mirror_batches(self, batches: Mapping[str, str]) -> None:
        """Add batches recorded elsewhere (chunk -> batch id) to the mirror.

        The queue trigger creates waves from the ledger file, which it can read, but has no
        state store: its batches reach the mirror through its event, so a resume on a host that
        cannot read a local ledger file still knows every batch.
        """
        mirrored = self._load_mirror()
        if mirrored is None or not batches:
            return
        mirrored["batches"] = {**mirrored.get("batches", {}), **batches}
        mirrored["intents"] = {k: v for k, v in mirrored.get("intents", {}).items() if k not in batches}
        self._set_mirror(mirrored)

    def _set_mirror(self, value: dict[str, Any]) -> None:
        assert self.state_store is not None
        try:
            from airflow.sdk.execution_time.context import NEVER_EXPIRE

            self.state_store.set(state_key(self.round), value, retention=NEVER_EXPIRE)
        except TypeError:  # accessors without retention (e.g. in the triggerer)
            self.state_store.set(state_key(self.round), value)

    def archive(self) -> ObjectStoragePath | None:
        """Rename the ledger file to ``ledger.<timestamp>.json`` and drop the mirror; return the new path."""
        archived = self.folder.archive_ledger(self.round)
        self.fence = None
        if self.state_store is not None:
            with contextlib.suppress(Exception):
                self.state_store.delete(state_key(self.round))
        return archived
