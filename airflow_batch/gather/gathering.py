"""Stream a batch's results into per-batch part files, with memory that does not grow.

For each batch: the raw JSONL stream is downloaded through the API seam
(:meth:`airflow_batch.api.BatchesApi.download_results`: auth, base URL, and the one retry
policy) in large chunks, cut at line ends here and turned into rows by
:func:`airflow_batch.gather.rows.block_rows` (msgspec, a slice of lines at a time), never by
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

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import msgspec

from airflow_batch import layout
from airflow_batch.costs import PriceTable, model_family, price_table, sum_costs
from airflow_batch.exceptions import BatchesApiError
from airflow_batch.gather.retention import find_gone, gone_error, land_gone, log_gone
from airflow_batch.gather.rows import (
    DEFAULT_RETRYABLE,
    RESULT_TYPES,
    BlockRows,
    BlockSettings,
    InputMeta,
    ResultRow,
    block_rows,
    custom_id_decoder,
    missing_rows,
    row_encoder,
    stored_answer,
)
from airflow_batch.manifest import (
    BatchStatus,
    CostFigures,
    RequestCounts,
    RoundManifest,
    Usage,
    sum_usages,
)
from airflow_batch.reuse.store import SegmentWriter
from airflow_batch.storage import (
    as_path,
    atomic_writer,
    iter_jsonl_blocks,
    line_blocks,
    make_durable,
    read_json,
    write_json,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.schema import Validator

log = logging.getLogger(__name__)

#: Bytes of a results stream turned into rows at a time (the reads of its body gathered).
RESULT_BLOCK_BYTES = 1 << 20


@dataclass
class BatchGatherStats:
    """What gathering one batch produced; also stored as the batch's sidecar JSON."""

    batch_id: str
    results_path: str
    failures_path: str
    result_counts: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    retryable: int = 0
    usage_by_model: dict[str, Usage] = field(default_factory=dict)
    #: Per model (``""``: a failure naming none): rows by result type, retryable failures by type.
    counts_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    retryable_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    attempts: int = 0
    #: Answers written to the answer store (0 without one).
    stored: int = 0
    #: When the batch was deleted from the API after landing (``delete_batches``), else None.
    deleted_at: str | None = None
    #: Why the API no longer held the batch's results when it was gathered (archived, deleted),
    #: else None: its requests were landed as ``missing`` failures.
    results_gone: str | None = None

    def add(self, rows: BlockRows | BatchGatherStats) -> None:
        """Add the counts and usage of a block's rows, or of another batch."""
        for kind, count in rows.result_counts.items():
            self.result_counts[kind] = self.result_counts.get(kind, 0) + count
        for error_type, count in rows.error_types.items():
            self.error_types[error_type] = self.error_types.get(error_type, 0) + count
        self.retryable += rows.retryable
        for model, usage in rows.usage_by_model.items():
            self.usage_by_model[model] = sum_usages([self.usage_by_model.get(model, {}), usage])
        for mine, theirs in (
            (self.counts_by_model, rows.counts_by_model),
            (self.retryable_by_model, rows.retryable_by_model),
        ):
            for model, by_type in theirs.items():
                _add_counts(mine.setdefault(model, {}), by_type)

    def to_json(self) -> dict[str, Any]:
        """Return the stats as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchGatherStats:
        """Return stats read back from a sidecar."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _add_counts(total: dict[str, int], counts: Mapping[str, int]) -> None:
    for kind, count in counts.items():
        total[kind] = total.get(kind, 0) + count


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
        _add_counts(out.setdefault(model or owner, {}), counts)
    return out


_input_line_decoder = msgspec.json.Decoder(InputMeta)


def chunk_inputs(
    job: ObjectStoragePath, round_number: int, record: Mapping[str, Any]
) -> dict[str, InputMeta]:
    """Return ``custom_id -> (input row, passthrough fields, fingerprint)`` of one submitted chunk.

    Read from the chunk's inputs twin; a chunk submitted without one (an older version) gives
    its ids from the chunk file, without row numbers.
    """
    inputs = layout.chunk_inputs_path(job, round_number, int(record["chunk"]))
    if inputs.exists():
        return {meta.custom_id: meta for meta in _input_line_decoder.decode_lines(inputs.read_bytes())}
    return {custom_id: InputMeta(custom_id) for custom_id in chunk_ids(record["chunk_path"])}


