"""``GatherResultsOperator``: land a round's results and failures in the job folder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_batch.gather.rows import DEFAULT_RETRYABLE
from airflow_batch.lineage import BatchJobLineage
from airflow_batch.manifest import JobIdentity, RoundManifest

if TYPE_CHECKING:
    from airflow.sdk import Context

#: What ``delete_batches`` accepts: off, or delete each batch once its rows are landed.
DELETE_BATCHES = (None, "after_gather")


class GatherResultsOperator(BatchJobLineage, BaseOperator):
    """
    Stream every batch of a round into result and failure part files, and price the round.

    Memory does not grow with the batch: each results stream is read in large chunks and
    decoded a slice of lines at a time. Succeeded requests go to
    ``round-{r}/results/{batch_id}.jsonl``, errored, expired, canceled and missing ones to
    ``round-{r}/failures/{batch_id}.jsonl``, each classified retryable or not. A batch is
    marked gathered only after both files are in place, so re-running this task (after a
    crash or a clear) finishes what is missing and never duplicates a row; a results stream
    cut mid-way is downloaded again within the API retry budget. Returns the round manifest
    with ``stage="gathered"`` and ``results_paths``, ``failures_paths``, ``result_counts``,
    ``error_types``, ``retryable``, ``usage``, ``usage_by_model``, ``cost`` and
    ``gathered_at`` added; the same manifest is written to ``round-{r}/manifest.json``.

    :param manifest: The round manifest from the wait (``BatchesSensor``) of this round,
        usually ``wait.output``; a dict also works.
    :param conn_id: Anthropic connection id; default (and the only one accepted): the manifest's.
    :param include_content: Also keep each message's full ``content`` blocks in the rows.
    :param retryable_error_types: Failure kinds to classify as retryable: error types such
        as ``overloaded_error`` plus ``expired``, ``missing``, ``canceled_by_timeout`` and
        ``canceled``. Defaults to :data:`airflow_batch.gather.rows.DEFAULT_RETRYABLE`.
    :param prices: Price table overrides (model id or family key -> prices per million
        tokens) for the round's cost.
    :param max_cost_usd: Budget of the whole job at batch prices: as results land, the job's
        actual spend is compared with it and a warning says so when it is passed (the round
        manifest's ``budget`` records it).
    :param delete_batches: ``"after_gather"``: delete each batch (and its results) from the API
        once its result and failure rows are written and counted, never before: batches are not
        eligible for zero data retention and otherwise stay 29 days. The round manifest's
        ``deleted_batches`` records when; a re-run finds the batch gathered and does not ask the API
        for it again. Default ``None``: batches are left on the API.
    :param on_results_gone: What to do when the API no longer holds a batch's results (archived
        29 days after creation, or deleted), found before anything is landed: ``"fail"``
        (default) fails with ``ResultsGoneError`` naming each such batch and its requests;
        ``"retry"`` lands its requests as retryable ``missing`` failures (``error_type``
        ``results_archived`` / ``batch_deleted``) so the next retry round resubmits exactly those
        (the manifest's ``results_gone`` names the batches). ``anthropic_batch_job`` uses
        ``"retry"`` while a retry round is left.

    With ``reuse_answers`` on the job's submit, the round's succeeded, schema-valid answers are
    also written to the answer store (``answers_stored`` in the manifest), and the rows the submit
    answered without a batch (``round-N/reused.jsonl``) are the first of ``results_paths``.
    """

    template_fields: Sequence[str] = ("manifest", "conn_id")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        manifest: RoundManifest | Mapping[str, Any] | Any,
        conn_id: str | None = None,
        include_content: bool = False,
        retryable_error_types: Iterable[str] | None = None,
        prices: Mapping[str, Mapping[str, Any]] | None = None,
        max_cost_usd: float | None = None,
        delete_batches: str | None = None,
        on_results_gone: str = "fail",
        **kwargs: Any,
    ) -> None:
        from airflow_batch.gather.retention import validate_results_gone

        super().__init__(**kwargs)
        self.on_results_gone = validate_results_gone(on_results_gone)
        if delete_batches not in DELETE_BATCHES:
            raise ValueError(
                f"{self.task_id}: delete_batches must be None or 'after_gather', got {delete_batches!r}"
            )
        self.delete_batches = delete_batches
        self.max_cost_usd = max_cost_usd
        self.manifest = manifest
        self.conn_id = conn_id
        self.include_content = include_content
        self.retryable_error_types = (
            frozenset(retryable_error_types) if retryable_error_types is not None else DEFAULT_RETRYABLE
        )
        self.prices = prices

    def execute(self, context: Context) -> RoundManifest:
        """Gather the round and return its manifest."""
        from airflow_batch.folder import JobFolder
        from airflow_batch.gather.gathering import gather_config, gather_round
        from airflow_batch.gather.pruning import prune_chunks
        from airflow_batch.hooks.batches import BatchesHook
        from airflow_batch.storage import as_path

        manifest: RoundManifest = dict(self.manifest)  # type: ignore[assignment]
        identity = JobIdentity.of(manifest, self.conn_id, self.task_id)
        job = as_path(manifest["job_dir"])
        config = gather_config(
            job,
            include_content=self.include_content,
            retryable_error_types=self.retryable_error_types,
            prices=self.prices,
            delete_batches=self.delete_batches,
            on_results_gone=self.on_results_gone,
        )
        hook = BatchesHook(identity.conn_id, betas=identity.betas, workspace_id=identity.workspace_id)
        with hook.batches_api() as api:
            out = gather_round(
                api,
                manifest,
                config=config,
                max_cost_usd=self.max_cost_usd,
                logger=self.log,  # type: ignore[arg-type]
            )
        prune_chunks(out, keep=bool(JobFolder(job).read_spec().get("keep_chunks")), log=self.log)  # type: ignore[arg-type]
        counts = out["result_counts"]
        self.log.info(
            "round %d gathered: %s; %d retryable; cost $%.4f at batch prices ($%.4f standard)",
            out["round"],
            ", ".join(f"{n} {t}" for t, n in [*counts.items(), ("reused", out.get("reused", 0))] if n),
            out["retryable"],
            out["cost"]["batch_usd"],
            out["cost"]["standard_usd"],
        )
        if out.get("answers_stored"):
            self.log.info("%d answer(s) written to the answer store", out["answers_stored"])
        if out.get("results_gone"):
            self.log.warning(
                "%d batch(es) had no results left on the API; their requests go to the next round: %s",
                len(out["results_gone"]),
                ", ".join(out["results_gone"]),
            )
        if out.get("deleted_batches"):
            self.log.info("%d batch(es) deleted from the API", len(out["deleted_batches"]))
        return out
