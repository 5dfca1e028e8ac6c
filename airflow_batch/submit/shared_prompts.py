"""Long prompts that many requests of a round share, stored once beside the chunk files.

A job of 30,000 requests with the same 47 KB system prompt would otherwise write that prompt
30,000 times. When a long value of a request (its ``system``, or a block of its first message,
e.g. a cached document) is met a second time, its exact JSON bytes are written once to
``shared/<sha256>.json`` next to the chunk files, and each later request line holding it stores
a reference instead::

    {"$shared":1,"custom_id":"a","params":{..."system":{"$shared":"<sha256>"},...}}

The leading ``"$shared":1`` marks a line holding references. No request can have that key (a
request has only ``custom_id`` and ``params``), and a line that already holds the reference's
bytes is never compacted, so every reference in a marked line is one of ours and expanding it
(:func:`expand_line`) gives back the line byte for byte. What is sent, the byte sizes, the
round's fingerprint and the requests' fingerprints are those of the expanded lines.

Which values are shared is decided in the pass, in order, in bounded memory: at most
``MAX_SHARED`` values a round and ``MAX_SEEN`` candidates remembered by their hash. A value is
written once, beside its first reference; the request that first held it keeps it inline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from airflow_batch.layout import shared_prompt_path

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: The shortest value worth a file of its own (a reference is 78 bytes).
MIN_SHARED_BYTES = 1024
#: Most values shared in one round, and most candidates remembered (32 bytes each).
MAX_SHARED = 256
MAX_SEEN = 100_000
#: Values tried against each long line before its own values are looked for.
_TRIED = 8
LINE_MARK = b'{"$shared":1,'
_REF_START = b'{"$shared":"'
_REF_END = b'"}'
_DIGEST_CHARS = 64


class _Message(msgspec.Struct):
    content: msgspec.Raw


class _Params(msgspec.Struct):
    system: msgspec.Raw = msgspec.Raw(b"")
    messages: list[_Message] = []


class _Request(msgspec.Struct):
    params: _Params


_request_values = msgspec.json.Decoder(_Request).decode
_blocks = msgspec.json.Decoder(list[msgspec.Raw]).decode


def _candidates(line: bytes) -> list[bytes]:
    """Return the long values of a request line that may be shared: its system, its first message's blocks."""
    try:
        params = _request_values(line).params
    except msgspec.DecodeError:
        return []
    found = [bytes(params.system)]
    if params.messages:
        content = bytes(params.messages[0].content)
        found += [bytes(block) for block in _blocks(content)] if content[:1] == b"[" else [content]
    return [value for value in found if len(value) >= MIN_SHARED_BYTES]


def _locate(line: bytes, value: bytes) -> int:
    """Return where ``value`` first is in ``line``, or -1.

    Looks for its first bytes, then compares the rest in place: a search for a 47 KB needle
    costs a millisecond, this a few microseconds.
    """
    head = value[:64]
    at = line.find(head)
    while at >= 0 and not line.startswith(value, at):
        at = line.find(head, at + 1)
    return at


class SharedPrompts:
    """Compacts the request lines of one round's chunk files, writing each shared value once."""

    def __init__(self, folder: ObjectStoragePath) -> None:
        self.folder = folder
        self._shared: dict[bytes, str] = {}  # value -> its digest, most recently used last
        self._seen: set[int] = set()  # hash() of values met once: cheaper than a digest each

    def compact(self, line: bytes) -> tuple[bytes, list[str]]:
        """Return the line to store and the digests of the shared values it references."""
        if line[:1] != b"{" or _REF_START in line:
            return line, []
        used = []
        for value in list(reversed(self._shared))[:_TRIED]:
            at = _locate(line, value)
            if at >= 0:
                used.append((at, value))
        if not used:
            for value in _candidates(line):
                seen = hash(value)
                if seen in self._seen and len(self._shared) < MAX_SHARED:
                    self._write(hashlib.sha256(value).hexdigest(), value)
                    used.append((_locate(line, value), value))
                elif len(self._seen) < MAX_SEEN:
                    self._seen.add(seen)
        if not used:
            return line, []
        pieces = [LINE_MARK]
        digests = []
        end = 1
        for at, value in sorted(used):
            if at < end:  # overlaps a value already replaced
                continue
            digest = self._shared.pop(value)
            self._shared[value] = digest  # most recently used: tried first next time
            pieces += [line[end:at], _REF_START, digest.encode(), _REF_END]
            digests.append(digest)
            end = at + len(value)
        pieces.append(line[end:])
        return b"".join(pieces), digests

    def _write(self, digest: str, value: bytes) -> None:
        path = shared_prompt_path(self.folder, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.write(value)
        self._shared[value] = digest


def load_shared(chunk: ObjectStoragePath, digests: tuple[str, ...] | list[str]) -> dict[bytes, bytes]:
    """Return the shared values a chunk file references, by digest, each checked against its digest.

    Raises :class:`ChunkFileError` naming the file when one is missing or its bytes do not match
    its name (before any create: a chunk is never sent incomplete).
    """
    from airflow_batch.exceptions import ChunkFileError  # here: the pass's modules import no Airflow

    values: dict[bytes, bytes] = {}
    for digest in digests:
        path = shared_prompt_path(chunk.parent, digest)
        try:
            with path.open("rb") as handle:
                value = handle.read()
        except FileNotFoundError:
            raise ChunkFileError(
                f"{path}: the shared prompt that chunk file {chunk} references is missing; nothing more "
                "is created. Clear the submit task to prepare the round's chunk files again."
            ) from None
        if hashlib.sha256(value).hexdigest() != digest:
            raise ChunkFileError(
                f"{path}: the shared prompt that chunk file {chunk} references is damaged (its bytes do "
                "not match its sha256 name); nothing more is created. Clear the submit task to prepare "
                "the round's chunk files again."
            )
        values[digest.encode()] = value
    return values


def expand_line(line: bytes, values: dict[bytes, bytes]) -> bytes:
    """Return a stored chunk line as it is sent: references replaced by the values they name."""
    if not line.startswith(LINE_MARK):
        return line
    pieces = [b"{"]
    end = len(LINE_MARK)
    while (at := line.find(_REF_START, end)) >= 0:
        digest = line[at + len(_REF_START) : at + len(_REF_START) + _DIGEST_CHARS]
        pieces += [line[end:at], values[digest]]
        end = at + len(_REF_START) + _DIGEST_CHARS + len(_REF_END)
    pieces.append(line[end:])
    return b"".join(pieces)


def referenced(line: bytes) -> list[str]:
    """Return the digests a stored chunk line references (none for a line stored whole)."""
    if not line.startswith(LINE_MARK):
        return []
    found = []
    at = line.find(_REF_START)
    while at >= 0:
        start = at + len(_REF_START)
        found.append(line[start : start + _DIGEST_CHARS].decode())
        at = line.find(_REF_START, start)
    return found


def iter_sent_lines(chunk: ObjectStoragePath) -> Iterator[bytes]:
    """Yield the request lines of a chunk file as they were sent (shared prompts put back)."""
    from airflow_batch.storage import iter_jsonl_lines

    values: dict[bytes, bytes] = {}
    for line in iter_jsonl_lines(chunk):
        if line.startswith(LINE_MARK):
            missing = [digest for digest in referenced(line) if digest.encode() not in values]
            values.update(load_shared(chunk, missing))
            line = expand_line(line, values)
        yield line
