"""The one submit path, used by the submit operator (round 0) and the retry operator (rounds >= 1).

:func:`submit_round` runs, in order, and stops at the first failure:

1. One streaming pass over the requests: validate, apply defaults, fingerprint, and write
   each request to its chunk file in a staging folder (:func:`chunking.prepare_chunks`).
   Any invalid row raises :class:`InvalidRequestsError` listing the rows; no API call is
   made and the staging folder is deleted.
2. Compare with the ledger of earlier attempts (:mod:`airflow_batch.ledger`). Same
   fingerprint: re-attach. Different fingerprint and a batch may exist:
   ``on_input_change="fail"`` raises :class:`InputChangedError`; ``"resubmit"`` cancels the
   recorded batches that have not ended, archives the ledger as ``ledger.<timestamp>.json``
   and starts the round over.
3. Move the staged chunk files into ``round-{r}/chunks/`` (a new round only; the chunk
   files of recorded batches are never overwritten).
4. Estimate the cost (:mod:`airflow_batch.estimate`) and refuse above ``max_cost_usd``
   with :class:`BudgetExceededError`, before any batch is created.
5. For each chunk without a batch, in waves that fit the processing queue
   (:mod:`airflow_batch.submit.queue`): record an intent, create the batch (the chunk file is
   streamed as the create body: the bytes measured are the bytes sent), record its id. When
   the next chunk does not fit (``max_queued_requests``, or the API answered "queue full"),
   :class:`~airflow_batch.submit.queue.QueueWaitNeeded` is raised: the operator defers until
   room frees up, then :func:`continue_round` creates the next wave from the ledger and the
   installed chunk files, without reading the input again.
6. Return the round manifest (small: paths, ids, counts, bytes, the estimate).

A ledger with no batch and no intent binds nothing: a round refused for budget or invalid
input can be re-run with a different input.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.costs import price_table
from airflow_batch.exceptions import (
    BatchesApiError,
    BeforeSubmitError,
    BudgetExceededError,
    CanaryFailedError,
    InputChangedError,
    InvalidRequestsError,
    QueueFullError,
    UnknownModelError,
    UnknownModelPriceError,
)
from airflow_batch.manifest import MANIFEST_VERSION, BatchRecord, CostEstimate, JobIdentity, RoundManifest
from airflow_batch.reuse.store import load_index
from airflow_batch.storage import as_path, write_json
from airflow_batch.submit.canary import CanaryOutcome, CanarySettings, HeldRequest, check_canary, run_canary
from airflow_batch.submit.chunking import (
    INPUTS_DIR,
    ChunkBody,
    ChunkInfo,
    ModelLimits,
    PreparedRound,
    prepare_chunks,
)
from airflow_batch.submit.estimate import TokenTally, estimate_cost
from airflow_batch.submit.ledger import Ledger, LedgerStore, utcnow
from airflow_batch.submit.queue import QueueWait, QueueWaitNeeded, queued_requests, wave
from airflow_batch.submit.records import RequestDefaults
from airflow_batch.submit.routing import AnswerReuse, Routing
from airflow_batch.submit.validation import MAX_BYTES_PER_BATCH, MAX_REQUESTS_PER_BATCH

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.schema import Validator

ON_INPUT_CHANGE = ("fail", "resubmit")
#: How far the API's clock may be from the worker's when matching an orphan batch to an intent.
CLOCK_SKEW = timedelta(minutes=2)
#: How long after an intent a create may still have landed (the SDK's timeout with retries).
CREATE_WINDOW = timedelta(hours=1)
#: After a lost create response, how long to let the API finish storing a batch before looking for it.
LOST_RESPONSE_SETTLE_SECONDS = 2.0
BUDGET_BASES = (None, "upper_bound", "expected")


@dataclass(frozen=True)
class SubmitSettings:
    """How a round is split, priced and guarded; the operator's arguments of the same names."""

    max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH
    max_bytes_per_batch: int = MAX_BYTES_PER_BATCH
    max_cost_usd: float | None = None
    prices: Mapping[str, Mapping[str, Any]] | None = None
    expected_output_tokens: int | None = None
    #: Where ``expected_output_tokens`` comes from when not from the user ("observed in ...").
    expected_basis: str | None = None
    #: Which estimate ``max_cost_usd`` guards: "upper_bound" (every request's max_tokens) or
    #: "expected"; None: "expected" when the user gave ``expected_output_tokens``, else the bound.
    budget_basis: str | None = None
    on_input_change: str = "fail"
    skip_invalid: bool = False
    count_tokens_sample: int = 20
    adopt_orphans: bool = True
    #: The job's share of the organisation's processing queue (requests); None: learn from 429s.
    max_queued_requests: int | None = None
    #: What the job's earlier rounds cost (batch prices): a retry round may spend only the rest.
    spent_usd: float = 0.0

    def __post_init__(self) -> None:
        if self.on_input_change not in ON_INPUT_CHANGE:
            raise ValueError(
                f"on_input_change must be one of {ON_INPUT_CHANGE}, got {self.on_input_change!r}"
            )
        if not 1 <= self.max_requests_per_batch <= MAX_REQUESTS_PER_BATCH:
            raise ValueError(
                f"max_requests_per_batch must be between 1 and {MAX_REQUESTS_PER_BATCH:,} (the API's limit), "
                f"got {self.max_requests_per_batch}"
            )
        if not 1_000 <= self.max_bytes_per_batch <= 256_000_000:
            raise ValueError(
                f"max_bytes_per_batch must be between 1,000 and 256,000,000 (the API's limit), "
                f"got {self.max_bytes_per_batch}"
            )
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {self.max_cost_usd}")
        if self.max_queued_requests is not None and self.max_queued_requests < self.max_requests_per_batch:
            raise ValueError(
                f"max_queued_requests={self.max_queued_requests:,} is below max_requests_per_batch="
                f"{self.max_requests_per_batch:,}: a batch could never be queued; lower "
                "max_requests_per_batch or raise max_queued_requests"
            )
        if self.budget_basis not in BUDGET_BASES:
            raise ValueError(f"budget_basis must be 'upper_bound' or 'expected', got {self.budget_basis!r}")

    @property
    def guarded_basis(self) -> str:
        """Return which estimate the budget guards: "expected" or "upper_bound"."""
        if self.budget_basis is not None:
            return self.budget_basis
        given = self.expected_output_tokens is not None and self.expected_basis is None
        return "expected" if given else "upper_bound"


