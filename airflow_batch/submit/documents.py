"""Documents and images in: list the files, read each once, upload each distinct file once, build requests.

``documents=`` names files in any object store the job can read: a glob
(``s3://bucket/invoices/2026-12-*/*.pdf``), a list of paths, or a records file (``.jsonl``)
whose ``path`` field names each file (its other fields are passthrough fields and template
fields). One request per file: the file's ``document`` or ``image`` block, then the text of
``prompt_template`` filled from the file's ``path``, ``name``, ``size``, ``modified`` and its
record's fields.

**Each file is read once** (bounded concurrency, ``upload_concurrency`` threads): its SHA-256,
its kind from its first bytes and its pages or pixels (:mod:`airflow_batch.media`) are taken
from the same bytes that are uploaded. A file the model cannot read, or over a limit (size,
pages, pixels), is an invalid row naming the file and the limit: as for every invalid row, the
task then fails before any batch is created (``skip_invalid=False``), or the row is one
``invalid_input`` failure (``skip_invalid=True``). A file listed and gone when it is read is
always one ``invalid_input`` failure row, never a failed job.

**Each distinct file is uploaded once** with the Files API (through the job's client and the one
retry policy), referenced by ``file_id``: two paths with the same bytes share one upload. Files
always go by ``file_id``, never inline: the tokens are the same either way, and an inline file
costs 4/3 of its size in every batch body that carries it (a 256 MB batch then holds a few
hundred PDFs) and again in every job that sends it.

**What survives a crash**: every upload is recorded in the job folder (``files/uploads-*.jsonl``:
path, hash, ``file_id``, bytes, facts) as uploads complete, a part at a time. A retry or a clear
of the task reuses the recorded uploads and uploads only what is missing; a round already bound to
batches reuses them even after they were deleted (its requests must stay byte-for-byte the same to
re-attach). With ``delete_files="after_gather"`` (default) the job deletes its uploads once it
has landed (finalize) and records the deleted ids (``files/deleted-*.jsonl``); with ``"keep"``
the uploads are also recorded under ``{output_path}/_files/``, and a later job reuses those the
Files API still lists instead of uploading them again. An upload whose response is lost is
uploaded again by the retry (the Files API has no idempotency key): the lost copy costs storage,
never tokens.

A submit refused after its uploads (invalid rows, budget) keeps them recorded, for its re-run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch.exceptions import BatchesApiError
from airflow_batch.folder import JobFolder
from airflow_batch.media import FILE_FACTS, MediaFacts, limit_problem, measure
from airflow_batch.storage import as_path, atomic_writer, iter_jsonl
from airflow_batch.submit.inputs import check_location, input_rows
from airflow_batch.submit.records import BLANK, custom_id_for, records_to_requests
from airflow_batch.submit.validation import InvalidRow

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi

DELETE_FILES = ("after_gather", "keep")
#: The field of a records file naming each file.
PATH_FIELD = "path"
#: Fields every file gives its prompt template and custom_id_from.
FILE_FIELDS = ("path", "name", "size", "modified")
#: New uploads recorded per part file: a crash loses at most this many uploads' record.
RECORD_EVERY = 500
_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class DocumentFile:
    """One listed file: where it is, its size and modified time if listed, its record's fields."""

    uri: str
    size: int | None = None
    modified: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def record(self, size: int) -> dict[str, Any]:
        """Return the fields the prompt template and ``custom_id_from`` see."""
        name = self.uri.rstrip("/").rsplit("/", 1)[-1]
        return {**self.fields, "path": self.uri, "name": name, "size": size, "modified": self.modified}


