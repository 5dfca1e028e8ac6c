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

import hashlib
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

import msgspec

from airflow_batch.layout import INVALID_INPUT_FILE, chunk_file_name
from airflow_batch.memory import paused_gc
from airflow_batch.params import decode_plain, loads
from airflow_batch.rows.contract import invalid_input_row
from airflow_batch.submit.estimate import TokenTally
from airflow_batch.submit.records import BLANK, Carried, RequestDefaults
from airflow_batch.submit.validation import (
    InvalidRow,
    Problem,
    ProblemReport,
    checked_request,
    custom_id_of,
    hint_for,
)
from airflow_batch.tokens import plain_text_tokens

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

BODY_PREFIX = b'{"requests":['
BODY_SUFFIX = b"]}"
#: Bytes of a create body beyond its request lines: prefix, suffix, and n-1 commas for n lines.
_ENVELOPE = len(BODY_PREFIX) + len(BODY_SUFFIX) - 1
_BUCKETS = 64
#: Ids held before they are spilled to their buckets: one write per bucket, not one per id.
_IDS_HELD = 1 << 16
_WRITE_BUFFER = 1 << 20
#: A request line that may ask for caching holds this (the cache walk is skipped otherwise).
CACHE_CONTROL = b'"cache_control"'
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


#: What :meth:`Diversion.divert` answers: the request is sent, was taken (answered), or is held.
SEND, TAKEN, HOLD = 0, 1, 2


class Diversion(Protocol):
    """Requests a pass does not put in a chunk: answers to reuse, and the canary's sample.

    The pass asks :meth:`route` about each valid request in input order. A ``HOLD`` request is
    handed over with :meth:`hold` (its chunk line, inputs line, fingerprint and how to count it
    in an estimate); :meth:`finish`, called once the whole input is known to be valid, gives
    back through ``send`` (chunk line, twin line) the held or taken requests that must be sent
    after all, counting them in ``tally`` itself. See :mod:`airflow_batch.submit.routing`.
    """

    lenient: bool

    def route(self, params: Any) -> tuple[int, bytes, int]:
        """Return SEND, TAKEN or HOLD for a request, its fingerprint and the fingerprint's key.

        ``params`` are typed, or decoded for a lenient job.
        """
        ...

    def take(self, key: int, fingerprint: bytes, inputs: bytes, line: bytes) -> None:
        """Keep a request :meth:`route` answered TAKEN for, with its inputs line and its chunk line."""
        ...

    def hold(
        self, line: bytes, inputs: bytes, fingerprint: bytes, count: Callable[[TokenTally], None]
    ) -> None:
        """Keep a request :meth:`route` answered HOLD for: its line, inputs line, and how to count it."""
        ...

    def finish(
        self,
        staging: ObjectStoragePath,
        tally: TokenTally,
        send: Callable[[bytes, bytes], None],
        fingerprint: str,
    ) -> None:
        """Resolve what was taken and held (writing staged files); ``send`` what must be sent.

        ``fingerprint`` is the round's (every valid request), known once the input is.
        """
        ...


def body_bytes(requests: int, line_bytes: int) -> int:
    """Return the size of the create body carrying ``requests`` lines totalling ``line_bytes``."""
    return line_bytes + requests + _ENVELOPE


