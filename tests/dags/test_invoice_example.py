"""The invoice example on an S3 prefix (moto): files in, a typed Parquet table out, read downstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_test_env import run_dag
from media_files import pdf_bytes, png_bytes
from moto_s3 import bucket_behind_connection, moto_endpoint

from airflow_batch.emulator.process import EmulatorProcess

DAGS = Path(__file__).resolve().parents[2] / "dags"
BUCKET = "example-invoices"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with bucket_behind_connection(moto_endpoint(), BUCKET, monkeypatch) as client:
        yield client


@pytest.mark.usefixtures("airflow_db")
def test_invoice_example_reads_an_s3_prefix_into_a_table_the_downstream_task_reads(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    bucket: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    for i in range(4):
        bucket.put_object(
            Bucket=BUCKET, Key=f"incoming/2026-12/inv-{i}.pdf", Body=pdf_bytes(1, f"Invoice {i}")
        )
    bucket.put_object(Bucket=BUCKET, Key="incoming/2026-12/scan-9.png", Body=png_bytes(600, 800))
    bucket.put_object(Bucket=BUCKET, Key="incoming/2027-01/later.pdf", Body=pdf_bytes(1))  # not matched
    monkeypatch.setenv("AIRFLOW_VAR_AIRFLOW_BATCH_INVOICES", f"s3://aws_default@{BUCKET}/incoming/2026-12/*")
    monkeypatch.setenv("AIRFLOW_VAR_AIRFLOW_BATCH_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL", "0.5")
    monkeypatch.syspath_prepend(str(DAGS))
    dag = DagBag(dag_folder=str(DAGS / "invoice_extraction.py")).dags["invoice_extraction"]

    run = run_dag(dag)

    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    totals = next(ti for ti in run.get_task_instances() if ti.task_id == "totals").xcom_pull(
        task_ids="totals"
    )
    assert totals and set(totals) <= {"USD", "EUR", "GBP", "other"}
    assert emulator.stats()["files_uploaded"] == 5 and emulator.stats()["files_stored"] == 0