def _remove_tree(path: ObjectStoragePath) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.exists():
            path.rmdir(recursive=True)


def _install_chunks(prepared: PreparedRound, job: ObjectStoragePath, round_number: int) -> None:
    """Move the staged chunk files (and invalid rows) into the round folder, replacing old ones."""
    for target in (layout.chunks_dir(job, round_number), layout.inputs_dir(job, round_number)):
        _remove_tree(target)
        target.mkdir(parents=True, exist_ok=True)
    for chunk in prepared.chunks:
        _move_chunk(prepared, job, round_number, chunk.index)
    invalid_path = layout.invalid_input_path(job, round_number)
    if prepared.invalid_file is not None:
        prepared.invalid_file.rename(invalid_path)
    elif invalid_path.exists():
        invalid_path.unlink()
    reused_path = layout.reused_path(job, round_number)
    staged_reused = prepared.staging / layout.REUSED_FILE
    if staged_reused.exists():
        staged_reused.rename(reused_path)
    elif reused_path.exists():
        reused_path.unlink()


def _restore_missing_chunks(prepared: PreparedRound, job: ObjectStoragePath, round_number: int) -> None:
    """Put back chunk files missing from the round folder (e.g. a local job folder on a new worker)."""
    for chunk in prepared.chunks:
        if not layout.chunk_path(job, round_number, chunk.index).exists():
            _move_chunk(prepared, job, round_number, chunk.index)


