"""What answer reuse, the canary and deletion save on the example jobs, in dollars from their manifests.

Runs jobs configured as the example DAGs ``review_sentiment`` (200 reviews, structured output),
``product_descriptions`` (40 products) and ``document_summaries`` (30 documents, one cached
system prompt) through ``dag.test()`` against the emulator, in an Airflow home of its own, and
reads the cost of each run from its manifests (batch prices, and the canary at standard prices):

- reuse: a first run with ``reuse_answers=True``, then the same input again: what the second
  run costs, and how many batches it creates;
- canary: the review job against an emulator whose every answer breaks the schema
  (``invalid_output_rate=1.0``: a prompt or schema gone wrong), with ``canary=5`` (refused before
  any batch) and without (the whole job and its retry rounds paid for unusable answers);
- deletion: a run with ``delete_batches="after_gather"``: batches left on the API, and cost.

Run: ``.venv/bin/python bench/reuse_savings.py`` (about two minutes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from airflow_home import REPO, use_temporary_airflow_home

HOME = use_temporary_airflow_home("airflow-batch-savings-", "dags")


def main() -> None:
    import pendulum
    from airflow.sdk import DAG
    from airflow.utils import db
    from dag_runner import run_dag
    from document_summaries import GUIDELINES
    from product_descriptions import TEMPLATE
    from review_sentiment import ReviewAnalysis

    from airflow_batch import anthropic_batch_job, layout
    from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess
    from airflow_batch.storage import read_json

    db.initdb()
    data, output = REPO / "dags" / "data", os.path.join(HOME, "output")
    jobs: dict[str, dict[str, Any]] = {
        "review_sentiment": {
            "records": str(data / "reviews.jsonl"),
            "custom_id_field": "review_id",
            "passthrough_fields": ["product", "category"],
            "prompt_template": "Product: {product}\nReview: {text}",
            "system": "You analyse customer reviews of products.",
            "output_schema": ReviewAnalysis,
            "max_tokens": 200,
            "max_retry_rounds": 2,
        },
        "product_descriptions": {
            "records": str(data / "products.jsonl"),
            "custom_id_field": "sku",
            "prompt_template": TEMPLATE,
            "max_tokens": 200,
            "max_retry_rounds": 0,
        },
        "document_summaries": {
            "records": str(data / "documents.jsonl"),
            "custom_id_field": "doc_id",
            "prompt_template": "Summarise this document.\n\nTitle: {title}\n\n{body}",
            "system": GUIDELINES,
            "cache_system_prompt": True,
            "max_tokens": 300,
            "max_retry_rounds": 1,
        },
    }

    def run(emulator: Any, name: str, dag_id: str, **extra: Any) -> dict[str, Any]:
        """Run one job; return its job manifest (or the refusal), batches created and left."""
        before, stored = emulator.batch_count(), emulator.stats()["batches_stored"]
        with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
            anthropic_batch_job(
                "job", model="claude-haiku-4-5", output_path=output, conn_id="anthropic_default",
                poll_interval=0.5, submit_kwargs={"count_tokens_sample": 0}, **{**jobs[name], **extra},
            )  # fmt: skip
        dag_run = run_dag(dag)
        job = layout.job_dir(output, dag.dag_id, dag_run.run_id, "job.submit")
        created = emulator.batch_count() - before
        left = emulator.stats()["batches_stored"] - stored  # the run's batches still on the API
        if layout.final_manifest_path(job).exists():
            manifest = dict(read_json(layout.final_manifest_path(job)))
            cost = manifest["cost"]["batch_usd"]
            return {"cost": cost, "created": created, "left": left, "manifest": manifest}
        refusal = dict(read_json(layout.refusal_path(job, 0)))
        return {
            "cost": refusal.get("canary_cost_usd", 0.0),
            "created": created,
            "left": left,
            "refusal": refusal,
        }

    lines = [
        "| example job | run | answered | reused | batches | cost (USD) | saved (USD) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    with EmulatorProcess(Path(HOME) / "emulator", config=FAST_CONFIG) as emulator:
        os.environ["AIRFLOW_CONN_ANTHROPIC_DEFAULT"] = json.dumps(
            {"conn_type": "anthropic", "password": "sk-ant-savings", "host": emulator.base_url}
        )
        for name in jobs:
            for label, dag_id in (("first run", f"{name}_first"), ("same input again", f"{name}_again")):
                result = run(emulator, name, dag_id, reuse_answers=True)
                manifest = result["manifest"]
                if label == "first run":
                    first = result
                saved = f"{first['cost'] - result['cost']:.6f}" if result is not first else "-"
                lines.append(
                    f"| `{name}` | {label}, reuse on | {manifest['succeeded']} of {manifest['requests']} | "
                    f"{manifest['reused']} | {result['created']} | {result['cost']:.6f} | {saved} |"
                )
        deleted = run(
            emulator, "document_summaries", "document_summaries_delete", delete_batches="after_gather"
        )
        answered = f"{deleted['manifest']['succeeded']} of {deleted['manifest']['requests']}"
        lines.append(
            f'| `document_summaries` | `delete_batches="after_gather"` | {answered} | 0 | '
            f"{deleted['created']} created, {deleted['left']} left on the API | {deleted['cost']:.6f} | "
            "0 (retention, not money) |"
        )
        emulator.configure(invalid_output_rate=1.0, seed=3)
        blind = run(emulator, "review_sentiment", "review_sentiment_blind")
        canary = run(emulator, "review_sentiment", "review_sentiment_canary", canary=5)
        assert canary["created"] == 0 and "refusal" in canary
        lines.append(
            f"| `review_sentiment`, every answer invalid | no canary: the job and its retry rounds | "
            f"{blind['manifest']['succeeded']} of {blind['manifest']['requests']} | 0 | {blind['created']} | "
            f"{blind['cost']:.6f} | - |"
        )
        lines.append(
            f"| `review_sentiment`, every answer invalid | `canary=5`: refused before any batch | 0 | 0 | "
            f"{canary['created']} | {canary['cost']:.6f} (standard price) | "
            f"{blind['cost'] - canary['cost']:.6f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
