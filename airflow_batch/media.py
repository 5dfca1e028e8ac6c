"""What a document or image file is to the model: its kind, pages or pixels, tokens and limits.

One home for the facts about files a request carries, shared by submit (limits refused before
any spend, the estimate) and the emulator (its Files API, its token counts):

- **Kinds the model reads** (``READABLE``): PDF (``application/pdf``) and plain text as a
  ``document`` block; JPEG, PNG, GIF and WebP as an ``image`` block. Anything else is refused,
  naming the file. The kind is read from the file's first bytes, never from its name.
- **Limits** (platform docs, read 2026-12): a Files API upload is at most 500 MB
  (``build-with-claude/files``); a PDF at most 100 pages (``build-with-claude/pdf-support``);
  an image at most 8000 x 8000 px (``build-with-claude/vision``).
- **Tokens**: an image costs ``ceil(width * height / 750)`` tokens after the API scales it to
  fit 1568 px on its long edge and about 1.15 megapixels (``vision``: "tokens = (width px *
  height px)/750"); a PDF page is read as text and as an image of the page (``pdf-support``:
  "each page ... text ... alongside each page's image"), counted here as
  ``PDF_PAGE_TEXT_TOKENS`` (the top of the docs' 1,500-3,000 tokens of text per page) plus a
  full-size page image. The submit estimate calibrates these with ``count_tokens`` like text.

The PDF page count is read from the page tree: the largest ``/Count`` of a ``/Type /Pages``
node (the root's), else the number of ``/Type /Page`` objects. Limits of this small parser:
a page tree inside a compressed object stream (PDF 1.5+ ``/ObjStm``) or an encrypted file is
not seen, and such a PDF counts as one page (the API counts it properly; the estimate is then
low by its extra pages, which ``count_tokens`` calibration corrects on the sample).

Pure: bytes in, facts out; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

#: The Files API's beta: sent on every files call, and on every call of a job that references files.
FILES_BETA = "files-api-2025-04-14"
PDF = "application/pdf"
TEXT = "text/plain"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: Media type -> the content block that carries it.
READABLE: dict[str, str] = {PDF: "document", TEXT: "document", **dict.fromkeys(IMAGE_TYPES, "image")}

MAX_FILE_BYTES = 500_000_000
MAX_PDF_PAGES = 100
MAX_IMAGE_EDGE = 8_000
#: The size the API scales an image down to before counting it.
SCALED_LONG_EDGE = 1_568
#: "About 1.15 megapixels": the docs' table has 1092 x 1092 px as the largest square image not scaled.
SCALED_MAX_PIXELS = 1_092 * 1_092
PIXELS_PER_TOKEN = 750
PDF_PAGE_TEXT_TOKENS = 3_000
#: What a block counts when its file is not known here (a URL source, an unresolved file id).
UNKNOWN_MEDIA_TOKENS = 1_500


def readable_types() -> str:
    """Return the file types the model reads, for error messages."""
    return "PDF, plain text (UTF-8), JPEG, PNG, GIF, WebP"


@dataclass(frozen=True)
class MediaFacts:
    """What the model sees of one file: its media type, and its pages or pixels."""

    media_type: str
    pages: int = 0
    width: int = 0
    height: int = 0
    text_chars: int = 0

    @property
    def block_type(self) -> str:
        """Return ``"document"`` or ``"image"``."""
        return READABLE[self.media_type]

    @property
    def tokens(self) -> int:
        """Return the input tokens of a block carrying this file."""
        if self.media_type == PDF:
            return pdf_tokens(self.pages)
        if self.media_type == TEXT:
            return (self.text_chars + 3) // 4
        return image_tokens(self.width, self.height)

    def to_json(self) -> dict[str, Any]:
        """Return the facts as a JSON object (recorded with each upload)."""
        return {k: v for k, v in vars(self).items() if v or k == "media_type"}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MediaFacts:
        """Return the facts recorded by :meth:`to_json`."""
        return cls(
            **{k: obj[k] for k in ("media_type", "pages", "width", "height", "text_chars") if k in obj}
        )


def image_tokens(width: int, height: int) -> int:
    """Return the tokens of a ``width`` x ``height`` image, after the API's scaling."""
    if width <= 0 or height <= 0:
        return 0
    scale = min(1.0, SCALED_LONG_EDGE / max(width, height), math.sqrt(SCALED_MAX_PIXELS / (width * height)))
    return math.ceil((width * scale) * (height * scale) / PIXELS_PER_TOKEN)


def pdf_tokens(pages: int) -> int:
    """Return the tokens of a PDF of ``pages`` pages: each page's text and its image."""
    return pages * (PDF_PAGE_TEXT_TOKENS + image_tokens(SCALED_LONG_EDGE, SCALED_LONG_EDGE))


