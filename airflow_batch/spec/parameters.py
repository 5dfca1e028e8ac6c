"""Every parameter of a batch job, declared once: name, type, default, documentation, the tasks taking it.

The signatures of ``anthropic_batch_job`` and of the operators must agree with these
declarations (``tests/spec/test_parameters.py`` fails on any drift: a parameter missing here, a
different default or type); their ``:param`` docstrings are generated from them at import
(:func:`~airflow_batch.spec.docstrings.documented`), and so is the reference page
``docs/reference/parameters.md`` (:mod:`airflow_batch.spec.reference`). A name that means
something else in another task (the ``manifest`` each task reads, ``conn_id`` given or
inherited) is declared once per meaning. The form of a declaration is
:class:`~airflow_batch.spec.declaration.Parameter`; this module is the declarations, by topic
(the order of the reference page).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_batch.gather.retention import RESULTS_GONE_POLICIES
from airflow_batch.spec.declaration import REQUIRED, Parameter, Task
from airflow_batch.submit.documents import DELETE_FILES
from airflow_batch.submit.records import CACHE_TTLS
from airflow_batch.submit.round import BUDGET_BASES, ON_INPUT_CHANGE
from airflow_batch.submit.validation import MAX_BYTES_PER_BATCH, MAX_REQUESTS_PER_BATCH
from airflow_batch.wait.landing import DEFAULT_LAND_INTERVAL
from airflow_batch.wait.policy import DEFAULT_CANCEL_GRACE, DEFAULT_TIMEOUT, TIMEOUT_POLICIES


def _p(
    name: str,
    type: str,
    default: Any,
    tasks: str,
    doc: str,
    *,
    defaults: Mapping[Task, Any] | None = None,
    types: Mapping[Task, str] | None = None,
    choices: tuple[Any, ...] = (),
    see: str | None = None,
) -> Parameter:
    return Parameter(
        name=name,
        type=type,
        doc=" ".join(doc.split()),
        tasks=tuple(tasks.split()),  # type: ignore[arg-type]
        topic=_topic,
        default=default,
        defaults=dict(defaults or {}),
        types=dict(types or {}),
        choices=choices,
        see=see,
    )


# fmt: off
_topic = "The job"
_JOB = [
    _p("group_id", "str", REQUIRED, "job", "Id of the TaskGroup."),
    _p("output_path", "str | None", None, "job submit",
        """Base URI of job folders: an absolute path or a URI (``file://``, ``s3://``, ``gs://``...);
        default ``[airflow_batch] output_path``. Each job's files land in
        ``{output_path}/{dag_id}/{run_id}/{task_id}[/map-{i}]/``. A relative path, or neither this nor
        the setting, is a DAG import error naming the fix (a relative path would resolve against
        whichever worker runs the task). Templated.""",
    ),
    _p("max_retry_rounds", "int", 2, "job",
        """How many retry rounds to build (0 for none): each resubmits the retryable failures of the
        round before it.""",
    ),
    _p("submit_kwargs", "Mapping[str, Any] | None", None, "job",
        """Further ``SubmitBatchesOperator`` arguments (batch limits, ``expected_output_tokens``,
        ``on_input_change``, ``skip_invalid``...); the batch settings among them apply to retry rounds
        too.""",
    ),
    _p("sensor_kwargs", "Mapping[str, Any] | None", None, "job",
        "Further ``BatchesSensor`` arguments (``timeout_policy``...).",
    ),
    _p("gather_kwargs", "Mapping[str, Any] | None", None, "job",
        """Further ``GatherResultsOperator`` arguments. ``on_results_gone`` is ``"retry"`` for every
        gather but the last round's (``"fail"``): the requests of a batch whose results the API no
        longer holds go to the next retry round.""",
    ),
    _p("tooltip", "str", "", "job", "Tooltip of the group in the UI."),
]

_topic = "Input"
_INPUT = [
    _p("requests", "Any", None, "job submit",
        """Complete Message Batches requests (``{"custom_id", "params"}``): a list, the URI of a JSONL
        file of them (any ``ObjectStoragePath``; a bare path means ``file://``), or an upstream task's
        output that is either. A URI is templated; data never is: a request containing
        ``{{ var.value.x }}`` stays that text. A local file that does not exist (and is not a template)
        is a DAG import error. Give this, ``records`` or ``documents``.""",
    ),
    _p("records", "Any", None, "job submit",
        """Records (dicts) turned into requests with ``prompt_template`` and/or ``request_builder``: a
        list, a JSONL URI, or an upstream task's output. A URI is templated; data never is.""",
    ),
    _p("prompt_template", "str | None", None, "job submit",
        """``str.format`` template over a record's fields giving the user message, e.g.
        ``"Classify: {text}"``. A record lacking a field is an invalid row. Templated.""",
    ),
    _p("request_builder", "RequestBuilder | None", None, "submit",
        """Callable ``record -> params dict | messages list | str``; with a ``prompt_template`` it
        returns extra params merged over the templated message.""",
    ),
    _p("custom_id_field", "str", "custom_id", "job submit",
        """Record field giving the ``custom_id`` (int values become strings). An id that does not match
        ``^[a-zA-Z0-9_-]{1,64}$`` is an invalid row, never rewritten.""",
    ),
    _p("custom_id_from", "CustomIdFrom | None", None, "job submit",
        """Instead of ``custom_id_field``: a ``str.format`` template over the record
        (``"{product_id}-{lang}"``) or a callable ``record -> key``. The key becomes a valid, unique,
        stable id (itself when valid, else a readable slug and a 12-hex hash of the whole key, e.g.
        ``src/app/main.py`` becomes ``src-app-main-py-59077b8e7f0b``), and is kept as ``input.key`` of
        every row; a record whose key would be null or empty is an invalid row.""",
    ),
    _p("passthrough_fields", "Sequence[str]", (), "job submit",
        """Record fields copied into every result and failure row (under ``input``; as their own
        columns in Parquet), so the output joins back to the input by itself. A field named like a
        row's own column (``model``, ``text``, ``round``, ``retryable``...), or ``key`` with
        ``custom_id_from``, fails when the DAG is parsed: rename it in the records.""",
    ),
    _p("skip_invalid", "bool", False, "submit",
        """Skip invalid rows instead of failing; they are written to ``round-0/invalid_input.jsonl`` as
        failures of type ``invalid_input``. A duplicated ``custom_id`` still fails the task.""",
    ),
    _p("on_input_change", "str", "fail", "submit",
        """What a changed input for the same task instance (a different fingerprint of the prepared
        requests and batch limits) does: ``"fail"`` (default) raises ``InputChangedError``;
        ``"resubmit"`` cancels the recorded batches that have not ended, archives the ledger as
        ``ledger.<timestamp>.json`` and submits the new input.""",
        choices=ON_INPUT_CHANGE,
    ),
]