def _move_chunk(prepared: PreparedRound, job: ObjectStoragePath, round_number: int, index: int) -> None:
    """Move one staged chunk file and its inputs twin into the round folder."""
    name = layout.chunk_file_name(index)
    for staged, target in (
        (prepared.staging / name, layout.chunk_path(job, round_number, index)),
        (prepared.staging / INPUTS_DIR / name, layout.chunk_inputs_path(job, round_number, index)),
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(target)


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
        created = batch.created_at if batch.created_at.tzinfo else batch.created_at.replace(tzinfo=UTC)
        if created < earliest:
            break  # newest first: everything further is older
        counts = batch.request_counts
        total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
        if created <= latest and total == chunk.requests and batch.id not in claimed:
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


def _cancel_unended(api: BatchesApi, ledger: Ledger, log: logging.Logger) -> None:
    for chunk, entry in sorted(ledger.batches.items()):
        batch_id = entry["batch_id"]
        try:
            if api.retrieve(batch_id).processing_status != "ended":
                api.cancel(batch_id)
                log.info("input changed: canceled batch %s of chunk %d", batch_id, chunk)
        except BatchesApiError as exc:
            if exc.status_code != 404:
                raise
            log.info("input changed: batch %s of chunk %d no longer exists", batch_id, chunk)


def _manifest(job: ObjectStoragePath, ledger: Ledger, identity: JobIdentity) -> RoundManifest:
    chunks = _chunks(ledger)
    batches = [
        BatchRecord(
            chunk=chunk.index,
            batch_id=ledger.batches[chunk.index]["batch_id"],
            requests=chunk.requests,
            bytes=chunk.bytes,
            chunk_path=str(layout.chunk_path(job, ledger.round, chunk.index)),
        )
        for chunk in chunks
    ]
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
    )


def _prepare(
    requests: Iterable[Any],
    job: ObjectStoragePath,
    round_number: int,
    settings: SubmitSettings,
    defaults: RequestDefaults | None,
    identity: JobIdentity,
    row_label: str,
    routing: Routing | None,
) -> PreparedRound:
    staging = layout.round_dir(job, round_number) / f".staging-{uuid.uuid4().hex}"
    try:
        prepared = prepare_chunks(
            requests,
            staging=staging,
            max_requests=settings.max_requests_per_batch,
            max_bytes=settings.max_bytes_per_batch,
            defaults=defaults,
            skip_invalid=settings.skip_invalid,
            expected_output_tokens=settings.expected_output_tokens,
            round_number=round_number,
            row_label=row_label,
            lenient=bool(identity.betas),
            limits=ModelLimits(price_table(settings.prices), identity.betas),
            diversion=routing,
        )
    except BaseException:
        _remove_tree(staging)
        raise
    if prepared.fatal:
        _remove_tree(staging)
        raise InvalidRequestsError(prepared.report.message(prepared.rows))
    prepared.tally.sample_size = settings.count_tokens_sample
    if prepared.tally.expected_basis is None:  # the canary may have set it
        prepared.tally.expected_basis = settings.expected_basis
    del prepared.tally.sample[settings.count_tokens_sample :]
    return prepared


