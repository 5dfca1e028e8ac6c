"""Stream a batch's results into per-batch part files, with memory that does not grow.

For each batch: the raw JSONL stream is downloaded through the API seam
(:meth:`airflow_batch.api.BatchesApi.download_results`: auth, base URL, and the one retry
policy) in large chunks, cut at line ends here and turned into rows by
:func:`airflow_batch.rows.gathered.block_rows` (msgspec, a slice of lines at a time), never by
the SDK's per-line pydantic models. Succeeded lines become result rows, the others failure
rows; a request of the batch with no line at all becomes a ``missing`` failure.

Atomicity and re-runs: both part files are written through :func:`storage.atomic_writer`
and a small ``{batch_id}.stats.json`` sidecar is written after both are in place. A batch
counts as gathered only when its sidecar exists, so a gather killed at any point and run
again rewrites the unfinished batches from the start and skips the finished ones: exactly
one row per ``custom_id``. A stream cut mid-way is a transient fault like any other: the
retry policy downloads it again from the start (the results of an ended batch do not change
between downloads) and the part files of the broken attempt are discarded.

With an answer store (``reuse_answers``), the succeeded, schema-valid answers of each batch
are written to it as one segment, keyed by the fingerprints submit recorded, before the
sidecar: a batch is gathered only once its answers are stored. With ``delete_batches`` each
batch is deleted from the API right after its sidecar is written (never before its rows are
landed and counted); the deletion is recorded in the sidecar and the round manifest, and a
re-run finds the sidecar and never asks the API for a deleted batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.exceptions import BatchesApiError
from airflow_batch.folder import JobFolder
from airflow_batch.gather.batch_parts import (
    AnswerSink,
    GatherConfig,
    answer_source_prefix,
    chunk_inputs,
    write_rows,
)
from airflow_batch.gather.retention import find_gone, gone_error, land_gone, log_gone
from airflow_batch.gather.runs import land_batch_runs, round_runs
from airflow_batch.gather.stats import BatchGatherStats
from airflow_batch.gather.strays import sweep_strays
from airflow_batch.manifest import (
    BatchStatus,
    CostFigures,
    RequestCounts,
    RoundManifest,
    Usage,
    sum_usages,
)
from airflow_batch.reuse.store import SegmentWriter
from airflow_batch.rows.block import add_counts
from airflow_batch.rows.failures import DEFAULT_RETRYABLE, RESULT_TYPES
from airflow_batch.rules.costs import PriceTable, model_family, price_table, sum_costs
from airflow_batch.storage import (
    as_path,
    make_durable,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.rules.validator import Validator

log = logging.getLogger(__name__)


def gather_batch(
    api: BatchesApi,
    record: Mapping[str, Any],
    *,
    job: ObjectStoragePath,
    round_number: int,
    config: GatherConfig,
    canceled_by_timeout: bool = False,
    logger: logging.Logger | None = None,
) -> BatchGatherStats:
    """Gather one ended batch (``record``: the manifest's batch record) into its part files; return its stats.

    A batch whose sidecar exists was gathered before: its stored stats are returned and
    nothing is downloaded.
    """
    logger = logger or log
    batch_id = str(record["batch_id"])
    folder = JobFolder(job)
    landed = folder.read_batch_stats(round_number, batch_id)
    if landed is not None:
        logger.info("batch %s of round %d was gathered before; keeping its files", batch_id, round_number)
        if config.delete_batches and landed.deleted_at is None:
            _delete_batch(api, landed, folder, round_number, logger)
        return landed
    results_path = folder.results_part(round_number, batch_id)
    failures_path = folder.failures_part(round_number, batch_id)
    folder.remove_part_leftovers(round_number, batch_id)
    settings = config.block_settings(
        batch_id, round_number, chunk_inputs(job, round_number, record), canceled_by_timeout
    )
    attempts = 0
    written_at = datetime.now(UTC)
    sinks: list[AnswerSink] = []

    def land(chunks: Iterator[bytes]) -> BatchGatherStats:
        nonlocal attempts
        attempts += 1
        for sink in sinks:  # an earlier attempt's answers: its stream was cut
            sink.segment.close()
        sinks.clear()
        if config.answer_store is not None:
            prefix = answer_source_prefix(batch_id, str(job), round_number, written_at.isoformat())
            sinks.append(AnswerSink(SegmentWriter(), prefix))
        with folder.part_writers(round_number, batch_id) as (results_out, failures_out):
            return write_rows(chunks, results_out, failures_out, settings, sinks[0] if sinks else None)

    try:
        stats = api.download_results(batch_id, land)
        if sinks and config.answer_store is not None:
            segment = layout.answer_segment_name(batch_id)
            stats.stored = sinks[0].segment.commit(config.answer_store, segment, job, written_at.timestamp())
    finally:
        for sink in sinks:
            sink.segment.close()
    stats.results_path = str(results_path)
    stats.failures_path = str(failures_path)
    stats.attempts = attempts
    folder.write_batch_stats(round_number, stats)
    land_batch_runs(job, round_number, stats)
    if config.delete_batches:
        _delete_batch(api, stats, folder, round_number, logger)
    return stats


def _delete_batch(
    api: BatchesApi, stats: BatchGatherStats, folder: JobFolder, round_number: int, logger: logging.Logger
) -> None:
    """Delete a landed batch from the API and record when in its sidecar (a batch already gone is fine).

    Its rows are made durable first (fsynced on a local disk): the API's copy is the only other one.
    """
    make_durable(
        [
            as_path(stats.results_path),
            as_path(stats.failures_path),
            folder.batch_stats_path(round_number, stats.batch_id),
        ]
    )
    try:
        api.delete(stats.batch_id)
    except BatchesApiError as exc:
        if exc.status_code != 404:
            raise
        logger.info("batch %s was already deleted from the API", stats.batch_id)
    else:
        logger.info("batch %s deleted from the API: its rows are landed", stats.batch_id)
    stats.deleted_at = datetime.now(UTC).isoformat()
    folder.write_batch_stats(round_number, stats)


def gather_round(
    api: BatchesApi,
    manifest: RoundManifest,
    *,
    config: GatherConfig | None = None,
    max_cost_usd: float | None = None,
    logger: logging.Logger | None = None,
) -> RoundManifest:
    """Gather every batch of a round, write the round manifest, and return it.

    The returned manifest is ``manifest`` plus ``results_paths``, ``failures_paths``,
    ``result_counts``, ``error_types``, ``retryable``, ``usage``, ``usage_by_model``,
    ``cost`` (batch prices, next to the standard API's), ``gathered_at``, and with a budget
    ``budget`` (the job's spend so far against ``max_cost_usd``, checked as each batch lands).
    """
    logger = logger or log
    job = as_path(manifest["job_dir"])
    round_number = manifest["round"]
    canceled = set(manifest.get("canceled_by_timeout") or ())
    all_stats: list[BatchGatherStats] = []
    config = config or GatherConfig()
    table = config.table
    watch = (
        SpendWatch(max_cost_usd, earlier_cost(job, round_number), logger)
        if max_cost_usd is not None
        else None
    )
    strays = sweep_strays(api, job, round_number, config, logger)
    if watch is not None:
        watch.check(round_cost(manifest, table.cost({}), strays)["batch_usd"])
    records = manifest.get("batches", [])
    gone = find_gone(api, job, round_number, records)
    if gone and config.on_results_gone == "fail":
        raise gone_error(job, round_number, records, gone)
    log_gone(logger, round_number, gone)
    for record in records:
        batch_id = record["batch_id"]
        if batch_id in gone:
            stats = land_gone(job, round_number, record, gone[batch_id], config)
        else:
            stats = gather_batch(
                api,
                record,
                job=job,
                round_number=round_number,
                config=config,
                canceled_by_timeout=batch_id in canceled,
                logger=logger,
            )
        logger.info(
            "round %d batch %s: %s, %d retryable",
            round_number,
            batch_id,
            ", ".join(f"{n} {t}" for t, n in sorted(stats.result_counts.items())) or "no results",
            stats.retryable,
        )
        all_stats.append(stats)
        if watch is not None:
            watch.check(round_cost(manifest, table.cost(_usage_by_model(all_stats)), strays)["batch_usd"])
    gathered = store_gathered_manifest(manifest, all_stats, table=table, job=job, watch=watch, strays=strays)
    round_runs(job, gathered)  # the reused and invalid rows' runs: finalize finds every run made
    return gathered


class SpendWatch:
    """Compares what the job has actually spent with its budget as a round's results land."""

    def __init__(self, budget: float, earlier: float, logger: logging.Logger) -> None:
        self.budget = budget
        self.earlier = earlier
        self.spent = earlier
        self.logger = logger

    def check(self, round_cost: float) -> None:
        """Note the round's cost so far; say so loudly the first time the job passes its budget."""
        exceeded_before = self.exceeded
        self.spent = round(self.earlier + round_cost, 6)
        if self.exceeded and not exceeded_before:
            self.logger.warning(
                "BUDGET EXCEEDED: the job has actually spent $%.4f at batch prices, above its budget "
                "max_cost_usd=$%.4f (the estimate counted max_tokens of output or fewer cache hits than "
                "happened). The results are kept; no further round will be submitted over the budget.",
                self.spent,
                self.budget,
            )

    @property
    def exceeded(self) -> bool:
        """Return whether the spend so far is above the budget."""
        return self.spent > self.budget

    def figures(self) -> dict[str, Any]:
        """Return the budget line of the round manifest."""
        return {"max_cost_usd": self.budget, "spent_usd": self.spent, "exceeded": self.exceeded}


def gather_config(
    job: ObjectStoragePath,
    *,
    include_content: bool = False,
    retryable_error_types: Iterable[str] | None = None,
    prices: Mapping[str, Mapping[str, Any]] | None = None,
    delete_batches: str | None = None,
    on_results_gone: str = "fail",
) -> GatherConfig:
    """Return how a job's batches become rows, from the gather's arguments and the job's spec.

    The gather task and the wait's landing (batches landed as they end) build it here, so a batch
    lands the same whichever of them lands it.
    """
    return GatherConfig(
        include_content=include_content,
        retryable_types=(
            frozenset(retryable_error_types) if retryable_error_types is not None else DEFAULT_RETRYABLE
        ),
        validator=job_validator(job),
        table=price_table(prices),
        answer_store=job_answer_store(job),
        delete_batches=delete_batches == "after_gather",
        on_results_gone=on_results_gone,
    )


def job_validator(job: ObjectStoragePath) -> Validator | None:
    """Return the compiled validator of the job's output schema, when the job has one."""
    schema = JobFolder(job).read_spec().get("output_schema")
    if schema is None:
        return None
    from airflow_batch.rules.schema import recorded_validator

    return recorded_validator(schema)


def landed_batches(
    job: ObjectStoragePath, round_number: int, batch_ids: Iterable[str]
) -> dict[str, BatchStatus]:
    """Return the final status of the batches of a round already gathered (their sidecar exists).

    Such a batch ended, and with ``delete_batches`` it may no longer exist on the API: a wait run
    again (a cleared DAG run) takes its status from here instead of asking for it.
    """
    landed: dict[str, BatchStatus] = {}
    folder = JobFolder(job)
    for batch_id in batch_ids:
        stats = folder.read_batch_stats(round_number, batch_id)
        if stats is None:
            continue
        counts = stats.result_counts
        answered = sum(counts.get(kind, 0) for kind in ANSWERED_KINDS)
        landed[batch_id] = BatchStatus(
            processing_status="ended",
            request_counts=RequestCounts(
                processing=0,
                succeeded=answered,
                errored=counts.get("errored", 0) + counts.get("missing", 0),
                canceled=counts.get("canceled", 0),
                expired=counts.get("expired", 0),
            ),
            expires_at=None,
            ended_at=None,
        )
    return landed


#: Result kinds the API counted as ``succeeded`` (an answer came back, usable or not).
ANSWERED_KINDS = ("succeeded", "invalid_output", "paused", "refused", "context_window_exceeded")


def job_answer_store(job: ObjectStoragePath) -> ObjectStoragePath | None:
    """Return the answer store the job writes its answers to (``reuse_answers``), or None."""
    store = JobFolder(job).read_spec().get("answer_store")
    return as_path(store) if store else None


def earlier_cost(job: ObjectStoragePath, round_number: int) -> float:
    """Return what the job's rounds before ``round_number`` cost at batch prices."""
    rounds = JobFolder(job).read_rounds()[:round_number]
    return sum_costs(m["cost"] for m in rounds if "cost" in m)["batch_usd"]


def _usage_by_model(all_stats: Iterable[BatchGatherStats]) -> dict[str, Usage]:
    total = BatchGatherStats(batch_id="", results_path="", failures_path="")
    for stats in all_stats:
        total.add(stats)
    return total.usage_by_model


def round_cost(
    manifest: Mapping[str, Any], batches: CostFigures, strays: Iterable[Mapping[str, Any]] = ()
) -> CostFigures:
    """Return what a round paid: its batches and any stray batches (at batch prices), and its
    canary (at standard prices)."""
    canary = manifest.get("canary") or {}
    extra = [stray["cost"] for stray in strays if stray.get("cost")]
    if canary.get("cost"):
        extra.append(canary["cost"])
    return sum_costs([batches, *extra]) if extra else batches


def unnamed_owner(counts_by_model: Mapping[str, Mapping[str, int]], models: Iterable[str]) -> str:
    """Return the model a failure naming none counts for (``""``: an errored, expired or missing
    result carries none): the round's one model, or ``"unknown"`` among several.

    ``models``: the models the round's requests named (an answer may name the dated id of an alias,
    which is then the one named).
    """
    named = sorted(m for m in counts_by_model if m)
    families = {model_family(m) or m for m in (*named, *models)}
    return (named or sorted(models) or ["unknown"])[0] if len(families) == 1 else "unknown"


def by_named_model(counts_by_model: Mapping[str, Mapping[str, int]], owner: str) -> dict[str, dict[str, int]]:
    """Return per-model counts with those of failures naming no model given to ``owner``."""
    out: dict[str, dict[str, int]] = {}
    for model, counts in sorted(counts_by_model.items()):
        add_counts(out.setdefault(model or owner, {}), counts)
    return out


def store_gathered_manifest(
    manifest: RoundManifest,
    all_stats: list[BatchGatherStats],
    *,
    table: PriceTable,
    job: ObjectStoragePath,
    watch: SpendWatch | None = None,
    strays: list[dict[str, Any]] | None = None,
) -> RoundManifest:
    """Return ``manifest`` with the gathered figures of ``all_stats`` added, and store it.

    ``strays``: the round's batches outside its ledger (:mod:`airflow_batch.gather.strays`):
    listed, and their cost added to the round's.
    """
    total = BatchGatherStats(
        batch_id="",
        results_path="",
        failures_path="",
        result_counts=dict.fromkeys(RESULT_TYPES, 0),
    )
    for stats in all_stats:
        total.add(stats)
    out: RoundManifest = {**manifest, "stage": "gathered"}  # type: ignore[typeddict-item]
    reused_path = manifest.get("reused_path")
    out["results_paths"] = ([reused_path] if reused_path else []) + [s.results_path for s in all_stats]
    out["failures_paths"] = [s.failures_path for s in all_stats]
    out["result_counts"] = total.result_counts
    out["error_types"] = dict(sorted(total.error_types.items()))
    out["retryable"] = total.retryable
    out["usage"] = sum_usages(total.usage_by_model.values())
    out["usage_by_model"] = total.usage_by_model
    owner = unnamed_owner(total.counts_by_model, manifest.get("requests_by_model") or {})
    out["result_counts_by_model"] = by_named_model(total.counts_by_model, owner)
    out["retryable_by_model"] = by_named_model(total.retryable_by_model, owner)
    out["cost"] = round_cost(manifest, table.cost(total.usage_by_model), strays or ())
    if strays:
        out["strays"] = strays
    out["answers_stored"] = sum(s.stored for s in all_stats)
    deleted = {s.batch_id: s.deleted_at for s in all_stats if s.deleted_at is not None}
    if deleted:
        out["deleted_batches"] = deleted
    gone = {s.batch_id: s.results_gone for s in all_stats if s.results_gone is not None}
    if gone:
        out["results_gone"] = gone
    if watch is not None:
        out["budget"] = watch.figures()
    out["gathered_at"] = datetime.now(UTC).isoformat()
    JobFolder(job).write_round_manifest(out)
    return out
