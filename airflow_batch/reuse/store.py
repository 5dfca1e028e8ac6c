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
- ``{segment}.keys``: a header (magic, written-at time, answer count, the byte offset of each
  shard's range in the answers file, the job folder of the writer), a 16-byte BLAKE2b checksum of
  each shard's range of the answers file, the segment's sorted 8-byte keys (the fingerprint's
  first 64 bits, little-endian), and the SHA-256 of all of that: the segment's *digest*. Written
  after the answers: a segment exists once its keys do.

The writer then records the digest in its own job folder (a *receipt*,
:meth:`airflow_batch.folder.JobFolder.write_answer_receipt`). What a reader trusts, since a store is shared
and read back as if a stranger wrote it: a keys file whose digest does not match, a shard whose
checksum does not, a segment whose answers file is missing, and a segment that the job it names
does not vouch for (no receipt, or another digest: a forged or replaced segment) are skipped and
named in a warning; the requests they would have answered are sent instead. Every answer used is
judged again as gather judges a fresh one (:class:`airflow_batch.gather.rows.ReuseCheck`). So
nothing in a store can fail a job or enter its results unchecked; the worst a damaged store
costs is paying again. (The limit: a writer able to forge both a segment and a job folder it
names is trusted; keep the store and the job folders writable by the deployment only.)

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
a batch rewrites its own segment. A 64-bit key collision between two different requests (one
in ~10^8 at a million answers and a million lookups) is caught when the full fingerprint is
compared at resolution: the request is sent.

``max_age`` is applied per segment: every answer of a segment was written at the same time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
import tempfile
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from airflow_batch import layout
from airflow_batch.exceptions import AnswerStoreError
from airflow_batch.folder import JobFolder
from airflow_batch.reuse.fingerprint import FINGERPRINT_CHARS
from airflow_batch.storage import as_path, atomic_writer, open_unhooked

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

SHARDS = 256
_MAGIC = b"ABKEYS2\n"
_HEADER = struct.Struct(f"<8sdQ{SHARDS + 1}QH")  # ..., offsets, length of the writer's job folder
_SHARD_DIGEST = 16  # bytes of a shard's BLAKE2b checksum
_DIGEST = 32  # bytes of the keys file's SHA-256 trailer
#: How far in the future a segment may say it was written (clock skew) before it is refused.
FUTURE_SKEW_S = 3_600.0
log = logging.getLogger(__name__)
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

    def commit(
        self,
        store: ObjectStoragePath,
        segment: str,
        job: ObjectStoragePath | str,
        written_at: float | None = None,
    ) -> int:
        """Write the segment (answers, then keys, then the job's receipt); return how many answers it holds.

        ``job`` is the folder of the job writing it: it keeps the receipt that vouches for the segment.
        """
        for handle in self._files.values():
            handle.close()
        answers_path, keys_path = layout.answer_segment_paths(store, segment)
        offsets = [0] * (SHARDS + 1)
        checksums = [hashlib.blake2b(digest_size=_SHARD_DIGEST) for _ in range(SHARDS)]
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
                    checksums[shard].update(line)
                    checksums[shard].update(b"\n")
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
        writer = str(job).encode()
        data = bytearray(_HEADER.pack(_MAGIC, when, len(keys), *offsets, len(writer)))
        data += writer
        for checksum in checksums:
            data += checksum.digest()
        data += _keys_bytes(keys)
        digest = hashlib.sha256(data).digest()
        with atomic_writer(keys_path) as out:
            out.write(data)
            out.write(digest)
        JobFolder(job).write_answer_receipt(segment, digest.hex())
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
    """One segment as a lookup sees it: where its answers are, when and by whom written, its keys."""

    name: str
    answers: ObjectStoragePath
    written_at: float
    offsets: tuple[int, ...]  # byte offset of each shard's range in the answers file (257)
    keys: array  # sorted 64-bit keys
    job: str = ""  # the folder of the job that wrote it (keeps its receipt)
    checksums: bytes = b""  # each shard's BLAKE2b checksum (16 bytes each)
    digest: str = ""  # the keys file's SHA-256 (hex): what the receipt must say
    bounds: list[int] = field(default_factory=list)  # index in keys of each shard's first key (257)

    def __post_init__(self) -> None:
        self.bounds = [bisect_left(self.keys, shard << _SHARD_SHIFT) for shard in range(SHARDS)]
        self.bounds.append(len(self.keys))

    def shard_keys(self, shard: int) -> array:
        """Return the segment's keys of one shard (sorted)."""
        return self.keys[self.bounds[shard] : self.bounds[shard + 1]]

    def intact(self, shard: int, data: bytes | memoryview) -> bool:
        """Return whether ``data`` is the shard's range of the answers file as written."""
        expected = self.checksums[shard * _SHARD_DIGEST : (shard + 1) * _SHARD_DIGEST]
        return hashlib.blake2b(data, digest_size=_SHARD_DIGEST).digest() == expected

    def read_shard(self, shard: int) -> bytes:
        """Return the answer lines of one shard (one ranged read); raise AnswerStoreError if damaged."""
        start, end = self.offsets[shard], self.offsets[shard + 1]
        if start == end:
            return b""
        with open_unhooked(self.answers) as handle:
            handle.seek(start)
            data = bytes(handle.read(end - start))
        if not self.intact(shard, data):
            raise AnswerStoreError(f"{self.answers}: shard {shard} does not match its checksum (damaged)")
        return data

    def vouched(self) -> bool:
        """Return whether the job that wrote the segment keeps a receipt with its digest."""
        return JobFolder(self.job).read_answer_receipt(self.name) == self.digest


def read_segment(keys_path: ObjectStoragePath) -> Segment:
    """Return the segment whose keys file is ``keys_path``; raise AnswerStoreError naming it if not one."""
    data = keys_path.read_bytes()
    if len(data) < _HEADER.size + _DIGEST or data[:8] != _MAGIC:
        raise AnswerStoreError(f"{keys_path} is not an answer store keys file (truncated or another format)")
    body, trailer = memoryview(data)[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != trailer:
        raise AnswerStoreError(f"{keys_path} does not match its checksum: damaged or altered")
    _, written_at, count, *offsets, job_length = _HEADER.unpack_from(data)
    at = _HEADER.size
    job = bytes(body[at : at + job_length]).decode()
    at += job_length
    checksums = bytes(body[at : at + SHARDS * _SHARD_DIGEST])
    at += SHARDS * _SHARD_DIGEST
    keys = _keys_array(body[at:])
    if len(keys) != count or list(offsets) != sorted(offsets):
        raise AnswerStoreError(f"{keys_path} holds {len(keys)} keys, its header says {count}")
    name = keys_path.name[: -len(layout.ANSWER_KEYS_SUFFIX)]
    answers = keys_path.parent / f"{name}.answers"
    return Segment(name, answers, written_at, tuple(offsets), keys, job, checksums, trailer.hex())


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
    store: ObjectStoragePath | str,
    *,
    max_age: float | None = None,
    now: float | None = None,
    logger: logging.Logger | None = None,
) -> AnswerIndex:
    """Return the index of a store's segments written at most ``max_age`` seconds before ``now``.

    A store that does not exist yet, or cannot be listed, is empty. A keys file that is damaged,
    not one, or says it was written in the future is skipped and named in a warning: nothing in
    the store fails a job.
    """
    logger = logger or log
    now = now if now is not None else time.time()
    oldest = now - max_age if max_age is not None else None
    segments: list[Segment] = []
    try:
        folder = layout.answer_segments_dir(as_path(store))
        paths = list(folder.glob(f"*{layout.ANSWER_KEYS_SUFFIX}")) if folder.exists() else []
    except OSError as exc:
        logger.warning("answer store %s cannot be listed (%s): no answer is reused", store, exc)
        paths = []
    for path in paths:
        try:
            segment = read_segment(path)
        except (AnswerStoreError, OSError, UnicodeDecodeError) as exc:
            logger.warning("answer store: skipping segment %s: %s", path, exc)
            continue
        if segment.written_at > now + FUTURE_SKEW_S:
            logger.warning(
                "answer store: skipping segment %s: it says it was written in the future (%s)",
                path,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(segment.written_at)),
            )
            continue
        if oldest is None or segment.written_at >= oldest:
            segments.append(segment)
    segments.sort(key=lambda segment: (-segment.written_at, segment.name))
    return AnswerIndex(segments)


