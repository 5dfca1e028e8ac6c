"""Creating one chunk's batch, never twice: its intent, its create, the look for an orphan, its record.

The intent is saved in the ledger (fenced) before the create, the batch id durably after it
(see :mod:`airflow_batch.submit.ledger`). A create whose response was lost is followed by a look
for the batch it may have made (:func:`find_orphan`); a batch created by a writer that lost the
ledger to another meanwhile is recorded over the ledger as it is now, or cancelled as a
duplicate. The waves that call this, a chunk at a time, are :mod:`airflow_batch.submit.creating`.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_batch.exceptions import LedgerFencedOutError
from airflow_batch.folder import JobFolder
from airflow_batch.submit.chunk_files import ChunkBody, ChunkInfo
from airflow_batch.submit.ledger import Ledger, LedgerStore, utcnow

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi, BatchStatus
    from airflow_batch.submit.round import SubmitSettings

#: How far the API's clock may be from the worker's when matching an orphan batch to an intent.
CLOCK_SKEW = timedelta(minutes=2)
#: How long after an intent a create may still have landed (the SDK's timeout with retries).
CREATE_WINDOW = timedelta(hours=1)
#: After a lost create response, how long to let the API finish storing a batch before looking for it.
LOST_RESPONSE_SETTLE_SECONDS = 2.0
#: How long a chunk's intent belongs to the writer that made it: another writer waits for that
#: writer's batch this long before it takes the chunk over (a create of a 256 MB chunk takes seconds
#: to a minute; a writer silent for longer has stalled or died).
INTENT_LEASE = timedelta(seconds=60)
#: Fence conflicts a wave tolerates beyond one per chunk before it gives up.
FENCE_RETRIES = 5


def created_utc(batch: BatchStatus) -> datetime:
    """Return when a listed batch was created, as an aware UTC time (the epoch if the API said not)."""
    created = batch.created_at or datetime.fromtimestamp(0, UTC)
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def batch_requests(batch: BatchStatus) -> int:
    """Return how many requests a listed batch holds (its counts always sum to them)."""
    return batch.request_counts.total


class IntentHeld(Exception):
    """Another live writer holds the intent of the next chunk: wait for its batch."""


def find_orphan(
    api: BatchesApi, chunk: ChunkInfo, started_at: str, claimed: set[str], log: logging.Logger
) -> str | None:
    """Return the id of the one batch created for ``chunk`` after its intent, if exactly one matches.

    A match is a batch created between ``started_at`` (minus clock skew) and the create window,
    holding ``chunk.requests`` requests, and not claimed by the ledger.
    """
    start = datetime.fromisoformat(started_at)
    earliest, latest = start - CLOCK_SKEW, start + CREATE_WINDOW
    matches: list[str] = []
    for batch in api.recent_batches():
        created = created_utc(batch)
        if created < earliest:
            break  # newest first: everything further is older
        if created <= latest and batch_requests(batch) == chunk.requests and batch.id not in claimed:
            matches.append(batch.id)
    if len(matches) == 1:
        return matches[0]
    if matches:
        log.warning(
            "chunk %d: %d batches match its interrupted submission (%s); adopting none and submitting "
            "again. If one of them is this chunk's, cancel it to avoid paying twice.",
            chunk.index,
            len(matches),
            ", ".join(matches),
        )
    return None


def submit_chunk(
    api: BatchesApi,
    job: ObjectStoragePath,
    ledger: Ledger,
    store: LedgerStore,
    chunk: ChunkInfo,
    settings: SubmitSettings,
    log: logging.Logger,
) -> None:
    """Create the batch of ``chunk`` (or adopt the one an interrupted attempt made) and record it.

    The intent is saved (fenced) before the create: a writer that lost the ledger to another
    stops here, before spending. An earlier intent without a batch whose batch cannot be found
    is recorded as interrupted: its create may still land, and the sweep before gather looks
    for it.
    """
    intent = ledger.intents.get(chunk.index)
    if intent is not None and settings.adopt_orphans:
        orphan = find_orphan(api, chunk, intent["started_at"], ledger.claimed(), log)
        if orphan is not None:
            _record(ledger, store, chunk, orphan, None, adopted=True, log=log)
            return
    if intent is not None and _held_by_another(intent, store.writer):
        raise IntentHeld(
            f"chunk {chunk.index}: writer {intent['writer']} is creating its batch (intent of "
            f"{intent['started_at']}); waiting for it"
        )
    if intent is not None:
        ledger.interrupted.append({"chunk": chunk.index, "replaced_at": utcnow(), **intent})
    started_at = utcnow()
    ledger.intents[chunk.index] = {
        "started_at": started_at,
        "requests": chunk.requests,
        "writer": store.writer,
    }
    store.save(ledger)

    def lost_response() -> str | None:
        # The API may still be storing the batch whose response was lost: let it settle first.
        time.sleep(LOST_RESPONSE_SETTLE_SECONDS)
        return find_orphan(api, chunk, started_at, ledger.claimed(), log)

    created = api.create(
        ChunkBody(JobFolder(job).chunk_path(ledger.round, chunk.index), chunk.bytes, chunk.shared),
        chunk.bytes,
        what=f"create the batch of chunk {chunk.index} of round {ledger.round}",
        find_orphan=lost_response if settings.adopt_orphans else None,
    )
    try:
        _record(ledger, store, chunk, created.id, created.created_at, adopted=created.adopted, log=log)
    except LedgerFencedOutError:
        _keep_created(api, store, chunk, created.id, created.created_at, log)
        raise  # the caller reads the ledger again and carries on


def _held_by_another(intent: dict[str, Any], writer: str) -> bool:
    """Return whether ``intent`` is another writer's, made within the lease (its create may be in flight)."""
    owner = intent.get("writer")
    if owner is None or owner == writer:
        return False
    started = datetime.fromisoformat(intent["started_at"])
    return datetime.now(UTC) - started < INTENT_LEASE


