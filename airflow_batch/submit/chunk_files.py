"""A round's chunk files: how request lines are written to them and streamed back as create bodies.

Chunk boundaries are greedy and deterministic: requests keep their input order, and a new
chunk starts when the next request would take the current one past ``max_requests`` or past
``max_bytes`` of create-request body. The body of a chunk is exactly what is sent:
``{"requests":[`` + the chunk file's lines joined by ``,`` + ``]}``. Because the bytes measured
are the bytes sent (see :class:`ChunkBody`), the byte limit needs no safety margin beyond the one
in its default.

Each chunk file has a twin under ``inputs/`` (:func:`inputs_line`), written in lockstep: one line
per request with its input row, passthrough fields and, with answer reuse, its fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import msgspec

from airflow_batch.layout import chunk_file_name
from airflow_batch.submit.shared_prompts import MIN_SHARED_BYTES, SharedPrompts, expand_line, load_shared

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

BODY_PREFIX = b'{"requests":['
BODY_SUFFIX = b"]}"
#: Bytes of a create body beyond its request lines: prefix, suffix, and n-1 commas for n lines.
ENVELOPE = len(BODY_PREFIX) + len(BODY_SUFFIX) - 1
#: Bytes of lines held before they are written (one write a megabyte, not one a line).
WRITE_BUFFER = 1 << 20
#: Folder of the staged ``inputs`` twins of the chunk files.
INPUTS_DIR = "inputs"
_encode_json = msgspec.json.Encoder().encode


def inputs_line(custom_id: str, row: int, fields: Any = None) -> bytes:
    """Return what the inputs twin records of one request: its input row and passthrough fields."""
    if fields is None:  # custom ids need no escaping: [a-zA-Z0-9_-]
        return b'{"custom_id":"%s","row":%d}' % (custom_id.encode(), row)
    return _encode_json({"custom_id": custom_id, "row": row, "input": fields})


def with_fingerprint(inputs: bytes, fingerprint: bytes) -> bytes:
    """Return an inputs line with the request's fingerprint added (gather keys stored answers by it)."""
    return inputs[:-1] + b',"fingerprint":"' + fingerprint + b'"}'


def inputs_line_with_fingerprint(custom_id: str, row: int, fields: Any, fingerprint: bytes) -> bytes:
    """Return :func:`inputs_line` with the fingerprint (the hot path: one format without fields)."""
    if fields is None:
        return b'{"custom_id":"%s","row":%d,"fingerprint":"%s"}' % (custom_id.encode(), row, fingerprint)
    return with_fingerprint(inputs_line(custom_id, row, fields), fingerprint)


def body_bytes(requests: int, line_bytes: int) -> int:
    """Return the size of the create body carrying ``requests`` lines totalling ``line_bytes``."""
    return line_bytes + requests + ENVELOPE


@dataclass(frozen=True)
class ChunkInfo:
    """One planned chunk: its position, how many requests, and the size of its create body."""

    index: int
    requests: int
    bytes: int
    #: Digests of the shared prompts its lines reference (see :mod:`airflow_batch.submit.shared_prompts`).
    shared: tuple[str, ...] = ()