_topic = "Documents"
_DOCUMENTS = [
    _p("documents", "Any", None, "job submit",
        """Files to send, one request each (instead of ``requests``/``records``): a glob or path in any
        object store (``s3://bucket/invoices/*.pdf``), a list of paths, or a ``.jsonl`` records file
        whose ``path`` field names each file. Each distinct file is uploaded once with the Files API and
        referenced by ``file_id``; ``prompt_template`` may use ``{path}``, ``{name}``, ``{size}``,
        ``{modified}`` and the records' fields; ``custom_id_from`` defaults to the path. Templated.""",
        see="files-api.md",
    ),
    _p("delete_files", "str", "after_gather", "job submit",
        """``"after_gather"`` (default): finalize deletes the job's uploads once the job has landed;
        ``"keep"``: keep them, and let later jobs under the same ``output_path`` reuse them.""",
        choices=DELETE_FILES,
    ),
    _p("upload_concurrency", "int", 8, "submit", "Files read and uploaded at once (default 8)."),
]

_topic = "Requests"
_REQUESTS = [
    _p("model", "str | None", None, "job submit",
        """Default ``model`` for requests that set none (default ``[airflow_batch] model``). With
        neither, records (without a ``request_builder``) or an inline request without
        ``params.model`` are a DAG import error naming the request. Templated.""",
    ),
    _p("max_tokens", "int | None", None, "job submit", "Default ``max_tokens`` for requests that set none."),
    _p("system", "str | list[Any] | None", None, "job submit",
        "Default system prompt for requests that set none. Templated.",
    ),
    _p("cache_system_prompt", "bool", True, "job submit",
        """Send the default system prompt marked ``cache_control`` (ephemeral), so requests after the
        first read it from the prompt cache. The factory's ``None`` keeps the operator's default
        (``True``).""",
        defaults={"job": None},
        types={"job": "bool | None"},
    ),
    _p("cache_ttl", "str | None", None, "job submit",
        """Lifetime of that cache entry, ``"1h"`` (default ``[airflow_batch] cache_ttl``: a batch can
        take longer than 5 minutes) or ``"5m"``.""",
        choices=(None, *CACHE_TTLS),
        see="cost.md#prompt-caching-and-its-ttl",
    ),
    _p("output_schema", "Any", None, "job submit",
        """Structured outputs: a JSON Schema dict or a Pydantic model class. Requests that set no
        ``output_config.format`` get it; answers are validated against it (``output`` of a result row,
        or an ``invalid_output`` failure, retried). Checked when the DAG is parsed: a schema structured
        outputs refuse fails then, naming the part.""",
        see="output-schemas.md",
    ),
    _p("betas", "Sequence[str]", (), "job submit",
        """Beta names sent as ``anthropic-beta`` on every call of the job (create, wait, results,
        cancel, count_tokens); recorded in every manifest. With betas, parameters and tool types this
        package does not know yet pass validation.""",
    ),
    _p("workspace_id", "str | None", None, "job submit",
        """Sent as ``anthropic-workspace-id`` on every call of the job; recorded in every manifest. The
        job's batches live in that workspace: no other workspace (nor the default one) lists or
        retrieves them.""",
    ),
    _p("conn_id", "str", "anthropic_default", "job submit",
        """The ``anthropic`` connection of ``apache-airflow-providers-anthropic``; every later task of
        the job reads it (and ``betas``, ``workspace_id``) from the round manifest. Templated.""",
    ),
    _p("conn_id", "str | None", None, "wait gather retry",
        """Anthropic connection; default (and the only one accepted): the one the round manifest
        records, which the job submitted with.""",
    ),
]

