"""Document summaries sharing one cached system prompt: the house style guide.

The batch guide's prompt-caching pattern: every request carries the same long system
prompt (the digest's style guide, ``style_guide.py``, about 5,100 tokens), marked
``cache_control`` with the 1-hour TTL (``cache_ttl``, the default: a batch can take longer
than 5 minutes to process). The first request to run writes the prompt cache and the others
read it, so the shared prefix is billed at the cache-read price (on top of the 50% batch
discount). The job manifest reports cache writes and cache reads apart. A prompt is only
cached above the model's minimum cacheable length (4,096 tokens on Claude Haiku 4.5);
a shorter one is simply not cached, which is why the guide is the whole guide.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG
from batch_examples import DATA, DEFAULT_ARGS, MODEL, OUTPUT, TAGS
from style_guide import STYLE_GUIDE

from airflow_batch import anthropic_batch_job

with DAG(
    dag_id="document_summaries",
    description="Summarise documents with one shared, cached system prompt",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
):
    anthropic_batch_job(
        "summaries",
        records=DATA + "/documents.jsonl",
        custom_id_field="doc_id",
        prompt_template="Summarise this document.\n\nTitle: {title}\n\n{body}",
        system=STYLE_GUIDE,
        cache_system_prompt=True,
        model=MODEL,
        max_tokens=300,
        output_path=OUTPUT,
        deferrable=True,  # wait in the triggerer, not in a worker slot
        max_retry_rounds=1,
    )