def _keep_created(
    api: BatchesApi,
    store: LedgerStore,
    chunk: ChunkInfo,
    batch_id: str,
    created_at: str | None,
    log: logging.Logger,
) -> None:
    """Record the batch this writer just created in the ledger another writer saved meanwhile.

    The batch is certainly this job's. When the ledger now gives its chunk another batch (the
    other writer took the chunk over after this one's intent went stale), it is a duplicate and
    is cancelled at once; otherwise it is recorded over the ledger as it is now.
    """
    for _ in range(FENCE_RETRIES):
        ledger = store.load()
        owner_batch = ledger.batch_id(chunk.index) if ledger is not None else None
        if ledger is None or owner_batch == batch_id:
            return
        if owner_batch is not None:
            try:
                api.cancel(batch_id)
            except Exception as error:
                log.warning(
                    "chunk %d: duplicate batch %s (the chunk's batch is %s) could not be cancelled (%s); "
                    "the sweep before gather cancels it",
                    chunk.index,
                    batch_id,
                    owner_batch,
                    error,
                )
                return
            log.warning(
                "chunk %d: cancelled duplicate batch %s: another writer gave the chunk batch %s meanwhile",
                chunk.index,
                batch_id,
                owner_batch,
            )
            return
        try:
            _record(ledger, store, chunk, batch_id, created_at, adopted=False, log=log)
            return
        except LedgerFencedOutError:
            continue
    log.warning(
        "chunk %d: batch %s could not be recorded (the ledger kept changing); the sweep before gather "
        "settles it",
        chunk.index,
        batch_id,
    )


def _record(
    ledger: Ledger,
    store: LedgerStore,
    chunk: ChunkInfo,
    batch_id: str,
    created_at: str | None,
    *,
    adopted: bool,
    log: logging.Logger,
) -> None:
    """Record ``batch_id`` as the batch of ``chunk``, durably, before anything else can fail."""
    entry: dict[str, Any] = {"batch_id": batch_id, "recorded_at": utcnow()}
    if created_at:
        entry["created_at"] = created_at
    if adopted:
        entry["adopted"] = True
        ledger.events.append(
            f"{utcnow()} chunk {chunk.index}: adopted {batch_id} (its create response was lost)"
        )
    ledger.batches[chunk.index] = entry
    ledger.intents.pop(chunk.index, None)
    store.save(ledger)
    if adopted:
        log.warning("chunk %d: adopted batch %s whose create response was lost", chunk.index, batch_id)
    else:
        log.info(
            "chunk %d: batch %s created (%d requests, %d bytes)",
            chunk.index,
            batch_id,
            chunk.requests,
            chunk.bytes,
        )
