"""``BatchesHook``: the official ``AnthropicHook`` with the clients a batch job's tasks use.

The connection (API key, base URL, platform, workload identity, client kwargs) is read
exactly as the official provider reads it; this subclass adds what a job needs on top:
the job's ``betas`` and ``workspace_id`` on every call, the one retry policy
(:mod:`airflow_batch.api.retry`), and an async client built off the event loop.

Building a client imports the SDK and creates its TLS context (hundreds of milliseconds on
a cold process), and reading the connection may wait on the supervisor: both happen in a
worker thread, so a trigger's first poll never blocks the triggerer's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from airflow.providers.anthropic.hooks.anthropic import FIRST_PARTY_PLATFORMS, AnthropicHook

from airflow_batch.api import AsyncBatchesApi, BatchesApi, RetryPolicy, job_headers
from airflow_batch.exceptions import AirflowBatchError
from airflow_batch.settings import api_retry_policy

if TYPE_CHECKING:
    import anthropic

    from airflow_batch.manifest import JobIdentity


class BatchesHook(AnthropicHook):
    """The Message Batches clients of one job, for the ``anthropic`` connection ``conn_id``.

    :param conn_id: The ``anthropic`` connection of the official provider.
    :param betas: Beta names sent as ``anthropic-beta`` on every call.
    :param workspace_id: Sent as ``anthropic-workspace-id`` on every call.
    :param retry_policy: How transient faults are retried (default: the
        ``[airflow_batch] api_retry_budget_seconds`` time budget).
    """

    hook_name = "Anthropic Message Batches"

    def __init__(
        self,
        conn_id: str = AnthropicHook.default_conn_name,
        *,
        betas: Sequence[str] = (),
        workspace_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.betas = tuple(betas)
        self.workspace_id = workspace_id
        self.retry_policy = retry_policy or api_retry_policy()

    @classmethod
    def of(cls, identity: JobIdentity) -> BatchesHook:
        """Return the hook every call of a job goes through (its connection, betas and workspace)."""
        return cls(identity.conn_id, betas=identity.betas, workspace_id=identity.workspace_id)

    def _check_platform(self) -> None:
        if self.platform not in FIRST_PARTY_PLATFORMS:
            raise AirflowBatchError(
                f"connection {self.conn_id!r} uses the {self.platform!r} platform, which does not serve "
                "the Message Batches API; use platform 'anthropic' (the default) or 'aws'."
            )

    def batches_api(self) -> BatchesApi:
        """Return the sync calls of the job (submit, gather, cancels); close it when done."""
        self._check_platform()
        client = cast("anthropic.Anthropic", self.get_conn())
        return BatchesApi(
            client, policy=self.retry_policy, headers=job_headers(self.betas, self.workspace_id)
        )

    async def async_batches_api(self) -> AsyncBatchesApi:
        """Return the async calls of the wait, built in a worker thread; close it when done."""

        def build() -> anthropic.AsyncAnthropic:
            self._check_platform()  # reads the connection: a blocking lookup, fine in this thread
            return cast("anthropic.AsyncAnthropic", asyncio.run(self.get_async_conn()))

        client = await asyncio.to_thread(build)
        return AsyncBatchesApi(
            client, policy=self.retry_policy, headers=job_headers(self.betas, self.workspace_id)
        )