_topic = "Answer reuse and canary"
_REUSE = [
    _p("reuse_answers", "bool", False, "job submit",
        """Answer requests already answered by an earlier run (of any job sharing the answer store)
        instead of sending them: every request is looked up by its fingerprint (its ``params`` as sent,
        without the ``custom_id``) in the answer store before it is chunked; a hit is not sent, its
        result row (``round-0/reused.jsonl``, marked ``reused_from``) costs nothing, and it counts as
        ``reused`` in the manifests and on the batch jobs page. Gather stores this job's succeeded,
        schema-valid answers for later runs. A run whose every request is found creates no batch at
        all.""",
        see="reuse.md",
    ),
    _p("answer_store", "str | None", None, "job submit",
        """URI of the answer store (any ``ObjectStoragePath``; default ``{output_path}/_answers``).
        Share one between DAGs to reuse each other's answers. Templated.""",
    ),
    _p("max_age", "float | timedelta | None", None, "job submit",
        """How old a reused answer may be: positive seconds or a ``timedelta`` (default: any age);
        anything else, ``nan`` or ``"1h"`` included, fails when the DAG is parsed.""",
    ),
    _p("canary", "int", 0, "job submit",
        """Before creating any batch, send this many requests (the first ones to be sent, in input
        order) through the Messages API at standard price and check each answer (schema-valid with an
        ``output_schema``, text otherwise, not cut at ``max_tokens``); above
        ``canary_max_failure_rate`` unusable, the task fails with ``CanaryFailedError`` quoting them
        and nothing is created. Usable answers are kept as results (not sent again); the canary's
        cost counts in the budget and the manifests; its output length becomes the estimate's expected
        figure when ``expected_output_tokens`` is not given. 0 for none.""",
        see="reuse.md",
    ),
    _p("canary_max_failure_rate", "float", 0.0, "job submit",
        "Share of canary answers (0-1) that may be unusable (default 0).",
    ),
    _p("include_content", "bool", False, "job submit gather",
        """Keep each message's full ``content`` blocks in the result rows: those a gather lands, and
        those answered without a batch (reused answers, the canary's); a stored answer without them is
        not reused.""",
    ),
]

