"""Review sentiment: classify product reviews as JSON with one batch job.

The batch guide's classification use case: a system prompt asks for a JSON object
(sentiment, up to three keywords, a 1-5 star prediction) with a short ``max_tokens``. The
whole job (submit, deferred wait, gather, up to two retry rounds, finalize) is one
``anthropic_batch_job`` call; ``tally`` then reads the merged results as any downstream
task would. Inputs: ``reviews.jsonl`` in the ``airflow_batch_data`` Variable's folder
(default: the samples in ``dags/data``). Outputs: a job folder under ``airflow_batch_output``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pendulum
from airflow.sdk import DAG, task
from batch_examples import DATA, DEFAULT_ARGS, MODEL, OUTPUT, POLL_INTERVAL, TAGS

from airflow_batch import anthropic_batch_job

SYSTEM_PROMPT = """You analyse customer reviews of products.
Reply with one JSON object and nothing else, in this shape:
{"sentiment": "positive" | "neutral" | "negative", "keywords": ["at most", "three", "keywords"], "stars": 1-5}
"stars" is the star rating (1 to 5) you predict the reviewer gave."""

with DAG(
    dag_id="review_sentiment",
    description="Classify product reviews (sentiment, keywords, stars) with the Message Batches API",
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
        prompt_template="Product: {product}\nReview: {text}",
        system=SYSTEM_PROMPT,
        model=MODEL,
        max_tokens=100,
        output_path=OUTPUT,
        poll_interval=POLL_INTERVAL,
        deferrable=True,  # wait in the triggerer, not in a worker slot
        max_retry_rounds=2,
        max_failure_rate=0.05,
        tooltip="Submit, wait (deferred), gather, retry failures, finalize",
    )

    @task
    def tally(job: dict[str, Any]) -> dict[str, int]:
        """Count the predicted sentiments in the job's merged results (unparsable replies apart)."""
        from airflow_batch.storage import as_path, iter_jsonl

        counts: Counter[str] = Counter()
        for row in iter_jsonl(as_path(job["results_path"])):
            try:
                counts[str(json.loads(row["text"])["sentiment"])] += 1
            except (ValueError, KeyError, TypeError):
                counts["unparsable"] += 1
        print(f"sentiments of {sum(counts.values())} reviews: {dict(counts)}")
        return dict(counts)

    tally(sentiment.children["sentiment.finalize"].output)  # type: ignore[union-attr]
