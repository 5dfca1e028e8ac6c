"""Object storage access: paths from URIs, atomic writes, JSON and JSONL files.

Every file is written atomically: to a temporary sibling first, then renamed into place,
so a crash mid-write never leaves a file that looks complete. On object stores (s3, gs)
an upload becomes visible only when it completes, and the rename is a server-side copy.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import IO, Any

import msgspec
from airflow.sdk import ObjectStoragePath

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def as_path(uri: str | ObjectStoragePath) -> ObjectStoragePath:
    """Return ``uri`` as an ``ObjectStoragePath``; a bare local path becomes ``file://``."""
    if isinstance(uri, ObjectStoragePath):
        return uri
    if "://" not in uri:
        uri = "file://" + str(uri)
    return ObjectStoragePath(uri)


@contextlib.contextmanager
def atomic_writer(path: ObjectStoragePath) -> Iterator[IO[bytes]]:
    """Yield a binary file that appears at ``path`` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("wb") as handle:
            yield handle
        tmp.rename(path)
    except BaseException:
        with contextlib.suppress(Exception):
            tmp.unlink()
        raise


def copy_file(source: ObjectStoragePath, target: ObjectStoragePath, block: int = 8 << 20) -> None:
    """Copy ``source`` to ``target`` atomically, a block at a time (across stores too)."""
    with source.open("rb") as src, atomic_writer(target) as out:
        while chunk := src.read(block):
            out.write(chunk)


def write_json(path: ObjectStoragePath, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_writer(path) as handle:
        handle.write(msgspec.json.format(_encoder.encode(obj), indent=2))


def read_json(path: ObjectStoragePath) -> Any:
    """Return the JSON document stored at ``path``."""
    return _decoder.decode(path.read_bytes())


def iter_lines(path: ObjectStoragePath) -> Iterator[bytes]:
    """Yield every line of a file without its line ending, blank ones as ``b""``, in constant memory."""
    with path.open("rb") as f:
        for line in f:
            yield line.rstrip(b"\r\n")


def iter_jsonl_lines(path: ObjectStoragePath) -> Iterator[bytes]:
    """Yield the non-empty lines of a JSONL file, in constant memory."""
    for line in iter_lines(path):
        if line.strip():
            yield line


def iter_jsonl(path: ObjectStoragePath) -> Iterator[Any]:
    """Yield the decoded rows of a JSONL file, in constant memory."""
    for line in iter_jsonl_lines(path):
        yield _decoder.decode(line)
