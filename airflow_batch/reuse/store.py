"""The answer store: answers already paid for, keyed by request fingerprint, on any object storage.

What it holds: succeeded, schema-valid answers (the result row without what belongs to one run:
``custom_id``, ``row``, ``batch_id``, ``round``, ``input``, ``usage``), each with its source
(the batch, job folder and round it came from, when it was written, and the usage it was paid
for). Gather writes the answers of each batch as it lands; the canary writes its own.

Layout (:func:`airflow_batch.layout.answer_segment_paths`): the store is a set of immutable
*segments*, one per writer (a gathered batch, a job's canary), each two files:

- ``{segment}.answers``: one line per answer, ``{fingerprint}\\t{answer JSON}\\t{source JSON}``
  (JSON never holds a raw tab), sorted by fingerprint, so the answers of each of the 256
  *shards* (the fingerprint's first byte) are one contiguous byte range;
- ``{segment}.keys``: a 2,088-byte header (magic, written-at time, answer count, and the byte
  offset of each shard's range in the answers file) and the segment's sorted 8-byte keys (the
  fingerprint's first 64 bits), little-endian. Written last: a segment exists once its keys do.

Why this shape. A submit must decide *while it streams the input*, request by request, whether
a request is sent or reused: the input is not in fingerprint order, and reading it twice would
double the submit's cost. So a lookup needs a membership test over the whole store that fits
in memory whatever the store holds: the keys (8 bytes an answer, 8 MB for a million; merged per
shard into sorted arrays searched with ``bisect`` in C, ~0.5 µs a lookup). The answers
themselves (hundreds of bytes each) never need to be in memory together: the hits are spilled
to local bucket files during the pass and resolved afterwards one shard at a time, reading
only that shard's byte range of the segments that hold one of its keys. Memory is therefore the
keys plus one shard's hits, not the store, and the store's files are written once and never
rewritten, so any number of writers (two DAGs sharing a store) need no lock, and a re-gather of
a batch rewrites its own segment with the same bytes. A 64-bit key collision between two
different requests (one in ~10^8 at a million answers and a million lookups) is caught when
the full fingerprint is compared at resolution and fails the submit before any batch.

``max_age`` is applied per segment: every answer of a segment was written at the same time.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from airflow_batch import layout
from airflow_batch.exceptions import AnswerStoreError
from airflow_batch.storage import as_path, atomic_writer, open_unhooked

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

SHARDS = 256
_MAGIC = b"ABKEYS1\n"
_HEADER = struct.Struct(f"<8sdQ{SHARDS + 1}Q")
#: The usage of a reused row: nothing was paid for it in this run (the original is under reused_from).
ZERO_USAGE = (
    b'{"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,'
    b'"cache_creation_1h_input_tokens":0,"cache_read_input_tokens":0}'
)
_SPILL_BUCKETS = 64  # of hits during the pass: each covers 4 shards
_SPILL_SHIFT = 58  # key >> 58: the bucket of a 64-bit key
_SHARD_SHIFT = 56  # key >> 56: the shard of a 64-bit key
_BUFFER = 1 << 16
_WRITE_BUFFER = 1 << 20


def _keys_array(data: bytes | memoryview) -> array:
    keys = array("Q")
    keys.frombytes(data)
    if sys.byteorder != "little":
        keys.byteswap()
    return keys


def _keys_bytes(keys: array) -> bytes:
    if sys.byteorder == "little":
        return keys.tobytes()
    swapped = array("Q", keys)
    swapped.byteswap()
    return swapped.tobytes()


# ---- writing ---------------------------------------------------------------------------------


class SegmentWriter:
    """Collects a segment's answers in local bucket files, then writes it to the store sorted.

    Memory holds one bucket (1/16 of the segment) while committing, never the whole segment.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-segment-")
        self._files: dict[int, IO[bytes]] = {}
        self.count = 0

    def add(self, fingerprint: bytes, answer: bytes, source: bytes) -> None:
        """Add one answer: its fingerprint (32 hex digits), answer JSON and source JSON."""
        bucket = int(fingerprint[:1], 16)
        handle = self._files.get(bucket)
        if handle is None:
            path = os.path.join(self._dir.name, f"{bucket:x}")
            handle = self._files[bucket] = open(path, "wb", buffering=_BUFFER)  # noqa: SIM115
        handle.write(b"%s\t%s\t%s\n" % (fingerprint, answer, source))
        self.count += 1

    def commit(self, store: ObjectStoragePath, segment: str, written_at: float | None = None) -> int:
        """Write the segment (answers first, keys last) and return how many answers it holds."""
        for handle in self._files.values():
            handle.close()
        answers_path, keys_path = layout.answer_segment_paths(store, segment)
        offsets = [0] * (SHARDS + 1)
        keys = array("Q")
        position = 0
        shard = 0
        buffer = bytearray()  # a storage file's write is costly per call: write megabytes
        with atomic_writer(answers_path) as out:
            for bucket in sorted(self._files):
                with open(os.path.join(self._dir.name, f"{bucket:x}"), "rb") as handle:
                    lines = handle.read().splitlines()
                lines.sort()
                previous = b""
                for line in lines:
                    fingerprint = line[:32]
                    if fingerprint == previous:
                        continue  # the same request twice in one batch: one answer is enough
                    previous = fingerprint
                    key = int(fingerprint[:16], 16)
                    line_shard = key >> _SHARD_SHIFT
                    while shard < line_shard:
                        shard += 1
                        offsets[shard] = position
                    keys.append(key)
                    buffer += line
                    buffer += b"\n"
                    position += len(line) + 1
                    if len(buffer) >= _WRITE_BUFFER:
                        out.write(buffer)
                        buffer.clear()
            out.write(buffer)
        while shard < SHARDS:
            shard += 1
            offsets[shard] = position
        when = written_at if written_at is not None else time.time()
        header = _HEADER.pack(_MAGIC, when, len(keys), *offsets)
        with atomic_writer(keys_path) as out:
            out.write(header)
            out.write(_keys_bytes(keys))
        self.close()
        return len(keys)

    def close(self) -> None:
        """Remove the local bucket files."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._dir.cleanup()


# ---- reading -----------------------------------------------------------------------------------


@dataclass
class Segment:
    """One segment as a lookup sees it: where its answers are, when written, its keys by shard."""

    name: str
    answers: ObjectStoragePath
    written_at: float
    offsets: tuple[int, ...]  # byte offset of each shard's range in the answers file (257)
    keys: array  # sorted 64-bit keys
    bounds: list[int] = field(default_factory=list)  # index in keys of each shard's first key (257)

    def __post_init__(self) -> None:
        self.bounds = [bisect_left(self.keys, shard << _SHARD_SHIFT) for shard in range(SHARDS)]
        self.bounds.append(len(self.keys))

    def shard_keys(self, shard: int) -> array:
        """Return the segment's keys of one shard (sorted)."""
        return self.keys[self.bounds[shard] : self.bounds[shard + 1]]

    def read_shard(self, shard: int) -> bytes:
        """Return the answer lines of one shard (one ranged read)."""
        start, end = self.offsets[shard], self.offsets[shard + 1]
        if start == end:
            return b""
        with open_unhooked(self.answers) as handle:
            handle.seek(start)
            return bytes(handle.read(end - start))


