"""Invoice extraction: PDFs and scans from an object-storage prefix into one typed table row each.

``documents=`` names the files (here a glob over an S3 prefix; the Variable
``airflow_batch_invoices``, by default the sample invoices in ``dags/data/invoices``). Each
distinct file is uploaded once with the Files API and sent by ``file_id``, so the batch body
stays small however large the files; the uploads are deleted once the job has landed. The output
schema makes every answer a typed row of ``results.parquet``, with the file's path as a column
(``passthrough_fields=["path"]``), and the ``totals`` task reads that table downstream.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task
from batch_examples import DEFAULT_ARGS, MODEL, OUTPUT, SAMPLE_DATA, TAGS

from airflow_batch import anthropic_batch_job

#: The invoices to read: any fsspec glob the workers can read, e.g. ``s3://aws_default@bucket/2026-12-*/*.pdf``.
INVOICES = "{{ var.value.get('airflow_batch_invoices', '" + SAMPLE_DATA + "/invoices/*') }}"

INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "invoice_number": {"type": "string"},
        "total": {"type": "number"},
        "currency": {"type": "string", "enum": ["USD", "EUR", "GBP", "other"]},
    },
    "required": ["vendor", "invoice_number", "total", "currency"],
    "additionalProperties": False,
}

with DAG(
    dag_id="invoice_extraction",
    description="Invoices (PDF, PNG) from object storage into a typed table, through the Files API",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
):
    job = anthropic_batch_job(
        "invoices",
        documents=INVOICES,
        prompt_template="Extract the vendor, invoice number, total and currency of this invoice ({name}).",
        output_schema=INVOICE_SCHEMA,
        passthrough_fields=["path"],
        results_format=["jsonl", "parquet"],
        model=MODEL,
        max_tokens=300,
        output_path=OUTPUT,
        deferrable=True,
        max_retry_rounds=1,
    )

    @task
    def totals(manifest: dict[str, Any]) -> dict[str, float]:
        """Sum the extracted totals per currency from the job's Parquet table."""
        import pyarrow.parquet as pq

        from airflow_batch.storage import as_path

        with as_path(manifest["results_parquet_path"]).open("rb") as table_file:
            table = pq.read_table(table_file, columns=["path", "total", "currency"])
        sums: dict[str, float] = {}
        for row in table.to_pylist():
            sums[row["currency"]] = sums.get(row["currency"], 0.0) + row["total"]
        return sums

    totals(job.output)
