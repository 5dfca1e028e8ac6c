"""Creating a round's batches: a chunk at a time, never twice, in waves that fit the queue.

Each chunk without a batch gets an intent in the ledger, then its create (the chunk file
streamed as the body: the bytes measured are the bytes sent), then its batch id, durably,
before anything else can fail (see :mod:`airflow_batch.submit.ledger`). A create whose
response was lost is followed by a look for the batch it may have made (:func:`find_orphan`).
When the next chunk does not fit the organisation's processing queue (a share, a learned
limit, or the API's "queue full"), :class:`~airflow_batch.submit.queue.QueueWaitNeeded` is
raised with the batches to watch: the operator defers, then :func:`continue_round` creates the
next wave from the ledger and the installed chunk files, without reading the input again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_batch.exceptions import LedgerFencedOutError, QueueFullError
from airflow_batch.folder import JobFolder
from airflow_batch.manifest import MANIFEST_VERSION, JobIdentity, RoundManifest
from airflow_batch.submit.chunk_files import ChunkBody, ChunkInfo
from airflow_batch.submit.ledger import Ledger, LedgerStore, utcnow
from airflow_batch.submit.queue import QueueWait, QueueWaitNeeded, queued_requests, wave
from airflow_batch.submit.shared_prompts import load_shared

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
#: How long a queue limit learned from a refusal holds before one more chunk probes the API.
RELEARN_AFTER = timedelta(minutes=10)


#: How long a chunk's intent belongs to the writer that made it: another writer waits for that
#: writer's batch this long before it takes the chunk over (a create of a 256 MB chunk takes seconds
#: to a minute; a writer silent for longer has stalled or died).
INTENT_LEASE = timedelta(seconds=60)
INTENT_POLL_SECONDS = 2.0
#: Fence conflicts a wave tolerates beyond one per chunk before it gives up.
FENCE_RETRIES = 5


def created_utc(batch: BatchStatus) -> datetime:
    """Return when a listed batch was created, as an aware UTC time (the epoch if the API said not)."""
    created = batch.created_at or datetime.fromtimestamp(0, UTC)
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def batch_requests(batch: BatchStatus) -> int:
    """Return how many requests a listed batch holds (its counts always sum to them)."""
    return batch.request_counts.total


class CreatesStopped(Exception):
    """The caller asked creating to stop (its trigger was cancelled) before the next create."""


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


def manifest_from_ledger(job: ObjectStoragePath, ledger: Ledger, identity: JobIdentity) -> RoundManifest:
    """Return the manifest of a submitted round: its batches as its ledger records them."""
    chunks = chunk_infos(ledger)
    batches = ledger.batch_records(job)
    return RoundManifest(
        version=MANIFEST_VERSION,
        stage="submitted",
        job_dir=str(job),
        round=ledger.round,
        conn_id=identity.conn_id,
        betas=list(identity.betas),
        workspace_id=identity.workspace_id,
        fingerprint=ledger.fingerprint,
        requests=sum(chunk.requests for chunk in chunks),
        bytes=sum(chunk.bytes for chunk in chunks),
        invalid=ledger.invalid,
        invalid_path=ledger.invalid_path,
        batches=batches,
        estimate=ledger.estimate,
        submitted_at=ledger.created_at,
        reused=ledger.reused,
        reused_path=ledger.reused_path,
        canary=ledger.canary,
        requests_by_model=dict(ledger.requests_by_model),
    )


def continue_round(
    api: BatchesApi,
    *,
    job: ObjectStoragePath,
    round_number: int,
    identity: JobIdentity,
    settings: SubmitSettings,
    queued: int | None,
    state_store: Any | None = None,
    log: logging.Logger | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RoundManifest:
    """Create the next wave of a round whose earlier creates paused for queue room; return its manifest.

    Works from the ledger and the installed chunk files alone (the input is not read again).
    ``queued``: the job's requests still processing, as the queue wait last saw them.
    Raises :class:`FileNotFoundError` when a pending chunk's file is gone (a local job folder on
    another worker): the caller then runs :func:`submit_round` again, which re-attaches.
    """
    log = log or logging.getLogger(__name__)
    store = LedgerStore(job, round_number, state_store)
    ledger = store.load()
    if ledger is None or not ledger.chunks:
        raise FileNotFoundError(f"no ledger of round {round_number} in {job}: nothing to continue")
    folder = JobFolder(job)
    for chunk in chunk_infos(ledger):
        if ledger.batch_id(chunk.index) is None and not folder.has_chunk(round_number, chunk.index):
            raise FileNotFoundError(f"chunk file {folder.chunk_path(round_number, chunk.index)} is missing")
    return create_round(
        api, job, ledger, store, identity, settings, log, queued=queued, should_stop=should_stop
    )


def create_wave(
    identity: JobIdentity,
    job: ObjectStoragePath,
    round_number: int,
    settings: SubmitSettings,
    queued: int | None,
    *,
    state_store: Any | None = None,
    log: logging.Logger | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RoundManifest:
    """Create the round's next wave with a client of the job's connection: the one path of the
    task's resume and the queue trigger (QueueWaitNeeded while more chunks wait)."""
    from airflow_batch.hooks.batches import BatchesHook

    with BatchesHook.of(identity).batches_api() as api:
        return continue_round(
            api,
            job=job,
            round_number=round_number,
            identity=identity,
            settings=settings,
            queued=queued,
            state_store=state_store,
            log=log,
            should_stop=should_stop,
        )


