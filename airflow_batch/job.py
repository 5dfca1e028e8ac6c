"""``anthropic_batch_job``: one call builds a whole batch job as a TaskGroup.

::

    submit >> wait >> gather >> retry_1 >> wait_1 >> gather_1 >> ... >> finalize

Each piece is an ordinary operator (``SubmitBatchesOperator``, ``BatchesSensor``,
``GatherResultsOperator``, ``RetryFailedOperator``, ``FinalizeBatchJobOperator``) that can
be used alone; the factory only wires them with the arguments a DAG author usually sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import timedelta
from typing import Any, Literal

from airflow.sdk import Asset, TaskGroup, XComArg

from airflow_batch.operators.finalize import FinalizeBatchJobOperator
from airflow_batch.operators.gather import GatherResultsOperator
from airflow_batch.operators.retry import RetryFailedOperator
from airflow_batch.operators.submit import SubmitBatchesOperator
from airflow_batch.sensors.batches import BatchesSensor
from airflow_batch.submit.round import SubmitSettings


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
    custom_id_from: Any = None,
    results_format: str | Sequence[str] = "jsonl",
    publish_path: str | None = None,
    conn_id: str = "anthropic_default",
    max_retry_rounds: int = 2,
    poll_interval: float | None = None,
    timeout: float = 24 * 3600,
    max_failure_rate: float | None = None,
    max_cost_usd: float | None = None,
    budget_basis: str | None = None,
    max_queued_requests: int | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    system: Any = None,
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
    land_interval: float | None = None,
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

    :param group_id: Id of the TaskGroup.
    :param output_path: Where job folders are created: an absolute path or an ``s3://``,
        ``gs://`` URI (default ``[airflow_batch] output_path``).
    :param requests: Message Batches requests (``{"custom_id", "params"}``): a list, a JSONL
        path/URI, or an upstream task's output. Give this or ``records``.
    :param records: Plain records turned into requests with ``prompt_template`` and the
        defaults below (see ``SubmitBatchesOperator``).
    :param documents: Files to send, one request each: a glob, a list of paths or a ``.jsonl``
        records file with a ``path`` field; each distinct file is uploaded once with the Files API
        (see ``SubmitBatchesOperator``). Give this, ``requests`` or ``records``.
    :param delete_files: ``"after_gather"`` (default): delete the job's uploads once it has landed;
        ``"keep"``: keep them for later jobs under the same ``output_path``.
    :param output_schema: Structured outputs: a JSON Schema dict or a Pydantic model class;
        result rows carry the validated ``output``, an answer that is not valid is an
        ``invalid_output`` failure (retried).
    :param passthrough_fields: Record fields copied into result and failure rows (``input``).
    :param custom_id_from: A template or callable making each record's key, turned into a
        valid, stable ``custom_id`` (see ``SubmitBatchesOperator``).
    :param results_format: ``"jsonl"``, ``"parquet"`` or both: what ``finalize`` writes.
    :param publish_path: Folder (URI, templated) that gets a copy of the final files.
    :param conn_id: The ``anthropic`` connection.
    :param max_retry_rounds: How many retry rounds to build (0 for none).
    :param poll_interval: Seconds between status polls while waiting (default
        ``[airflow_batch] poll_interval``, 60).
    :param timeout: Seconds each round may wait before its unfinished batches are canceled.
    :param max_failure_rate: Share of failed requests (0-1) after every retry round above which
        ``finalize`` fails, after writing every file. ``None``: ``[airflow_batch]
        max_failure_rate`` (5% unless configured); ``1`` never fails for failed requests.
    :param max_cost_usd: Budget of the whole job at batch prices; each round checks its
        estimate against what is left.
    :param budget_basis: ``"upper_bound"`` (default) or ``"expected"``: which estimate the
        budget guards (see ``SubmitBatchesOperator``).
    :param max_queued_requests: The job's share of the organisation's processing queue; every
        round is created in waves that keep at most this many requests queued, deferring between
        them (default: learn from the API's queue-full answers; see ``SubmitBatchesOperator``).
    :param model: Default model for requests that set none.
    :param max_tokens: Default ``max_tokens`` for requests that set none.
    :param system: Default system prompt.
    :param cache_system_prompt: Mark the system prompt for prompt caching (default: the
        ``SubmitBatchesOperator`` default).
    :param cache_ttl: ``"1h"`` or ``"5m"``: lifetime of that cache entry (default
        ``[airflow_batch] cache_ttl``, 1h).
    :param prompt_template: Template building the user message from each record.
    :param custom_id_field: Record field holding the ``custom_id``.
    :param include_content: Keep each message's full ``content`` blocks in result rows.
    :param retryable_error_types: Failure kinds retried (see ``GatherResultsOperator``).
    :param prices: Price table overrides for estimates and costs.
    :param asset: Asset (or URI) emitted by ``finalize``; ``None`` uses
        ``airflow-batch://{dag_id}/{group_id}``; ``False`` emits none.
    :param deferrable: Run the waits deferred (default True, see ``BatchesSensor``).
    :param betas: Beta names sent as ``anthropic-beta`` on every call of the job.
    :param workspace_id: Sent as ``anthropic-workspace-id`` on every call of the job.
    :param reuse_answers: Answer requests an earlier run (of any job sharing the answer store)
        already answered from the store instead of sending them: no cost, rows marked
        ``reused_from``; the job's own answers are stored for later runs (see
        ``SubmitBatchesOperator``). A run whose every request is found creates no batch.
    :param answer_store: URI of the answer store (default ``{output_path}/_answers``).
    :param max_age: How old a reused answer may be: seconds or a ``timedelta``.
    :param canary: Requests to send at standard price before any batch, checking their answers
        (see ``SubmitBatchesOperator``); 0 for none.
    :param canary_max_failure_rate: Share of canary answers that may be unusable (default 0).
    :param delete_batches: ``"after_gather"``: delete each batch from the API once its rows are
        landed (see ``GatherResultsOperator``); default ``None`` keeps them.
    :param land_interval: Land each round's ended batches while its other batches still run, at
        most every ``land_interval`` seconds (or as soon as a tenth of them wait): their rows are
        readable with ``read_results(job_folder)`` before the round ends (see ``BatchesSensor``).
        ``None`` (default): a round lands when its last batch has ended.
    :param keep_chunks: Keep each round's chunk files after it has landed (default ``False``:
        removed, see ``SubmitBatchesOperator``).
    :param submit_kwargs: Further ``SubmitBatchesOperator`` arguments (batch limits,
        ``expected_output_tokens``, ``on_input_change``, ``skip_invalid``...); the batch
        settings among them apply to retry rounds too.
    :param sensor_kwargs: Further ``BatchesSensor`` arguments (``timeout_policy``...).
    :param gather_kwargs: Further ``GatherResultsOperator`` arguments. ``on_results_gone`` is
        ``"retry"`` for every gather but the last round's (``"fail"``): the requests of a batch
        whose results the API no longer holds go to the next retry round.
    :param tooltip: Tooltip of the group in the UI.
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
    settings_names = {f.name for f in fields(SubmitSettings)} - {"max_cost_usd", "prices"}
    retry_settings = {k: v for k, v in submit_extra.items() if k in settings_names}
    if prices is not None:
        retry_settings["prices"] = prices
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
            retry = RetryFailedOperator(
                task_id=f"retry_{number}",
                manifest=last.output,
                max_cost_usd=max_cost_usd,
                submit_settings=retry_settings,
                poll_interval=poll_interval,
            )
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