# ---- resolving the hits of a pass ------------------------------------------------------------


class HitSpill:
    """The requests a pass found in the index, spilled to local bucket files until resolved.

    Each line is the request's fingerprint, what the result row needs of it (its inputs line
    ``{"custom_id", "row"[, "input"]}``), a tab, and the request as a batch would carry it (sent
    after all when the store cannot answer it: see :func:`spilled_request`).
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-hits-")
        self._buffers = [bytearray() for _ in range(_SPILL_BUCKETS)]
        self._spilled: set[int] = set()
        self.count = 0

    def add(self, key: int, fingerprint: bytes, inputs_line: bytes, request_line: bytes) -> None:
        """Note a hit: its key, fingerprint, inputs line and request line (JSON: no raw tab or newline)."""
        bucket = key >> _SPILL_SHIFT
        buffer = self._buffers[bucket]
        buffer += fingerprint
        buffer += inputs_line
        buffer += b"\t"
        buffer += request_line
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

        The hits are ``fingerprint -> spill line`` (see :func:`spilled_request`), and
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


def spilled_request(spilled: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (fingerprint, inputs line, request line) of a spill line."""
    tab = spilled.index(b"\t", FINGERPRINT_CHARS)
    return spilled[:FINGERPRINT_CHARS], spilled[FINGERPRINT_CHARS:tab], spilled[tab + 1 :]