def chunk_infos(ledger: Ledger) -> list[ChunkInfo]:
    return [
        ChunkInfo(int(c["chunk"]), int(c["requests"]), int(c["bytes"]), tuple(c.get("shared", ())))
        for c in ledger.chunks
    ]


def create_round(
    api: BatchesApi,
    job: ObjectStoragePath,
    ledger: Ledger,
    store: LedgerStore,
    identity: JobIdentity,
    settings: SubmitSettings,
    log: logging.Logger,
    *,
    queued: int | None,
    should_stop: Callable[[], bool] | None = None,
) -> RoundManifest:
    """Create the pending chunks that fit the queue; raise QueueWaitNeeded for the rest, or return.

    ``should_stop`` is asked before each create (a trigger's thread: true once its trigger was
    cancelled); when it answers true, :class:`CreatesStopped` is raised and nothing more is created.

    Another writer may hold the round at the same time (a copy of the queue trigger, a task's
    old process): every save is fenced, and when one finds the ledger saved by the other, this
    writer reads the ledger again and carries on from what it says now; a chunk whose intent
    another writer made less than ``INTENT_LEASE`` ago is that writer's to create: this one
    waits for its batch (adopting it when the API already lists it) instead of creating it too.
    """
    deadline = time.monotonic() + INTENT_LEASE.total_seconds() * 2 + 60
    conflicts = 0
    while True:
        try:
            return _create_fitting(
                api, job, ledger, store, identity, settings, log, queued=queued, should_stop=should_stop
            )
        except (LedgerFencedOutError, IntentHeld) as moved:
            if isinstance(moved, LedgerFencedOutError):
                conflicts += 1
                if conflicts > len(ledger.chunks) + FENCE_RETRIES:
                    raise
                log.warning("%s; reading the ledger again", moved)
            else:
                if time.monotonic() > deadline:
                    raise
                _pause_briefly(should_stop, ledger.round)
            reloaded = store.load()
            if reloaded is None:
                raise
            ledger = reloaded
            limit = settings.max_queued_requests or ledger.learned_queue_limit
            queued = _queued_now(api, ledger) if limit is not None else queued


def _pause_briefly(should_stop: Callable[[], bool] | None, round_number: int) -> None:
    """Wait one intent poll, or less when the caller is stopped (then raise CreatesStopped)."""
    until = time.monotonic() + INTENT_POLL_SECONDS
    while time.monotonic() < until:
        if should_stop is not None and should_stop():
            raise CreatesStopped(f"round {round_number}: creates stopped while another writer held a chunk")
        time.sleep(0.1)


