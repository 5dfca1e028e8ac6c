"""What the model sees of a file: kind from its bytes, PDF pages, image pixels, tokens and limits."""

from __future__ import annotations

import base64
import struct

import pytest
from media_files import pdf_bytes, png_bytes

from airflow_batch import media
from airflow_batch.rules.tokens import block_tokens


@pytest.mark.parametrize("pages", [1, 2, 7, 100])
def test_pdf_page_count_is_read_from_the_page_tree_whatever_the_file_size(pages: int) -> None:
    assert media.pdf_page_count(pdf_bytes(pages)) == pages
    assert media.pdf_page_count(pdf_bytes(pages, size=60_000)) == pages


def test_a_pdf_without_a_page_tree_count_counts_its_page_objects() -> None:
    flat = b"%PDF-1.4\n1 0 obj\n<< /Type /Page >>\nendobj\n2 0 obj\n<< /Type /Page >>\nendobj\n%%EOF"
    assert media.pdf_page_count(flat) == 2


def test_image_sizes_are_read_from_png_gif_jpeg_and_webp_headers() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 321, 123) + b"\x00" * 10
    jpeg = (
        b"\xff\xd8\xff\xe0"
        + struct.pack(">H", 4)
        + b"\x00\x00"
        + b"\xff\xc0"
        + struct.pack(">HBHH", 11, 8, 480, 640)
    )
    jpeg += b"\x00" * 8
    webp = (
        b"RIFF\x00\x00\x00\x00WEBPVP8X"
        + b"\x00" * 8
        + (799).to_bytes(3, "little")
        + (599).to_bytes(3, "little")
    )
    assert media.measure(png_bytes(64, 48)) == media.MediaFacts("image/png", width=64, height=48)
    assert media.measure(gif) == media.MediaFacts("image/gif", width=321, height=123)
    assert media.measure(jpeg) == media.MediaFacts("image/jpeg", width=640, height=480)
    assert media.measure(webp) == media.MediaFacts("image/webp", width=800, height=600)


def test_image_tokens_follow_the_vision_docs_width_times_height_over_750_after_scaling() -> None:
    assert media.image_tokens(200, 200) == 54  # the docs' table: 200x200 px, ~54 tokens
    assert media.image_tokens(1000, 1000) == 1334  # 1000x1000 px, ~1,334 tokens
    assert media.image_tokens(1092, 1092) == 1590  # 1092x1092 px (1:1 at the cap), ~1,590 tokens
    assert media.image_tokens(4000, 4000) == media.image_tokens(1568, 1568) == 1590  # scaled to ~1.15 MP


def test_a_file_the_model_cannot_read_is_refused_with_the_list_of_what_it_reads() -> None:
    refusal = media.measure(b"PK\x03\x04" + b"\x00" * 40)
    assert isinstance(refusal, str) and "PDF, plain text (UTF-8), JPEG, PNG, GIF, WebP" in refusal
    assert media.measure("Plain notes, été.".encode()) == media.MediaFacts("text/plain", text_chars=17)


def test_limits_name_the_size_the_pages_and_the_pixels() -> None:
    pdf = media.MediaFacts(media.PDF, pages=101)
    assert "101 pages" in (media.limit_problem(pdf, 10_000) or "")
    assert "9000 x 10 px" in (
        media.limit_problem(media.MediaFacts("image/png", width=9000, height=10), 1) or ""
    )
    assert "500,000,000-byte" in (
        media.limit_problem(media.MediaFacts(media.PDF, pages=1), 600_000_000) or ""
    )
    assert media.limit_problem(media.MediaFacts(media.PDF, pages=100), 1_000) is None


def test_a_base64_document_counts_its_pages_not_its_base64_length() -> None:
    def block(data: bytes) -> dict[str, object]:
        source = {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(data).decode()}
        return {"type": "document", "source": source}

    small, padded = block(pdf_bytes(3)), block(pdf_bytes(3, size=200_000))
    assert block_tokens(small) == block_tokens(padded) == media.pdf_tokens(3)
    assert block_tokens(block(pdf_bytes(6))) == 2 * media.pdf_tokens(3)


def test_a_file_block_counts_by_the_facts_its_id_resolves_to() -> None:
    block = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    assert block_tokens(block) == media.UNKNOWN_MEDIA_TOKENS  # nothing resolves it here
    token = media.FILE_FACTS.set({"file_1": media.MediaFacts("image/png", width=100, height=75)}.get)
    try:
        assert block_tokens(block) == media.image_tokens(100, 75) == 10
    finally:
        media.FILE_FACTS.reset(token)