@dataclass(frozen=True)
class ModelLimits:
    """What the model table knows of each model's limits, for refusing rows that can only fail.

    ``table`` is a :class:`~airflow_batch.costs.PriceTable` (or None: nothing is checked);
    ``betas`` may raise the batch output maximum (``output-300k-...``). Looked up once per model.
    """

    table: Any = None
    betas: tuple[str, ...] = ()
    _known: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict, compare=False)

    def limits(self, model: str) -> tuple[int | None, int | None, int | None]:
        """Return the model's context window, batch output maximum and cache minimum (None: not known)."""
        limits = self._known.get(model)
        if limits is None:  # once per model: the lookup matches the model id to its family
            entry = self.table.price_for(model) if self.table is not None else None
            limits = (
                (entry.context_window, entry.max_tokens_in_batch(self.betas), entry.min_cacheable_tokens)
                if entry
                else (None, None, None)
            )
            self._known[model] = limits
        return limits

    def context_window(self, model: str) -> int | None:
        """Return the model's context window in tokens, or None when not known."""
        return self.limits(model)[0]

    def max_output_tokens(self, model: str) -> int | None:
        """Return the most ``max_tokens`` the model takes in a batch, or None when not known."""
        return self.limits(model)[1]

    def min_cacheable_tokens(self, model: str) -> int | None:
        """Return the model's shortest cacheable prompt prefix in tokens, or None when not known."""
        return self.limits(model)[2]


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
    report: ProblemReport
    staging: ObjectStoragePath
    tally: TokenTally
    fatal: bool = False
    rows: int = 0
    invalid_file: ObjectStoragePath | None = None

    @property
    def invalid(self) -> int:
        """Return how many rows are invalid."""
        return self.report.total