def _routing(
    api: BatchesApi,
    job: ObjectStoragePath,
    round_number: int,
    identity: JobIdentity,
    settings: SubmitSettings,
    reuse: AnswerReuse | None,
    canary: CanarySettings | None,
    validator: Validator | None,
    log: logging.Logger,
) -> Routing | None:
    """Return the round's routing (answer reuse, canary), or None when it has neither."""
    if reuse is None and canary is None:
        return None
    index = None
    if reuse is not None and reuse.lookup:
        started = time.perf_counter()
        index = load_index(reuse.store, max_age=reuse.max_age)
        log.info(
            "answer store %s: %d answer(s) in %d segment(s)%s, read in %.2f s",
            reuse.store,
            index.answers,
            len(index.segments),
            f" no older than {reuse.max_age:,.0f} s" if reuse.max_age is not None else "",
            time.perf_counter() - started,
        )

    def canary_step(held: list[HeldRequest], tally: TokenTally) -> CanaryOutcome:
        table = price_table(settings.prices)
        if settings.max_cost_usd is not None:
            # Before any spend: the batch, its canary at standard prices and the canary's requests
            # sent again in the batch if unusable must all fit what is left of the budget.
            sample = TokenTally(min_cacheable=tally.min_cacheable)
            for request in held:
                request.count(sample)
            quiet = logging.getLogger(f"{__name__}.canary_budget")
            main, extra = estimate_cost(tally, table, log=quiet), estimate_cost(sample, table, log=quiet)
            combined = CostEstimate(**main)  # type: ignore[typeddict-item]
            more = extra["batch_usd"] + extra["standard_usd"]
            combined["batch_usd"] = main["batch_usd"] + more
            if main["expected_batch_usd"] is not None:
                combined["expected_batch_usd"] = main["expected_batch_usd"] + more
            note = f" with its canary of {len(held)} request(s) (up to ${extra['standard_usd']:.4f})"
            _check_budget(combined, round_number, settings, 1, 1, canary=note)
        outcome = run_canary(api, held, round_number=round_number, validator=validator, table=table, log=log)
        check_canary(outcome, canary.max_failure_rate if canary is not None else 0.0)
        tokens = outcome.output_tokens_per_answer()
        given = settings.expected_output_tokens is not None and settings.expected_basis is None
        if tokens is not None and not given:
            tally.expect(tokens, f"canary ({len(outcome.answers)} answer(s))")
        return outcome

    return Routing(
        job=str(job),
        round_number=round_number,
        betas=identity.betas,
        index=index,
        canary_size=canary.size if canary is not None else 0,
        run_canary=canary_step if canary is not None else None,
        store=as_path(reuse.store) if reuse is not None else None,
        log=log,
    )