_topic = "Budget and prices"
_BUDGET = [
    _p("max_cost_usd", "float | None", None, "job submit gather",
        """Budget of the whole job at batch prices. The submit refuses above it before any batch is
        created; each retry round checks its estimate against what the earlier rounds left; as results
        land, the gather compares the job's actual spend with it and warns when it is passed (the round
        manifest's ``budget`` records it).""",
    ),
    _p("prices", "Mapping[str, Mapping[str, Any]] | None", None, "job submit gather",
        """Price-table overrides ``{model or family: {"input": .., "output": ..}}`` (USD per million
        tokens), for the estimates and the costs.""",
        see="cost.md",
    ),
    _p("expected_output_tokens", "int | None", None, "submit",
        """Output tokens per request of the *expected* estimate (default: the output length observed in
        the task's earlier runs, when there are any). The upper bound (every request's ``max_tokens``)
        is always estimated too.""",
    ),
    _p("budget_basis", "str | None", None, "job submit",
        """Which estimate ``max_cost_usd`` guards: ``"upper_bound"`` (the default; no request can cost
        more) or ``"expected"`` (the expected figure; the upper bound when no expected output length is
        known). When ``expected_output_tokens`` is given and ``budget_basis`` is not, the expected
        figure is guarded.""",
        choices=BUDGET_BASES,
        see="cost.md#the-estimate-before-submitting",
    ),
    _p("count_tokens_sample", "int", 20, "submit",
        "Requests sent to ``count_tokens`` to calibrate the estimate (0: local approximation only).",
    ),
]

_topic = "Batches and the processing queue"
_BATCHES = [
    _p("max_requests_per_batch", "int", MAX_REQUESTS_PER_BATCH, "submit",
        "Requests per batch, at most the API's 100,000.",
    ),
    _p("max_bytes_per_batch", "int", MAX_BYTES_PER_BATCH, "submit",
        "Bytes of create-request body per batch, at most the API's 256 MB; measured on the exact bytes sent.",
    ),
    _p("max_queued_requests", "int | None", None, "job submit",
        """The job's share of the organisation's processing queue: at most this many of its requests
        are queued at once. The chunks that fit are created, the task defers (no worker slot) until
        enough have been processed, then creates the next wave, until every chunk has its batch; retry
        rounds too. Default: no share; a create refused because the queue is full leads to the same
        deferral, never to a failure.""",
        see="deployment.md#running-at-scale",
    ),
    _p("adopt_orphans", "bool", True, "submit",
        "Adopt a batch created by an attempt that died before recording it.",
    ),
    _p("keep_chunks", "bool", False, "job submit",
        """Keep each round's chunk files (``round-N/chunks/``, every request in full) after the round
        has landed. Default ``False``: the gather removes them once the round's rows and manifest are
        written, keeping only the requests of its retryable failures (``round-N/retry_requests.jsonl``)
        for the next round.""",
    ),
]

