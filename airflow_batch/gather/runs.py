"""Sorted runs: each landed file's rows in input order, indexed once, so finalize only copies bytes.

A *run* is one source file of a round (a batch's results or failures part, the round's reused
answers, its invalid input rows) with its lines in input-row order and an index of each line's
row and byte offset. It is made when the file lands (:func:`land_run`, called as each batch is
gathered, by the wait's landing or the gather), not at the end of the job: a file already in row
order (the common case: a batch's results come back in request order) is indexed where it is;
another is first sorted into a copy (:func:`airflow_batch.gather.merging.merge_rows`, bounded
memory).

Finalize then merges the runs of every round (:func:`merge_runs`): a heap over the runs' next
rows, each step copying the longest stretch of lines of one run that no other run interleaves
(one byte range), and at a row held by several runs keeping the one row the job reports (a
success from the first round that had one, else the latest round's failure). No result line is
decoded; failure lines are decoded to count them. A round-0 run of a batch is a contiguous
stretch of the input, so a job without retries is a concatenation of its batches' runs.

What survives a crash: a run's marker (``{name}.run.json``) is written last, after its index
and sorted copy, and records the size of the file it was made from. A run without a marker, or
whose file has another size than recorded, is made again from its file (its part files are the
landing's own record: each batch is landed once, see :mod:`airflow_batch.gather.gathering`), so
a landing killed at any point, run again or cleared lands every row exactly once. A file with a
row without a row number (a job of an older version) gives no run: finalize merges that job the
old way (:func:`airflow_batch.gather.merging.merge_rows`).
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

from airflow_batch.folder import JobFolder
from airflow_batch.gather.merging import MergeCounts, count_failure, key_decoder, merge_rows
from airflow_batch.storage import (
    as_path,
    atomic_writer,
    iter_jsonl_blocks,
    iter_jsonl_lines,
    open_unhooked,
    read_json,
    write_json,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.gather.stats import BatchGatherStats
    from airflow_batch.manifest import RoundManifest

log = logging.getLogger(__name__)

Kind = Literal["results", "failures"]
#: Bytes copied from a run to the merged file at a time.
COPY_BYTES = 8 << 20
_NO_ROW = -1
_decode_keys = key_decoder.decode_lines


@dataclass
class Run:
    """One source file's lines in row order: where they are, their rows and byte offsets (lazily read)."""

    kind: Kind
    round: int
    path: str
    index_path: str
    lines: int
    first_row: int
    rows: array[int] = field(default_factory=lambda: array("q"))
    offsets: array[int] = field(default_factory=lambda: array("q"))  # lines + 1: the last is the end
    position: int = 0
    _handle: IO[bytes] | None = None

    @property
    def rank(self) -> tuple[int, int]:
        """Return which of several rows of one request is kept: a success (the first round's) over
        any failure, else the latest round's failure."""
        return (1, -self.round) if self.kind == "results" else (0, self.round)

    def open(self) -> None:
        """Read the index and open the file (once, when the merge first reaches the run)."""
        if self._handle is not None:
            return
        data = as_path(self.index_path).read_bytes()
        self.rows.frombytes(data[: 8 * self.lines])
        self.offsets.frombytes(data[8 * self.lines :])
        self._handle = open_unhooked(as_path(self.path))  # many ranged reads: no per-call lineage hook

    @property
    def row(self) -> int:
        """Return the row of the next line (the first row before the index is read)."""
        return self.rows[self.position] if self._handle is not None else self.first_row

    def copy(self, count: int, out: _Gathered, counts: MergeCounts) -> None:
        """Copy the next ``count`` lines to ``out`` and count them."""
        assert self._handle is not None
        end = self.position + count
        while self.position < end:
            start = self.offsets[self.position]
            stop = min(end, max(self.position + 1, bisect_right(self.offsets, start + COPY_BYTES) - 1))
            self._handle.seek(start)
            data = self._handle.read(self.offsets[stop] - start)
            out.write(data)
            if self.kind == "results":
                counts.succeeded += stop - self.position
            else:
                for line in data.splitlines():
                    count_failure(line, counts)
            self.position = stop
        self._release()

    def skip(self) -> None:
        """Leave out the next line (another run's row for the same request wins)."""
        self.position += 1
        self._release()

    @property
    def done(self) -> bool:
        """Return whether every line was copied or skipped."""
        return self._handle is not None and self.position >= self.lines

    def _release(self) -> None:
        if self.done and self._handle is not None:
            self._handle.close()
            self.rows, self.offsets = array("q"), array("q")


def land_run(job: ObjectStoragePath, round_number: int, source: ObjectStoragePath, kind: Kind) -> Run | None:
    """Return the run of a landed file, making it if it is not made yet; None when a row has no row number.

    Idempotent: a run whose marker records the file's current size is returned as it is.
    """
    marker = JobFolder(job).run_marker_path(round_number, source)
    size = source.stat().st_size if source.exists() else 0
    if marker.exists():
        made = read_json(marker)
        if made.get("source_size") == size:
            return _run(kind, round_number, made)
    made = _make_run(job, round_number, source, kind, size)
    write_json(marker, made)
    return _run(kind, round_number, made)


def land_batch_runs(job: ObjectStoragePath, round_number: int, stats: BatchGatherStats) -> None:
    """Make the runs of a landed batch's two part files (right after its sidecar)."""
    land_run(job, round_number, as_path(stats.results_path), "results")
    land_run(job, round_number, as_path(stats.failures_path), "failures")