class _Refusals:
    """What resolution could not use, named once each in a warning: segments, then a summary of answers."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.segments: dict[str, bool] = {}  # name -> usable
        self.answers = 0
        self.examples: list[str] = []

    def usable(self, segment: Segment) -> bool:
        """Return whether a segment may serve answers (checked once: its answers file and receipt)."""
        usable = self.segments.get(segment.name)
        if usable is None:
            usable = self.segments[segment.name] = segment.vouched()
            if not usable:
                self.logger.warning(
                    "answer store: segment %s is not vouched for by the job it names (%s has no receipt "
                    "with its digest: forged, replaced, or its job folder is gone); its answers are not "
                    "used",
                    segment.answers,
                    segment.job,
                )
        return usable

    def damaged(self, segment: Segment, what: str) -> None:
        """Name a segment (or a part of it) that cannot be read as written."""
        self.logger.warning("answer store: %s %s; its answers are not used", segment.answers, what)

    def refuse(self, segment: Segment, fingerprint: bytes, why: str) -> None:
        """Note an answer judged unusable for this job."""
        self.answers += 1
        if len(self.examples) < 3:
            self.examples.append(f"fingerprint {fingerprint.decode()} in {segment.answers}: {why}")

    def summary(self, sent: int) -> None:
        """Warn about what could not be reused, and how many requests are sent instead."""
        if self.answers:
            self.logger.warning(
                "answer store: %d stored answer(s) not reused (judged as a fresh answer would be), e.g. %s",
                self.answers,
                "; ".join(self.examples),
            )
        if sent:
            self.logger.warning(
                "answer store: %d request(s) found in the store's index are sent instead of reused", sent
            )


def _read_range(segment: Segment, first: int, last: int, handles: dict[str, IO[bytes]]) -> bytes:
    """Return the answers file's bytes of shards ``first`` to ``last`` (excluded): one ranged read."""
    handle = handles.get(segment.name)
    if handle is None:
        handle = handles[segment.name] = open_unhooked(segment.answers)
    handle.seek(segment.offsets[first])
    return bytes(handle.read(segment.offsets[last] - segment.offsets[first]))


