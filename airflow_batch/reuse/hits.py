"""The requests a submit's pass found in the answer store: spilled while it streams, resolved after.

See :mod:`airflow_batch.reuse.store` for why a pass spills its hits and resolves them one shard at
a time, and what a reader trusts of a store.
"""

from __future__ import annotations

import logging
import os
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import IO

from airflow_batch.reuse.fingerprint import FINGERPRINT_CHARS
from airflow_batch.reuse.store import SHARD_SHIFT, AnswerIndex, Segment
from airflow_batch.rows.contract import ZERO_USAGE, AnsweredSplice
from airflow_batch.storage import open_unhooked

log = logging.getLogger(__name__)
_SPILL_BUCKETS = 64  # of hits during the pass: each covers 4 shards
_SPILL_SHIFT = 58  # key >> 58: the bucket of a 64-bit key
_BUFFER = 1 << 16
_WRITE_BUFFER = 1 << 20


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
    ``check`` (:class:`~airflow_batch.reuse.check.ReuseCheck`: the answer to splice, or why not);
    an unusable one is looked for in older segments. A hit no usable answer is found for (a
    damaged, missing, unvouched or since-removed segment, an answer invalid for this job, a key
    collision) is handed to ``send_back`` (its spill line): it is sent. Nothing raises.
    """
    refusals = _Refusals(logger or log)
    written = sent = 0
    buffer = bytearray()  # writes are buffered: a storage file's write is costly per call
    handles: dict[str, IO[bytes]] = {}
    per_bucket = 1 << (_SPILL_SHIFT - SHARD_SHIFT)  # shards in a bucket
    # reused_row, spliced in place (see AnsweredSplice): one buffer for every row of the pass
    splice = AnsweredSplice.of_round(round_number)
    middle, usage = splice.after_inputs, splice.before_usage + ZERO_USAGE + splice.before_source
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
