"""One batch's results landed as rows: the part files' writer, the batch's stats, its requests' inputs.

The pieces every way of landing a batch shares (a gather of its results stream, a batch whose
results are gone, a stray batch read for its cost): :func:`write_rows` turns a results stream
into result and failure rows, :class:`BatchGatherStats` is what it produced (the batch's
sidecar), :func:`chunk_inputs` what submit recorded of the batch's requests, and
:class:`GatherConfig` how every batch of a job becomes rows. The orchestration (download, retry,
sidecars, deletion) is :mod:`airflow_batch.gather.gathering`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import msgspec

from airflow_batch.folder import JobFolder
from airflow_batch.gather.stats import BatchGatherStats
from airflow_batch.reuse.store import SegmentWriter
from airflow_batch.rows.block import BlockSettings, InputMeta
from airflow_batch.rows.contract import ResultRow, row_encoder, stored_answer
from airflow_batch.rows.failure_rows import missing_rows
from airflow_batch.rows.failures import DEFAULT_RETRYABLE
from airflow_batch.rows.gathered import block_rows
from airflow_batch.rows.lines import custom_id_decoder
from airflow_batch.rules.costs import PriceTable, price_table
from airflow_batch.storage import as_path, iter_jsonl_blocks, line_blocks

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.rules.validator import Validator

#: Bytes of a results stream turned into rows at a time (the reads of its body gathered).
RESULT_BLOCK_BYTES = 1 << 20


_input_line_decoder = msgspec.json.Decoder(InputMeta)


def chunk_inputs(
    job: ObjectStoragePath, round_number: int, record: Mapping[str, Any]
) -> dict[str, InputMeta]:
    """Return ``custom_id -> (input row, passthrough fields, fingerprint)`` of one submitted chunk.

    Read from the chunk's inputs twin; a chunk submitted without one (an older version) gives
    its ids from the chunk file, without row numbers.
    """
    inputs = JobFolder(job).read_chunk_inputs(round_number, int(record["chunk"]))
    if inputs is not None:
        return {meta.custom_id: meta for meta in _input_line_decoder.decode_lines(inputs)}
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