@dataclass(frozen=True)
class Upload:
    """One distinct file in the Files API."""

    sha256: str
    file_id: str
    bytes: int
    facts: MediaFacts
    path: str

    def to_json(self) -> dict[str, Any]:
        """Return the record line of this upload."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "file_id": self.file_id,
            "bytes": self.bytes,
            "facts": self.facts.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Upload:
        """Return the upload a record line describes."""
        return cls(
            obj["sha256"], obj["file_id"], obj["bytes"], MediaFacts.from_json(obj["facts"]), obj["path"]
        )


@dataclass(frozen=True)
class Refused:
    """Why a listed file is not sent; ``gone``: it was not found when read (one failed row, not a refusal)."""

    message: str
    gone: bool = False


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return str(value) if value is not None else None


def _glob(pattern: str) -> Iterator[DocumentFile]:
    path = as_path(pattern)
    full = str(path)
    prefix = full[: len(full) - len(path.path)] if full.endswith(path.path) else ""
    found = path.fs.glob(path.path, detail=True)
    if not found:
        raise FileNotFoundError(f"documents={pattern!r}: no file matches; check the pattern and the bucket")
    for key, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        yield DocumentFile(prefix + key.removeprefix(prefix), info.get("size"), _iso(modified))


def _from_record(record: Any, where: str) -> DocumentFile | InvalidRow:
    if isinstance(record, InvalidRow):
        return record
    if not isinstance(record, Mapping):
        return InvalidRow(f"{where}: a document record must be a JSON object with a {PATH_FIELD!r} field")
    path = record.get(PATH_FIELD)
    if not isinstance(path, str) or not path:
        return InvalidRow(
            f"{where}: the record has no {PATH_FIELD!r} field naming its file",
            hint=f"fields: {', '.join(sorted(map(str, record))[:20])}",
        )
    fields = {k: v for k, v in record.items() if k != PATH_FIELD}
    return DocumentFile(str(as_path(path)) if "://" not in path else path, fields=fields)


def list_documents(documents: Any) -> Iterator[DocumentFile | InvalidRow]:
    """Yield the files ``documents`` names, in a stable order (a glob's matches sorted by path).

    A string or ``ObjectStoragePath``: a records file when it ends in ``.jsonl`` (one record per
    line, its ``path`` field naming the file), else a glob or one file. A list: paths, or records.
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(documents, (str, ObjectStoragePath)):
        text = str(documents)
        if text.endswith(".jsonl"):
            for line, record in enumerate(input_rows(documents, "records"), start=1):
                if record is not BLANK:
                    yield _from_record(record, f"line {line}")
            return
        if _GLOB & set(as_path(text).path):
            yield from _glob(text)
        else:
            yield DocumentFile(str(as_path(text)))
        return
    if isinstance(documents, Mapping) or not isinstance(documents, Iterable):
        raise TypeError(
            f"documents must be a glob, a path, a .jsonl records file or a list, got {documents!r}"
        )
    for item in documents:
        if isinstance(item, (str, ObjectStoragePath)):
            yield DocumentFile(str(as_path(str(item))) if "://" not in str(item) else str(item))
        else:
            yield _from_record(item, "record")


class UploadRecord:
    """The uploads recorded in one folder: parts of JSON lines, each written once, read as one set."""

    def __init__(self, folder: ObjectStoragePath) -> None:
        self.folder = folder

    def _parts(self, prefix: str) -> Iterator[Any]:
        if not self.folder.exists():
            return
        for part in sorted(self.folder.iterdir(), key=str):
            if part.name.startswith(prefix) and part.name.endswith(".jsonl"):
                yield from iter_jsonl(part)

    def uploads(self) -> dict[str, Upload]:
        """Return the recorded uploads by content hash (the latest part wins)."""
        return {entry["sha256"]: Upload.from_json(entry) for entry in self._parts("uploads-")}

    def deleted(self) -> set[str]:
        """Return the file ids recorded as deleted."""
        return {entry["file_id"] for entry in self._parts("deleted-")}

    def _write(self, prefix: str, lines: Sequence[Mapping[str, Any]]) -> None:
        if not lines:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        encode = msgspec.json.Encoder().encode
        with atomic_writer(self.folder / f"{prefix}{uuid.uuid4().hex}.jsonl") as out:
            out.write(b"".join(encode(line) + b"\n" for line in lines))

    def add(self, uploads: Sequence[Upload]) -> None:
        """Record ``uploads`` (a new part)."""
        self._write("uploads-", [upload.to_json() for upload in uploads])

    def mark_deleted(self, file_ids: Sequence[str]) -> None:
        """Record ``file_ids`` as deleted (a new part)."""
        self._write("deleted-", [{"file_id": file_id} for file_id in file_ids])


@dataclass
class UploadStats:
    """What the upload step did, for the log and the benchmark."""

    files: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    reused: int = 0
    refused: int = 0
    seconds: float = 0.0


@dataclass
class DocumentPlan:
    """Every listed file with its upload, or why it cannot be sent; in listing order."""

    rows: list[tuple[DocumentFile | InvalidRow, Upload | Refused | None, int]]
    stats: UploadStats

    def facts_by_id(self) -> dict[str, MediaFacts]:
        """Return ``file_id -> facts`` of the plan's uploads (for the estimate's token counts)."""
        return {u.file_id: u.facts for _, u, _ in self.rows if isinstance(u, Upload)}

    @contextmanager
    def counted(self) -> Iterator[None]:
        """Count the plan's file blocks by their pages and pixels while inside (the estimate)."""
        facts = self.facts_by_id()
        token = FILE_FACTS.set(facts.get)
        try:
            yield
        finally:
            FILE_FACTS.reset(token)


def _read(doc: DocumentFile) -> bytes | Refused:
    try:
        data: bytes = as_path(doc.uri).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return Refused(f"{doc.uri}: the file is gone (listed, then not found when read)", gone=True)
    return data


def prepare_documents(
    api: BatchesApi,
    documents: Any,
    *,
    job: ObjectStoragePath,
    bound: bool,
    kept: ObjectStoragePath | None,
    concurrency: int,
    log: logging.Logger,
) -> DocumentPlan:
    """Read every file once, upload each distinct readable file not uploaded yet; return the plan.

    :param bound: the round is bound to batches already: reuse every recorded upload, deleted or not.
    :param kept: the record of uploads kept for later jobs (``delete_files="keep"``), or None.
    """
    started = time.perf_counter()
    record = UploadRecord(JobFolder(job).uploads_dir)
    known = record.uploads()
    if not bound:
        gone = record.deleted()
        known = {sha: upload for sha, upload in known.items() if upload.file_id not in gone}
    kept_record = UploadRecord(kept) if kept is not None else None
    if kept_record is not None:
        shared = kept_record.uploads()
        if shared:
            live = api.file_ids()  # a kept file deleted by hand is uploaded again
            known = {**{s: u for s, u in shared.items() if u.file_id in live}, **known}
    stats = UploadStats()
    lock = threading.Lock()
    inflight: dict[str, Future[Upload | Refused]] = {}
    fresh: list[Upload] = []

    def handle(doc: DocumentFile) -> tuple[Upload | Refused, int]:
        data = _read(doc)
        if isinstance(data, Refused):
            return data, doc.size or 0
        facts = measure(data)
        problem = facts if isinstance(facts, str) else limit_problem(facts, len(data))
        if problem is not None or not isinstance(facts, MediaFacts):
            return Refused(f"{doc.uri}: {problem}"), len(data)
        sha = hashlib.sha256(data).hexdigest()
        with lock:
            owner = sha not in inflight
            if owner:
                inflight[sha] = Future()
            future = inflight[sha]
        if not owner:
            return future.result(), len(data)
        try:
            upload: Upload | Refused
            if sha in known:
                upload = known[sha]
            else:
                name = doc.uri.rstrip("/").rsplit("/", 1)[-1]
                try:
                    file_id = api.upload_file(name, data, facts.media_type)
                except BatchesApiError as exc:
                    if exc.transient:
                        raise
                    upload = Refused(f"{doc.uri}: the Files API refused the upload: {exc}")
                else:
                    upload = Upload(sha, file_id, len(data), facts, doc.uri)
                    with lock:
                        fresh.append(upload)
                        stats.uploaded += 1
                        stats.uploaded_bytes += len(data)
            future.set_result(upload)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        return upload, len(data)

    listed = list(list_documents(documents))
    results: list[tuple[Upload | Refused | None, int]] = [(None, 0)] * len(listed)
    written = 0

    def flush() -> None:
        nonlocal written
        with lock:
            batch = fresh[written:]
            written = len(fresh)
        record.add(batch)
        if kept_record is not None:
            kept_record.add(batch)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="upload")
    try:
        futures = {pool.submit(handle, d): i for i, d in enumerate(listed) if isinstance(d, DocumentFile)}
        for done in as_completed(futures):
            results[futures[done]] = done.result()
            if len(fresh) - written >= RECORD_EVERY:
                flush()
    finally:
        # On a failure (the retry budget spent on a transient fault) the files not started are
        # dropped, not read and uploaded first; what was uploaded is recorded for the retry.
        pool.shutdown(wait=True, cancel_futures=True)
        flush()
    rows: list[tuple[DocumentFile | InvalidRow, Upload | Refused | None, int]] = []
    for doc, (outcome, size) in zip(listed, results, strict=True):
        rows.append((doc, outcome, size))
        if isinstance(doc, DocumentFile):
            stats.files += 1
            stats.refused += isinstance(outcome, Refused)
    stats.reused = sum(isinstance(o, Upload) for _, o, _ in rows) - stats.uploaded
    stats.seconds = time.perf_counter() - started
    log.info(
        "documents: %d file(s) listed, %d uploaded (%d bytes) in %.1f s, %d reused an earlier upload, "
        "%d refused",
        stats.files,
        stats.uploaded,
        stats.uploaded_bytes,
        stats.seconds,
        stats.reused,
        stats.refused,
    )
    return DocumentPlan(rows, stats)


