"""documents= end to end: PDFs and PNGs in a (moto) S3 bucket, one typed row each, through the Files API.

A real moto S3 server on loopback, the emulator, the real SDK and ``dag.test()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from media_files import pdf_bytes, png_bytes
from moto_s3 import bucket_behind_connection, moto_endpoint
from pydantic import BaseModel

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.manifest import FAILED_MANIFEST_KEY
from airflow_batch.storage import as_path
from airflow_batch.submit.documents import UploadRecord

BUCKET = "invoices"
LOGICAL_DATE = pendulum.datetime(2026, 12, 1, tz="UTC")


class Invoice(BaseModel):
    vendor: str
    total: float
    currency: str


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An empty bucket behind the ``aws_default`` connection; a boto3 client."""
    with bucket_behind_connection(moto_endpoint(), BUCKET, monkeypatch) as client:
        yield client


def _put_invoices(client: Any) -> dict[str, bytes]:
    """Five distinct PDFs, one of them again at a second path, and three PNGs; return key -> bytes."""
    files = {f"inv/2026-12-01/invoice-{i}.pdf": pdf_bytes(1 + i % 2, text=f"Invoice {i}") for i in range(5)}
    files["inv/2026-12-02/copy-of-invoice-0.pdf"] = files["inv/2026-12-01/invoice-0.pdf"]
    files.update({f"inv/2026-12-02/receipt-{i}.png": png_bytes(200 + 100 * i, 300) for i in range(3)})
    for key, data in files.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return files


def _rows(path: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in as_path(str(path)).read_bytes().splitlines() if line]


def _documents_dag(dag_id: str, output: str, conn_id: str, **job_kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=LOGICAL_DATE) as dag:
        anthropic_batch_job(
            "invoices",
            prompt_template="Extract the vendor, total and currency of {name} ({size} bytes).",
            output_schema=Invoice,
            passthrough_fields=["path"],
            model="claude-haiku-4-5",
            max_tokens=200,
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=1,
            poll_interval=0.5,
            **job_kwargs,
        )
    return dag


@pytest.mark.usefixtures("airflow_db")
def test_a_documents_job_uploads_each_distinct_file_once_lands_one_row_per_file_and_deletes_them(
    emulator: EmulatorProcess, anthropic_conn: str, bucket: Any, tmp_path: Path
) -> None:
    files = _put_invoices(bucket)
    output = str(tmp_path / "out")
    dag = _documents_dag(
        "documents_invoices",
        output,
        anthropic_conn,
        documents=f"s3://aws_default@{BUCKET}/inv/*/*",
        results_format=["jsonl", "parquet"],
        submit_kwargs={"count_tokens_sample": 3},
    )
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    job = layout.job_dir(output, dag.dag_id, run.run_id, "invoices.submit")
    results = _rows(layout.final_results_path(job))
    paths = sorted(row["input"]["path"] for row in results)
    assert paths == sorted(f"s3://aws_default@{BUCKET}/{key}" for key in files)  # every file one row
    assert all(set(row["output"]) == {"vendor", "total", "currency"} for row in results)
    table = pq.read_table(str(layout.final_table_path(job, "results")).removeprefix("file://"))
    assert sorted(table.column("path").to_pylist()) == paths  # the table joins to the path

    stats = emulator.stats()
    assert stats["files_uploaded"] == len(files) - 1  # the copied invoice went up once
    assert stats["files_stored"] == 0  # deleted once the job landed
    record = UploadRecord(layout.uploads_dir(job))
    assert len(record.uploads()) == len(files) - 1
    assert record.deleted() == {upload.file_id for upload in record.uploads().values()}
    # Counted by pages and pixels: the estimate's input tokens agree with what the emulator billed.
    manifest = json.loads(as_path(str(layout.final_manifest_path(job))).read_text())
    assert manifest["usage"]["input_tokens"] > 5 * 4_000  # PDF pages cost thousands, whatever their bytes

    batches = emulator.batch_count()
    rerun = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)  # clears the same run
    assert rerun.state == "success" and rerun.run_id == run.run_id
    assert emulator.stats()["files_uploaded"] == len(files) - 1  # the clear uploaded nothing
    assert emulator.batch_count() == batches


@pytest.mark.usefixtures("airflow_db")
def test_a_missing_file_and_an_unreadable_type_are_named_before_any_spend(
    emulator: EmulatorProcess, anthropic_conn: str, bucket: Any, tmp_path: Path
) -> None:
    _put_invoices(bucket)
    bucket.put_object(Bucket=BUCKET, Key="inv/2026-12-03/archive.zip", Body=b"PK\x03\x04" + b"\x00" * 64)
    base = f"s3://aws_default@{BUCKET}/inv"
    documents = [
        f"{base}/2026-12-01/invoice-0.pdf",
        f"{base}/2026-12-03/archive.zip",
        f"{base}/2026-12-09/never-uploaded.pdf",
    ]
    dag = _documents_dag("documents_refused", str(tmp_path / "out"), anthropic_conn, documents=documents)
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)

    assert run.state == "failed"
    assert emulator.batch_count() == 0  # refused before any batch
    refusal = _failed_manifest(dag.dag_id, "invoices.submit")["reason"]
    assert "row 2" in refusal and "archive.zip" in refusal and "PDF, plain text" in refusal
    assert "row 3" in refusal and "never-uploaded.pdf" in refusal and "gone" in refusal


@pytest.mark.usefixtures("airflow_db")
def test_a_file_gone_since_listing_is_one_failed_row_and_the_rest_land(
    emulator: EmulatorProcess, anthropic_conn: str, bucket: Any, tmp_path: Path
) -> None:
    files = _put_invoices(bucket)
    base = f"s3://aws_default@{BUCKET}"
    documents = [f"{base}/{key}" for key in files] + [f"{base}/inv/2026-12-09/never-uploaded.pdf"]
    output = str(tmp_path / "out")
    dag = _documents_dag(  # no skip_invalid; 1 failed row of 10 is above the default failure rate
        "documents_gone", output, anthropic_conn, documents=documents, max_failure_rate=0.5
    )
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)

    assert run.state == "success"
    job = layout.job_dir(output, dag.dag_id, run.run_id, "invoices.submit")
    assert len(_rows(layout.final_results_path(job))) == len(files)
    failures = _rows(layout.final_failures_path(job))
    assert [row["error_type"] for row in failures] == ["invalid_input"]
    assert "never-uploaded.pdf" in failures[0]["message"] and failures[0]["row"] == len(files) + 1


def _failed_manifest(dag_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(XComModel.task_id, XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.key == FAILED_MANIFEST_KEY, XComModel.task_id == task_id
            )
        ).one()
    value: dict[str, Any] = XComModel.deserialize_value(row)
    return value