def read_segment(keys_path: ObjectStoragePath) -> Segment:
    """Return the segment whose keys file is ``keys_path``; raise ValueError if it is not one."""
    data = keys_path.read_bytes()
    if len(data) < _HEADER.size or data[:8] != _MAGIC:
        raise ValueError(f"{keys_path} is not an answer store keys file")
    _, written_at, count, *offsets = _HEADER.unpack_from(data)
    keys = _keys_array(memoryview(data)[_HEADER.size :])
    if len(keys) != count:
        raise ValueError(f"{keys_path} holds {len(keys)} keys, its header says {count}")
    name = keys_path.name[: -len(layout.ANSWER_KEYS_SUFFIX)]
    answers = keys_path.parent / f"{name}.answers"
    return Segment(name, answers, written_at, tuple(offsets), keys)


class AnswerIndex:
    """Every key of an answer store (or of its segments young enough), for lookups while streaming.

    :param segments: newest first (an answer found in several segments is taken from the newest).
    """

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.shards: list[array] = []
        for shard in range(SHARDS):
            parts = [keys for segment in segments if len(keys := segment.shard_keys(shard))]
            if not parts:
                self.shards.append(array("Q"))
            elif len(parts) == 1:
                self.shards.append(parts[0])
            else:  # sorted runs: timsort merges them in C
                merged = array("Q")
                for part in parts:
                    merged.extend(part)
                self.shards.append(array("Q", sorted(merged)))

    @property
    def answers(self) -> int:
        """Return how many keys the index holds (an answer in two segments counts twice)."""
        return sum(len(shard) for shard in self.shards)

    def has(self, key: int) -> bool:
        """Return whether some answer has this 64-bit key."""
        keys = self.shards[key >> _SHARD_SHIFT]
        found = bisect_left(keys, key)
        return found != len(keys) and keys[found] == key