def file_block(upload: Upload) -> dict[str, Any]:
    """Return the content block referencing an upload."""
    return {"type": upload.facts.block_type, "source": {"type": "file", "file_id": upload.file_id}}


def document_requests(
    plan: DocumentPlan,
    *,
    prompt_template: str,
    custom_id_from: Any = None,
    passthrough_fields: Sequence[str] = (),
) -> Iterator[Any]:
    """Yield one request per listed file, in order: its block then the prompt (or an invalid row).

    The ``custom_id`` is made from ``custom_id_from`` (default: the file's path), as for records.
    """
    key_from = custom_id_from if custom_id_from is not None else "{path}"
    blocks: dict[int, dict[str, Any]] = {}

    def rows() -> Iterator[Any]:
        for index, (doc, outcome, size) in enumerate(plan.rows):
            if isinstance(doc, InvalidRow):
                yield doc
            elif isinstance(outcome, Upload):
                blocks[index] = file_block(outcome)
                yield {**doc.record(size), "_row": index}
            else:
                assert isinstance(outcome, Refused)
                # A file gone since it was listed is one failed row; any other problem refuses the round.
                hint = "fix or remove the file"
                yield InvalidRow(outcome.message, custom_id_for(doc.uri), hint, failed=outcome.gone)

    def build(record: Mapping[str, Any]) -> dict[str, Any]:
        text = prompt_template.format_map({k: v for k, v in record.items() if k != "_row"})
        block = blocks.pop(record["_row"])
        return {"messages": [{"role": "user", "content": [block, {"type": "text", "text": text}]}]}

    yield from records_to_requests(
        rows(),
        request_builder=build,
        custom_id_from=key_from,
        passthrough_fields=passthrough_fields,
    )