class UniqueIds:
    """Finds custom_ids used twice across a whole job without holding every id in memory.

    Ids are held a while, then spilled to their hash bucket's file, one a line; their rows go
    to one shared file of 8-byte integers, each bucket's run of them noted by offset. A bucket
    is checked at once: a set of its ids as long as their list means no duplicate (C passes
    only); only a bucket that has one reads its rows back, to name them.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-ids-")
        self._files: list[IO[str]] = [
            open(os.path.join(self._dir.name, f"{n:02d}"), "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
            for n in range(_BUCKETS)
        ]
        self._rows_file: IO[bytes] = open(os.path.join(self._dir.name, "rows"), "w+b")  # noqa: SIM115
        #: Per bucket, where its rows are in the rows file: (byte offset, how many), in input order.
        self._runs: list[list[tuple[int, int]]] = [[] for _ in range(_BUCKETS)]
        self._ids: list[list[str]] = [[] for _ in range(_BUCKETS)]
        self._rows: list[list[int]] = [[] for _ in range(_BUCKETS)]
        self._room = _IDS_HELD

    def add(self, custom_id: str, row: int) -> None:
        """Note that ``row`` uses ``custom_id`` (a valid id: no newline)."""
        bucket = hash(custom_id) & (_BUCKETS - 1)
        self._ids[bucket].append(custom_id)
        self._rows[bucket].append(row)
        self._room -= 1
        if not self._room:
            self._spill()

    def _spill(self) -> None:
        for handle, ids, rows, runs in zip(self._files, self._ids, self._rows, self._runs, strict=True):
            if ids:
                handle.write("\n".join(ids) + "\n")
                runs.append((self._rows_file.tell(), len(rows)))
                self._rows_file.write(array("q", rows).tobytes())
                ids.clear()
                rows.clear()
        self._room = _IDS_HELD

    def _bucket_rows(self, bucket: int) -> list[int]:
        rows = array("q")
        for offset, count in self._runs[bucket]:
            self._rows_file.seek(offset)
            rows.frombytes(self._rows_file.read(8 * count))
        return rows.tolist()

    def duplicates(self, label: str = "row") -> list[Problem]:
        """Return every row whose custom_id an earlier row already used, in input order.

        One bucket is in memory at a time; the duplicates themselves are few in any input a
        user would submit (each is an error), so they are returned whole.
        """
        self._spill()
        for handle in self._files:
            handle.close()
        found: list[Problem] = []
        for n in range(_BUCKETS):
            with open(os.path.join(self._dir.name, f"{n:02d}"), encoding="ascii") as handle:
                ids = handle.read().split("\n")[:-1]
            if len(set(ids)) == len(ids):
                continue
            first: dict[str, int] = {}
            for custom_id, row in zip(ids, self._bucket_rows(n), strict=True):
                earlier = first.setdefault(custom_id, row)
                if earlier != row:
                    found.append(
                        Problem(
                            row,
                            custom_id,
                            f"custom_id is already used by {label} {earlier}; custom_id must be unique "
                            "across the whole job",
                            hint="give each record a unique id, or pass custom_id_from= to build one",
                            label=label,
                        )
                    )
        return sorted(found, key=lambda problem: problem.row)

    def close(self) -> None:
        """Remove the temporary bucket files."""
        for handle in self._files:
            handle.close()
        self._rows_file.close()
        self._dir.cleanup()


class _ChunkWriter:
    """Writes encoded request lines to consecutive chunk files, rolling over at the limits.

    Each chunk file has a twin under ``inputs/``, written in lockstep: one line per request
    with its input row and passthrough fields (see :func:`airflow_batch.layout.chunk_inputs_path`).
    Every byte of the chunk files also feeds ``digest`` (when given), so the fingerprint covers
    exactly what is sent.
    """

    def __init__(self, staging: ObjectStoragePath, max_requests: int, max_bytes: int, digest: Any) -> None:
        self.staging = staging
        self.max_requests = max_requests
        # Body bytes are line bytes + count + envelope; compare line bytes + count to this:
        self._max_lines_and_commas = max_bytes - _ENVELOPE
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

    def add(self, line: bytes, inputs_line: bytes) -> None:
        count = self._count + 1
        line_bytes = self._line_bytes + len(line)
        if self._handle is None:
            self._open()
        elif count > self.max_requests or line_bytes + count > self._max_lines_and_commas:
            self._close()
            self._open()
            count, line_bytes = 1, len(line)
        self._lines.append(line)
        self._twins.append(inputs_line)
        self._count = count
        self._line_bytes = line_bytes
        self._held_bytes += len(line)
        if self._held_bytes >= _WRITE_BUFFER:
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
        lines = b"\n".join(self._lines) + b"\n"
        if self.digest is not None:
            self.digest.update(lines)
        self._handle.write(lines)
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
        for handle in (self._handle, self._inputs):
            if handle is not None:
                handle.close()
        self._handle = self._inputs = None


def _invalid_row(problem: Problem, round_number: int) -> bytes:
    message = f"{problem.label} {problem.row}: {problem.rule}"
    return invalid_input_row(problem.custom_id, problem.row, round_number, message)


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
    row_label: str = "row",
    lenient: bool = False,
    limits: ModelLimits | None = None,
    diversion: Diversion | None = None,
) -> PreparedRound:
    """Validate, fingerprint and write every row to chunk files under ``staging`` in one pass.

    ``rows`` yields requests as mappings, raw JSON lines (bytes; ``b""`` for a blank line),
    :class:`InvalidRow` markers or ``BLANK``; rows are numbered from 1, blank ones included, so
    ``row_label="line"`` names file lines as an editor does. Without ``skip_invalid``, writing
    stops at the first invalid row but checking goes on, so the report lists every problem.
    With it, invalid rows are kept as ``invalid_input`` failure rows and the rest is chunked.
    A custom_id used twice is always a problem, even with ``skip_invalid``: which of the two
    rows is meant cannot be known. ``lenient`` (a job with beta headers) lets unknown
    parameters pass; ``limits`` refuses rows above a model's output maximum or context window.

    With a ``diversion`` every valid request is fingerprinted (the fingerprint goes into its
    inputs twin line) and may be kept out of the chunks: answered from the answer store, or
    held for the canary. The round's fingerprint then still covers every valid request in
    input order, sent or not, so a re-run over the same input matches the ledger whatever the
    store answers this time.
    """
    if max_requests < 1:
        raise ValueError(f"max_requests_per_batch must be >= 1, got {max_requests}")
    if max_bytes <= _ENVELOPE + 2:
        raise ValueError(f"max_bytes_per_batch must be larger than a request, got {max_bytes}")
    defaults = defaults or RequestDefaults()
    limits = limits or ModelLimits()
    encode = msgspec.json.Encoder().encode
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"max_requests={max_requests};max_bytes={max_bytes}\n".encode())
    tally = TokenTally(
        expected_output_tokens=expected_output_tokens, min_cacheable=limits.min_cacheable_tokens
    )
    # Without a diversion every valid line is written, and the writer digests what it writes.
    writer = _ChunkWriter(staging, max_requests, max_bytes, None if diversion is not None else digest)
    every_line = bytearray()  # with a diversion: every valid line, digested apart from the chunks
    staging.mkdir(parents=True, exist_ok=True)
    ids = UniqueIds()
    report = ProblemReport()
    invalid_out: IO[bytes] | None = None
    valid = 0
    failed = 0  # problems of rows whose input is gone: failure rows, never a refusal
    row = 0
    single_limit = max_bytes - _ENVELOPE - 1
    max_output = limits.max_output_tokens
    model_limits = limits.limits
    fingerprint_plain = diversion is not None and diversion.lenient
    # A plain line (see decode_plain) is written as read unless the defaults would change it.
    plain_lines = defaults.output_format is None
    fills_system = defaults.system is not None
    add_id = ids.add
    add_line = writer.add
    add_plain = tally.add_plain

    def problem_at(custom_id: str | None, rule: str, hint: str = "") -> Problem:
        return Problem(row, custom_id, rule, hint or hint_for(rule), row_label)

    try:
        with paused_gc():  # millions of acyclic rows: measured 2.5x faster
            for row, item in enumerate(rows, start=1):
                fields = None
                source_row = row
                if type(item) is Carried:
                    fields, source_row, item = item.input, item.row or row, item.request
                if item is BLANK or (type(item) is bytes and not item.strip()):
                    continue
                problem: Problem | None = None
                request: Any = item
                # The fast path: a plain line breaks no rule but the model's limits, checked here;
                # anything else (or a plain line past a limit) takes the general path below,
                # which also words the problem.
                typed = decode_plain(item) if plain_lines and type(item) is bytes else None
                if (
                    typed is not None
                    and len(item) <= single_limit
                    and not (fills_system and typed.params.system is None)
                ):
                    params = typed.params
                    tokens = plain_text_tokens(params.system, params.messages)
                    window, most, _ = model_limits(params.model)
                    if (window is None or tokens <= window) and (most is None or params.max_tokens <= most):
                        add_id(typed.custom_id, row)
                        valid += 1
                        if report.total > failed and not skip_invalid:
                            continue
                        if diversion is None:
                            add_line(item, inputs_line(typed.custom_id, source_row, fields))
                            add_plain(params.model, params.max_tokens, tokens, item)
                            continue
                        every_line += item
                        every_line += b"\n"
                        if len(every_line) >= _WRITE_BUFFER:
                            digest.update(every_line)
                            every_line.clear()
                        hashed = loads(item)["params"] if fingerprint_plain else params
                        verdict, fingerprint, key = diversion.route(hashed)
                        if verdict == SEND:
                            twin = inputs_line_with_fingerprint(
                                typed.custom_id, source_row, fields, fingerprint
                            )
                            writer.add(item, twin)
                            tally.add_plain(params.model, params.max_tokens, tokens, item)
                        elif verdict == TAKEN:
                            twin = inputs_line(typed.custom_id, source_row, fields)
                            diversion.take(key, fingerprint, twin, item)
                        else:
                            held = _PlainCount(params.model, params.max_tokens, tokens, item)
                            twin = inputs_line(typed.custom_id, source_row, fields)
                            diversion.hold(item, twin, fingerprint, held)
                        continue
                if isinstance(item, (bytes, bytearray, memoryview)):
                    try:
                        request = loads(item)
                    except ValueError as exc:
                        problem = problem_at(None, str(exc))
                if problem is None and isinstance(request, InvalidRow):
                    problem = problem_at(request.custom_id, request.rule, request.hint)
                typed_request = None
                if problem is None:
                    request = defaults.apply(request)
                    rule, typed_request = checked_request(
                        request, lenient=lenient, max_output_tokens=max_output
                    )
                    if rule is not None:
                        problem = problem_at(custom_id_of(request), rule)
                line = b""
                if problem is None:
                    try:
                        line = encode(request)
                    except (TypeError, ValueError, OverflowError) as exc:
                        problem = problem_at(custom_id_of(request), f"cannot be encoded as JSON: {exc}")
                    else:
                        if len(line) > single_limit:
                            problem = problem_at(
                                custom_id_of(request),
                                f"request is {len(line):,} bytes serialized; alone it exceeds the "
                                f"max_bytes_per_batch of {max_bytes:,}",
                            )
                if problem is None:
                    params = request["params"]
                    tokens = tally.measure(params)
                    window = limits.context_window(params["model"])
                    if window is not None and tokens > window:
                        problem = problem_at(
                            custom_id_of(request),
                            f"the request's input is about {tokens:,} tokens (estimated locally), above "
                            f"the {window:,}-token context window of {params['model']}; it could only fail",
                            "shorten the input of these rows, or choose a model with a larger context window",
                        )
                if problem is not None:
                    report.add(problem)
                    gone = isinstance(request, InvalidRow) and request.failed
                    failed += gone
                    if skip_invalid or gone:
                        if invalid_out is None:
                            invalid_out = (staging / INVALID_INPUT_FILE).open("wb")
                        invalid_out.write(_invalid_row(problem, round_number) + b"\n")
                    continue
                ids.add(request["custom_id"], row)
                valid += 1
                if report.total > failed and not skip_invalid:
                    continue  # nothing will be submitted: keep checking, stop writing
                twin = inputs_line(request["custom_id"], source_row, fields)
                may_cache = CACHE_CONTROL in line
                if diversion is not None:
                    assert typed_request is not None
                    every_line += line
                    every_line += b"\n"
                    if len(every_line) >= _WRITE_BUFFER:
                        digest.update(every_line)
                        every_line.clear()
                    verdict, fingerprint, key = diversion.route(
                        params if fingerprint_plain else typed_request.params
                    )
                    if verdict == TAKEN:
                        diversion.take(key, fingerprint, twin, line)
                        continue
                    if verdict == HOLD:
                        diversion.hold(line, twin, fingerprint, _Count(request["params"], may_cache))
                        continue
                    twin = with_fingerprint(twin, fingerprint)
                writer.add(line, twin)
                tally.add(request["params"], may_cache)
        duplicates = ids.duplicates(row_label)
        for duplicate in duplicates:
            report.add(duplicate)
        if duplicates:
            skip_invalid = False  # duplicates are never skipped
        if valid == 0 and not report.total:
            hint = "check that the input file or list is not empty"
            report.add(Problem(0, None, "the input has no requests", hint))
        fatal = (report.total > failed and not skip_invalid) or (bool(report.total) and valid == 0)
        if diversion is not None:
            digest.update(every_line)
            if not fatal:

                def send(line: bytes, twin: bytes) -> None:
                    writer.add(line, twin)

                diversion.finish(staging, tally, send, digest.hexdigest())
        chunks = writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        ids.close()
        if invalid_out is not None:
            invalid_out.close()
    return PreparedRound(
        chunks=[] if fatal else chunks,
        fatal=fatal,
        fingerprint=digest.hexdigest(),
        requests=sum(chunk.requests for chunk in chunks),
        bytes=sum(chunk.bytes for chunk in chunks),
        report=report,
        staging=staging,
        tally=tally,
        rows=row,
        invalid_file=staging / INVALID_INPUT_FILE if invalid_out is not None else None,
    )


@dataclass(frozen=True, slots=True)
class _PlainCount:
    """Counts a held plain request in an estimate (the round's, if it is sent after all)."""

    model: str
    max_tokens: int
    tokens: int
    line: bytes

    def __call__(self, tally: TokenTally) -> None:
        tally.add_plain(self.model, self.max_tokens, self.tokens, self.line)


@dataclass(frozen=True, slots=True)
class _Count:
    """Counts a held request in an estimate (the round's, if it is sent after all)."""

    params: Any
    may_cache: bool

    def __call__(self, tally: TokenTally) -> None:
        tally.add(self.params, self.may_cache)


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