_topic = "Waiting"
_WAIT = [
    _p("poll_interval", "float | None", None, "job submit wait",
        """Seconds between status polls, while waiting for the batches and for queue room (default
        ``[airflow_batch] poll_interval``, 60; at least 1 against the real API, less only against a
        local emulator).""",
    ),
    _p("timeout", "float", DEFAULT_TIMEOUT, "job wait",
        """Seconds each round may wait (default 24 h, the batches' own lifetime) before its deadline:
        see ``timeout_policy``.""",
    ),
    _p("timeout_policy", "str", "cancel", "wait",
        """``cancel`` (default): cancel unfinished batches at the deadline; ``leave``: leave them running
        for a later attempt to re-attach.""",
        choices=TIMEOUT_POLICIES,
    ),
    _p("fail_on_timeout", "bool", True, "wait",
        """Fail with ``BatchWaitTimeoutError`` at the deadline (default). When False (and policy
        ``cancel``), wait for the canceled batches to end and return the manifest with
        ``timed_out=True`` so the round is gathered and retried.""",
    ),
    _p("cancel_grace", "float", DEFAULT_CANCEL_GRACE, "wait",
        "Seconds to wait for canceled batches to reach ``ended`` (default 1 h).",
    ),
    _p("deferrable", "bool | None", None, "job wait",
        """Wait in the triggerer (default True; ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE`` in the
        environment overrides the default); False polls in the worker (``mode="poke"`` only). Either
        way the first poll runs in the worker: a round whose batches have all ended already (a cleared
        re-run, a quick round) returns without deferring.""",
    ),
    _p("land_interval", "float | None", None, "job submit wait",
        """Land each round's ended batches while its other batches still run (deferrable mode only), at
        most every ``land_interval`` seconds (or as soon as ``land_min_batches`` wait): the sensor lands
        them with the gather's own per-batch function and defers again; so does the submit while a
        round too large for the processing queue waits for room for its next wave (the submit records
        it in the job's spec, where retry rounds read it). Their rows are readable with
        ``read_results(job_folder)`` before the round ends, the round's merge is prepared as they land
        (so the tail after its last batch is seconds), and the gather lands only what is left. Each
        landing costs a task start (at most 288 a day at 300 s). ``None``: a round lands when its last
        batch has ended (the operators' default; the factory's is 300 s).""",
        defaults={"job": DEFAULT_LAND_INTERVAL},
    ),
    _p("land_min_batches", "int | None", None, "submit wait",
        """Ended batches that are landed at once, without waiting for ``land_interval`` (default: a
        tenth of the round's batches, at least 1).""",
    ),
    _p("gather_settings", "Mapping[str, Any] | None", None, "submit wait",
        """The round's gather arguments (``include_content``, ``retryable_error_types``, ``prices``,
        ``delete_batches``), so a batch landed by the wait (or the submit) lands exactly as the gather
        would land it; the factory passes its own.""",
    ),
]

_topic = "Gathering"
_GATHER = [
    _p("retryable_error_types", "Iterable[str] | None", None, "job gather",
        """Failure kinds to classify as retryable: error types such as ``overloaded_error`` plus
        ``expired``, ``missing``, ``canceled_by_timeout`` and ``canceled``. Default:
        ``airflow_batch.rows.failures.DEFAULT_RETRYABLE``.""",
        see="failures.md",
    ),
    _p("delete_batches", "str | None", None, "job gather",
        """``"after_gather"``: delete each batch (and its results) from the API once its result and
        failure rows are written and counted, never before: batches are not eligible for zero data
        retention and otherwise stay 29 days. The round manifest's ``deleted_batches`` records when; a
        re-run finds the batch gathered and does not ask the API for it again. Default ``None``:
        batches are left on the API.""",
        choices=(None, "after_gather"),
    ),
    _p("round_asset", "Asset | str | None", None, "gather",
        """An Asset (or URI) this task emits an event on once its round has landed, so a downstream DAG
        can start on each round's rows before the job is finalized (for ``anthropic_batch_job``:
        ``gather_kwargs={"round_asset": ...}``, an event per round). Its ``extra`` has the ``job_dir``
        (``read_results(job_dir)`` gives the rows landed so far, ``partial``), the ``round``, its
        ``results_paths`` / ``failures_paths`` and ``result_counts``. Default ``None``: no event.""",
    ),
    _p("on_results_gone", "str", "fail", "gather",
        """What to do when the API no longer holds a batch's results (archived 29 days after creation,
        or deleted), found before anything is landed: ``"fail"`` (default) fails with
        ``ResultsGoneError`` naming each such batch and its requests; ``"retry"`` lands its requests as
        retryable ``missing`` failures (``error_type`` ``results_archived`` / ``batch_deleted``) so the
        next retry round resubmits exactly those (the manifest's ``results_gone`` names the batches).
        ``anthropic_batch_job`` uses ``"retry"`` while a retry round is left.""",
        choices=RESULTS_GONE_POLICIES,
    ),
]