def delete_uploads(api: BatchesApi, job: ObjectStoragePath, log: logging.Logger) -> int:
    """Delete the job's uploads from the Files API (once the job has landed); return how many.

    Idempotent: ids recorded as deleted are skipped, one already gone counts as deleted.
    """
    record = UploadRecord(JobFolder(job).uploads_dir)
    done = record.deleted()
    pending = sorted({u.file_id for u in record.uploads().values()} - done)
    deleted: list[str] = []
    try:
        for file_id in pending:
            api.delete_file(file_id)
            deleted.append(file_id)
    finally:
        record.mark_deleted(deleted)
    log.info("documents: deleted %d uploaded file(s) of %s", len(deleted), job)
    return len(deleted)


def require_documents(
    task_id: str,
    documents: Any,
    requests: Any,
    records: Any,
    prompt_template: str | None,
    delete_files: str,
    upload_concurrency: int,
) -> None:
    """Refuse, when the DAG is parsed, a ``documents=`` job that cannot run."""
    if upload_concurrency < 1:
        raise ValueError(f"{task_id}: upload_concurrency must be >= 1, got {upload_concurrency}")
    if requests is not None or records is not None:
        raise ValueError(f"{task_id}: give exactly one of requests=, records= or documents=")
    if prompt_template is None:
        raise ValueError(f"{task_id}: documents= needs prompt_template= (the text sent with each file)")
    if delete_files not in DELETE_FILES:
        raise ValueError(f"{task_id}: delete_files must be one of {DELETE_FILES}, got {delete_files!r}")
    check_location(documents, f"{task_id}: documents")