def submit_round(
    api: BatchesApi,
    requests: Iterable[Any],
    *,
    job: ObjectStoragePath,
    round_number: int,
    identity: JobIdentity,
    settings: SubmitSettings,
    state_store: Any | None = None,
    log: logging.Logger | None = None,
    defaults: RequestDefaults | None = None,
    row_label: str = "row",
    reuse: AnswerReuse | None = None,
    canary: CanarySettings | None = None,
    validator: Validator | None = None,
) -> RoundManifest:
    """Validate, chunk, persist, estimate and submit one round; return its manifest.

    Idempotent per (job, round): re-running with the same requests re-attaches to the
    batches recorded in the ledger and creates only the missing ones.

    :param requests: the requests, as mappings, raw JSONL lines (bytes), or
        :class:`~airflow_batch.submit.validation.InvalidRow` markers from records conversion.
    :param identity: the connection, betas and workspace the job's calls use.
    :param defaults: model / max_tokens / system to fill into requests that lack them.
    :param row_label: what an invalid row is called in errors: ``"line"`` for a file's lines.
    :param reuse: the job's answer store: requests found in it are answered from it, not sent;
        every request's fingerprint is recorded so gather stores the round's answers.
    :param canary: send a few requests at once before any batch (see :mod:`airflow_batch.submit.canary`);
        ``validator`` judges their answers against the job's output schema. A round that already
        spent (batches, or a canary, recorded in its ledger) never runs its canary again.
    """
    log = log or logging.getLogger(__name__)
    store = LedgerStore(job, round_number, state_store)
    recorded = store.load()
    attached = recorded is not None and recorded.binding
    routing = _routing(
        api, job, round_number, identity, settings, reuse, None if attached else canary, validator, log
    )
    try:
        try:
            prepared = _prepare(requests, job, round_number, settings, defaults, identity, row_label, routing)
        except (BudgetExceededError, CanaryFailedError) as refusal:
            write_json(layout.refusal_path(job, round_number), refusal.record(round_number))
            raise
    finally:
        if routing is not None:
            routing.close()
    diverted = routing is not None and (routing.reused or routing.canary is not None)
    try:
        ledger = recorded
        if ledger is not None and ledger.binding and ledger.fingerprint != prepared.fingerprint:
            if settings.on_input_change == "fail":
                raise InputChangedError(
                    f"the input of {job} round {round_number} changed since its batches were submitted "
                    f"(fingerprint {ledger.fingerprint} recorded, {prepared.fingerprint} now). "
                    "Restore the original input, or set on_input_change='resubmit' to cancel the "
                    "recorded batches and submit the new input."
                )
            _cancel_unended(api, ledger, log)
            archived = store.archive()
            log.warning("input changed: old ledger archived as %s; submitting the new input", archived)
            ledger = None
        if ledger is None or not ledger.binding:
            _install_chunks(prepared, job, round_number)
            ledger = Ledger(
                job_dir=str(job),
                round=round_number,
                fingerprint=prepared.fingerprint,
                conn_id=identity.conn_id,
                chunks=[
                    {"chunk": c.index, "requests": c.requests, "bytes": c.bytes} for c in prepared.chunks
                ],
            )
            if routing is not None:
                ledger.reused = routing.reused
                ledger.canary = routing.canary.record() if routing.canary is not None else None
                if routing.reused_file is not None:
                    ledger.reused_path = str(layout.reused_path(job, round_number))
        elif diverted or ledger.reused or ledger.canary is not None:
            # The chunks were cut around what the store or the canary answered then: they cannot be
            # rebuilt from the input alone, so the recorded ones must be there.
            missing = [
                str(layout.chunk_path(job, round_number, chunk.index))
                for chunk in _chunks(ledger)
                if ledger.batch_id(chunk.index) is None
                and not layout.chunk_path(job, round_number, chunk.index).exists()
            ]
            if missing:
                raise FileNotFoundError(
                    f"chunk file(s) {', '.join(missing[:3])} of {job} round {round_number} are missing; "
                    "with reuse_answers or a canary they cannot be rebuilt from the input. Keep job "
                    "folders on shared storage (output_path on s3://, gs://...) so every worker sees them."
                )
        else:
            _restore_missing_chunks(prepared, job, round_number)
        if ledger.batches:
            log.info(
                "re-attaching to %d recorded batch(es) of %s round %d",
                len(ledger.batches),
                job,
                round_number,
            )
    finally:
        _remove_tree(prepared.staging)

    invalid_path = str(layout.invalid_input_path(job, round_number)) if prepared.invalid_file else None
    if prepared.invalid_file:
        log.warning(
            "%d invalid row(s) skipped (skip_invalid=True), recorded in %s", prepared.invalid, invalid_path
        )
    chunks = _chunks(ledger)
    pending = [chunk for chunk in chunks if ledger.batch_id(chunk.index) is None]
    if ledger.estimate is None:
        ledger.estimate = estimate_cost(
            prepared.tally,
            price_table(settings.prices),
            count_tokens=api.count_tokens if settings.count_tokens_sample > 0 else None,
            log=log,
        )
    canary_cost = ledger.canary["cost"]["batch_usd"] if ledger.canary is not None else 0.0
    try:
        spent = replace(settings, spent_usd=settings.spent_usd + canary_cost)
        _check_budget(ledger.estimate, round_number, spent, len(pending), len(chunks))
        if pending and not ledger.batches:
            _check_models(api, prepared.tally.models, price_table(settings.prices).known_models(), log)
    except BeforeSubmitError as refusal:
        write_json(layout.refusal_path(job, round_number), refusal.record(round_number))
        raise
    ledger.invalid, ledger.invalid_path = prepared.invalid, invalid_path
    store.save(ledger)
    return _create_round(api, job, ledger, store, identity, settings, log, queued=None)


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
    for chunk in _chunks(ledger):
        path = layout.chunk_path(job, round_number, chunk.index)
        if ledger.batch_id(chunk.index) is None and not path.exists():
            raise FileNotFoundError(f"chunk file {path} is missing")
    return _create_round(api, job, ledger, store, identity, settings, log, queued=queued)


def _chunks(ledger: Ledger) -> list[ChunkInfo]:
    return [ChunkInfo(int(c["chunk"]), int(c["requests"]), int(c["bytes"])) for c in ledger.chunks]