def chunk_ids(path: ObjectStoragePath | str) -> set[str]:
    """Return the ``custom_id`` of every request in a prepared chunk file, reading it streaming."""
    ids: set[str] = set()
    for block in iter_jsonl_blocks(as_path(path)):
        ids.update(row.custom_id for row in custom_id_decoder.decode_lines(block))
    return ids


@dataclass(frozen=True)
class GatherConfig:
    """How every batch of a job becomes rows: content kept or not, what is retried, the schema, prices."""

    include_content: bool = False
    retryable_types: frozenset[str] = DEFAULT_RETRYABLE
    validator: Validator | None = None
    table: PriceTable = field(default_factory=price_table)
    #: Where succeeded answers are stored for later runs (the job's ``answer_store``), or None.
    answer_store: ObjectStoragePath | None = None
    #: Delete each batch from the API once its rows are landed and counted.
    delete_batches: bool = False
    #: A batch whose results the API no longer holds: ``"fail"`` the gather naming it, or
    #: ``"retry"``: land its requests as retryable failures (see :mod:`airflow_batch.gather.retention`).
    on_results_gone: str = "fail"

    def block_settings(
        self,
        batch_id: str,
        round_number: int,
        inputs: Mapping[str, InputMeta],
        canceled_by_timeout: bool = False,
    ) -> BlockSettings:
        """Return the settings of one batch's blocks."""
        return BlockSettings(
            batch_id,
            round_number,
            canceled_by_timeout,
            self.include_content,
            self.retryable_types,
            inputs,
            self.validator,
            self._long_prompt_above,
            self.table.data_residency_geos,
            keep_rows=self.answer_store is not None,
        )

    def _long_prompt_above(self, model: str) -> int | None:
        price = self.table.price_for(model)
        return price.long_prompt_above if price is not None else None


@dataclass
class AnswerSink:
    """Where a batch's answers go in the answer store: a segment, and the source each answer names."""

    segment: SegmentWriter
    source_prefix: bytes  # the source JSON up to its usage: {"batch_id":..,"job_dir":..,...,"usage":

    def add(self, rows: Iterable[ResultRow], inputs: Mapping[str, InputMeta]) -> None:
        """Store the answers of result rows whose request has a fingerprint."""
        prefix = self.source_prefix
        for row in rows:
            fingerprint = inputs.get(row.custom_id, _NO_FINGERPRINT).fingerprint
            if fingerprint is not None:
                source = prefix + row_encoder.encode(row.usage) + b"}"
                self.segment.add(fingerprint.encode(), stored_answer(row), source)


_NO_FINGERPRINT = InputMeta()


def answer_source_prefix(batch_id: str | None, job: str, round_number: int, written_at: str) -> bytes:
    """Return the start of an answer's source JSON: batch, job folder, round and time, up to its usage."""
    encoded = row_encoder.encode(
        {"batch_id": batch_id, "job_dir": job, "round": round_number, "written_at": written_at}
    )
    return encoded[:-1] + b',"usage":'


def write_rows(
    chunks: Iterable[bytes],
    results_out: IO[bytes],
    failures_out: IO[bytes],
    settings: BlockSettings,
    answers: AnswerSink | None = None,
) -> BatchGatherStats:
    """Turn a results stream into result and failure rows; return the batch's counts and usage.

    The batch's requests are ``settings.inputs``: those with no line become ``missing``
    failures; a repeated ``custom_id`` keeps its first line only. With ``answers``, the
    result rows (succeeded and schema-valid) are also added to the answer store's segment.
    """
    stats = BatchGatherStats(batch_id=settings.batch_id, results_path="", failures_path="")
    seen: set[str] = set()
    for block in line_blocks(chunks, RESULT_BLOCK_BYTES):
        rows = block_rows(block, settings, seen)
        stats.add(rows)
        results_out.write(rows.results)
        failures_out.write(rows.failures)
        if answers is not None:
            answers.add(rows.result_rows, settings.inputs)
    missing_ids = settings.inputs.keys() - seen
    if missing_ids:
        missing = missing_rows(sorted(missing_ids), settings)
        stats.add(missing)
        failures_out.write(missing.failures)
    return stats


