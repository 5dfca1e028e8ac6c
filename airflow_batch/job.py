"""``anthropic_batch_job``: one call builds a whole batch job as a TaskGroup.

::

    submit >> wait >> gather >> retry_1 >> wait_1 >> gather_1 >> ... >> finalize

Each piece is an ordinary operator (``SubmitBatchesOperator``, ``BatchesSensor``,
``GatherResultsOperator``, ``RetryFailedOperator``, ``FinalizeBatchJobOperator``) that can
be used alone; the factory only wires them with the arguments a DAG author usually sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import Asset, TaskGroup, XComArg

from airflow_batch.operators.finalize import FinalizeBatchJobOperator
from airflow_batch.operators.gather import GatherResultsOperator
from airflow_batch.operators.retry import RetryFailedOperator
from airflow_batch.operators.submit import SubmitBatchesOperator
from airflow_batch.sensors.batches import BatchesSensor
from airflow_batch.spec.docstrings import documented
from airflow_batch.wait.policy import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from airflow_batch.submit.records import CustomIdFrom
from airflow_batch.wait.landing import DEFAULT_LAND_INTERVAL


class BatchJobGroup(TaskGroup):
    """The TaskGroup of a batch job, with typed access to what its ``finalize`` task returns."""

    @property
    def finalize(self) -> FinalizeBatchJobOperator:
        """Return the job's ``finalize`` task."""
        task = self.children[self.child_id("finalize")]
        assert isinstance(task, FinalizeBatchJobOperator)
        return task

    @property
    def output(self) -> XComArg:
        """Return the job manifest as an XComArg (a :class:`~airflow_batch.manifest.JobManifest`).

        Pass it to a downstream task: ``report(job.output)`` receives the manifest, with
        ``results_path``, ``failures_path``, the Parquet paths, counts and cost; it also makes
        the task run after the job.
        """
        return self.finalize.output


def _results_gone(round_number: int, max_retry_rounds: int) -> dict[str, str]:
    """Return the gather's ``on_results_gone``: resubmit in the next round while one is left, else fail."""
    return {"on_results_gone": "retry" if round_number < max_retry_rounds else "fail"}


def default_asset(dag_id: str, group_id: str) -> Asset:
    """Return the Asset a job emits when none is given: ``airflow-batch://{dag_id}/{group_id}``."""
    return Asset(uri=f"airflow-batch://{dag_id}/{group_id}")


