"""One streaming pass over the input: validate, fingerprint and write each request to its chunk.

Chunk boundaries are greedy and deterministic: requests keep their input order, and a new
chunk starts when the next request would take the current one past ``max_requests`` or past
``max_bytes`` of create-request body. The body of a chunk is exactly what is sent:
``{"requests":[`` + the chunk file's lines joined by ``,`` + ``]}``. A JSONL input line that
is already a valid, complete request with a plain-text prompt is written as it was read
(the fast path: one typed decode, no re-encoding); any other row is decoded, completed with
the defaults, checked and encoded as compact UTF-8 JSON. Because the bytes measured are the
bytes sent (see :class:`ChunkBody`), the byte limit needs no safety margin beyond the one in
its default. The fingerprint is a hash of the batch limits and of every chunk file's bytes.

Memory is bounded whatever the input size: rows stream from the input to the chunk files
through a small write buffer. Checking that every ``custom_id`` is unique across the whole
job is the one thing that needs to see every id; ids are spilled to 64 hash buckets in a
temporary directory and each bucket is checked on its own at the end, so memory stays at
1/64 of the ids instead of all of them.

Files are written to a staging folder first. The caller moves them into the round's
``chunks/`` folder only once the round is known to be valid and new (see
:mod:`airflow_batch.submit.round`), so a failed or refused attempt never overwrites the chunk
files of batches already submitted. Storage paths are passed in: this module plans and
writes, it never decides where.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from airflow_batch.layout import INVALID_INPUT_FILE, chunk_file_name
from airflow_batch.submit.estimate import TokenTally
from airflow_batch.submit.records import RequestDefaults
from airflow_batch.submit.validation import (
    CUSTOM_ID_PATTERN,
    InvalidRow,
    Problem,
    check_request,
    custom_id_of,
)
from airflow_batch.tokens import plain_prompt_tokens

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

BODY_PREFIX = b'{"requests":['
BODY_SUFFIX = b"]}"
#: Bytes of a create body beyond its request lines: prefix, suffix, and n-1 commas for n lines.
_ENVELOPE = len(BODY_PREFIX) + len(BODY_SUFFIX) - 1
_BUCKETS = 64
_WRITE_BUFFER = 1 << 20
_CACHE_CONTROL = b'"cache_control"'


def body_bytes(requests: int, line_bytes: int) -> int:
    """Return the size of the create body carrying ``requests`` lines totalling ``line_bytes``."""
    return line_bytes + requests + _ENVELOPE


@dataclass(frozen=True)
class ChunkInfo:
    """One planned chunk: its position, how many requests, and the size of its create body."""

    index: int
    requests: int
    bytes: int


@dataclass
class PreparedRound:
    """The outcome of the streaming pass."""

    chunks: list[ChunkInfo]
    fingerprint: str
    requests: int
    bytes: int
    problems: list[Problem]
    invalid: int
    staging: ObjectStoragePath
    tally: TokenTally
    fatal: bool = False
    rows: int = 0
    invalid_file: ObjectStoragePath | None = None


class UniqueIds:
    """Finds custom_ids used twice across a whole job without holding every id in memory."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-ids-")
        self._files: list[IO[str]] = [
            open(os.path.join(self._dir.name, f"{n:02d}"), "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
            for n in range(_BUCKETS)
        ]

    def add(self, custom_id: str, index: int) -> None:
        """Note that row ``index`` uses ``custom_id`` (a valid id: no tab, no newline)."""
        self._files[hash(custom_id) & (_BUCKETS - 1)].write(f"{custom_id}\t{index}\n")

    def duplicates(self, limit: int) -> tuple[list[Problem], int]:
        """Return up to ``limit`` rows whose custom_id an earlier row already used, and their count."""
        for handle in self._files:
            handle.close()
        found: list[Problem] = []
        count = 0
        for n in range(_BUCKETS):
            first: dict[str, int] = {}
            with open(os.path.join(self._dir.name, f"{n:02d}"), encoding="ascii") as handle:
                for line in handle:
                    custom_id, _, raw = line.rstrip("\n").partition("\t")
                    index = int(raw)
                    earlier = first.setdefault(custom_id, index)
                    if earlier != index:
                        count += 1
                        found.append(
                            Problem(
                                index,
                                custom_id,
                                f"custom_id is already used by request {earlier}; "
                                "custom_id must be unique across the whole job",
                            )
                        )
            found.sort(key=lambda problem: problem.index)
            del found[limit:]
        return found, count

    def close(self) -> None:
        """Remove the temporary bucket files."""
        for handle in self._files:
            handle.close()
        self._dir.cleanup()


class _ChunkWriter:
    """Writes encoded request lines to consecutive chunk files, rolling over at the limits.

    Every byte written also feeds ``digest``, so the fingerprint covers the chunk files exactly.
    """

    def __init__(self, staging: ObjectStoragePath, max_requests: int, max_bytes: int, digest: Any) -> None:
        self.staging = staging
        self.max_requests = max_requests
        # Body bytes are line bytes + count + envelope; compare line bytes + count to this:
        self._max_lines_and_commas = max_bytes - _ENVELOPE
        self.digest = digest
        self.chunks: list[ChunkInfo] = []
        self._handle: IO[bytes] | None = None
        self._buffer = bytearray()
        self._count = 0
        self._line_bytes = 0

    def add(self, line: bytes) -> None:
        count = self._count + 1
        line_bytes = self._line_bytes + len(line)
        if self._handle is None:
            self._open()
        elif count > self.max_requests or line_bytes + count > self._max_lines_and_commas:
            self._close()
            self._open()
            count, line_bytes = 1, len(line)
        buffer = self._buffer
        buffer += line
        buffer += b"\n"
        self._count = count
        self._line_bytes = line_bytes
        if len(buffer) >= _WRITE_BUFFER:
            self._flush()

    def _open(self) -> None:
        self._handle = (self.staging / chunk_file_name(len(self.chunks))).open("wb")

    def _flush(self) -> None:
        assert self._handle is not None
        self.digest.update(self._buffer)
        self._handle.write(self._buffer)
        self._buffer.clear()

    def _close(self) -> None:
        assert self._handle is not None
        self._flush()
        self._handle.close()
        self._handle = None
        self.chunks.append(
            ChunkInfo(len(self.chunks), self._count, body_bytes(self._count, self._line_bytes))
        )
        self._count = 0
        self._line_bytes = 0

    def finish(self) -> list[ChunkInfo]:
        if self._handle is not None:
            self._close()
        return self.chunks

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Any]


