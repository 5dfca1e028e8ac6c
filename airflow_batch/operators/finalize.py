"""FinalizeBatchJobOperator: merge every round of a batch job and publish its results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_batch.exceptions import FailureRateExceededError, IncompleteJobError, NothingToFinalizeError
from airflow_batch.folder import JobFolder
from airflow_batch.gather.finalizing import check_complete, check_failure_rate, finalize_job
from airflow_batch.gather.publishing import check_publish_path, publish_root, publisher
from airflow_batch.gather.tables import require_pyarrow, results_formats
from airflow_batch.hooks import job_api
from airflow_batch.lineage import BatchJobLineage
from airflow_batch.manifest import FAILED_MANIFEST_KEY, JobIdentity, JobManifest
from airflow_batch.spec.docstrings import documented
from airflow_batch.storage import as_path
from airflow_batch.submit.inputs import check_location

if TYPE_CHECKING:
    from airflow.sdk import Context


@documented("finalize")
class FinalizeBatchJobOperator(BatchJobLineage, BaseOperator):
    """
    Merge all rounds of a job into ``results.jsonl``, ``failures.jsonl`` and ``manifest.json``.

    ``results.jsonl`` holds one row per ``custom_id`` (a success from any round wins),
    ``failures.jsonl`` only the requests that never succeeded, each with its latest
    failure, and ``manifest.json`` totals, per-round figures, tokens, cost at batch and
    standard prices and durations. Rounds are found in the job folder, so skipped retry
    rounds need nothing. The default trigger rule ``all_done`` runs this task whatever
    happened upstream: a retry round refused by the budget (or failed) never keeps the
    results the earlier rounds landed out of ``results.jsonl``; the refusal is recorded in the
    manifest (``refused_rounds``) and the failure policy decides the outcome. When ``asset``
    is set, the task emits an event for it whose ``extra`` carries ``results_uri``,
    ``failures_uri``, ``manifest_uri``, the counts and the cost, so downstream DAGs can be
    scheduled on it. The failure policy is applied
    last: above ``max_failure_rate`` the task fails, after every file is written (and
    without an asset event), leaving the job manifest in XCom under ``failed_manifest``.
    """

    template_fields: Sequence[str] = ("manifest", "job_dir", "max_failure_rate", "publish_path")
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        manifest: Mapping[str, Any] | Any = None,
        job_dir: str | None = None,
        max_failure_rate: float | None = None,
        asset: Asset | str | None = None,
        results_format: str | Sequence[str] = "jsonl",
        publish_path: str | None = None,
        retry_rounds: int | None = None,
        trigger_rule: str = "all_done",
        **kwargs: Any,
    ) -> None:
        if manifest is None and job_dir is None:
            raise ValueError(f"{kwargs.get('task_id')}: give manifest (e.g. submit.output) or job_dir")
        self.results_format = results_formats(results_format)
        if "parquet" in self.results_format:
            require_pyarrow()
        check_location(publish_path, f"{kwargs.get('task_id')}: publish_path")
        self.asset = Asset(uri=asset) if isinstance(asset, str) else asset
        if self.asset is not None:
            kwargs["outlets"] = [*kwargs.get("outlets", []), self.asset]
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.manifest = manifest
        # The task whose output is the manifest (submit, in the factory): where a refusal is read.
        operator = getattr(manifest, "operator", None)
        self.manifest_task_id: str | None = getattr(operator, "task_id", None)
        self.job_dir = job_dir
        self.max_failure_rate = max_failure_rate
        self.publish_path = publish_path
        self.publish_root = publish_root(publish_path)  # what the rendered path must stay under
        self.retry_rounds = retry_rounds

    def execute(self, context: Context) -> JobManifest:
        """Merge the rounds, write the job files, emit the asset event, apply the failure policy."""
        if not self.job_dir and not self.manifest:
            raise NothingToFinalizeError(self.nothing_to_merge(context))
        job_dir = self.job_dir or self.manifest["job_dir"]
        from airflow_batch import settings

        limit = (
            settings.max_failure_rate()
            if self.max_failure_rate in (None, "", "None")
            else float(self.max_failure_rate)
        )
        if self.publish_path:
            check_location(self.publish_path, f"{self.task_id}: publish_path", rendered=True)
            check_publish_path(str(self.publish_path), self.publish_root, f"{self.task_id}: publish_path")
        job_manifest = finalize_job(
            job_dir,
            max_failure_rate=limit,
            results_format=self.results_format,
            publish_path=self.publish_path or None,
            publisher=publisher(self.dag_id, self.task_id),
            retry_rounds=self.retry_rounds,
            logger=self.log,  # type: ignore[arg-type]
        )
        if self.asset is not None:
            context["outlet_events"][self.asset].extra = asset_extra(job_manifest)
        try:
            check_complete(job_manifest)
            self.delete_uploads(job_dir)
            check_failure_rate(job_manifest)
        except (IncompleteJobError, FailureRateExceededError):
            # The task fails without a return value; the batch jobs page reads the outcome here.
            context["ti"].xcom_push(FAILED_MANIFEST_KEY, job_manifest)
            raise
        return job_manifest

    def nothing_to_merge(self, context: Context) -> str:
        """Return why there is nothing to merge: the submit's refusal when it left one in XCom."""
        refused = None
        if self.manifest_task_id is not None:
            refused = context["ti"].xcom_pull(task_ids=self.manifest_task_id, key=FAILED_MANIFEST_KEY)
        if refused:
            return (
                f"nothing to merge: {self.manifest_task_id} was refused before any spend "
                f"({refused.get('kind')}: {first_line(str(refused.get('reason')))}); fix that, then clear "
                f"{self.manifest_task_id}"
            )
        return (
            "nothing to merge: round 0 has no manifest (its submit failed before returning one; its log "
            "says why); fix that, then clear the submit task"
        )

    def delete_uploads(self, job_dir: str) -> None:
        """Delete a documents job's uploads from the Files API once it has landed whole
        (``delete_files="after_gather"``, see :mod:`airflow_batch.submit.documents`)."""
        job = as_path(job_dir)
        if JobFolder(job).read_spec().get("delete_files") != "after_gather":
            return
        if not self.manifest:
            self.log.warning(
                "documents: no round manifest, so no connection: the uploads of %s are kept", job
            )
            return
        from airflow_batch.submit.documents import delete_uploads

        identity = JobIdentity.of(self.manifest, None, self.task_id)
        with job_api(identity) as api:
            delete_uploads(api, job, self.log)  # type: ignore[arg-type]


def first_line(text: str, limit: int = 300) -> str:
    """Return the first line of ``text``, cut to ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def asset_extra(job_manifest: JobManifest) -> dict[str, Any]:
    """Return the asset event ``extra`` of a finished job: where its files are, counts and cost."""
    return {
        "results_uri": job_manifest["results_path"],
        "failures_uri": job_manifest["failures_path"],
        "manifest_uri": job_manifest["manifest_path"],
        "results_parquet_uri": job_manifest.get("results_parquet_path"),
        "published_uri": job_manifest.get("published_path"),
        "requests": job_manifest["requests"],
        "succeeded": job_manifest["succeeded"],
        "failed": job_manifest["failed"],
        "failure_rate": job_manifest["failure_rate"],
        "rounds": len(job_manifest["rounds"]),
        "cost_batch_usd": job_manifest["cost"]["batch_usd"],
        "cost_standard_usd": job_manifest["cost"]["standard_usd"],
        "input_tokens": job_manifest["usage"]["input_tokens"],
        "output_tokens": job_manifest["usage"]["output_tokens"],
    }