class ChunkWriter:
    """Writes encoded request lines to consecutive chunk files, rolling over at the limits.

    Each chunk file has a twin under ``inputs/``, written in lockstep: one line per request
    with its input row and passthrough fields (see :func:`airflow_batch.layout.chunk_inputs_path`).
    Every byte sent also feeds ``digest`` (when given), so the fingerprint covers exactly what
    is sent. Long lines are stored compacted (:class:`SharedPrompts`); their sizes and digest are
    those of the full lines.
    """

    def __init__(self, staging: ObjectStoragePath, max_requests: int, max_bytes: int, digest: Any) -> None:
        self.staging = staging
        self.max_requests = max_requests
        # Body bytes are line bytes + count + envelope; compare line bytes + count to this:
        self._max_lines_and_commas = max_bytes - ENVELOPE
        self.digest = digest
        self.chunks: list[ChunkInfo] = []
        self._handle: IO[bytes] | None = None
        self._inputs: IO[bytes] | None = None
        # Lines wait in lists, joined once a flush: one append a line instead of two copies.
        self._lines: list[bytes] = []
        self._twins: list[bytes] = []
        self._held_bytes = 0
        self._count = 0
        self._line_bytes = 0
        self._shared = SharedPrompts(staging)
        self._referenced: set[str] = set()  # by the lines of the open chunk

    def add(self, line: bytes, inputs_line: bytes) -> None:
        count = self._count + 1
        line_bytes = self._line_bytes + len(line)
        if self._handle is None:
            self._open()
        elif count > self.max_requests or line_bytes + count > self._max_lines_and_commas:
            self._close()
            self._open()
            count, line_bytes = 1, len(line)
        if self.digest is not None:
            self.digest.update(line)
            self.digest.update(b"\n")
        if len(line) >= MIN_SHARED_BYTES:
            line, digests = self._shared.compact(line)
            self._referenced.update(digests)
        self._lines.append(line)
        self._twins.append(inputs_line)
        self._count = count
        self._line_bytes = line_bytes
        self._held_bytes += len(line)
        if self._held_bytes >= WRITE_BUFFER:
            self._flush()

    def add_many(self, lines: list[bytes], inputs_lines: list[bytes]) -> None:
        """Add lines in input order, as :meth:`add` would one at a time.

        The submit pass's hot path: a run of lines that fits the current chunk is added with one
        length sum and one join instead of a call per line; only a run that crosses a chunk
        boundary goes line by line.
        """
        count = self._count + len(lines)
        line_bytes = self._line_bytes + sum(map(len, lines))
        fits = count <= self.max_requests and line_bytes + count <= self._max_lines_and_commas
        # A long line may share a prompt (see SharedPrompts): it goes through add.
        if self._handle is None or not fits or max(map(len, lines), default=0) >= MIN_SHARED_BYTES:
            for line, twin in zip(lines, inputs_lines, strict=True):
                self.add(line, twin)
            return
        # Joined once here; _flush joins these runs with the same separator.
        run = b"\n".join(lines)
        if self.digest is not None:
            self.digest.update(run + b"\n")
        self._lines.append(run)
        self._twins.append(b"\n".join(inputs_lines))
        self._held_bytes += line_bytes - self._line_bytes
        self._count = count
        self._line_bytes = line_bytes
        if self._held_bytes >= WRITE_BUFFER:
            self._flush()

    def _open(self) -> None:
        name = chunk_file_name(len(self.chunks))
        self._handle = (self.staging / name).open("wb")
        (self.staging / INPUTS_DIR).mkdir(parents=True, exist_ok=True)
        self._inputs = (self.staging / INPUTS_DIR / name).open("wb")

    def _flush(self) -> None:
        assert self._handle is not None and self._inputs is not None
        if not self._lines:
            return
        self._handle.write(b"\n".join(self._lines) + b"\n")
        self._inputs.write(b"\n".join(self._twins) + b"\n")
        self._lines.clear()
        self._twins.clear()
        self._held_bytes = 0

    def _close(self) -> None:
        assert self._handle is not None and self._inputs is not None
        self._flush()
        self._handle.close()
        self._inputs.close()
        self._handle = self._inputs = None
        shared = tuple(sorted(self._referenced))
        self.chunks.append(
            ChunkInfo(len(self.chunks), self._count, body_bytes(self._count, self._line_bytes), shared)
        )
        self._referenced = set()
        self._count = 0
        self._line_bytes = 0

    def finish(self) -> list[ChunkInfo]:
        if self._handle is not None:
            self._close()
        return self.chunks

    def abort(self) -> None:
        for handle in (self._handle, self._inputs):
            if handle is not None:
                handle.close()
        self._handle = self._inputs = None


class ChunkBody:
    """A chunk file as the body of a batch create, streamed from storage in blocks.

    Iterating yields ``{"requests":[`` + the lines joined by ``,`` + ``]}``, each line expanded
    (its shared prompts put back). Each iteration reopens the file, so the SDK can send it again
    on a retry; memory is one block and the chunk's shared prompts, which are read and checked
    when the body is made (:func:`load_shared`), so a missing or damaged one fails before the create.
    """

    block_size = 1 << 20

    def __init__(self, path: ObjectStoragePath, size: int, shared: tuple[str, ...] = ()) -> None:
        self.path = path
        self.size = size
        self._values = load_shared(path, shared)

    def __iter__(self) -> Iterator[bytes]:
        yield BODY_PREFIX
        pending = b""
        with self.path.open("rb") as handle:
            while True:
                block = handle.read(self.block_size)
                if not block:
                    break
                if self._values:
                    block = self._expanded(handle, block)
                # Compact JSON never holds a raw newline, so every newline separates two requests.
                block = (pending + block).replace(b"\n", b",")
                pending = b""
                if block.endswith(b","):
                    # Hold back the last separator: the file's final newline is not a comma.
                    block, pending = block[:-1], b","
                yield block
        yield BODY_SUFFIX

    def _expanded(self, handle: IO[bytes], block: bytes) -> bytes:
        """Return ``block`` completed to a whole line (read on from ``handle``), each line expanded."""
        while not block.endswith(b"\n"):
            more = handle.read(self.block_size)
            if not more:
                break
            block += more
        return b"\n".join(expand_line(line, self._values) for line in block.split(b"\n"))