def sniff_media_type(head: bytes) -> str | None:
    """Return the media type of a file from its first bytes (32 are enough), or None if unreadable."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


#: Control bytes no text file has: a binary file that happens to decode as UTF-8 is not text.
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1f]")
_PAGES_NODE = re.compile(rb"/Type\s*/Pages\b")
_PAGE_NODE = re.compile(rb"/Type\s*/Page\b(?!s)")
_COUNT = re.compile(rb"/Count\s+(\d+)")
_OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b(.*?)endobj", re.S)


def pdf_page_count(data: bytes) -> int:
    """Return the pages of a PDF from its page tree (see the module docstring for the limits)."""
    counts = [
        int(count.group(1))
        for body in _OBJECT.findall(data)
        if _PAGES_NODE.search(body) and (count := _COUNT.search(body)) is not None
    ]
    if counts:
        return max(counts)
    return max(1, len(_PAGE_NODE.findall(data)))


def image_size(data: bytes, media_type: str) -> tuple[int, int] | None:
    """Return ``(width, height)`` of a PNG, GIF, JPEG or WebP image, or None if it cannot be read."""
    try:
        if media_type == "image/png":
            return struct.unpack(">II", data[16:24])
        if media_type == "image/gif":
            return struct.unpack("<HH", data[6:10])
        if media_type == "image/webp":
            return _webp_size(data)
        if media_type == "image/jpeg":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        return width, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def measure(data: bytes, media_type: str | None = None) -> MediaFacts | str:
    """Return the facts of a file's bytes, or why the model cannot read it (a refusal message)."""
    kind = sniff_media_type(data[:32]) or media_type
    if kind is None or kind == TEXT:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or _BINARY.search(data[:4096]):
            return f"the model cannot read this file type; it reads {readable_types()}"
        return MediaFacts(TEXT, text_chars=len(text))
    if kind not in READABLE:
        return f"the model cannot read {kind}; it reads {readable_types()}"
    if kind == PDF:
        return MediaFacts(PDF, pages=pdf_page_count(data))
    size = image_size(data, kind)
    if size is None:
        return f"{kind} image whose size cannot be read (a damaged file?)"
    return MediaFacts(kind, width=size[0], height=size[1])


def limit_problem(facts: MediaFacts, size: int) -> str | None:
    """Return the API limit a file breaks (size, pages, pixels), with the fix, or None."""
    if size > MAX_FILE_BYTES:
        return f"{size:,} bytes: over the Files API's {MAX_FILE_BYTES:,}-byte limit per file; split it"
    if size == 0:
        return "the file is empty"
    if facts.media_type == PDF and facts.pages > MAX_PDF_PAGES:
        return f"a PDF of {facts.pages} pages: over the {MAX_PDF_PAGES}-page limit per request; split it"
    if facts.width > MAX_IMAGE_EDGE or facts.height > MAX_IMAGE_EDGE:
        return (
            f"an image of {facts.width} x {facts.height} px: over the {MAX_IMAGE_EDGE} x {MAX_IMAGE_EDGE} px "
            "limit; scale it down (the model sees at most 1568 px on the long edge anyway)"
        )
    return None


#: How a ``file_id`` resolves to its facts where tokens are counted (the job's uploads in submit,
#: the emulator's file store in the emulator); None: file blocks count ``UNKNOWN_MEDIA_TOKENS``.
FILE_FACTS: ContextVar[Callable[[str], MediaFacts | None] | None] = ContextVar("file_facts", default=None)


def block_facts(block: Mapping[str, Any]) -> MediaFacts | None:
    """Return the facts of an image or document block's file, or None when not known here."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        return None
    kind = source.get("type")
    if kind == "file":
        resolve = FILE_FACTS.get()
        file_id = source.get("file_id")
        return resolve(file_id) if resolve is not None and isinstance(file_id, str) else None
    if kind == "text" and isinstance(source.get("data"), str):
        return MediaFacts(TEXT, text_chars=len(source["data"]))
    if kind == "base64" and isinstance(source.get("data"), str):
        try:
            data = base64.b64decode(source["data"], validate=False)
        except (binascii.Error, ValueError):
            return None
        facts = measure(data, source.get("media_type"))
        return facts if isinstance(facts, MediaFacts) else None
    return None


def media_block_tokens(block: Mapping[str, Any]) -> int:
    """Return the tokens of an image or document block, counted from its file's content."""
    facts = block_facts(block)
    return facts.tokens if facts is not None else UNKNOWN_MEDIA_TOKENS