def _create_round(
    api: BatchesApi,
    job: ObjectStoragePath,
    ledger: Ledger,
    store: LedgerStore,
    identity: JobIdentity,
    settings: SubmitSettings,
    log: logging.Logger,
    *,
    queued: int | None,
) -> RoundManifest:
    """Create the pending chunks that fit the queue; raise QueueWaitNeeded for the rest, or return."""
    chunks = _chunks(ledger)
    pending = [chunk for chunk in chunks if ledger.batch_id(chunk.index) is None]
    limit = settings.max_queued_requests
    if pending and limit is not None and queued is None:
        queued = _queued_now(api, ledger)
    fitting = wave([chunk.requests for chunk in pending], queued or 0, limit)
    created = 0
    for chunk in pending[:fitting]:
        try:
            _submit_chunk(api, job, ledger, store, chunk, settings, log)
        except QueueFullError as full:
            ledger.intents.pop(chunk.index, None)  # refused: nothing was created
            _pause(ledger, store, log, QueueWait(
                "queue_full", chunk.requests, (queued or 0) + created, limit, full.retry_after,
                len(pending) - pending.index(chunk),
            ))  # fmt: skip
        created += chunk.requests
    if fitting < len(pending):
        _pause(ledger, store, log, QueueWait(
            "max_queued_requests", pending[fitting].requests, (queued or 0) + created, limit, None,
            len(pending) - fitting,
        ))  # fmt: skip
    store.save(ledger)
    log.info(
        "round %d of %s: %d request(s) in %d batch(es): %s",
        ledger.round,
        job,
        sum(chunk.requests for chunk in chunks),
        len(chunks),
        ", ".join(ledger.batches[c.index]["batch_id"] for c in chunks),
    )
    return _manifest(job, ledger, identity)


def _queued_now(api: BatchesApi, ledger: Ledger) -> int:
    """Return the requests of the round's created batches not ended yet (one retrieve each)."""
    statuses = {}
    for entry in ledger.batches.values():
        batch = api.retrieve(entry["batch_id"])
        counts = batch.request_counts
        statuses[batch.id] = {
            "processing_status": batch.processing_status,
            "request_counts": {
                "processing": counts.processing,
                "succeeded": counts.succeeded,
                "errored": counts.errored,
                "canceled": counts.canceled,
                "expired": counts.expired,
            },
        }
    return queued_requests(statuses)


