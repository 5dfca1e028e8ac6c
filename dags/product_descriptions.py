"""Product descriptions from product records, with the job's operators used one by one.

The batch guide's content-generation use case: each product record (name, category,
features) fills a prompt template. Instead of the ``anthropic_batch_job`` factory, this DAG
wires the pieces itself (``SubmitBatchesOperator`` >> ``BatchesSensor`` >>
``GatherResultsOperator`` >> ``FinalizeBatchJobOperator``), one round and no retries: the
shape to start from when a job needs a step of its own between them.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG
from batch_examples import DATA, DEFAULT_ARGS, MODEL, OUTPUT, TAGS

from airflow_batch.operators.finalize import FinalizeBatchJobOperator
from airflow_batch.operators.gather import GatherResultsOperator
from airflow_batch.operators.submit import SubmitBatchesOperator
from airflow_batch.sensors.batches import BatchesSensor

TEMPLATE = (
    "Write a two-sentence product description for an online shop.\n"
    "Product: {name}\nCategory: {category}\nFeatures: {features}\n"
    "Mention every feature; no superlatives, no price."
)

with DAG(
    dag_id="product_descriptions",
    description="Write product descriptions from product records (operators used one by one)",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
):
    submit = SubmitBatchesOperator(
        task_id="submit",
        records=DATA + "/products.jsonl",
        custom_id_field="sku",
        prompt_template=TEMPLATE,
        model=MODEL,
        max_tokens=200,
        output_path=OUTPUT,
    )
    wait = BatchesSensor(task_id="wait", manifest=submit.output, deferrable=True)
    gather = GatherResultsOperator(task_id="gather", manifest=wait.output)
    finalize = FinalizeBatchJobOperator(task_id="finalize", manifest=submit.output)
    gather >> finalize
