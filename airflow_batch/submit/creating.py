"""Creating a round's batches: a chunk at a time, never twice, in waves that fit the queue.

Each chunk without a batch gets an intent in the ledger, then its create (the chunk file
streamed as the body: the bytes measured are the bytes sent), then its batch id, durably,
before anything else can fail (see :mod:`airflow_batch.submit.ledger`). A create whose
response was lost is followed by a look for the batch it may have made (one chunk's create is
:mod:`airflow_batch.submit.chunk_batch`). When the next chunk does not fit the organisation's
processing queue (a share, a learned limit, or the API's "queue full"),
:class:`~airflow_batch.submit.queue.QueueWaitNeeded` is raised with the batches to watch: the
operator defers, then :func:`continue_round` creates the next wave from the ledger and the
installed chunk files, without reading the input again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_batch.exceptions import LedgerFencedOutError, QueueFullError
from airflow_batch.folder import JobFolder
from airflow_batch.hooks import job_api
from airflow_batch.manifest import MANIFEST_VERSION, JobIdentity, RoundManifest
from airflow_batch.submit.chunk_batch import FENCE_RETRIES, INTENT_LEASE, IntentHeld, submit_chunk
from airflow_batch.submit.chunk_files import ChunkInfo
from airflow_batch.submit.ledger import Ledger, LedgerStore, utcnow
from airflow_batch.submit.queue import QueueWait, QueueWaitNeeded, queued_requests, wave
from airflow_batch.submit.shared_prompts import load_shared

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.submit.round import SubmitSettings

#: How long a queue limit learned from a refusal holds before one more chunk probes the API.
RELEARN_AFTER = timedelta(minutes=10)
#: How often a writer looks again at a chunk whose intent another live writer holds.
INTENT_POLL_SECONDS = 2.0


class CreatesStopped(Exception):
    """The caller asked creating to stop (its trigger was cancelled) before the next create."""


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
    with job_api(identity) as api:
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
            submit_chunk(api, job, ledger, store, chunk, settings, log)
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
