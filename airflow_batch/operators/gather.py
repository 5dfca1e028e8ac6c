"""``GatherResultsOperator``: land a round's results and failures in the job folder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_batch.hooks import job_api
from airflow_batch.lineage import BatchJobLineage
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.rows.failures import DEFAULT_RETRYABLE
from airflow_batch.spec.docstrings import documented, parameters_of

if TYPE_CHECKING:
    from airflow.sdk import Context

#: What ``delete_batches`` accepts: off, or delete each batch once its rows are landed.
DELETE_BATCHES = parameters_of("gather")["delete_batches"].choices


@documented("gather")
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
        round_asset: Asset | str | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_batch.gather.retention import validate_results_gone

        self.round_asset = Asset(uri=round_asset) if isinstance(round_asset, str) else round_asset
        if self.round_asset is not None:
            kwargs["outlets"] = [*kwargs.get("outlets", []), self.round_asset]
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
        with job_api(identity) as api:
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
        if self.round_asset is not None:
            context["outlet_events"][self.round_asset].extra = round_asset_extra(out)
        return out


def round_asset_extra(gathered: RoundManifest) -> dict[str, Any]:
    """Return the asset event ``extra`` of a landed round: where its rows are and their counts."""
    return {
        "job_dir": gathered["job_dir"],
        "round": gathered["round"],
        "partial": True,  # the job's merged files come with finalize's own asset event
        "results_paths": list(gathered.get("results_paths", [])),
        "failures_paths": list(gathered.get("failures_paths", [])),
        "result_counts": dict(gathered.get("result_counts", {})),
    }