def load_index(
    store: ObjectStoragePath | str, *, max_age: float | None = None, now: float | None = None
) -> AnswerIndex:
    """Return the index of a store's segments written at most ``max_age`` seconds before ``now``.

    A store that does not exist yet is empty. A keys file that is not one is skipped.
    """
    folder = layout.answer_segments_dir(as_path(store))
    segments: list[Segment] = []
    if folder.exists():
        oldest = (now if now is not None else time.time()) - max_age if max_age is not None else None
        for path in folder.glob(f"*{layout.ANSWER_KEYS_SUFFIX}"):
            with contextlib.suppress(ValueError):
                segment = read_segment(path)
                if oldest is None or segment.written_at >= oldest:
                    segments.append(segment)
    segments.sort(key=lambda segment: (-segment.written_at, segment.name))
    return AnswerIndex(segments)


# ---- resolving the hits of a pass ------------------------------------------------------------


class HitSpill:
    """The requests a pass found in the index, spilled to local bucket files until resolved.

    Each line is the request's fingerprint followed by what the result row needs of it: its
    inputs line ``{"custom_id", "row"[, "input"]}``.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-hits-")
        self._buffers = [bytearray() for _ in range(_SPILL_BUCKETS)]
        self._spilled: set[int] = set()
        self.count = 0

    def add(self, key: int, fingerprint: bytes, inputs_line: bytes) -> None:
        """Note a hit: its key, fingerprint and inputs line."""
        bucket = key >> _SPILL_SHIFT
        buffer = self._buffers[bucket]
        buffer += fingerprint
        buffer += inputs_line
        buffer += b"\n"
        self.count += 1
        if len(buffer) >= _BUFFER:
            self._spill(bucket)

    def _spill(self, bucket: int) -> None:
        with open(os.path.join(self._dir.name, f"{bucket:02d}"), "ab") as handle:
            handle.write(self._buffers[bucket])
        self._buffers[bucket].clear()
        self._spilled.add(bucket)

    def buckets(self) -> Iterator[tuple[int, dict[bytes, bytes], dict[bytes, list[bytes]]]]:
        """Yield each bucket's number and its hits, one bucket in memory at a time.

        The hits are ``fingerprint -> spill line`` (the inputs line is ``line[32:]``), and
        ``fingerprint -> more spill lines`` for params that several requests of the job ask.
        """
        for bucket, buffer in enumerate(self._buffers):
            if buffer:
                self._spill(bucket)
        for bucket in sorted(self._spilled):
            with open(os.path.join(self._dir.name, f"{bucket:02d}"), "rb") as handle:
                lines = handle.read().split(b"\n")
            lines.pop()  # after the last newline
            wanted = {line[:32]: line for line in lines}
            more: dict[bytes, list[bytes]] = {}
            if len(wanted) < len(lines):
                for line in lines:
                    if wanted[line[:32]] is not line:
                        more.setdefault(line[:32], []).append(line)
            yield bucket, wanted, more

    def close(self) -> None:
        """Remove the local bucket files."""
        self._buffers.clear()
        self._dir.cleanup()


def answered_row(inputs_line: bytes, round_number: int, answer: bytes, usage: bytes, source: bytes) -> bytes:
    """Return the result row of a request answered without a batch of its round (one JSON line).

    The row has the request's ``custom_id``, ``row`` and ``input`` (from its inputs line), the
    answer (``model``, ``stop_reason``, ``text``, ``output``, ``tool_calls``), ``usage``,
    ``batch_id`` null and ``reused_from``: where the answer came from. Spliced from JSON
    fragments, never decoded: a million reused rows cost a million byte joins.
    """
    return b'%s,"batch_id":null,"round":%d,%s,"usage":%s,"reused_from":%s}' % (
        inputs_line[:-1],
        round_number,
        answer[1:-1],
        usage,
        source,
    )


def reused_row(inputs_line: bytes, round_number: int, answer: bytes, source: bytes) -> bytes:
    """Return the result row of a request answered from the store: zero usage (nothing was paid for
    it in this run); its source (batch, job folder, round, when written, the usage it cost then)
    is ``reused_from``."""
    return answered_row(inputs_line, round_number, answer, ZERO_USAGE, source)


def resolve_hits(index: AnswerIndex, hits: HitSpill, out: IO[bytes], round_number: int) -> int:
    """Write the result row of every hit to ``out``; return how many were written.

    One bucket of hits (four shards) is in memory at a time. For each bucket, only the segments
    holding one of its keys are read, and only that bucket's byte range of them (one ranged read).
    A segment's lines are in the order of its keys, so a hit's line is found by its key's position,
    never by scanning. Raises :class:`AnswerStoreError` when a hit's answer cannot be found (a
    segment removed since the index was read, or a key collision): re-running the submit looks
    everything up again.
    """
    written = 0
    buffer = bytearray()  # writes are buffered: a storage file's write is costly per call
    handles: dict[str, IO[bytes]] = {}
    per_bucket = 1 << (_SPILL_SHIFT - _SHARD_SHIFT)  # shards in a bucket
    # reused_row, spliced in place: inputs line + middle + answer body + usage + source + "}"
    middle = b',"batch_id":null,"round":%d,' % round_number
    usage = b',"usage":%s,"reused_from":' % ZERO_USAGE
    try:
        for bucket, wanted, more in hits.buckets():
            pending = {int(fingerprint[:16], 16) for fingerprint in wanted}
            first, last = bucket * per_bucket, (bucket + 1) * per_bucket
            for segment in index.segments:
                start, end = segment.bounds[first], segment.bounds[last]
                keys = segment.keys[start:end]
                common = pending.intersection(keys)
                if not common:
                    continue
                handle = handles.get(segment.name)
                if handle is None:
                    handle = handles[segment.name] = open_unhooked(segment.answers)
                handle.seek(segment.offsets[first])
                lines = bytes(handle.read(segment.offsets[last] - segment.offsets[first])).split(b"\n")
                count = min(len(keys), len(lines))
                for key in common:  # the hot loop of a resolution: splices, no decoding
                    at = bisect_left(keys, key)
                    while at < count and keys[at] == key:
                        line = lines[at]
                        at += 1
                        fingerprint = line[:32]
                        hit = wanted.pop(fingerprint, None)
                        if hit is None:
                            continue  # another request with the same 64-bit key, or answered already
                        tab = line.index(b"\t", 33)
                        answer, source = line[34 : tab - 1], line[tab + 1 :]
                        # one answer serves every request of the job that asks it
                        for spilled in (hit, *more.pop(fingerprint, ())) if more else (hit,):
                            buffer += spilled[32:-1]  # the inputs line without its closing brace
                            buffer += middle
                            buffer += answer
                            buffer += usage
                            buffer += source
                            buffer += b"}\n"
                            written += 1
                pending -= common
                if len(buffer) >= _WRITE_BUFFER:
                    out.write(buffer)
                    buffer.clear()
                if not pending:
                    break
            if wanted:
                example = next(iter(wanted))
                raise AnswerStoreError(
                    f"{len(wanted)} answer(s) the store's index listed could not be read (e.g. fingerprint "
                    f"{example.decode()}): a segment was removed while this submit ran. Nothing was "
                    "submitted; run the task again to look every request up anew."
                )
    finally:
        for handle in handles.values():
            handle.close()
    out.write(buffer)
    return written
