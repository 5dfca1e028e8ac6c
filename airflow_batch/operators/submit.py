"""``SubmitBatchesOperator``: validate, chunk, persist, estimate and submit a job's requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_batch import layout, settings
from airflow_batch.folder import JobFolder
from airflow_batch.gather.tables import column_clashes
from airflow_batch.history import observed_output_tokens
from airflow_batch.hooks import job_api
from airflow_batch.lineage import BatchJobLineage
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.media import FILES_BETA
from airflow_batch.operators.failed_manifest import failures_shown
from airflow_batch.operators.queueing import defer_for_room, resume_round
from airflow_batch.rules.schema import job_schema
from airflow_batch.spec.docstrings import documented
from airflow_batch.spec.job_spec import JobSpec, callable_name, write_job_spec
from airflow_batch.storage import as_path
from airflow_batch.submit.canary import CanarySettings
from airflow_batch.submit.documents import require_documents
from airflow_batch.submit.inputs import (
    check_location,
    require_local_input,
    require_model,
    require_output_path,
)
from airflow_batch.submit.queue import QueueWaitNeeded
from airflow_batch.submit.records import (
    CACHE_TTLS,
    CustomIdFrom,
    RequestBuilder,
    RequestDefaults,
    carried_fields,
    records_to_requests,
)
from airflow_batch.submit.round import SubmitSettings
from airflow_batch.submit.routing import AnswerReuse, max_age_seconds
from airflow_batch.submit.validation import MAX_BYTES_PER_BATCH, MAX_REQUESTS_PER_BATCH
from airflow_batch.wait.landing import validate_land_interval

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_batch.api import BatchesApi


@documented("submit")
class SubmitBatchesOperator(BatchJobLineage, BaseOperator):
    """Submit requests to the Message Batches API as batches within the API's limits; return a manifest.

    Validates every request before any API call, splits them into batches by count and bytes
    (deterministic boundaries, streaming: memory does not grow with the input), writes each
    chunk under the job folder ``{output_path}/{dag_id}/{run_id}/{task_id}[/map-{i}]/``,
    estimates the cost (refusing above ``max_cost_usd``), then creates one batch per chunk.
    The XCom return value is a small :class:`~airflow_batch.manifest.RoundManifest`: job
    folder, batch ids per chunk, request counts, bytes and the estimate, never request bodies.

    **Retries and clears never pay twice.** Each batch id is written to the job folder's
    ``round-0/ledger.json`` the moment the API returns it, and mirrored to Airflow's
    ``task_state_store``. A retry (try_number + 1) and a clear of this task instance both keep
    the job folder (same dag, run, task, map index) and the state-store rows, so the next
    attempt re-attaches to the recorded batches and submits only the chunks that have none.
    The state-store mirror also covers a local ``output_path`` retried on another worker;
    it is lost if the dag run is deleted or ``[state_store] clear_on_success`` is on.
    If the worker dies after the API created a batch but before the ledger recorded it, the
    ledger holds an intent ("submitting chunk N at T") and the next attempt adopts the one
    batch created since T with the chunk's request count; with two or more candidates it
    adopts none, warns with their ids, and submits again (see :mod:`airflow_batch.ledger`).
    A create whose response is lost (timeout, dropped connection) is handled the same way
    before it is retried, instead of the SDK's blind retry.

    **A refusal before any spend** (invalid input, the budget, an unknown model) fails the
    task without a return value and leaves the refused round's manifest (the reason, and the
    estimate against the budget) in XCom under ``failed_manifest``, for the batch jobs page.

    **A changed input** for the same task instance (a different fingerprint of the prepared
    requests and batch limits) fails with ``InputChangedError`` by default; with
    ``on_input_change="resubmit"`` the recorded batches that have not ended are canceled,
    the ledger is archived as ``ledger.<timestamp>.json`` and the new input is submitted.
    """

    template_fields: Sequence[str] = (
        "requests",
        "records",
        "output_path",
        "conn_id",
        "system",
        "model",
        "prompt_template",
        "answer_store",
        "documents",
    )
    ui_color = "#f3d9c4"

    def __init__(
        self,
        *,
        output_path: str | None = None,
        requests: Any = None,
        records: Any = None,
        prompt_template: str | None = None,
        request_builder: RequestBuilder | None = None,
        custom_id_field: str = "custom_id",
        custom_id_from: CustomIdFrom | None = None,
        passthrough_fields: Sequence[str] = (),
        output_schema: Any = None,
        model: str | None = None,
        max_tokens: int | None = None,
        system: str | list[Any] | None = None,
        cache_system_prompt: bool = True,
        cache_ttl: str | None = None,
        conn_id: str = "anthropic_default",
        max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH,
        max_bytes_per_batch: int = MAX_BYTES_PER_BATCH,
        max_cost_usd: float | None = None,
        prices: Mapping[str, Mapping[str, Any]] | None = None,
        expected_output_tokens: int | None = None,
        budget_basis: str | None = None,
        max_queued_requests: int | None = None,
        poll_interval: float | None = None,
        on_input_change: str = "fail",
        skip_invalid: bool = False,
        count_tokens_sample: int = 20,
        adopt_orphans: bool = True,
        betas: Sequence[str] = (),
        workspace_id: str | None = None,
        reuse_answers: bool = False,
        answer_store: str | None = None,
        max_age: float | timedelta | None = None,
        canary: int = 0,
        canary_max_failure_rate: float = 0.0,
        documents: Any = None,
        delete_files: str = "after_gather",
        upload_concurrency: int = 8,
        include_content: bool = False,
        keep_chunks: bool = False,
        land_interval: float | None = None,
        land_min_batches: int | None = None,
        gather_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.documents = documents
        self.delete_files = delete_files
        self.upload_concurrency = upload_concurrency
        if documents is not None:
            require_documents(
                self.task_id, documents, requests, records, prompt_template, delete_files, upload_concurrency
            )
            # Each file becomes a record: the records' checks below (passthrough_fields, custom_id_from)
            # apply; every call of the job carries the Files API beta its requests need.
            records, betas = [], [*dict.fromkeys([*betas, FILES_BETA])]
        if (requests is None) == (records is None):
            raise ValueError(f"{self.task_id}: give exactly one of requests= or records= (or documents=)")
        if records is not None and prompt_template is None and request_builder is None:
            raise ValueError(f"{self.task_id}: records= needs prompt_template= and/or request_builder=")
        if records is None and (passthrough_fields or custom_id_from is not None):
            raise ValueError(f"{self.task_id}: passthrough_fields= and custom_id_from= go with records=")
        for name, location in (("records", records), ("requests", requests), ("output_path", output_path)):
            check_location(location, f"{self.task_id}: {name}")
        # Checked now, so a schema structured outputs refuse fails when the DAG is parsed, and so do
        # row fields that would clash with result columns (found only after the spend otherwise).
        self.job_schema = job_schema(output_schema) if output_schema is not None else None
        require_output_path(self.task_id, output_path)
        require_model(
            self.task_id,
            model=model,
            records=records,
            requests=requests,
            builds_requests=request_builder is not None,
        )
        for name, source in (("records", records), ("requests", requests)):
            require_local_input(self.task_id, name, source)
        try:
            self.carried_fields = carried_fields(passthrough_fields, custom_id_from)
        except ValueError as exc:
            raise ValueError(f"{self.task_id}: {exc}") from None
        properties = self.job_schema.schema.get("properties") or {} if self.job_schema is not None else {}
        clash = column_clashes(self.carried_fields, properties)
        if clash:
            raise ValueError(f"{self.task_id}: {clash}")
        self.output_schema = output_schema
        self.custom_id_from = custom_id_from
        self.passthrough_fields = list(passthrough_fields)
        if cache_ttl is not None and cache_ttl not in CACHE_TTLS:  # else found only when the task runs
            raise ValueError(
                f"{self.task_id}: cache_ttl={cache_ttl!r}: must be one of {', '.join(CACHE_TTLS)}"
            )
        self.cache_ttl = cache_ttl
        self.requests = requests
        self.records = records
        self.prompt_template = prompt_template
        self.request_builder = request_builder
        self.custom_id_field = custom_id_field
        self.model = model
        self.max_tokens = max_tokens
        self.system = system
        self.cache_system_prompt = cache_system_prompt
        self.output_path = output_path
        self.conn_id = conn_id
        # Checked now so a bad setting fails when the DAG is parsed, not when it runs.
        self.settings = SubmitSettings(
            max_requests_per_batch=max_requests_per_batch,
            max_bytes_per_batch=max_bytes_per_batch,
            max_cost_usd=max_cost_usd,
            prices=prices,
            expected_output_tokens=expected_output_tokens,
            budget_basis=budget_basis,
            max_queued_requests=max_queued_requests,
            on_input_change=on_input_change,
            skip_invalid=skip_invalid,
            count_tokens_sample=count_tokens_sample,
            adopt_orphans=adopt_orphans,
        )
        self.betas = list(betas)
        self.workspace_id = workspace_id
        self.poll_interval = poll_interval
        if answer_store is not None and not reuse_answers:
            raise ValueError(f"{self.task_id}: answer_store= goes with reuse_answers=True")
        check_location(answer_store, f"{self.task_id}: answer_store")
        self.reuse_answers = reuse_answers
        self.answer_store = answer_store
        self.max_age = max_age_seconds(max_age, self.task_id)
        self.canary = CanarySettings(canary, canary_max_failure_rate) if canary else None
        self.include_content = include_content
        self.keep_chunks = keep_chunks
        # In the job's spec: ended batches land while the round's later waves wait for queue room.
        self.landing: dict[str, Any] = {
            "land_interval": validate_land_interval(land_interval),
            "land_min_batches": land_min_batches,
            "gather_settings": dict(gather_settings or {}),
        }

    def render_template(
        self, content: Any, context: Any, jinja_env: Any = None, seen_oids: set[int] | None = None
    ) -> Any:
        """Render templates, except inside inline data: a list or mapping given as ``records=`` or
        ``requests=`` is passed on as it is, so a record's text is never rendered (``{{ ... }}``
        in a review stays that text, and cannot reach a connection's secrets). A string (a URI)
        and an upstream task's output are resolved as usual."""
        if isinstance(content, (list, tuple, dict, set)) and (
            content is self.__dict__.get("records") or content is self.__dict__.get("requests")
        ):
            return content
        return super().render_template(content, context, jinja_env, seen_oids)

    def input_rows(self) -> Iterator[Any]:
        """Yield the job's requests (or invalid-row markers) in input order, streaming files."""
        from airflow_batch.submit.inputs import input_rows

        if self.records is not None and self.documents is None:
            yield from records_to_requests(
                input_rows(self.records, "records"),
                prompt_template=self.prompt_template,
                request_builder=self.request_builder,
                custom_id_field=self.custom_id_field,
                custom_id_from=self.custom_id_from,
                passthrough_fields=self.passthrough_fields,
            )
        else:
            yield from input_rows(self.requests, "requests")

    def job_dir(self, context: Context) -> ObjectStoragePath:
        """Return this task instance's job folder."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return JobFolder.of_task(
            self.base_path(),
            self.dag_id,
            context["run_id"],
            self.task_id,
            map_index if map_index is not None else -1,
        ).root

    def base_path(self) -> str:
        """Return the base URI of job folders: ``output_path`` or ``[airflow_batch] output_path``."""
        output_path = self.output_path or settings.get("output_path")
        if not output_path:
            raise ValueError(
                f"{self.task_id}: no output_path: pass output_path= (an absolute path or a URI such as "
                "s3://bucket/prefix) or set [airflow_batch] output_path"
            )
        check_location(output_path, f"{self.task_id}: output_path", rendered=True)
        return str(output_path)

    def history_path(self) -> ObjectStoragePath:
        """Return the history of this task's finished jobs (observed output lengths)."""
        return JobFolder.task_history_path(self.base_path(), self.dag_id, self.task_id)

    def round_settings(self) -> SubmitSettings:
        """Return the settings of round 0: the expected output length observed in earlier runs when
        the user gave none."""
        if self.settings.expected_output_tokens is not None:
            return self.settings
        observed = observed_output_tokens(self.history_path())
        if observed is None:
            return self.settings
        tokens, runs = observed
        return dataclasses.replace(
            self.settings,
            expected_output_tokens=tokens,
            expected_basis=f"observed in the last {runs} run(s) of this task",
        )

    def answer_store_uri(self) -> str | None:
        """Return the answer store URI (``answer_store``, else ``{output_path}/_answers``), or None."""
        if not self.reuse_answers:
            return None
        if self.answer_store:
            check_location(self.answer_store, f"{self.task_id}: answer_store", rendered=True)
            return str(self.answer_store)
        return layout.default_answer_store(self.base_path())

    def job_spec(self) -> JobSpec:
        """Return the job's spec: this task's arguments as rendered, defaults and answer store resolved."""
        return JobSpec(
            identity=JobIdentity(self.conn_id, tuple(self.betas), self.workspace_id),
            settings=self.settings,
            model=self.model or settings.get("model") or None,
            max_tokens=self.max_tokens,
            system=self.system,
            cache_system_prompt=self.cache_system_prompt,
            cache_ttl=self.cache_ttl or settings.get("cache_ttl"),
            prompt_template=self.prompt_template,
            custom_id_field=self.custom_id_field,
            custom_id_from=callable_name(self.custom_id_from),
            request_builder=callable_name(self.request_builder),
            output_schema=self.job_schema.schema if self.job_schema is not None else None,
            passthrough_fields=tuple(self.carried_fields),
            reuse_answers=self.reuse_answers,
            answer_store=self.answer_store_uri(),
            max_age=self.max_age,
            canary=self.canary.size if self.canary is not None else 0,
            canary_max_failure_rate=self.canary.max_failure_rate if self.canary is not None else 0.0,
            include_content=self.include_content,
            poll_interval=self.poll_interval,
            delete_files=self.delete_files if self.documents is not None else None,
            upload_concurrency=self.upload_concurrency,
            history_path=str(self.history_path()),
            keep_chunks=self.keep_chunks,
            **self.landing,
        )

    def execute(self, context: Context) -> RoundManifest:
        """Submit round 0 of the job (or re-attach to it); return the manifest.

        A failure before the round is submitted is left for the batch jobs page (:func:`failures_shown`).
        """
        with failures_shown(context, lambda: str(self.job_dir(context)), 0):
            return self.submit(context)

    def submit(self, context: Context) -> RoundManifest:
        """Submit round 0 of the job (or re-attach to it); return the manifest."""
        from airflow_batch.submit.inputs import is_file_input
        from airflow_batch.submit.ledger import LedgerStore
        from airflow_batch.submit.round import submit_round

        spec = self.job_spec()
        identity, store = spec.identity, spec.answer_store
        defaults = RequestDefaults(
            model=spec.model,
            max_tokens=spec.max_tokens,
            system=spec.system,
            cache_system_prompt=spec.cache_system_prompt,
            cache_ttl=spec.cache_ttl,  # type: ignore[arg-type]
            output_format=self.job_schema.output_format if self.job_schema else None,
        )
        source = self.records if self.records is not None else self.requests
        job = self.job_dir(context)
        recorded = LedgerStore(job, 0, context.get("task_state_store")).load()
        with job_api(identity) as api, ExitStack() as scope:
            write_job_spec(job, spec, bound=recorded is not None and recorded.binding, log=self.log)  # type: ignore[arg-type]
            JobFolder(job).write_spec(spec.job_file())
            rows: Iterable[Any] = self.input_rows()
            if self.documents is not None:
                rows = self.document_rows(api, job, context, scope)
            try:
                return submit_round(
                    api,
                    rows,
                    job=job,
                    round_number=0,
                    identity=identity,
                    settings=self.round_settings(),
                    state_store=context.get("task_state_store"),
                    log=self.log,  # type: ignore[arg-type]
                    defaults=defaults,
                    row_label="line" if is_file_input(source) else "row",
                    reuse=AnswerReuse(store, max_age=self.max_age) if store else None,
                    canary=self.canary,
                    validator=self.job_schema.validator if self.job_schema is not None else None,
                    include_content=self.include_content,
                )
            except QueueWaitNeeded as pause:
                defer_for_room(self, pause, identity, 0, self.poll_interval, job=job)
                raise  # unreachable: defer raises

    def document_rows(
        self, api: BatchesApi, job: ObjectStoragePath, context: Context, scope: ExitStack
    ) -> Iterable[Any]:
        """Read and upload the job's files (each distinct one once); return their requests.

        ``scope`` counts the files' blocks by their pages and pixels while the round is estimated.
        """
        from airflow_batch.submit.documents import document_requests, prepare_documents
        from airflow_batch.submit.ledger import LedgerStore

        recorded = LedgerStore(job, 0, context.get("task_state_store")).load()
        kept = layout.kept_files_dir(self.base_path()) if self.delete_files == "keep" else None
        plan = prepare_documents(
            api,
            self.documents,
            job=job,
            bound=recorded is not None and recorded.binding,
            kept=as_path(kept) if kept is not None else None,
            concurrency=self.upload_concurrency,
            log=self.log,  # type: ignore[arg-type]
        )
        scope.enter_context(plan.counted())
        assert self.prompt_template is not None  # require_documents
        return document_requests(
            plan,
            prompt_template=self.prompt_template,
            custom_id_from=self.custom_id_from,
            passthrough_fields=self.passthrough_fields,
        )

    def resume_submit(self, context: Context, event: dict[str, Any] | None = None) -> RoundManifest:
        """Create the next wave once the queue has room (after a deferral); defer again or return."""
        return resume_round(
            self,
            context,
            event,
            identity=JobIdentity(self.conn_id, tuple(self.betas), self.workspace_id),
            job=self.job_dir(context),
            round_number=0,
            settings=self.round_settings(),
            poll_interval=self.poll_interval,
            start_over=lambda: self.execute(context),
        )