_topic = "Finalizing"
_FINALIZE = [
    _p("results_format", "str | Sequence[str]", "jsonl", "job finalize",
        """``"jsonl"`` (default), ``"parquet"`` or ``["jsonl", "parquet"]``: with Parquet,
        ``results.parquet`` and ``failures.parquet`` are written too, with typed columns (needs
        ``airflow-batch[parquet]``; the JSONL files are always written).""",
    ),
    _p("publish_path", "str | None", None, "job finalize",
        """Folder (URI) that gets a copy of the final files, e.g. ``"s3://bucket/reviews/{{ ds }}/"``: a
        stable, date-keyed place for readers. Each publish is a new ``versions/{version}/`` folder,
        then ``manifest.json`` is switched to it in one write, so a reader going through the manifest
        sees one whole job, the new or the previous. Another DAG (or finalize task) publishing there is
        refused; rendered, it may not climb out of the template's literal root with ``..``.
        Templated.""",
    ),
    _p("max_failure_rate", "float | None", None, "job finalize",
        """Highest acceptable share of failed requests (0-1) after every retry round, above which
        finalize fails, after writing every file. ``None`` (default): ``[airflow_batch]
        max_failure_rate``, 5% unless configured, so a run that lost requests (to a cancel outside the
        job, say) is not green; ``1`` never fails the task for failed requests.""",
    ),
    _p("asset", "Asset | str | Literal[False] | None", None, "job",
        """Asset (or URI) emitted by finalize; ``None`` uses ``airflow-batch://{dag_id}/{group_id}``;
        ``False`` emits none.""",
    ),
    _p("asset", "Asset | str | None", None, "finalize",
        """The Asset (or URI) to emit for the results, whose event's ``extra`` carries ``results_uri``,
        ``failures_uri``, ``manifest_uri``, the counts and the cost; ``None`` emits nothing.""",
    ),
    _p("job_dir", "str | None", None, "finalize", "The job folder URI, instead of ``manifest``."),
    _p("retry_rounds", "int | None", None, "finalize",
        """How many retry rounds the job has (the factory sets it): a round that was due (retryable
        failures left) but did not complete fails the task, after every file is written, naming the
        round; one refused by the budget does not.""",
    ),
    _p("trigger_rule", "str", "all_done", "finalize",
        "Airflow's trigger rule; ``all_done`` merges whatever happened upstream.",
    ),
]

_topic = "Manifests"
_MANIFESTS = [
    _p("manifest", "Any", REQUIRED, "wait", "The submit task's manifest (e.g. ``submit.output``)."),
    _p("manifest", "RoundManifest | Mapping[str, Any] | Any", REQUIRED, "gather",
        """The round manifest from the wait (``BatchesSensor``) of this round, usually
        ``wait.output``; a dict also works.""",
    ),
    _p("manifest", "RoundManifest | Mapping[str, Any] | Any", REQUIRED, "retry",
        "The gathered manifest of the previous round (the gather's ``output``).",
    ),
    _p("manifest", "Mapping[str, Any] | Any", None, "finalize",
        "Any round manifest of the job (e.g. ``submit.output``), for its ``job_dir``; or give ``job_dir``.",
    ),
]

# fmt: on

#: Every declaration, in the order of the reference page.
PARAMETERS: tuple[Parameter, ...] = (
    *_JOB, *_INPUT, *_DOCUMENTS, *_REQUESTS, *_REUSE, *_BUDGET, *_BATCHES, *_WAIT, *_GATHER, *_FINALIZE,
    *_MANIFESTS,
)  # fmt: skip