def _create_fitting(
    api: BatchesApi,
    job: ObjectStoragePath,
    ledger: Ledger,
    store: LedgerStore,
    identity: JobIdentity,
    settings: SubmitSettings,
    log: logging.Logger,
    *,
    queued: int | None,
    should_stop: Callable[[], bool] | None,
) -> RoundManifest:
    chunks = chunk_infos(ledger)
    pending = [chunk for chunk in chunks if ledger.batch_id(chunk.index) is None]
    limit = settings.max_queued_requests or ledger.learned_queue_limit
    if pending and limit is not None and queued is None:
        queued = _queued_now(api, ledger)
    fitting = wave([chunk.requests for chunk in pending], queued or 0, limit)
    if fitting < len(pending) and settings.max_queued_requests is None and _relearn(ledger):
        fitting += 1  # a learned limit gets old: the queue may have room again (another job ended)
    for chunk in pending[:fitting]:  # a missing or damaged shared prompt fails before any create
        load_shared(JobFolder(job).chunk_path(ledger.round, chunk.index), chunk.shared)
    created = 0
    for chunk in pending[:fitting]:
        if should_stop is not None and should_stop():
            raise CreatesStopped(f"round {ledger.round}: creates stopped before chunk {chunk.index}")
        try:
            _submit_chunk(api, job, ledger, store, chunk, settings, log)
        except QueueFullError as full:
            ledger.intents.pop(chunk.index, None)  # refused: nothing was created
            held = (queued or 0) + created
            if held and settings.max_queued_requests is None:
                ledger.learned_queue_limit = held  # what the queue let this job hold just now
                ledger.learned_at = utcnow()
            _pause(
                ledger,
                store,
                log,
                QueueWait(
                    "queue_full",
                    chunk.requests,
                    held,
                    ledger.learned_queue_limit or limit,
                    full.retry_after,
                    len(pending) - pending.index(chunk),
                ),
            )
        created += chunk.requests
    if fitting < len(pending):
        reason = "max_queued_requests" if settings.max_queued_requests else "learned_queue_limit"
        _pause(
            ledger,
            store,
            log,
            QueueWait(
                reason,
                pending[fitting].requests,
                (queued or 0) + created,
                limit,
                None,
                len(pending) - fitting,
            ),
        )
    store.save(ledger)
    log_created(log, job, ledger, chunks)
    return manifest_from_ledger(job, ledger, identity)


def log_created(log: logging.Logger, job: ObjectStoragePath, ledger: Ledger, chunks: list[ChunkInfo]) -> None:
    """Log what the round sent: its batches, or that every request was answered without one."""
    if chunks:
        log.info(
            "round %d of %s: %d request(s) in %d batch(es): %s",
            ledger.round,
            job,
            sum(chunk.requests for chunk in chunks),
            len(chunks),
            ", ".join(ledger.batches[c.index]["batch_id"] for c in chunks),
        )
        return
    canary = ledger.canary["answered"] if ledger.canary is not None else 0
    log.info(
        "round %d of %s: no batch: every request was answered without one (%d from the answer store, "
        "%d by the canary)",
        ledger.round,
        job,
        ledger.reused,
        canary,
    )


def _relearn(ledger: Ledger) -> bool:
    """Return whether the learned queue limit is stale enough to try one chunk past it."""
    if ledger.learned_queue_limit is None or ledger.learned_at is None:
        return True
    learned = datetime.fromisoformat(ledger.learned_at)
    return datetime.now(UTC) - learned > RELEARN_AFTER


def _queued_now(api: BatchesApi, ledger: Ledger) -> int:
    """Return the requests of the round's created batches not ended yet (one retrieve each)."""
    batch_ids = [entry["batch_id"] for entry in ledger.batches.values()]
    statuses = {batch_id: api.retrieve(batch_id).record() for batch_id in batch_ids}
    return queued_requests(statuses)


def _pause(ledger: Ledger, store: LedgerStore, log: logging.Logger, wait: QueueWait) -> None:
    """Record why the round's creates paused, and raise QueueWaitNeeded with the batches to watch."""
    if wait.reason == "queue_full":
        why = "the API answered that the organisation's processing queue is full" + (
            f" (retry after {wait.retry_after:.0f} s)" if wait.retry_after is not None else ""
        )
    elif wait.reason == "learned_queue_limit":
        why = (
            f"{wait.queued:,} of the job's requests are queued, as many as the queue held when it was "
            f"last full ({wait.limit:,})"
        )
    else:
        why = f"{wait.queued:,} of the job's requests are queued, max_queued_requests={wait.limit:,}"
    ledger.events.append(f"{utcnow()} paused with {wait.pending_chunks} chunk(s) pending: {why}")
    store.save(ledger)
    log.info(
        "round %d: %d of %d batch(es) created; %d chunk(s) wait for queue room (%s); the next needs "
        "room for %d requests. Deferring: no worker slot is held meanwhile.",
        ledger.round,
        len(ledger.batches),
        len(ledger.chunks),
        wait.pending_chunks,
        why,
        wait.need,
    )
    raise QueueWaitNeeded(wait, [entry["batch_id"] for _, entry in sorted(ledger.batches.items())])


def _submit_chunk(
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