def _run(kind: Kind, round_number: int, made: dict[str, Any]) -> Run | None:
    if not made["numbered"]:
        return None
    return Run(kind, round_number, made["path"], made["index_path"], made["lines"], made["first_row"])


def _make_run(
    job: ObjectStoragePath, round_number: int, source: ObjectStoragePath, kind: Kind, size: int
) -> dict[str, Any]:
    """Index ``source``, sorted into a copy first if its rows are out of order; return the marker."""
    index_path = JobFolder(job).run_index_path(round_number, source)
    made: dict[str, Any] = {"source": str(source), "source_size": size, "index_path": str(index_path)}
    rows, offsets, ordered = _index(source) if size else (array("q"), array("q", [0]), True)
    path = source
    if rows and rows[0] == _NO_ROW:
        return {**made, "numbered": False}
    if not ordered:
        path = JobFolder(job).sorted_run_path(round_number, source)
        with atomic_writer(path) as sorted_out:
            lines, none = iter_jsonl_lines(source), io.BytesIO()  # a run holds one kind of row
            if kind == "results":
                merge_rows(lines, (), sorted_out, none)
            else:
                merge_rows((), lines, none, sorted_out)
        rows, offsets, ordered = _index(path)
    with atomic_writer(index_path) as out:
        out.write(rows.tobytes() + offsets.tobytes())
    return {
        **made,
        "numbered": True,
        "path": str(path),
        "lines": len(rows),
        "first_row": rows[0] if rows else 0,
        "last_row": rows[-1] if rows else 0,
    }


def _index(path: ObjectStoragePath) -> tuple[array[int], array[int], bool]:
    """Return each line's row and start offset (and the end), and whether the rows ascend strictly.

    A line without a row number gives ``rows == [-1]``; a file without a final newline or with
    blank lines counts as out of order (its sorted copy has neither).
    """
    rows, offsets = array("q"), array("q", [0])
    ordered = True
    for block in iter_jsonl_blocks(path):
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        else:
            ordered = False
        if not all(lines):
            ordered = False
            lines = [line for line in lines if line]
            block = b"\n".join(lines)
        if not lines:
            continue
        keys = _decode_keys(block)
        block_rows = [key.row for key in keys if key.row is not None]
        if len(block_rows) < len(keys):
            return array("q", [_NO_ROW]), array("q"), False
        ordered = ordered and (not rows or rows[-1] < block_rows[0]) and _ascending(block_rows)
        rows.extend(block_rows)
        offsets.extend(itertools.accumulate([len(line) + 1 for line in lines], initial=offsets.pop()))
    return rows, offsets, ordered


def _ascending(rows: list[int]) -> bool:
    return all(low < high for low, high in itertools.pairwise(rows))


def round_runs(job: ObjectStoragePath, manifest: RoundManifest) -> list[Run] | None:
    """Return the runs of every file of a gathered round (made now where the landing made none), or
    None when one of them has rows without a row number."""
    round_number = manifest["round"]
    sources: list[tuple[str, Kind]] = [(path, "results") for path in manifest.get("results_paths", [])]
    sources += [(path, "failures") for path in manifest.get("failures_paths", [])]
    invalid = manifest.get("invalid_path")
    if manifest.get("invalid") and invalid and as_path(invalid).exists():
        sources.append((invalid, "failures"))
    runs: list[Run] = []
    for path, kind in sources:
        run = land_run(job, round_number, as_path(path), kind)
        if run is None:
            return None
        if run.lines:
            runs.append(run)
    return runs


def merge_runs(runs: Iterable[Run], results_out: IO[bytes], failures_out: IO[bytes]) -> MergeCounts:
    """Write one row per request to ``results_out`` / ``failures_out`` in input order; return the counts.

    Memory holds the indexes of the runs the merge is in (round 0's batches follow each other, so
    about one at a time, plus the retry rounds' runs), not the job.
    """
    counts = MergeCounts()
    outs = {"results": _Gathered(results_out), "failures": _Gathered(failures_out)}
    heap = [(run.first_row, number, run) for number, run in enumerate(runs)]
    heapq.heapify(heap)
    while heap:
        row, number, run = heapq.heappop(heap)
        run.open()
        at_row = [(number, run)]
        while heap and heap[0][0] == row:
            other_number, other = heapq.heappop(heap)[1:]
            other.open()
            at_row.append((other_number, other))
        if len(at_row) == 1:
            following = heap[0][0] if heap else None
            stop = run.lines if following is None else bisect_left(run.rows, following, run.position)
            run.copy(stop - run.position, outs[run.kind], counts)
        else:
            kept = max(at_row, key=lambda item: item[1].rank)[1]
            for _, held in at_row:
                held.copy(1, outs[held.kind], counts) if held is kept else held.skip()
        for held_number, held in at_row:
            if not held.done:
                heapq.heappush(heap, (held.row, held_number, held))
    for out in outs.values():
        out.flush()
    return counts


class _Gathered:
    """Writes to ``out`` in blocks of ``COPY_BYTES``: a retry round's rows make many small copies, and
    a job file's every write call costs (its lineage hook, a request on an object store)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.pending: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.pending.append(data)
        self.size += len(data)
        if self.size >= COPY_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.out.write(b"".join(self.pending))
        self.pending.clear()
        self.size = 0


def job_runs(job: ObjectStoragePath, rounds: Iterable[RoundManifest]) -> list[Run] | None:
    """Return the runs of every round of a job, or None when the job must be merged the old way."""
    runs: list[Run] = []
    for manifest in rounds:
        found = round_runs(job, manifest)
        if found is None:
            return None
        runs += found
    return runs
