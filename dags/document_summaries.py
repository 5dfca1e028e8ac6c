"""Document summaries sharing one cached system prompt.

The batch guide's prompt-caching pattern: every request carries the same long system
prompt (the summary guidelines), marked ``cache_control: ephemeral``. The first request to
run writes the prompt cache and the others read it, so the shared prefix is billed at the
cache-read price (on top of the 50% batch discount). The job manifest reports cache writes
and cache reads apart. Note that a prompt is only cached above the model's minimum
cacheable length (a few thousand tokens for Haiku); shorter prompts are simply not cached.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG
from batch_examples import DATA, DEFAULT_ARGS, MODEL, OUTPUT, TAGS

from airflow_batch import anthropic_batch_job

GUIDELINES = """You summarise internal company documents for an executive digest.

Rules:
1. Start with one sentence stating the document's purpose.
2. Then at most three bullet points with the decisions, numbers and owners it names.
3. End with the open questions, if any, prefixed with "Open:".
4. Never add facts that are not in the document; say "not stated" instead.
5. Use plain words; no marketing language; keep names and numbers exactly as written.
6. At most 120 words in total.

Glossary: "team N" is an internal team number; "memo" is an internal document; weeks are
calendar weeks from the memo's date."""

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
        system=GUIDELINES,
        cache_system_prompt=True,
        model=MODEL,
        max_tokens=300,
        output_path=OUTPUT,
        deferrable=True,  # wait in the triggerer, not in a worker slot
        max_retry_rounds=1,
    )
