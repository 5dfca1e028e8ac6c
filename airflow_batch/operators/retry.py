"""``RetryFailedOperator``: resubmit a round's retryable failures as the next round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_batch.hooks import job_api
from airflow_batch.lineage import BatchJobLineage
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.operators.failed_manifest import failures_shown
from airflow_batch.operators.queueing import defer_for_room, resume_round
from airflow_batch.spec.docstrings import documented
from airflow_batch.submit.queue import QueueWaitNeeded

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_batch.spec.job_spec import JobSpec
    from airflow_batch.submit.round import SubmitSettings


@documented("retry")
class RetryFailedOperator(BatchJobLineage, BaseOperator):
    """
    Resubmit the retryable failures of a gathered round as new batches: the next round.

    Reads the failure rows of the previous round, keeps those classified retryable, takes
    their original requests (same ``custom_id``) from that round's prepared chunk files and
    submits them through the same path as the first submission
    (:func:`airflow_batch.submit.round.submit_round`): batch limits, ledger, idempotent
    re-attach on a retry or clear, and the budget. Its settings are the job's, read from the
    ``spec.json`` the submit wrote (:class:`~airflow_batch.spec.job_spec.JobSpec`): batch limits,
    prices, ``max_queued_requests`` (a large retry round is created in waves too) and, with
    ``max_cost_usd``, a budget of what is left after the rounds gathered so far; a round refused
    leaves its refusal in XCom for the batch jobs page, as the submit does. When nothing is
    retryable the task is skipped, and with it the round's wait and gather.

    Returns the new round's manifest (as the submit does), for the round's ``BatchesSensor``.
    """

    template_fields: Sequence[str] = ("manifest", "conn_id")
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        manifest: RoundManifest | Mapping[str, Any] | Any,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest
        self.conn_id = conn_id

    def round_settings(self, previous: RoundManifest, spec: JobSpec) -> SubmitSettings:
        """Return the round's settings: the job's, with the output length observed in the previous
        round as the expected one (unless the user gave one) and the budget less what was spent."""
        from airflow_batch.gather.finalizing import job_cost
        from airflow_batch.storage import as_path

        settings = spec.settings
        counts: dict[str, int] = dict(previous.get("result_counts") or {})
        answered = counts.get("succeeded", 0)
        if settings.expected_output_tokens is None and answered:
            usage: dict[str, Any] = dict(previous.get("usage") or {})
            output = int(usage.get("output_tokens", 0))
            settings = replace(
                settings,
                expected_output_tokens=max(1, -(-output // answered)),
                expected_basis=f"observed in round {previous['round']} of this job",
            )
        if settings.max_cost_usd is not None:
            settings = replace(settings, spent_usd=job_cost(as_path(previous["job_dir"]))["batch_usd"])
        return settings

    def execute(self, context: Context) -> RoundManifest:
        """Submit the next round, or skip when no failure of the previous round is retryable.

        A failure before the round is submitted is left for the batch jobs page (:func:`failures_shown`).
        """
        previous = dict(self.manifest)
        with failures_shown(context, lambda: str(previous["job_dir"]), int(previous["round"]) + 1):
            return self.resubmit(context)

    def resubmit(self, context: Context) -> RoundManifest:
        """Submit the next round, or skip when no failure of the previous round is retryable."""
        from airflow_batch.gather.gathering import job_validator
        from airflow_batch.spec.job_spec import read_job_spec
        from airflow_batch.storage import as_path
        from airflow_batch.submit.retrying import original_requests
        from airflow_batch.submit.round import submit_round
        from airflow_batch.submit.routing import AnswerReuse

        previous: RoundManifest = dict(self.manifest)  # type: ignore[assignment]
        identity = JobIdentity.of(previous, self.conn_id, self.task_id)
        retryable = int(previous.get("retryable", 0) or 0)
        if not retryable:
            raise AirflowSkipException(
                f"round {previous['round']} has no retryable failure: nothing to resubmit"
            )
        job = as_path(previous["job_dir"])
        spec = read_job_spec(job)
        settings = self.round_settings(previous, spec)
        round_number = previous["round"] + 1
        # The retried requests were not in the answer store at round 0; they are fingerprinted so
        # that gather stores their answers for later runs, not looked up again.
        store = spec.answer_store
        self.log.info(
            "round %d: resubmitting %d retryable failure(s) of round %d",
            round_number,
            retryable,
            previous["round"],
        )
        with job_api(identity) as api:
            try:
                return submit_round(
                    api,
                    original_requests(previous),
                    job=job,
                    round_number=round_number,
                    identity=identity,
                    settings=settings,
                    state_store=context.get("task_state_store"),
                    log=self.log,  # type: ignore[arg-type]
                    reuse=AnswerReuse(store, lookup=False) if store else None,
                    validator=job_validator(job) if store else None,  # the scope of the answers it stores
                )
            except QueueWaitNeeded as pause:
                defer_for_room(self, pause, identity, round_number, spec.poll_interval, job=job)
                raise

    def resume_submit(self, context: Context, event: dict[str, Any] | None = None) -> RoundManifest:
        """Create the round's next wave once the queue has room; defer again or return its manifest."""
        from airflow_batch.spec.job_spec import read_job_spec
        from airflow_batch.storage import as_path

        previous: RoundManifest = dict(self.manifest)  # type: ignore[assignment]
        job = as_path(previous["job_dir"])
        spec = read_job_spec(job)
        return resume_round(
            self,
            context,
            event,
            identity=JobIdentity.of(previous, self.conn_id, self.task_id),
            job=job,
            round_number=previous["round"] + 1,
            settings=self.round_settings(previous, spec),
            poll_interval=spec.poll_interval,
            start_over=lambda: self.execute(context),
        )