class _Params(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    system: str | list[Any] | None = None
    stream: bool | None = None


class _Request(msgspec.Struct, forbid_unknown_fields=True):
    custom_id: str  # checked with a compiled regex: msgspec's pattern check is slower
    params: _Params


_decode_typed = msgspec.json.Decoder(_Request).decode
_match_custom_id = CUSTOM_ID_PATTERN.fullmatch


def _plain_line(line: bytes, default_system: bool) -> tuple[_Request, int] | None:
    """Return a JSON line's request and input tokens if it is valid and plain, else None.

    Plain: valid as it is (nothing for the defaults to fill in), no ``stream``, and a prompt of
    strings only, without ``cache_control``. Such a line is written to its chunk unchanged;
    anything else takes the general path (decode, apply defaults, check, encode), which also
    produces the error message of an invalid row.
    """
    try:
        request = _decode_typed(line)
    except msgspec.DecodeError:
        return None
    params = request.params
    system = params.system
    if (
        not _match_custom_id(request.custom_id)
        or params.stream is not None
        or (system is None and default_system)
        or _CACHE_CONTROL in line
    ):
        return None
    tokens = plain_prompt_tokens(system, params.messages)
    if tokens is None or not all(message.content for message in params.messages):
        return None
    return request, tokens


def _invalid_row(index: int, problem: Problem, round_number: int) -> dict[str, Any]:
    return {
        "custom_id": problem.custom_id,
        "batch_id": None,
        "round": round_number,
        "result_type": "invalid_input",
        "error_type": "invalid_input",
        "message": f"request {index}: {problem.rule}",
        "request_id": None,
        "retryable": False,
        "index": index,
    }


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the pass.

    The pass allocates millions of short-lived, acyclic objects (decoded rows), which reference
    counting frees at once; the collector's generation scans over Airflow's large heap would
    otherwise take more time than the pass itself (measured: 2.5x slower).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def prepare_chunks(
    rows: Iterable[Any],
    *,
    staging: ObjectStoragePath,
    max_requests: int,
    max_bytes: int,
    defaults: RequestDefaults | None = None,
    skip_invalid: bool = False,
    expected_output_tokens: int | None = None,
    round_number: int = 0,
    problems_shown: int = 20,
) -> PreparedRound:
    """Validate, fingerprint and write every row to chunk files under ``staging`` in one pass.

    ``rows`` yields requests as mappings, raw JSON lines (bytes), or :class:`InvalidRow`.
    Without ``skip_invalid``, writing stops at the first invalid row but checking goes on, so
    the result lists every problem (the first ``problems_shown`` and a count). With it,
    invalid rows are kept as ``invalid_input`` failure rows and the rest is chunked.
    A custom_id used twice is always a problem, even with ``skip_invalid``: which of the two
    rows is meant cannot be known.
    """
    if max_requests < 1:
        raise ValueError(f"max_requests_per_batch must be >= 1, got {max_requests}")
    if max_bytes <= _ENVELOPE + 2:
        raise ValueError(f"max_bytes_per_batch must be larger than a request, got {max_bytes}")
    defaults = defaults or RequestDefaults()
    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder().decode
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"max_requests={max_requests};max_bytes={max_bytes}\n".encode())
    tally = TokenTally(expected_output_tokens=expected_output_tokens)
    writer = _ChunkWriter(staging, max_requests, max_bytes, digest)
    staging.mkdir(parents=True, exist_ok=True)
    ids = UniqueIds()
    problems: list[Problem] = []
    invalid_out: IO[bytes] | None = None
    invalid = 0
    valid = 0
    index = -1
    single_limit = max_bytes - _ENVELOPE - 1
    default_system = defaults.system is not None
    try:
        with _collector_paused():
            for index, row in enumerate(rows):
                problem: Problem | None = None
                request: Any = row
                plain = _plain_line(row, default_system) if type(row) is bytes else None
                if plain is not None and len(row) <= single_limit:
                    typed, tokens = plain
                    ids.add(typed.custom_id, index)
                    valid += 1
                    if invalid and not skip_invalid:
                        continue
                    writer.add(row)
                    params = typed.params
                    tally.add_plain(params.model, params.max_tokens, tokens, row)
                    continue
                if isinstance(row, (bytes, bytearray, memoryview)):
                    try:
                        request = decode(row)
                    except msgspec.DecodeError as exc:
                        problem = Problem(index, None, f"not valid JSON: {exc}")
                if problem is None and isinstance(request, InvalidRow):
                    problem = Problem(index, request.custom_id, request.rule)
                if problem is None:
                    request = defaults.apply(request)
                    rule = check_request(request)
                    if rule is not None:
                        problem = Problem(index, custom_id_of(request), rule)
                line = b""
                if problem is None:
                    try:
                        line = encode(request)
                    except (TypeError, ValueError, OverflowError) as exc:
                        problem = Problem(index, custom_id_of(request), f"cannot be encoded as JSON: {exc}")
                    else:
                        if len(line) > single_limit:
                            problem = Problem(
                                index,
                                custom_id_of(request),
                                f"request is {len(line):,} bytes serialized; alone it exceeds the "
                                f"max_bytes_per_batch of {max_bytes:,}",
                            )
                if problem is not None:
                    invalid += 1
                    if len(problems) < problems_shown:
                        problems.append(problem)
                    if skip_invalid:
                        if invalid_out is None:
                            invalid_out = (staging / INVALID_INPUT_FILE).open("wb")
                        invalid_out.write(encode(_invalid_row(index, problem, round_number)) + b"\n")
                    continue
                ids.add(request["custom_id"], index)
                valid += 1
                if invalid and not skip_invalid:
                    continue  # nothing will be submitted: keep checking, stop writing
                writer.add(line)
                tally.add(request["params"], _CACHE_CONTROL in line)
        chunks = writer.finish()
        duplicates, duplicate_count = ids.duplicates(problems_shown)
    except BaseException:
        writer.abort()
        raise
    finally:
        ids.close()
        if invalid_out is not None:
            invalid_out.close()
    if duplicate_count:
        invalid += duplicate_count
        problems = sorted(problems + duplicates, key=lambda problem: problem.index)[:problems_shown]
        skip_invalid = False  # duplicates are never skipped
    if index < 0:
        problems.append(Problem(0, None, "the input has no requests"))
        invalid += 1
    fatal = bool(invalid) and (not skip_invalid or valid == 0)
    return PreparedRound(
        chunks=[] if fatal else chunks,
        fatal=fatal,
        fingerprint=digest.hexdigest(),
        requests=sum(chunk.requests for chunk in chunks),
        bytes=sum(chunk.bytes for chunk in chunks),
        problems=problems,
        invalid=invalid,
        staging=staging,
        tally=tally,
        rows=index + 1,
        invalid_file=staging / INVALID_INPUT_FILE if invalid_out is not None else None,
    )


class ChunkBody:
    """A chunk file as the body of a batch create, streamed from storage in blocks.

    Iterating yields ``{"requests":[`` + the lines joined by ``,`` + ``]}``. Each iteration
    reopens the file, so the SDK can send it again on a retry; memory is one block.
    """

    block_size = 1 << 20

    def __init__(self, path: ObjectStoragePath, size: int) -> None:
        self.path = path
        self.size = size

    def __iter__(self) -> Iterator[bytes]:
        yield BODY_PREFIX
        pending = b""
        with self.path.open("rb") as handle:
            while True:
                block = handle.read(self.block_size)
                if not block:
                    break
                # Compact JSON never holds a raw newline, so every newline separates two requests.
                block = (pending + block).replace(b"\n", b",")
                pending = b""
                if block.endswith(b","):
                    # Hold back the last separator: the file's final newline is not a comma.
                    block, pending = block[:-1], b","
                yield block
        yield BODY_SUFFIX
