"""Daily partitions: one batch job per day, keyed by the logical date, safe to backfill.

Each run works on the partition of its logical date ``ds``:

- ``prepare_input`` uses ``{airflow_batch_output}/daily/input/ds={ds}/records.jsonl`` when it
  exists (drop your day's data there), and otherwise writes that day's sample reviews,
  generated deterministically from ``ds``;
- the batch job's folder is keyed by the run (``.../jobs/daily_review_sentiment/{run_id}/``);
- ``finalize`` publishes the merged results, failures and manifest to
  ``{airflow_batch_output}/daily/output/ds={ds}/`` (``publish_path``), the manifest last;
- the budget guards the expected cost of a day, and more than 5% failed reviews fail the run
  (after every file is written).

So ``airflow backfill create --dag-id daily_review_sentiment --from-date ... --to-date ...``
produces one output partition per date, and re-running a date (clearing its run) rewrites
that date's partition without creating a batch: the same run finds its ledger and
re-attaches to the batches it already paid for.
"""

from __future__ import annotations

import random
from typing import Any

import pendulum
from airflow.sdk import DAG, task
from batch_examples import DEFAULT_ARGS, MODEL, OUTPUT, TAGS

from airflow_batch import anthropic_batch_job

REVIEWS_PER_DAY = 20
PRODUCTS = ["trail running shoes", "espresso machine", "standing desk", "rain jacket", "robot vacuum"]
PHRASES = [
    ("Love it, works perfectly.", 5),
    ("Good value, minor scratches on arrival.", 4),
    ("It is fine, nothing special.", 3),
    ("Stopped working after two weeks.", 2),
    ("Broken on arrival and support never answered.", 1),
]
SYSTEM_PROMPT = (
    "You analyse customer reviews. Reply with one JSON object and nothing else: "
    '{"sentiment": "positive" | "neutral" | "negative", "keywords": [at most 3], "stars": 1-5}'
)


def day_reviews(ds: str, n: int = REVIEWS_PER_DAY) -> list[dict[str, Any]]:
    """Return the sample reviews of one day: the same ``ds`` always gives the same rows."""
    rng = random.Random(ds)
    rows = []
    for i in range(n):
        text, stars = rng.choice(PHRASES)
        rows.append(
            {"review_id": f"{ds}-{i:03d}", "product": rng.choice(PRODUCTS), "stars": stars, "text": text}
        )
    return rows


with DAG(
    dag_id="daily_review_sentiment",
    description="One Message Batches job per day, partitioned by logical date; backfill-safe",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
):

    @task
    def prepare_input(output: str, ds: str | None = None) -> str:
        """Return the day's input partition, writing the sample reviews if it does not exist."""
        import msgspec

        from airflow_batch.storage import as_path, atomic_writer

        path = as_path(output) / "daily" / "input" / f"ds={ds}" / "records.jsonl"
        if path.exists():
            print(f"using the existing input partition {path}")
        else:
            with atomic_writer(path) as handle:
                for row in day_reviews(str(ds)):
                    handle.write(msgspec.json.encode(row) + b"\n")
            print(f"wrote {REVIEWS_PER_DAY} sample reviews to {path}")
        return str(path)

    records = prepare_input(OUTPUT)
    job = anthropic_batch_job(
        "sentiment",
        records=records,
        custom_id_field="review_id",
        prompt_template="Product: {product}\nReview: {text}",
        system=SYSTEM_PROMPT,
        model=MODEL,
        max_tokens=100,
        output_path=OUTPUT + "/jobs",
        publish_path=OUTPUT + "/daily/output/ds={{ ds }}",
        deferrable=True,  # wait in the triggerer, not in a worker slot
        max_retry_rounds=1,
        max_cost_usd=0.05,
        max_failure_rate=0.05,
    )
    records >> job