def _remove_leftovers(path: ObjectStoragePath) -> None:
    """Delete temporary files an interrupted write of ``path`` left behind."""
    if not path.parent.exists():
        return
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(Exception):
            leftover.unlink()


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
    sidecar = layout.gather_stats_path(job, round_number, batch_id)
    if sidecar.exists():
        logger.info("batch %s of round %d was gathered before; keeping its files", batch_id, round_number)
        stats = BatchGatherStats.from_json(read_json(sidecar))
        if config.delete_batches and stats.deleted_at is None:
            _delete_batch(api, stats, sidecar, logger)
        return stats
    results_path = layout.results_part(job, round_number, batch_id)
    failures_path = layout.failures_part(job, round_number, batch_id)
    _remove_leftovers(results_path)
    _remove_leftovers(failures_path)
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
        with atomic_writer(results_path) as results_out, atomic_writer(failures_path) as failures_out:
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
    write_json(sidecar, stats.to_json())
    if config.delete_batches:
        _delete_batch(api, stats, sidecar, logger)
    return stats


def _delete_batch(
    api: BatchesApi, stats: BatchGatherStats, sidecar: ObjectStoragePath, logger: logging.Logger
) -> None:
    """Delete a landed batch from the API and record when in its sidecar (a batch already gone is fine).

    Its rows are made durable first (fsynced on a local disk): the API's copy is the only other one.
    """
    make_durable([as_path(stats.results_path), as_path(stats.failures_path), sidecar])
    try:
        api.delete(stats.batch_id)
    except BatchesApiError as exc:
        if exc.status_code != 404:
            raise
        logger.info("batch %s was already deleted from the API", stats.batch_id)
    else:
        logger.info("batch %s deleted from the API: its rows are landed", stats.batch_id)
    stats.deleted_at = datetime.now(UTC).isoformat()
    write_json(sidecar, stats.to_json())


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
    from airflow_batch.gather.strays import sweep_strays

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
    return round_manifest(manifest, all_stats, table=table, job=job, watch=watch, strays=strays)


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
    schema = read_spec(job).get("output_schema")
    if schema is None:
        return None
    from airflow_batch.schema import recorded_validator

    return recorded_validator(schema)


def landed_batches(
    job: ObjectStoragePath, round_number: int, batch_ids: Iterable[str]
) -> dict[str, BatchStatus]:
    """Return the final status of the batches of a round already gathered (their sidecar exists).

    Such a batch ended, and with ``delete_batches`` it may no longer exist on the API: a wait run
    again (a cleared DAG run) takes its status from here instead of asking for it.
    """
    landed: dict[str, BatchStatus] = {}
    for batch_id in batch_ids:
        sidecar = layout.gather_stats_path(job, round_number, batch_id)
        if not sidecar.exists():
            continue
        counts = BatchGatherStats.from_json(read_json(sidecar)).result_counts
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
    store = read_spec(job).get("answer_store")
    return as_path(store) if store else None


def read_spec(job: ObjectStoragePath) -> dict[str, Any]:
    """Return the job's spec (output schema, passthrough fields); empty for a job without one."""
    path = layout.job_spec_path(job)
    return read_json(path) if path.exists() else {}


def earlier_cost(job: ObjectStoragePath, round_number: int) -> float:
    """Return what the job's rounds before ``round_number`` cost at batch prices."""
    from airflow_batch.gather.finalizing import read_rounds

    rounds = read_rounds(job)[:round_number]
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


def round_manifest(
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
    write_json(layout.round_manifest_path(job, manifest["round"]), out)
    return out