def _aligned_lines(segment: Segment, data: bytes, first: int, last: int, refusals: _Refusals) -> list[bytes]:
    """Return the lines of shards ``first`` to ``last``, one per key; a damaged shard's lines are empty."""
    view, base = memoryview(data), segment.offsets[first]
    damaged = [
        shard
        for shard in range(first, last)  # a short read (a truncated file) fails its checksum too
        if not segment.intact(shard, view[segment.offsets[shard] - base : segment.offsets[shard + 1] - base])
    ]
    if not damaged:
        return data.split(b"\n")
    lines: list[bytes] = []
    for shard in range(first, last):
        if shard in damaged:
            refusals.damaged(segment, f"shard {shard} does not match its checksum (damaged)")
            lines += [b""] * len(segment.shard_keys(shard))
        else:
            lines += data[segment.offsets[shard] - base : segment.offsets[shard + 1] - base].split(b"\n")[:-1]
    return lines


def resolve_hits(
    index: AnswerIndex,
    hits: HitSpill,
    out: IO[bytes],
    round_number: int,
    *,
    check: Callable[[bytes], bytes | str],
    send_back: Callable[[bytes], None],
    logger: logging.Logger | None = None,
) -> int:
    """Write the result row of every hit the store can answer to ``out``; return how many were written.

    One bucket of hits (four shards) is in memory at a time. For each bucket, only the segments
    holding one of its keys are read, and only that bucket's byte range of them (one ranged read),
    checked against the shards' checksums. A segment's lines are in the order of its keys, so a
    hit's line is found by its key's position, never by scanning. Each answer is judged by
    ``check`` (:class:`~airflow_batch.gather.rows.ReuseCheck`: the answer to splice, or why not);
    an unusable one is looked for in older segments. A hit no usable answer is found for (a
    damaged, missing, unvouched or since-removed segment, an answer invalid for this job, a key
    collision) is handed to ``send_back`` (its spill line): it is sent. Nothing raises.
    """
    refusals = _Refusals(logger or log)
    written = sent = 0
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
                if not common or not refusals.usable(segment):
                    continue
                try:
                    data = _read_range(segment, first, last, handles)
                except OSError as exc:
                    refusals.damaged(segment, f"cannot be read ({exc})")
                    refusals.segments[segment.name] = False
                    continue
                lines = _aligned_lines(segment, data, first, last, refusals)
                count = min(len(keys), len(lines))
                resolved: set[int] = set()
                for key in common:  # the hot loop of a resolution: splices, one check per answer
                    at = bisect_left(keys, key)
                    while at < count and keys[at] == key:
                        line = lines[at]
                        at += 1
                        fingerprint = line[:32]
                        hit = wanted.get(fingerprint)
                        if hit is None:
                            continue  # another request with the same 64-bit key, or answered already
                        tab = line.find(b"\t", 33)
                        answer = check(line[33:tab]) if tab > 33 else "the stored line is damaged"
                        if isinstance(answer, str):
                            refusals.refuse(segment, fingerprint, answer)
                            continue
                        del wanted[fingerprint]
                        resolved.add(key)
                        source = line[tab + 1 :]
                        # one answer serves every request of the job that asks it
                        for spilled in (hit, *more.pop(fingerprint, ())) if more else (hit,):
                            buffer += spilled[32 : spilled.index(b"\t", 32) - 1]  # inputs, no "}"
                            buffer += middle
                            buffer += answer[1:-1]
                            buffer += usage
                            buffer += source
                            buffer += b"}\n"
                            written += 1
                pending -= resolved
                if len(buffer) >= _WRITE_BUFFER:
                    out.write(buffer)
                    buffer.clear()
                if not pending:
                    break
            for fingerprint, hit in wanted.items():
                for spilled in (hit, *more.pop(fingerprint, ())):
                    send_back(spilled)
                    sent += 1
    finally:
        for handle in handles.values():
            handle.close()
    out.write(buffer)
    refusals.summary(sent)
    return written