def _pause(ledger: Ledger, store: LedgerStore, log: logging.Logger, wait: QueueWait) -> None:
    """Record why the round's creates paused, and raise QueueWaitNeeded with the batches to watch."""
    if wait.reason == "queue_full":
        why = "the API answered that the organisation's processing queue is full" + (
            f" (retry after {wait.retry_after:.0f} s)" if wait.retry_after is not None else ""
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


def _check_budget(
    estimate: CostEstimate | None,
    round_number: int,
    settings: SubmitSettings,
    pending: int,
    chunks: int,
    *,
    canary: str = "",
) -> None:
    """Raise before any create when a budget is set and the guarded estimate exceeds what is left.

    The guarded estimate is the upper bound, or the expected figure with
    ``budget_basis="expected"`` (the upper bound when no expected output length is known).
    ``pending`` of the round's ``chunks`` have no batch yet; ``canary`` says what of the
    estimate is the canary's, when it is checked before the canary is sent.
    """
    budget = settings.max_cost_usd
    if not pending or budget is None or estimate is None:
        return
    if not estimate["priced"]:
        raise UnknownModelPriceError(
            f"no price for model(s) {', '.join(estimate['unpriced_models'])} in the price table, so the "
            f"budget max_cost_usd=${budget:.4f} cannot be checked; add them with "
            "prices={model: {'input': .., 'output': ..}}. Nothing was submitted."
        )
    expected = estimate.get("expected_batch_usd")
    guards_expected = settings.guarded_basis == "expected" and expected is not None
    guarded = expected if guards_expected and expected is not None else estimate["batch_usd"]
    left = budget - settings.spent_usd
    if guarded <= left:
        return
    already = chunks - pending
    spent = (
        f"; the job has spent ${settings.spent_usd:.4f} so far, ${max(left, 0):.4f} of the budget is left"
        if settings.spent_usd
        else ""
    )
    if guards_expected:
        figure = (
            f"round {round_number} is expected to cost ${guarded:.4f} at batch prices "
            f"({estimate.get('expected_output_tokens')} output tokens per request, "
            f"{estimate.get('expected_basis')}; up to ${estimate['batch_usd']:.4f} if every request used its "
            "max_tokens)"
        )
        fixes = "Raise max_cost_usd, lower max_tokens or submit fewer requests."
    else:
        figure = (
            f"round {round_number} would cost up to ${guarded:.4f} at batch prices "
            f"(${estimate['standard_usd']:.4f} standard) if every request used its max_tokens"
            + (
                f" (expected: ${expected:.4f}, {estimate.get('expected_basis')})"
                if expected is not None
                else ""
            )
        )
        fixes = (
            "Raise max_cost_usd, lower max_tokens, "
            + (
                "set budget_basis='expected' to guard the expected cost, "
                if expected is not None
                else "set expected_output_tokens with budget_basis='expected', "
            )
            + "or submit fewer requests."
        )
    raise BudgetExceededError(
        f"{figure}{canary}, above the budget max_cost_usd=${budget:.4f}{spent}; {pending} batch(es) not "
        "submitted" + (f" ({already} submitted by an earlier attempt)" if already else "") + f". {fixes}",
        estimate_usd=guarded,
        budget_usd=budget,
        spent_usd=settings.spent_usd,
        basis="expected" if guards_expected else "upper_bound",
    )


def _check_models(api: BatchesApi, models: Iterable[str], known: Sequence[str], log: logging.Logger) -> None:
    """Refuse, before any create, models the API does not serve, naming close matches."""
    unknown = []
    for model in sorted(models):
        try:
            if not api.model_exists(model):
                unknown.append(model)
        except BatchesApiError as exc:  # a proxy or platform without the Models API: go on
            log.warning("could not look model %s up (%s); submitting without that check", model, exc)
    if not unknown:
        return
    try:
        candidates = sorted({*api.model_ids(), *known})
    except BatchesApiError:
        candidates = sorted(known)
    described = []
    for model in unknown:
        matches = difflib.get_close_matches(model, candidates, n=3, cutoff=0.6)
        described.append(
            f"{model!r}" + (f" (did you mean {', '.join(map(repr, matches))}?)" if matches else "")
        )
    raise UnknownModelError(
        f"the API does not serve the model(s) {', '.join(described)}: every request would come back "
        "invalid. Fix params.model in the requests or model= of the operator. Nothing was submitted."
    )


def _submit_chunk(
    api: BatchesApi,
    job: ObjectStoragePath,
    ledger: Ledger,
    store: LedgerStore,
    chunk: ChunkInfo,
    settings: SubmitSettings,
    log: logging.Logger,
) -> None:
    """Create the batch of ``chunk`` (or adopt the one an interrupted attempt made) and record it."""
    intent = ledger.intents.get(chunk.index)
    if intent is not None and settings.adopt_orphans:
        orphan = find_orphan(api, chunk, intent["started_at"], ledger.claimed(), log)
        if orphan is not None:
            _record(ledger, store, chunk, orphan, None, adopted=True, log=log)
            return
    started_at = utcnow()
    ledger.intents[chunk.index] = {"started_at": started_at, "requests": chunk.requests}
    store.save(ledger)

    def lost_response() -> str | None:
        # The API may still be storing the batch whose response was lost: let it settle first.
        time.sleep(LOST_RESPONSE_SETTLE_SECONDS)
        return find_orphan(api, chunk, started_at, ledger.claimed(), log)

    created = api.create(
        ChunkBody(layout.chunk_path(job, ledger.round, chunk.index), chunk.bytes),
        chunk.bytes,
        what=f"create the batch of chunk {chunk.index} of round {ledger.round}",
        find_orphan=lost_response if settings.adopt_orphans else None,
    )
    _record(ledger, store, chunk, created.id, created.created_at, adopted=created.adopted, log=log)


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
