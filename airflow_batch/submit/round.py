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
4b. Refuse a model the API does not serve (:mod:`airflow_batch.submit.refusals`, with the
   budget check).
5. Create a batch for each chunk without one, in waves that fit the processing queue
   (:mod:`airflow_batch.submit.creating`); when the next chunk does not fit,
   :class:`~airflow_batch.submit.queue.QueueWaitNeeded` is raised and the operator defers,
   then :func:`~airflow_batch.submit.creating.continue_round` creates the next wave.
6. Return the round manifest (small: paths, ids, counts, bytes, the estimate).

A ledger with no batch and no intent binds nothing: a round refused for budget or invalid
input can be re-run with a different input. A ledger holding only a canary (recorded before it
was sent) binds that canary to its input: a re-run over the same input never sends it again,
one over another input archives it and starts over (see :mod:`airflow_batch.submit.canary`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from airflow_batch.exceptions import (
    BatchesApiError,
    BeforeSubmitError,
    BudgetExceededError,
    CanaryFailedError,
    InputChangedError,
    InvalidRequestsError,
)
from airflow_batch.folder import JobFolder
from airflow_batch.job_files import remove_tree
from airflow_batch.manifest import CostEstimate, JobIdentity, RoundManifest
from airflow_batch.reuse.check import ReuseCheck
from airflow_batch.reuse.fingerprint import answer_scope
from airflow_batch.reuse.store import load_index
from airflow_batch.rules.costs import price_table
from airflow_batch.storage import as_path
from airflow_batch.submit.canary import (
    CanaryOutcome,
    CanarySettings,
    HeldRequest,
    canary_intent,
    canary_only,
    check_canary,
    check_recorded_canary,
    run_canary,
)
from airflow_batch.submit.chunking import PreparedRound, prepare_chunks
from airflow_batch.submit.creating import chunk_infos, create_round
from airflow_batch.submit.estimate import TokenTally, calibrate, estimate_cost
from airflow_batch.submit.ledger import Ledger, LedgerStore, utcnow
from airflow_batch.submit.model_limits import ModelLimits
from airflow_batch.submit.records import RequestDefaults
from airflow_batch.submit.refusals import check_budget, check_models
from airflow_batch.submit.routing import AnswerReuse, Routing
from airflow_batch.submit.validation import MAX_BYTES_PER_BATCH, MAX_REQUESTS_PER_BATCH

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.rules.validator import Validator

ON_INPUT_CHANGE = ("fail", "resubmit")
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
    staging = JobFolder(job).staging_dir(round_number, uuid.uuid4().hex)
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
        remove_tree(staging)
        raise
    if prepared.fatal:
        remove_tree(staging)
        raise InvalidRequestsError(prepared.report.message(prepared.rows))
    prepared.tally.sample_size = settings.count_tokens_sample
    if prepared.tally.expected_basis is None:  # the canary may have set it
        prepared.tally.expected_basis = settings.expected_basis
    del prepared.tally.sample[settings.count_tokens_sample :]
    return prepared


class _AtDebug:
    """Wraps a task's logger (stdlib or structlog): info lines become debug lines, the rest pass."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.debug(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _routing(
    api: BatchesApi,
    job: ObjectStoragePath,
    round_number: int,
    identity: JobIdentity,
    settings: SubmitSettings,
    reuse: AnswerReuse | None,
    canary: CanarySettings | None,
    validator: Validator | None,
    include_content: bool,
    ledgers: LedgerStore,
    log: logging.Logger,
) -> Routing | None:
    """Return the round's routing (answer reuse, canary), or None when it has neither."""
    if reuse is None and canary is None:
        return None
    index = None
    if reuse is not None and reuse.lookup:
        started = time.perf_counter()
        index = load_index(reuse.store, max_age=reuse.max_age, logger=log)
        log.info(
            "answer store %s: %d answer(s) in %d segment(s)%s, read in %.2f s",
            reuse.store,
            index.answers,
            len(index.segments),
            f" no older than {reuse.max_age:,.0f} s" if reuse.max_age is not None else "",
            time.perf_counter() - started,
        )

    def canary_step(held: list[HeldRequest], tally: TokenTally, fingerprint: str) -> CanaryOutcome | None:
        assert canary is not None
        spent = ledgers.load()
        if spent is not None and spent.fingerprint == fingerprint and canary_only(spent):
            assert spent.canary is not None
            # An earlier attempt of this round, over the same input, sent its canary: never again.
            check_recorded_canary(spent.canary, canary.max_failure_rate)
            return None
        table = price_table(settings.prices)
        sample = TokenTally(min_cacheable=tally.min_cacheable)
        for request in held:
            request.count(sample)
        # One calibration for the canary's budget check and the round's estimate after it: the
        # round is never refused on a figure the canary's check did not see.
        del tally.sample[settings.count_tokens_sample :]
        tally.sample_size = settings.count_tokens_sample
        count_tokens = api.count_tokens if settings.count_tokens_sample > 0 else None
        both = (tally.sample + sample.sample)[: settings.count_tokens_sample]
        tally.calibration = sample.calibration = calibrate(count_tokens, both, log)
        quiet = logging.getLogger(f"{__name__}.canary_budget")
        main, extra = estimate_cost(tally, table, log=quiet), estimate_cost(sample, table, log=quiet)
        if settings.max_cost_usd is not None:
            # Before any spend: the batch, its canary at standard prices and the canary's requests
            # sent again in the batch if unusable must all fit what is left of the budget.
            combined = CostEstimate(**main)  # type: ignore[typeddict-item]
            more = extra["batch_usd"] + extra["standard_usd"]
            combined["batch_usd"] = main["batch_usd"] + more
            if main["expected_batch_usd"] is not None:
                combined["expected_batch_usd"] = main["expected_batch_usd"] + more
            note = f" with its canary of {len(held)} request(s) (up to ${extra['standard_usd']:.4f})"
            check_budget(combined, round_number, settings, 1, 1, canary=note)
        # The intent, before the spend: a re-run that finds it never sends the canary again.
        ledger = Ledger(
            job_dir=str(job), round=round_number, fingerprint=fingerprint, conn_id=identity.conn_id
        )
        ledger.canary = canary_intent(len(held), extra)
        ledgers.save(ledger)
        outcome = run_canary(
            api,
            held,
            round_number=round_number,
            validator=validator,
            include_content=include_content,
            table=table,
            log=log,
        )
        ledger.canary = outcome.record()
        ledgers.save(ledger)
        check_canary(outcome, canary.max_failure_rate)
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
        scope=answer_scope(api.base_url, identity.workspace_id, validator.schema if validator else None),
        check=ReuseCheck(validator, include_content),
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
    include_content: bool = False,
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
    :param validator: the job's output schema, also part of every fingerprint's scope and the
        check every reused answer passes.
    :param include_content: rows answered without a batch (reused, canary) keep content blocks.
    """
    log = log or logging.getLogger(__name__)
    started_at = utcnow()
    folder = JobFolder(job)
    store = LedgerStore(job, round_number, state_store)
    recorded = store.load()
    # A ledger holding only a canary (no chunk recorded) bound nothing yet: the canary step decides
    # whether it was this input's (never sent again) or another's.
    attached = recorded is not None and recorded.binding and not canary_only(recorded)
    # A re-attached round does what its ledger recorded; what the store holds now (often this
    # round's own answers, stored by its gather) is said at debug, so the log does not contradict it.
    routing_log = cast(logging.Logger, _AtDebug(log)) if attached else log
    routing = _routing(
        api,
        job,
        round_number,
        identity,
        settings,
        reuse,
        None if attached else canary,
        validator,
        include_content,
        store,
        routing_log,
    )
    try:
        try:
            prepared = _prepare(requests, job, round_number, settings, defaults, identity, row_label, routing)
        except (BudgetExceededError, CanaryFailedError) as refusal:
            folder.write_refusal(round_number, refusal.record(round_number))
            raise
    finally:
        if routing is not None:
            routing.close()
    diverted = routing is not None and (routing.reused or routing.canary is not None)
    try:
        ledger = store.load()  # the canary step may have recorded one
        spent_canary = None
        if ledger is not None and canary_only(ledger):
            if ledger.fingerprint == prepared.fingerprint:
                spent_canary = ledger.canary
            else:
                archived = store.archive()
                log.info(
                    "round %d: the canary of another input was recorded; archived as %s",
                    round_number,
                    archived,
                )
            ledger = None
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
            folder.install_chunks(
                round_number,
                prepared.staging,
                {c.index: c.shared for c in prepared.chunks},
                prepared.invalid_file,
            )
            ledger = Ledger(
                job_dir=str(job),
                round=round_number,
                fingerprint=prepared.fingerprint,
                conn_id=identity.conn_id,
                chunks=[
                    {"chunk": c.index, "requests": c.requests, "bytes": c.bytes}
                    | ({"shared": list(c.shared)} if c.shared else {})
                    for c in prepared.chunks
                ],
                requests_by_model={model: t.requests for model, t in sorted(prepared.tally.models.items())},
            )
            if routing is not None:
                ledger.reused = routing.reused
                if routing.reused_file is not None:
                    ledger.reused_path = str(folder.reused_path(round_number))
            if routing is not None and routing.canary is not None:
                ledger.canary = routing.canary.record()
            elif spent_canary is not None:
                ledger.canary = spent_canary
                log.warning(
                    "round %d: an earlier attempt sent the canary (%d request(s), $%.4f counted as spent); "
                    "it is not sent again, and as its answers were not kept its requests go in the batch",
                    round_number,
                    spent_canary["requests"],
                    spent_canary["cost"]["batch_usd"],
                )
        elif diverted or ledger.reused or ledger.canary is not None:
            # The chunks were cut around what the store or the canary answered then: they cannot be
            # rebuilt from the input alone, so the recorded ones must be there.
            missing = [
                str(folder.chunk_path(round_number, chunk.index))
                for chunk in chunk_infos(ledger)
                if ledger.batch_id(chunk.index) is None and not folder.has_chunk(round_number, chunk.index)
            ]
            if missing:
                raise FileNotFoundError(
                    f"chunk file(s) {', '.join(missing[:3])} of {job} round {round_number} are missing; "
                    "with reuse_answers or a canary they cannot be rebuilt from the input. Keep job "
                    "folders on shared storage (output_path on s3://, gs://...) so every worker sees them."
                )
        elif not folder.round_manifest_path(round_number).exists():
            # A gathered round's chunk files were removed on purpose (gather.pruning): nothing reads them.
            staged = {c.index: c.shared for c in prepared.chunks}
            folder.restore_chunks(round_number, prepared.staging, staged)
        if ledger.batches:
            log.info(
                "re-attaching to %d recorded batch(es) of %s round %d (%d request(s) were answered from the "
                "answer store when it was submitted)",
                len(ledger.batches),
                job,
                round_number,
                ledger.reused,
            )
    finally:
        remove_tree(prepared.staging)

    invalid_path = str(folder.invalid_input_path(round_number)) if prepared.invalid_file else None
    if prepared.invalid_file:
        log.warning(
            "%d invalid row(s) skipped (skip_invalid=True, or a file gone), recorded in %s",
            prepared.invalid,
            invalid_path,
        )
    chunks = chunk_infos(ledger)
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
        check_budget(ledger.estimate, round_number, spent, len(pending), len(chunks))
        if pending and not ledger.batches:
            check_models(api, prepared.tally.models, price_table(settings.prices).known_models(), log)
    except BeforeSubmitError as refusal:
        folder.write_refusal(round_number, refusal.record(round_number))
        raise
    ledger.invalid, ledger.invalid_path = prepared.invalid, invalid_path
    store.save(ledger)
    manifest = create_round(api, job, ledger, store, identity, settings, log, queued=None)
    if attached:
        manifest["reattached_at"] = started_at
    return manifest
