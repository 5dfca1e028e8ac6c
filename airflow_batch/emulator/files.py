"""The emulator's Files API store: uploaded files, their metadata, and what the model sees of them.

Each upload is kept under ``{data_dir}/files/``: its bytes (``{id}``) and its metadata
(``{id}.json``: the API's ``FileMetadata`` fields, its workspace, and its
:class:`~airflow_batch.media.MediaFacts` read from the bytes: a PDF's pages, an image's pixels).
A file belongs to the workspace that uploaded it; another workspace's id is not found, as for
batches. Files are durable across restarts; a delete removes both. Uploaded files cannot be
downloaded (the API serves downloads only of files that skills or code execution created).

Requests reference a file by ``file_id``; :meth:`FileStore.resolver` gives the token counting
(:data:`airflow_batch.media.FILE_FACTS`) and :func:`file_problem` the per-request check: an
unknown or deleted id, or a file in the wrong kind of block, is that request's
``invalid_request_error``. Requests are answered when their batch is created, so a file
deleted after the create no longer changes that batch's results.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from airflow_batch.emulator.processing import rfc3339
from airflow_batch.media import FILE_FACTS, MediaFacts, measure


class FileStore:
    """The uploaded files of every workspace; safe to use from many threads."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        for meta in self.root.glob("*.json"):
            record = json.loads(meta.read_text())
            self._files[record["id"]] = record
        self.uploads = 0

    def add(self, data: bytes, filename: str, mime_type: str | None, workspace: str) -> dict[str, Any]:
        """Store an upload; return its record (metadata, workspace and facts)."""
        file_id = "file_" + secrets.token_hex(12)
        facts = measure(data, mime_type)
        readable = facts if isinstance(facts, MediaFacts) else None
        record: dict[str, Any] = {
            "id": file_id,
            "type": "file",
            "filename": filename,
            "mime_type": facts.media_type
            if isinstance(facts, MediaFacts)
            else (mime_type or "application/octet-stream"),
            "size_bytes": len(data),
            "created_at": time.time(),
            "downloadable": False,
            "workspace": workspace,
            "facts": readable.to_json() if readable else None,
        }
        (self.root / file_id).write_bytes(data)
        (self.root / f"{file_id}.json").write_text(json.dumps(record))
        with self._lock:
            self._files[file_id] = record
            self.uploads += 1
        return record

    def get(self, file_id: str, workspace: str) -> dict[str, Any] | None:
        """Return the record of ``file_id`` in ``workspace``, or None."""
        record = self._files.get(file_id)
        return record if record is not None and record["workspace"] == workspace else None

    def delete(self, file_id: str, workspace: str) -> bool:
        """Delete ``file_id`` of ``workspace``; return whether it existed."""
        with self._lock:
            if self.get(file_id, workspace) is None:
                return False
            del self._files[file_id]
        for path in (self.root / file_id, self.root / f"{file_id}.json"):
            path.unlink(missing_ok=True)
        return True

    def newest_first(self, workspace: str) -> list[dict[str, Any]]:
        """Return the workspace's file records, newest first."""
        with self._lock:
            records = [r for r in self._files.values() if r["workspace"] == workspace]
        return sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)

    def count(self) -> int:
        """Return how many files are stored (every workspace)."""
        return len(self._files)

    def reset(self) -> None:
        """Forget every file."""
        with self._lock:
            for file_id in list(self._files):
                for path in (self.root / file_id, self.root / f"{file_id}.json"):
                    path.unlink(missing_ok=True)
            self._files.clear()
            self.uploads = 0

    def resolver(self, workspace: str) -> Callable[[str], MediaFacts | None]:
        """Return the ``file_id -> facts`` lookup of ``workspace`` (None: unknown, or not readable)."""

        def resolve(file_id: str) -> MediaFacts | None:
            record = self.get(file_id, workspace)
            facts = record.get("facts") if record is not None else None
            return MediaFacts.from_json(facts) if facts else None

        return resolve


def metadata(record: dict[str, Any]) -> dict[str, Any]:
    """Return the API's ``FileMetadata`` object of a record."""
    return {
        "id": record["id"],
        "type": "file",
        "filename": record["filename"],
        "mime_type": record["mime_type"],
        "size_bytes": record["size_bytes"],
        "created_at": rfc3339(record["created_at"]),
        "downloadable": record["downloadable"],
    }


def not_found(file_id: Any) -> str:
    """Return the API's message for a file id that does not resolve."""
    return f"File not found: {file_id!r} does not exist or you do not have access to it"


def _file_blocks(content: Any) -> Iterator[tuple[str, Any]]:
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        source = block.get("source")
        if kind in ("image", "document") and isinstance(source, dict) and source.get("type") == "file":
            yield kind, source.get("file_id")
        elif kind == "tool_result":
            yield from _file_blocks(block.get("content"))


def file_problem(messages: Sequence[Any], store: FileStore, workspace: str) -> str | None:
    """Return the ``invalid_request_error`` of a request whose file blocks do not resolve, or None."""
    for message in messages:
        for kind, file_id in _file_blocks(getattr(message, "content", None)):
            record = store.get(file_id, workspace) if isinstance(file_id, str) else None
            if record is None:
                return not_found(file_id)
            facts = record.get("facts")
            if not facts:
                mime = record["mime_type"]
                return f"File {file_id!r} ({mime}) is not a type the model can read in a {kind} block"
            expected = MediaFacts.from_json(facts).block_type
            if expected != kind:
                mime = record["mime_type"]
                return f"File {file_id!r} is {mime}: reference it with a {expected} block, not {kind}"
    return None


_SCOPE: ContextVar[tuple[FileStore, str] | None] = ContextVar("emulator_file_scope", default=None)


@contextmanager
def files_scope(store: FileStore, workspace: str) -> Iterator[None]:
    """Answer requests with ``workspace``'s files: token counts and :func:`scoped_file_problem` see them."""
    scope = _SCOPE.set((store, workspace))
    facts = FILE_FACTS.set(store.resolver(workspace))
    try:
        yield
    finally:
        FILE_FACTS.reset(facts)
        _SCOPE.reset(scope)


def scoped_file_problem(messages: Sequence[Any]) -> str | None:
    """Return :func:`file_problem` in the current :func:`files_scope` (no scope: no file is known)."""
    scope = _SCOPE.get()
    if scope is not None:
        return file_problem(messages, *scope)
    for message in messages:
        for _, file_id in _file_blocks(getattr(message, "content", None)):
            return not_found(file_id)
    return None
