"""Listing files and the upload step alone, on local files against the emulator (real SDK)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from media_files import pdf_bytes, png_bytes

from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path
from airflow_batch.submit.documents import DocumentFile, document_requests, list_documents, prepare_documents
from airflow_batch.submit.validation import InvalidRow

LOG = logging.getLogger(__name__)


@pytest.fixture
def api(emulator: EmulatorProcess) -> Iterator[BatchesApi]:
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key")) as calls:
        yield calls


def _files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "b.pdf", folder / "a.png", folder / "c-copy-of-b.pdf"]
    paths[0].write_bytes(pdf_bytes(2))
    paths[1].write_bytes(png_bytes(30, 20))
    paths[2].write_bytes(pdf_bytes(2))
    return paths


def test_a_glob_lists_files_sorted_and_a_records_file_brings_its_fields(tmp_path: Path) -> None:
    _files(tmp_path / "in")
    listed = list(list_documents(str(tmp_path / "in" / "*.pdf")))
    assert [doc.uri for doc in listed if isinstance(doc, DocumentFile)] == [
        f"file://{tmp_path}/in/b.pdf",
        f"file://{tmp_path}/in/c-copy-of-b.pdf",
    ]
    assert all(isinstance(doc, DocumentFile) and doc.size == len(pdf_bytes(2)) for doc in listed)
    records = tmp_path / "files.jsonl"
    records.write_text(
        json.dumps({"path": str(tmp_path / "in" / "a.png"), "customer": "acme"})
        + "\n\n"
        + json.dumps({"x": 1})
    )
    first, second = list_documents(str(records))
    assert isinstance(first, DocumentFile) and first.fields == {"customer": "acme"}
    assert isinstance(second, InvalidRow) and "line 3" in second.rule and "'path'" in second.rule
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list(list_documents(str(tmp_path / "in" / "*.tiff")))


def test_kept_uploads_are_reused_by_the_next_job_unless_deleted_by_hand(
    api: BatchesApi, emulator: EmulatorProcess, tmp_path: Path
) -> None:
    _files(tmp_path / "in")
    pattern, kept = str(tmp_path / "in" / "*"), as_path(str(tmp_path / "out" / "_files"))

    def plan(job: str) -> dict[str, int]:
        stats = prepare_documents(
            api, pattern, job=as_path(str(tmp_path / job)), bound=False, kept=kept, concurrency=4, log=LOG
        ).stats
        return {"uploaded": stats.uploaded, "reused": stats.reused}

    assert plan("job-1") == {"uploaded": 2, "reused": 1}  # the copy shares its original's upload
    assert plan("job-2") == {"uploaded": 0, "reused": 3}  # the next job uploads nothing
    png_id = next(
        f.id for f in api.client.beta.files.list(betas=["files-api-2025-04-14"]) if f.filename == "a.png"
    )
    api.delete_file(png_id)
    assert plan("job-3") == {"uploaded": 1, "reused": 2}
    assert emulator.stats()["files_uploaded"] == 3


def test_each_file_becomes_its_block_then_the_prompt_keyed_by_its_path(
    api: BatchesApi, tmp_path: Path
) -> None:
    paths = _files(tmp_path / "in")
    job = as_path(str(tmp_path / "job"))
    listed = [str(p) for p in paths]
    plan = prepare_documents(api, listed, job=job, bound=False, kept=None, concurrency=2, log=LOG)
    requests = list(
        document_requests(plan, prompt_template="File {name}, {size} bytes", passthrough_fields=["path"])
    )

    pdf, png, copy = (r.request for r in requests)  # type: ignore[attr-defined]
    assert pdf["custom_id"].startswith("file-") and pdf["custom_id"] != copy["custom_id"]
    content = pdf["params"]["messages"][0]["content"]
    assert content[0] == {
        "type": "document",
        "source": {"type": "file", "file_id": content[0]["source"]["file_id"]},
    }
    assert content[1] == {"type": "text", "text": f"File b.pdf, {len(pdf_bytes(2))} bytes"}
    assert png["params"]["messages"][0]["content"][0]["type"] == "image"
    assert copy["params"]["messages"][0]["content"][0] == content[0]  # same bytes, same file_id
    assert requests[0].input == {"path": f"file://{paths[0]}", "key": f"file://{paths[0]}"}  # type: ignore[attr-defined]


def test_documents_settings_are_checked_when_the_dag_is_parsed() -> None:
    from airflow_batch import anthropic_batch_job
    from airflow_batch.operators import SubmitBatchesOperator

    def submit(**kwargs: object) -> SubmitBatchesOperator:
        return SubmitBatchesOperator(
            task_id="t",
            output_path="/tmp/x",
            model="claude-haiku-4-5",
            **{"documents": "s3://b/*.pdf", **kwargs},
        )

    with pytest.raises(ValueError, match="documents= needs prompt_template="):
        submit()
    with pytest.raises(ValueError, match="delete_files must be one of"):
        submit(prompt_template="{name}", delete_files="never")
    with pytest.raises(ValueError, match="upload_concurrency must be >= 1"):
        submit(prompt_template="{name}", upload_concurrency=0)
    with pytest.raises(ValueError, match="exactly one of"):
        submit(prompt_template="{name}", records=[{"a": 1}])
    with pytest.raises(ValueError, match="relative path"):
        submit(prompt_template="{name}", documents="invoices/*.pdf")
    with pytest.raises(ValueError, match="exactly one of"):
        anthropic_batch_job(
            "j",
            documents="s3://b/*.pdf",
            records=[{"a": 1}],
            prompt_template="{name}",
            model="claude-haiku-4-5",
        )
    assert "files-api-2025-04-14" in submit(prompt_template="{name}", betas=["x-beta"]).betas


def test_a_row_whose_file_is_gone_is_a_failure_row_never_a_refusal(tmp_path: Path) -> None:
    from airflow_batch.submit.chunking import prepare_chunks

    ok = {
        "custom_id": "ok",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "x"}],
        },
    }
    gone = InvalidRow("s3://b/a.pdf: the file is gone", "a-pdf", failed=True)
    staging = as_path(str(tmp_path / "staging"))
    prepared = prepare_chunks([ok, gone], staging=staging, max_requests=10, max_bytes=1_000_000)
    assert not prepared.fatal and prepared.requests == 1 and prepared.invalid == 1
    assert prepared.invalid_file is not None and b"row 2: s3://b/a.pdf" in prepared.invalid_file.read_bytes()

    refused = InvalidRow("not a readable type", "b-zip")
    assert prepare_chunks([ok, gone, refused], staging=staging, max_requests=10, max_bytes=1_000_000).fatal
    assert prepare_chunks(
        [gone], staging=staging, max_requests=10, max_bytes=1_000_000
    ).fatal  # nothing to send
