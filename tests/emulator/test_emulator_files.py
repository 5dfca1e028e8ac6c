"""The emulator's Files API through the real SDK: upload, list, metadata, delete, download refused,
and document/image blocks by ``file_id`` in batches, counted by their content."""

from __future__ import annotations

import anthropic
import pytest
from deadlines import until_sync
from media_files import pdf_bytes, png_bytes

from airflow_batch.media import FILES_BETA, image_tokens, pdf_tokens

MODEL = "claude-haiku-4-5"
BETAS = [FILES_BETA]


def _upload(client: anthropic.Anthropic, name: str, data: bytes, media_type: str) -> str:
    return client.beta.files.upload(file=(name, data, media_type), betas=BETAS).id


def test_files_api_uploads_lists_describes_deletes_and_refuses_downloads(client: anthropic.Anthropic) -> None:
    pdf_id = _upload(client, "a.pdf", pdf_bytes(3), "application/pdf")
    png_id = _upload(client, "b.png", png_bytes(), "image/png")

    meta = client.beta.files.retrieve_metadata(pdf_id, betas=BETAS)
    assert (meta.filename, meta.mime_type, meta.downloadable) == ("a.pdf", "application/pdf", False)
    assert meta.size_bytes == len(pdf_bytes(3))
    listed = [f.id for f in client.beta.files.list(limit=1, betas=BETAS)]  # pages of one, newest first
    assert listed == [png_id, pdf_id]
    with pytest.raises(anthropic.BadRequestError, match="not downloadable"):
        client.beta.files.download(pdf_id, betas=BETAS)

    assert client.beta.files.delete(pdf_id, betas=BETAS).type == "file_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(pdf_id, betas=BETAS)
    assert [f.id for f in client.beta.files.list(betas=BETAS)] == [png_id]


def test_files_api_needs_its_beta_header(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match=FILES_BETA):
        client.get("/v1/files", cast_to=object)


def test_file_blocks_are_counted_by_pages_and_pixels_and_unknown_ids_error(
    client: anthropic.Anthropic,
) -> None:
    pdf_id = _upload(client, "four.pdf", pdf_bytes(4), "application/pdf")
    png_id = _upload(client, "wide.png", png_bytes(900, 300), "image/png")
    gone_id = _upload(client, "gone.png", png_bytes(), "image/png")
    client.beta.files.delete(gone_id, betas=BETAS)

    def request(custom_id: str, block: dict[str, object]) -> dict[str, object]:
        content = [block, {"type": "text", "text": "x"}]
        return {
            "custom_id": custom_id,
            "params": {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": content}]},
        }

    def file_block(kind: str, file_id: str) -> dict[str, object]:
        return {"type": kind, "source": {"type": "file", "file_id": file_id}}

    content = [file_block("document", pdf_id), {"type": "text", "text": "x"}]
    counted = client.messages.count_tokens(
        model=MODEL,
        messages=[{"role": "user", "content": content}],  # type: ignore[typeddict-item]
        extra_headers={"anthropic-beta": FILES_BETA},
    ).input_tokens
    assert counted >= pdf_tokens(4)  # four pages, whatever the file's byte length

    batch = client.messages.batches.create(
        requests=[
            request("pdf", file_block("document", pdf_id)),
            request("png", file_block("image", png_id)),
            request("gone", file_block("image", gone_id)),
            request("wrong-block", file_block("image", pdf_id)),
        ],  # type: ignore[list-item]
        extra_headers={"anthropic-beta": FILES_BETA},
    )
    until_sync(lambda: client.messages.batches.retrieve(batch.id).processing_status == "ended")
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}

    assert results["pdf"].type == "succeeded" and results["png"].type == "succeeded"
    pdf_input = results["pdf"].message.usage.input_tokens  # type: ignore[union-attr]
    png_input = results["png"].message.usage.input_tokens  # type: ignore[union-attr]
    assert pdf_input == counted
    assert png_input < pdf_input and png_input >= image_tokens(900, 300)
    assert results["gone"].type == "errored"
    assert f"File not found: {gone_id!r}" in results["gone"].error.error.message  # type: ignore[union-attr]
    assert "reference it with a document block" in results["wrong-block"].error.error.message  # type: ignore[union-attr]
