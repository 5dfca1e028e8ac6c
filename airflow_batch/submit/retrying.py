"""What a retry round resubmits: the retryable failures of a round, as the requests first sent.

Memory stays one batch's worth, whatever the job's size: a round's batch ``i`` carries the
requests of chunk ``i``, so its failures are read batch by batch and matched against that
chunk's lines (and their inputs twin, which keeps each request's input row and passthrough
fields for the next round's rows).

The gather of a round does that match once, right after landing (:func:`keep_retry_requests`),
and keeps the result in ``round-N/retry_requests.jsonl``: the chunk files can then go (they
hold every request's full prompt) while a retry round, or a clear of one, still finds exactly
the bytes first sent. A round gathered without that file is matched against its chunks then.

A paused turn (``stop_reason: pause_turn``: a server tool's loop hit its limit) is continued,
as the API documents: the request is sent again with the partial assistant content appended
to its messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from airflow_batch.folder import JobFolder
from airflow_batch.rows.contract import failure_row_decoder
from airflow_batch.storage import as_path, atomic_writer, iter_jsonl_lines
from airflow_batch.submit.records import Carried
from airflow_batch.submit.shared_prompts import iter_sent_lines


class _Request(msgspec.Struct, gc=False):
    custom_id: str


class _Input(msgspec.Struct, gc=False):
    custom_id: str
    row: int | None = None
    input: msgspec.Raw = msgspec.Raw()  # absent: empty (see gathering._InputLine)


class _Kept(msgspec.Struct, gc=False):
    """A line of ``retry_requests.jsonl``: the request as the next round sends it, and what it carries."""

    request: msgspec.Raw
    row: int | None = None
    input: msgspec.Raw = msgspec.Raw()  # absent: no passthrough fields (as in _Input)


_request_decoder = msgspec.json.Decoder(_Request)
_kept_decoder = msgspec.json.Decoder(_Kept)
_input_decoder = msgspec.json.Decoder(_Input)
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def retryable_failures(path: Any) -> dict[str, msgspec.Raw | None]:
    """Return ``custom_id -> partial content to continue (a paused turn) or None`` of a failures part."""
    retry: dict[str, msgspec.Raw | None] = {}
    part = as_path(path)
    if not part.exists():
        return retry
    for line in iter_jsonl_lines(part):
        row = failure_row_decoder.decode(line)
        if row.retryable and row.custom_id is not None:  # only an invalid input row lacks one
            paused = row.result_type == "paused" and isinstance(row.content, msgspec.Raw)
            retry[row.custom_id] = row.content if paused else None  # type: ignore[assignment]
    return retry


def continue_turn(line: bytes, content: msgspec.Raw) -> bytes:
    """Return the request line with the paused turn's partial assistant content appended."""
    request = _decode(line)
    request["params"]["messages"].append({"role": "assistant", "content": _decode(content)})
    return _encode(request)


def original_requests(manifest: Mapping[str, Any]) -> Iterator[Carried]:
    """Yield the retryable failures of a gathered round as the requests first sent, batch by batch.

    Each comes with its input row and passthrough fields; a paused turn comes continued. Read from
    what the gather kept (:func:`keep_retry_requests`), else from the round's chunk files.
    """
    kept = JobFolder(manifest["job_dir"]).retry_requests_path(int(manifest["round"]))
    if not kept.exists():
        yield from _from_chunks(manifest)
        return
    for line in iter_jsonl_lines(kept):
        request = _kept_decoder.decode(line)
        yield Carried(bytes(request.request), request.input or None, request.row)


def keep_retry_requests(manifest: Mapping[str, Any]) -> int:
    """Write the requests a retry of the gathered round would send to ``retry_requests.jsonl``;
    return how many.

    Done before the round's chunk files are removed. A round whose file exists already (a gather
    run again after its chunks went) keeps it: its failures have not changed.
    """
    path = JobFolder(manifest["job_dir"]).retry_requests_path(int(manifest["round"]))
    if path.exists():
        return sum(1 for _ in iter_jsonl_lines(path))
    count = 0
    with atomic_writer(path) as out:
        for carried in _from_chunks(manifest):
            kept = {"request": msgspec.Raw(carried.request), "row": carried.row}
            if carried.input is not None:
                kept["input"] = carried.input
            out.write(_encode(kept) + b"\n")
            count += 1
    return count


def _from_chunks(manifest: Mapping[str, Any]) -> Iterator[Carried]:
    """Yield the retryable failures of a gathered round matched against its chunk files."""
    folder = JobFolder(manifest["job_dir"])
    round_number = int(manifest["round"])
    for record in manifest.get("batches", []):
        retry = retryable_failures(folder.failures_part(round_number, record["batch_id"]))
        if not retry:
            continue
        inputs = folder.chunk_inputs_lines(round_number, int(record["chunk"]))
        for line in iter_sent_lines(as_path(record["chunk_path"])):
            meta = _input_decoder.decode(next(inputs)) if inputs is not None else None
            custom_id = _request_decoder.decode(line).custom_id
            if custom_id not in retry:
                continue
            content = retry[custom_id]
            yield Carried(
                continue_turn(line, content) if content is not None else line,
                (meta.input or None) if meta is not None else None,
                meta.row if meta is not None else None,
            )
