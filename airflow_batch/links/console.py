"""The "Anthropic Console" extra link of the wait: where a user watches a round's batches.

The sensor pushes the link before it defers, so the button works during the wait (a
deferred task has not finished, and Airflow 3 otherwise computes links only when a task
finishes). One extra link shows one URL: a round with a single batch links to that
batch's page; a round of several batches links to the Console's batches list, and the
per-batch URLs are kept in the ``batch_console_links`` XCom for anyone who needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

from airflow_batch.links.urls import CONSOLE_BATCHES_URL, batch_console_url, round_console_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

BATCH_LINKS_XCOM_KEY = "batch_console_links"


def push_console_links(ti: Any, batch_ids: Sequence[str]) -> None:
    """Push the round's Console link and every batch's URL to XCom (call before deferring)."""
    ti.xcom_push(key=BATCH_LINKS_XCOM_KEY, value=[batch_console_url(batch_id) for batch_id in batch_ids])
    ti.xcom_push(key=BatchConsoleLink().xcom_key, value=round_console_url(batch_ids))


class BatchConsoleLink(BaseOperatorLink):
    """Extra link to the round's batches in the Anthropic Console."""

    name = "Anthropic Console"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the round's Console URL from the pushed batch links, or "" before any push."""
        from airflow.sdk.execution_time.xcom import XCom

        links = XCom.get_value(ti_key=ti_key, key=BATCH_LINKS_XCOM_KEY)
        if not links:
            return ""
        if len(links) == 1:
            return str(links[0])
        return CONSOLE_BATCHES_URL
