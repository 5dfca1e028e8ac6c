"""Review sentiment: structured extraction of product reviews into a typed table.

The batch guide's classification use case as structured outputs: each review gets a
sentiment, up to three keywords and a 1-5 star prediction, as JSON of the ``ReviewAnalysis``
schema (the API constrains the answer to it; gather validates every answer again and retries
the ones that are not valid). ``passthrough_fields`` carries the product and category of each
review into its row, and finalize writes ``results.parquet`` with one typed column per schema
property beside ``results.jsonl``. ``tally`` reads the table as any downstream task would.
Inputs: ``reviews.jsonl`` in the ``airflow_batch_data`` Variable's folder (default: the samples
in ``dags/data``). Outputs: a job folder under ``airflow_batch_output``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pendulum
from airflow.sdk import DAG, task
from batch_examples import DATA, DEFAULT_ARGS, MODEL, OUTPUT, TAGS
from pydantic import BaseModel, Field

from airflow_batch import anthropic_batch_job


class ReviewAnalysis(BaseModel):
    """What the model extracts from one review."""

    sentiment: Literal["positive", "neutral", "negative"]
    keywords: list[str] = Field(max_length=3, description="At most three keywords of the review")
    stars: int = Field(ge=1, le=5, description="The star rating (1 to 5) the reviewer likely gave")


with DAG(
    dag_id="review_sentiment",
    description="Extract sentiment, keywords and stars from product reviews into a Parquet table",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
):
    sentiment = anthropic_batch_job(
        "sentiment",
        records=DATA + "/reviews.jsonl",
        custom_id_field="review_id",
        passthrough_fields=["product", "category"],
        prompt_template="Product: {product}\nReview: {text}",
        system="You analyse customer reviews of products.",
        output_schema=ReviewAnalysis,
        results_format=["jsonl", "parquet"],
        model=MODEL,
        max_tokens=200,
        output_path=OUTPUT,
        deferrable=True,  # wait in the triggerer, not in a worker slot
        max_retry_rounds=2,
        max_failure_rate=0.05,
        tooltip="Submit, wait (deferred), gather, retry failures, finalize",
    )

    @task
    def tally(job: dict[str, Any]) -> dict[str, int]:
        """Count the predicted sentiments per category, from the job's Parquet table."""
        from airflow_batch import read_table

        table = read_table(job)
        counts = Counter(zip(table["category"].to_pylist(), table["sentiment"].to_pylist(), strict=True))
        overall = Counter(table["sentiment"].to_pylist())
        print(f"sentiments of {table.num_rows} reviews: {dict(overall)}")
        for (category, label), count in sorted(counts.items()):
            print(f"  {category:<12} {label:<9} {count}")
        return dict(overall)

    tally(sentiment.output)
