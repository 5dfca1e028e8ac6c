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
judged again as gather judges a fresh one (:class:`airflow_batch.reuse.check.ReuseCheck`). So
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
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from airflow_batch import layout
from airflow_batch.exceptions import AnswerStoreError
from airflow_batch.folder import JobFolder
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
SHARD_SHIFT = 56  # key >> 56: the shard of a 64-bit key
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
                    line_shard = key >> SHARD_SHIFT
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
        self.bounds = [bisect_left(self.keys, shard << SHARD_SHIFT) for shard in range(SHARDS)]
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
        keys = self.shards[key >> SHARD_SHIFT]
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
