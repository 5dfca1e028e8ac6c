"""One streaming pass over the input: validate, fingerprint and write each request to its chunk.

A JSONL input line that is already a valid, complete request with a plain-text prompt is
written as it was read (the fast path: one typed decode, no re-encoding); any other row is
decoded, completed with the defaults, checked and encoded as compact UTF-8 JSON. Lines go to
chunk files through a :class:`~airflow_batch.submit.chunk_files.ChunkWriter` (where the chunk
boundaries and the create body are decided). The fingerprint is a hash of the batch limits and
of every chunk file's bytes.

Memory is bounded whatever the input size: rows stream from the input to the chunk files
through a small write buffer, and the job-wide custom_id check spills the ids to disk
(:class:`~airflow_batch.submit.validation.UniqueIds`).

Files are written to a staging folder first. The caller moves them into the round's
``chunks/`` folder only once the round is known to be valid and new (see
:mod:`airflow_batch.submit.round`), so a failed or refused attempt never overwrites the chunk
files of batches already submitted. Storage paths are passed in: this module plans and
writes, it never decides where.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import msgspec

from airflow_batch.layout import INVALID_INPUT_FILE
from airflow_batch.memory import paused_gc
from airflow_batch.rows.contract import invalid_input_row
from airflow_batch.rules.params import decode_plain, loads
from airflow_batch.rules.tokens import plain_text_tokens
from airflow_batch.submit.chunk_files import (
    ENVELOPE,
    WRITE_BUFFER,
    ChunkInfo,
    ChunkWriter,
    inputs_line,
    inputs_line_with_fingerprint,
    with_fingerprint,
)
from airflow_batch.submit.diversion import HOLD, SEND, TAKEN, Diversion, HeldCount, PlainCount
from airflow_batch.submit.estimate import TokenTally
from airflow_batch.submit.model_limits import ModelLimits
from airflow_batch.submit.records import BLANK, Carried, RequestDefaults
from airflow_batch.submit.validation import (
    InvalidRow,
    Problem,
    ProblemReport,
    UniqueIds,
    checked_request,
    custom_id_of,
    hint_for,
)

#: A request line that may ask for caching holds this (the cache walk is skipped otherwise).
CACHE_CONTROL = b'"cache_control"'
#: Ids of valid rows gathered before they go to the uniqueness check, when no line is written.
IDS_PER_SETTLE = 1 << 14

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


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
    if max_bytes <= ENVELOPE + 2:
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
    writer = ChunkWriter(staging, max_requests, max_bytes, None if diversion is not None else digest)
    every_line = bytearray()  # with a diversion: every valid line, digested apart from the chunks
    staging.mkdir(parents=True, exist_ok=True)
    ids = UniqueIds()
    report = ProblemReport()
    invalid_out: IO[bytes] | None = None
    valid = 0
    failed = 0  # problems of rows whose input is gone: failure rows, never a refusal
    row = 0
    single_limit = max_bytes - ENVELOPE - 1
    max_output = limits.max_output_tokens
    model_limits = limits.limits
    fingerprint_plain = diversion is not None and diversion.lenient
    # A plain line (see decode_plain) is written as read unless the defaults would change it.
    plain_lines = defaults.output_format is None
    fills_system = defaults.system is not None
    add_plain = tally.add_plain
    writing = True  # False once a row will refuse the round: keep checking, stop writing
    # The rows' ids and lines wait in these lists and are handed over a run at a time
    # (settle): one call per run instead of two per request.
    id_list: list[str] = []
    id_rows: list[int] = []
    lines: list[bytes] = []
    twins: list[bytes] = []
    add_id, add_id_row = id_list.append, id_rows.append
    add_line, add_twin = lines.append, twins.append
    held_bytes = 0
    limits_of = ""  # the model whose limits are window and most (rows of one model are the rule)
    window: int | None = None
    most: int | None = None

    # Plain requests of one model and max_tokens in a row are counted as one run (run_* below).
    run_model = ""
    run_max_tokens = run_requests = run_tokens = 0

    def settle() -> None:
        nonlocal valid
        valid += len(id_list)
        ids.add_many(id_list, id_rows)
        writer.add_many(lines, twins)
        for pending in (id_list, id_rows, lines, twins):
            pending.clear()

    def end_run() -> None:
        if run_requests:
            tally.add_plain_run(run_model, run_max_tokens, run_requests, run_tokens)

    def count_run(model: str, max_tokens: int, tokens: int, line: bytes) -> None:
        """Count the run so far and start another with this request (or sample it)."""
        nonlocal run_model, run_max_tokens, run_requests, run_tokens
        end_run()
        if tally.sampling:
            add_plain(model, max_tokens, tokens, line)
            run_model, run_requests = "", 0
        else:
            run_model, run_max_tokens, run_requests, run_tokens = model, max_tokens, 1, tokens

    def problem_at(custom_id: str | None, rule: str, hint: str = "") -> Problem:
        return Problem(row, custom_id, rule, hint or hint_for(rule), row_label)

    try:
        with paused_gc():  # millions of acyclic rows: measured 2.5x faster
            for row, item in enumerate(rows, start=1):
                fields = None
                source_row = row
                if type(item) is Carried:
                    fields, source_row, item = item.input, item.row or row, item.request
                if item is BLANK or (type(item) is bytes and item[:1] != b"{" and not item.strip()):
                    continue
                if held_bytes >= WRITE_BUFFER or len(id_list) >= IDS_PER_SETTLE:
                    settle()
                    held_bytes = 0
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
                    if params.model != limits_of:
                        limits_of = params.model
                        window, most, _ = model_limits(limits_of)
                    if (window is None or tokens <= window) and (most is None or params.max_tokens <= most):
                        add_id(typed.custom_id)
                        add_id_row(row)
                        if not writing:
                            continue
                        if diversion is None:
                            add_line(item)
                            add_twin(
                                b'{"custom_id":"%s","row":%d}' % (typed.custom_id.encode(), source_row)
                                if fields is None
                                else inputs_line(typed.custom_id, source_row, fields)
                            )
                            held_bytes += len(item)
                            if params.max_tokens == run_max_tokens and params.model == run_model:
                                run_requests += 1
                                run_tokens += tokens
                            else:
                                count_run(params.model, params.max_tokens, tokens, item)
                            continue
                        every_line += item
                        every_line += b"\n"
                        if len(every_line) >= WRITE_BUFFER:
                            digest.update(every_line)
                            every_line.clear()
                        hashed = loads(item)["params"] if fingerprint_plain else params
                        verdict, fingerprint, key = diversion.route(hashed)
                        if verdict == SEND:
                            twin = inputs_line_with_fingerprint(
                                typed.custom_id, source_row, fields, fingerprint
                            )
                            add_line(item)
                            add_twin(twin)
                            held_bytes += len(item)
                            add_plain(params.model, params.max_tokens, tokens, item)
                        elif verdict == TAKEN:
                            twin = inputs_line(typed.custom_id, source_row, fields)
                            diversion.take(key, fingerprint, twin, item)
                        else:
                            held = PlainCount(params.model, params.max_tokens, tokens, item)
                            twin = inputs_line(typed.custom_id, source_row, fields)
                            diversion.hold(item, twin, fingerprint, held)
                        continue
                problem: Problem | None = None
                request: Any = item
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
                    writing = skip_invalid or report.total <= failed
                    if skip_invalid or gone:
                        if invalid_out is None:
                            invalid_out = (staging / INVALID_INPUT_FILE).open("wb")
                        invalid_out.write(_invalid_row(problem, round_number) + b"\n")
                    continue
                add_id(request["custom_id"])
                add_id_row(row)
                if not writing:
                    continue
                twin = inputs_line(request["custom_id"], source_row, fields)
                may_cache = CACHE_CONTROL in line
                if diversion is not None:
                    assert typed_request is not None
                    every_line += line
                    every_line += b"\n"
                    if len(every_line) >= WRITE_BUFFER:
                        digest.update(every_line)
                        every_line.clear()
                    verdict, fingerprint, key = diversion.route(
                        params if fingerprint_plain else typed_request.params
                    )
                    if verdict == TAKEN:
                        diversion.take(key, fingerprint, twin, line)
                        continue
                    if verdict == HOLD:
                        diversion.hold(line, twin, fingerprint, HeldCount(request["params"], may_cache))
                        continue
                    twin = with_fingerprint(twin, fingerprint)
                add_line(line)
                add_twin(twin)
                held_bytes += len(line)
                tally.add(request["params"], may_cache)
        settle()
        end_run()
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
