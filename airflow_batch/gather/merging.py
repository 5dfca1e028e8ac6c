"""Merge a job's rounds into one row per request, in input order, with memory that does not grow.

Every result and failure row carries its request's input ``row`` (1-based, from submit). The
rows of every round are first spilled by row range into partition files in a local temporary
folder; each partition is then merged on its own: a success from any round wins, else the
failure of the latest round (a retry round only resubmits failures, so a request succeeds at
most once), and the partition is written in row order. The final files therefore list the
requests in the order of the input, and memory holds one partition (``PARTITION_ROWS`` rows),
whatever the size of the job: the same for 10,000 requests or 10 million.

Rows without a row number (from jobs of older versions) go to a last partition ordered by
``custom_id``. Rows with no usable ``custom_id`` (invalid input) are kept as they are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, BinaryIO

import msgspec

from airflow_batch.memory import paused_gc
from airflow_batch.rows.failures import CANCELED_BY_TIMEOUT

#: Requests merged in memory at a time (~30 MB of rows); a 10 M job spills 200 partition files.
PARTITION_ROWS = 50_000
_RESULT, _FAILURE = b"R", b"F"
_UNNUMBERED = 1 << 62  # partition of rows without a row number: after every numbered one


class _Key(msgspec.Struct, gc=False):
    custom_id: str | None = None  # null: an invalid input row that had no usable custom_id
    row: int | None = None
    round: int = 0


class _FailureKind(msgspec.Struct, gc=False):
    result_type: str = "errored"
    error_type: str | None = None
    retryable: bool = False


#: The request, input row and round of a result or failure line.
key_decoder = msgspec.json.Decoder(_Key)
decode_key = key_decoder.decode
_decode_failure = msgspec.json.Decoder(_FailureKind).decode


@dataclass
class MergeCounts:
    """What the merged files hold."""

    succeeded: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    failures_by_error_type: dict[str, int] = field(default_factory=dict)
    retryable_left: int = 0
    #: Requests whose final row is a cancel this job did not make (not its wait deadline's).
    canceled_outside: int = 0

    @property
    def failed(self) -> int:
        """Return the number of failure rows."""
        return sum(self.failures_by_type.values())


class _Spill:
    """Partition files of tagged rows in a temporary folder (buffered, a handle per partition)."""

    def __init__(self, partition_rows: int) -> None:
        self.partition_rows = partition_rows
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-merge-")
        self._files: dict[int, BinaryIO] = {}

    def add(self, kind: bytes, line: bytes, row: int | None) -> None:
        partition = (row - 1) // self.partition_rows if row is not None else _UNNUMBERED
        handle = self._files.get(partition)
        if handle is None:
            path = os.path.join(self._dir.name, f"{partition}")
            handle = self._files[partition] = open(path, "wb", buffering=1 << 16)  # noqa: SIM115
        handle.write(kind + line + b"\n")

    def partitions(self) -> Iterable[tuple[int, bytes]]:
        """Yield each partition's contents, lowest rows first (one partition in memory at a time)."""
        for handle in self._files.values():
            handle.close()
        for partition in sorted(self._files):
            with open(os.path.join(self._dir.name, f"{partition}"), "rb") as handle:
                data = handle.read()
            yield partition, data

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._dir.cleanup()


def merge_rows(
    result_lines: Iterable[bytes],
    failure_lines: Iterable[bytes],
    results_out: IO[bytes],
    failures_out: IO[bytes],
    *,
    partition_rows: int | None = None,
) -> MergeCounts:
    """Write one row per request to ``results_out`` / ``failures_out`` in input order; return the counts.

    ``result_lines`` and ``failure_lines`` are the JSONL rows of every round, in any order.
    """
    spill = _Spill(partition_rows or PARTITION_ROWS)
    try:
        for kind, lines in ((_RESULT, result_lines), (_FAILURE, failure_lines)):
            for line in lines:
                spill.add(kind, line, decode_key(line).row)
        counts = MergeCounts()
        for partition, data in spill.partitions():
            with paused_gc():  # a partition's dicts of rows hold no cycles
                _merge_partition(data, partition == _UNNUMBERED, results_out, failures_out, counts)
        return counts
    finally:
        spill.close()


def _merge_partition(
    data: bytes, unnumbered: bool, results_out: IO[bytes], failures_out: IO[bytes], counts: MergeCounts
) -> None:
    results: dict[str, tuple[int, bytes]] = {}
    failures: dict[str, tuple[int, int, bytes]] = {}
    anonymous: list[tuple[int, bytes]] = []
    for tagged in data.splitlines():
        kind, line = tagged[:1], tagged[1:]
        key = decode_key(line)
        order = key.row if key.row is not None else 0
        if kind == _RESULT:
            results.setdefault(key.custom_id or "", (order, line))
        elif not key.custom_id:
            anonymous.append((order, line))
        else:
            held = failures.get(key.custom_id)
            if held is None or key.round > held[1]:
                failures[key.custom_id] = (order, key.round, line)
    chosen_failures = [(order, cid, line) for cid, (order, _, line) in failures.items() if cid not in results]
    chosen_failures += [(order, "", line) for order, line in anonymous]
    if unnumbered:
        ordered_results = sorted((cid, line) for cid, (_, line) in results.items())
        result_lines = [line for _, line in ordered_results]
        chosen_failures.sort(key=lambda item: item[1])
    else:
        result_lines = [line for _, line in sorted(results.values(), key=lambda item: item[0])]
        chosen_failures.sort(key=lambda item: item[0])
    for line in result_lines:
        results_out.write(line + b"\n")
    counts.succeeded += len(result_lines)
    for _, _, line in chosen_failures:
        failures_out.write(line + b"\n")
        count_failure(line, counts)


def count_failure(line: bytes, counts: MergeCounts) -> None:
    """Add a final failure row to the counts: by result type, by error type, retryable, canceled outside."""
    failure = _decode_failure(line)
    counts.failures_by_type[failure.result_type] = counts.failures_by_type.get(failure.result_type, 0) + 1
    if failure.error_type is not None:
        by_error = counts.failures_by_error_type
        by_error[failure.error_type] = by_error.get(failure.error_type, 0) + 1
    counts.retryable_left += failure.retryable
    if failure.result_type == "canceled" and failure.error_type != CANCELED_BY_TIMEOUT:
        counts.canceled_outside += 1