@documented("job")
def anthropic_batch_job(
    group_id: str,
    *,
    output_path: str | None = None,
    requests: Any = None,
    records: Any = None,
    documents: Any = None,
    delete_files: str = "after_gather",
    output_schema: Any = None,
    passthrough_fields: Sequence[str] = (),
    custom_id_from: CustomIdFrom | None = None,
    results_format: str | Sequence[str] = "jsonl",
    publish_path: str | None = None,
    conn_id: str = "anthropic_default",
    max_retry_rounds: int = 2,
    poll_interval: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_failure_rate: float | None = None,
    max_cost_usd: float | None = None,
    budget_basis: str | None = None,
    max_queued_requests: int | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    system: str | list[Any] | None = None,
    cache_system_prompt: bool | None = None,
    cache_ttl: str | None = None,
    prompt_template: str | None = None,
    custom_id_field: str = "custom_id",
    include_content: bool = False,
    retryable_error_types: Iterable[str] | None = None,
    prices: Mapping[str, Mapping[str, Any]] | None = None,
    asset: Asset | str | Literal[False] | None = None,
    deferrable: bool | None = None,
    betas: Sequence[str] = (),
    workspace_id: str | None = None,
    reuse_answers: bool = False,
    answer_store: str | None = None,
    max_age: float | timedelta | None = None,
    canary: int = 0,
    canary_max_failure_rate: float = 0.0,
    delete_batches: str | None = None,
    land_interval: float | None = DEFAULT_LAND_INTERVAL,
    keep_chunks: bool = False,
    submit_kwargs: Mapping[str, Any] | None = None,
    sensor_kwargs: Mapping[str, Any] | None = None,
    gather_kwargs: Mapping[str, Any] | None = None,
    tooltip: str = "",
) -> BatchJobGroup:
    """Return a TaskGroup running a whole Message Batches job: submit, wait, gather, retries, finalize.

    Task ids inside the group: ``submit``, ``wait``, ``gather``, then per retry round ``r``
    ``retry_r``, ``wait_r``, ``gather_r``, and ``finalize``. Use the group like a task:
    ``extract >> anthropic_batch_job(...) >> load``. Files land in the job folder under
    ``output_path`` (see :mod:`airflow_batch.layout`); ``finalize`` returns the job manifest,
    which downstream tasks get as ``job.output`` (see :class:`BatchJobGroup`).
    """
    if sum(source is not None for source in (requests, records, documents)) != 1:
        raise ValueError(
            f"anthropic_batch_job {group_id!r}: give exactly one of requests= or records= (or documents=)"
        )
    if max_retry_rounds < 0:
        raise ValueError(f"anthropic_batch_job {group_id!r}: max_retry_rounds must be >= 0")
    submit_extra = dict(submit_kwargs or {})
    if cache_system_prompt is not None:
        submit_extra["cache_system_prompt"] = cache_system_prompt
    if budget_basis is not None:
        submit_extra["budget_basis"] = budget_basis
    if max_queued_requests is not None:
        submit_extra["max_queued_requests"] = max_queued_requests
    if records is not None or documents is not None:
        submit_extra.setdefault("passthrough_fields", passthrough_fields)
        submit_extra.setdefault("custom_id_from", custom_id_from)
    if documents is not None:
        submit_extra.update(documents=documents, delete_files=delete_files)
    sensor_args: dict[str, Any] = {
        "poll_interval": poll_interval,
        "timeout": timeout,
        **(sensor_kwargs or {}),
    }
    if deferrable is not None:
        sensor_args["deferrable"] = deferrable
    gather_args: dict[str, Any] = {
        "include_content": include_content,
        "retryable_error_types": retryable_error_types,
        "prices": prices,
        "max_cost_usd": max_cost_usd,
        "delete_batches": delete_batches,
        **(gather_kwargs or {}),
    }
    if land_interval is not None:
        # A batch landed by the wait lands exactly as the gather would land it.
        landing_keys = ("include_content", "retryable_error_types", "prices", "delete_batches")
        sensor_args["land_interval"] = land_interval
        sensor_args["gather_settings"] = {key: gather_args[key] for key in landing_keys}
        # The submit lands the same way while a round's later waves wait for queue room (retry
        # rounds read it from the job's spec).
        landing_args = ("land_interval", "land_min_batches", "gather_settings")
        submit_extra.update({key: sensor_args[key] for key in landing_args if key in sensor_args})

    group = BatchJobGroup(group_id, tooltip=tooltip)
    with group:
        submit = SubmitBatchesOperator(
            task_id="submit",
            requests=requests,
            records=records,
            output_path=output_path,
            conn_id=conn_id,
            max_cost_usd=max_cost_usd,
            model=model,
            max_tokens=max_tokens,
            system=system,
            prompt_template=prompt_template,
            custom_id_field=custom_id_field,
            output_schema=output_schema,
            cache_ttl=cache_ttl,
            prices=prices,
            betas=betas,
            workspace_id=workspace_id,
            poll_interval=poll_interval,
            reuse_answers=reuse_answers,
            answer_store=answer_store,
            max_age=max_age,
            canary=canary,
            canary_max_failure_rate=canary_max_failure_rate,
            include_content=include_content,
            keep_chunks=keep_chunks,
            **submit_extra,
        )
        # Every later task reads the connection (and betas, workspace) from the round manifest.
        wait = BatchesSensor(task_id="wait", manifest=submit.output, **sensor_args)
        gather = GatherResultsOperator(
            task_id="gather", manifest=wait.output, **{**_results_gone(0, max_retry_rounds), **gather_args}
        )
        last = gather
        for number in range(1, max_retry_rounds + 1):
            # Its settings are the job's, read from the spec the submit wrote.
            retry = RetryFailedOperator(task_id=f"retry_{number}", manifest=last.output)
            wait_r = BatchesSensor(task_id=f"wait_{number}", manifest=retry.output, **sensor_args)
            last = GatherResultsOperator(
                task_id=f"gather_{number}",
                manifest=wait_r.output,
                **{**_results_gone(number, max_retry_rounds), **gather_args},
            )
        if asset is None:
            dag = group.dag
            asset = default_asset(dag.dag_id, group.group_id or group_id) if dag is not None else False
        finalize = FinalizeBatchJobOperator(
            task_id="finalize",
            manifest=submit.output,
            max_failure_rate=max_failure_rate,
            asset=asset or None,
            results_format=results_format,
            publish_path=publish_path,
            retry_rounds=max_retry_rounds,
        )
        last >> finalize
    return group
