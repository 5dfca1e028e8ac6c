"""The small manifests that cross XCom between the tasks of a batch job.

XCom carries these and nothing larger: paths, batch ids, counts and money. Request bodies
and results live in the job folder (see :mod:`airflow_batch.layout`). Each task adds its
keys to the manifest it received and passes the whole on, so the last task of a round
sees what every earlier one did; each says how far it got in ``stage`` (the page reads
that, never which keys happen to be present). Sums of counts and of usage live here too,
so every stage adds them up the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from airflow_batch.hooks.batches import BatchesHook

MANIFEST_VERSION = 1

Stage = Literal["refused", "submitted", "waited", "gathered", "finalized"]
#: How far each stage is along a job: a later stage's manifest supersedes an earlier one's.
#: A refused round went no further than a submit that created nothing.
STAGE_ORDER: dict[str, int] = {"refused": 0, "submitted": 0, "waited": 1, "gathered": 2, "finalized": 3}
#: XCom key of the manifest a task leaves when it fails with an outcome to show (it then has
#: no return value): a round refused before any spend, a job above its failure-rate limit.
FAILED_MANIFEST_KEY = "failed_manifest"


class BatchRecord(TypedDict):
    """One submitted chunk: which batch carries it and what it holds."""

    chunk: int
    batch_id: str
    requests: int
    bytes: int
    chunk_path: str


class RequestCounts(TypedDict):
    """A batch's ``request_counts``, or their sum over a round."""

    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class Usage(TypedDict):
    """Token totals; cache writes split by cache lifetime because they are priced apart.

    ``cache_creation_input_tokens`` counts every cache write, the 1-hour ones included;
    server tool requests are billed per request; thinking tokens are part of the output.
    """

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int
    web_search_requests: int
    web_fetch_requests: int
    thinking_tokens: int


class CostFigures(TypedDict):
    """What a usage costs at batch prices, and what the standard API would have charged."""

    batch_usd: float
    standard_usd: float
    priced: bool  # False when some model had no price: the figures then cover priced models only
    unpriced_models: list[str]


class CostEstimate(CostFigures):
    """A pre-submission estimate: expected tokens and their price."""

    method: str  # "count_tokens" or "approximation"
    cache_ttl: str | None  # the cache TTL whose write price it assumed: "1h", "5m", "5m+1h"; None: no cache
    usage: Usage  # the upper bound: every request's max_tokens of output
    # The expected figure, when an expected output length is known (None otherwise):
    expected_batch_usd: float | None
    expected_standard_usd: float | None
    expected_basis: str | None  # "expected_output_tokens", "observed in N earlier run(s)", "canary"
    expected_output_tokens: int | None  # per request
    expected_usage: Usage | None


class BatchStatus(TypedDict):
    """The last seen state of one batch, filled in by the wait."""

    processing_status: str
    request_counts: RequestCounts
    expires_at: str | None
    ended_at: str | None


class CanaryRecord(TypedDict):
    """What a round's canary did: requests sent at standard prices before any batch, and their verdicts."""

    requests: int
    answered: int  # usable answers, kept as results (not sent again in a batch)
    failed: int  # unusable answers: sent in the batch after all
    examples: list[dict[str, Any]]  # the failed ones: custom_id and why
    usage: Usage
    cost: CostFigures  # at standard prices (batch_usd is what was paid: the standard price)
    output_tokens_per_answer: int | None


class RoundManifest(TypedDict, total=False):
    """What one round (submit -> wait -> gather) knows; each task adds its part."""

    # submit (and retry, which is a submit of round >= 1)
    version: int
    stage: Stage
    job_dir: str
    round: int
    conn_id: str
    betas: list[str]
    workspace_id: str | None
    fingerprint: str
    requests: int
    bytes: int
    invalid: int
    invalid_path: str | None
    batches: list[BatchRecord]
    estimate: CostEstimate | None
    submitted_at: str
    # when the try of the submit that re-attached to the recorded batches began (a retry or a clear)
    reattached_at: str
    # answered without a batch (reuse_answers, canary): rows in reused_path
    reused: int  # answers taken from the answer store (zero cost)
    reused_path: str | None
    canary: CanaryRecord | None
    requests_by_model: dict[str, int]  # requests sent in the round's batches, by model
    # wait
    batch_status: dict[str, BatchStatus]
    counts: RequestCounts
    timed_out: bool
    canceled_by_timeout: list[str]
    waited_at: str
    # gather
    results_paths: list[str]
    failures_paths: list[str]
    result_counts: dict[str, int]
    error_types: dict[str, int]
    retryable: int
    usage: Usage
    usage_by_model: dict[str, Usage]
    #: Per model: requests by result type (as ``result_counts``), and the retryable ones by type. A
    #: failure whose result names no model (errored, expired...) counts for the round's one model,
    #: or under ``"unknown"`` in a round of several models.
    result_counts_by_model: dict[str, dict[str, int]]
    retryable_by_model: dict[str, dict[str, int]]
    cost: CostFigures  # the batches at batch prices, plus the canary at standard prices
    budget: dict[str, Any]
    answers_stored: int  # answers written to the answer store
    deleted_batches: dict[str, str]  # batch id -> when deleted from the API (delete_batches)
    #: Batches of the round outside its ledger (a lost race's duplicates), cancelled and priced.
    strays: list[dict[str, Any]]
    #: Batches whose results the API no longer held at gather (archived, deleted): batch id -> why;
    #: their requests are ``missing`` failures (resubmitted by the next retry round).
    results_gone: dict[str, str]
    gathered_at: str


class RoundSummary(TypedDict, total=False):
    """One round's figures in the job manifest."""

    round: int
    batches: list[str]
    requests: int
    result_counts: dict[str, int]
    error_types: dict[str, int]
    retryable: int
    reused: int
    canary: CanaryRecord | None
    deleted_batches: list[str]
    strays: list[dict[str, Any]]
    usage: Usage
    cost: CostFigures
    submitted_at: str | None
    waited_at: str | None
    gathered_at: str | None
    duration_seconds: float | None


class JobManifest(TypedDict, total=False):
    """What finalize writes to the job folder's ``manifest.json`` (and returns)."""

    version: int
    stage: Stage
    job_dir: str
    # Who the job's calls went to (see :class:`JobIdentity`), as round 0 recorded it.
    conn_id: str | None
    betas: list[str]
    workspace_id: str | None
    results_path: str
    failures_path: str
    manifest_path: str
    results_parquet_path: str | None
    failures_parquet_path: str | None
    published_path: str | None
    #: The published version (its files: ``{published_path}/versions/{published_version}/``), and
    #: in a published folder's manifest, who publishes there.
    published_version: str
    published_by: str
    passthrough_fields: list[str]
    # Parquet columns holding JSON text, by table, each with the reason (gather/tables.py).
    json_text_columns: dict[str, dict[str, str]]
    requests: int
    succeeded: int  # every result row, reused ones included
    reused: int  # results taken from the answer store (no cost in this job)
    canary_answered: int  # results the canary answered (at standard prices)
    failed: int
    failure_rate: float
    max_failure_rate: float | None
    failures_by_type: dict[str, int]
    failures_by_error_type: dict[str, int]
    #: Requests whose final row is a cancel not made by this job's wait deadline (the Console,
    #: another process): counted apart because nothing in the job asked for it.
    canceled_outside: int
    retryable_left: int
    rounds: list[RoundSummary]
    usage: Usage
    usage_by_model: dict[str, Usage]
    cost: CostFigures
    answers_stored: int
    deleted_batches: int
    started_at: str | None
    finalized_at: str
    duration_seconds: float | None
    refused_rounds: list[dict[str, Any]]
    incomplete_rounds: list[dict[str, Any]]


class RefusedManifest(TypedDict, total=False):
    """A round refused before any spend: its refusal record (``round-N/refusal.json``) and job folder.

    The budget's figures (USD at batch prices) are there when the budget refused the round.
    """

    version: int
    stage: Stage
    job_dir: str
    round: int
    reason: str
    estimate_usd: float
    budget_usd: float
    spent_usd: float
    kind: str  # the exception's class name
    # True: not a refusal but an error the submit met before the round was submitted (no
    # output_path, the API refusing the create...); ``reason`` is the error.
    failed: bool


def refused_manifest(job_dir: str, record: Mapping[str, Any]) -> RefusedManifest:
    """Return the manifest of a refused round from its refusal record (``round``, ``reason``, figures)."""
    return RefusedManifest(version=MANIFEST_VERSION, stage="refused", job_dir=job_dir, **record)  # type: ignore[typeddict-item]


def round_started_at(manifest: Mapping[str, Any]) -> str | None:
    """Return when the round's latest try began: its re-attach after a retry or a clear, else its
    submit. Durations count from it, so a cleared run shows how long its latest try took."""
    return manifest.get("reattached_at") or manifest.get("submitted_at")


def empty_counts() -> RequestCounts:
    """Return all-zero request counts."""
    return RequestCounts(processing=0, succeeded=0, errored=0, canceled=0, expired=0)


def empty_usage() -> Usage:
    """Return all-zero token totals."""
    return Usage(
        input_tokens=0,
        output_tokens=0,
        cache_creation_input_tokens=0,
        cache_creation_1h_input_tokens=0,
        cache_read_input_tokens=0,
        web_search_requests=0,
        web_fetch_requests=0,
        thinking_tokens=0,
    )


def _add_up(total: dict[str, int], parts: Iterable[Mapping[str, Any]]) -> None:
    for part in parts:
        for key in total:
            total[key] += int(part.get(key, 0) or 0)


def sum_counts(counts: Iterable[Mapping[str, Any]]) -> RequestCounts:
    """Return request counts added up key by key (absent keys count 0)."""
    total = empty_counts()
    _add_up(total, counts)  # type: ignore[arg-type]
    return total


def sum_usages(usages: Iterable[Mapping[str, Any]]) -> Usage:
    """Return token totals added up key by key (absent keys count 0)."""
    total = empty_usage()
    _add_up(total, usages)  # type: ignore[arg-type]
    return total


@dataclass(frozen=True)
class JobIdentity:
    """Who a job's calls go to: its connection, betas and workspace, recorded in every manifest."""

    conn_id: str
    betas: tuple[str, ...] = ()
    workspace_id: str | None = None

    @classmethod
    def of(cls, manifest: Mapping[str, Any], conn_id: str | None, task_id: str) -> JobIdentity:
        """Return the identity a round manifest recorded (``conn_id`` may only repeat its own)."""
        return cls(
            job_conn_id(manifest, conn_id, task_id),
            tuple(manifest.get("betas") or ()),
            manifest.get("workspace_id"),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the identity as JSON (a trigger's kwargs, the job's spec): names only, never a key."""
        return {"conn_id": self.conn_id, "betas": list(self.betas), "workspace_id": self.workspace_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobIdentity:
        """Return the identity :meth:`to_json` wrote."""
        return cls(str(data["conn_id"]), tuple(data.get("betas") or ()), data.get("workspace_id"))

    def hook(self) -> BatchesHook:
        """Return the hook every call of the job goes through (its connection, betas and workspace)."""
        from airflow_batch.hooks.batches import BatchesHook

        return BatchesHook(self.conn_id, betas=self.betas, workspace_id=self.workspace_id)


def job_conn_id(manifest: Mapping[str, Any], conn_id: str | None, task_id: str) -> str:
    """Return the connection a task of a job uses: the round manifest's, which ``conn_id`` may only repeat.

    A job waits, gathers and retries with the connection it submitted with; a different one
    would look for its batches in another workspace (or on another server).
    """
    recorded = manifest.get("conn_id")
    if recorded and conn_id and conn_id != recorded:
        raise ValueError(
            f"{task_id}: conn_id={conn_id!r} differs from the connection the round was submitted "
            f"with ({recorded!r}); drop conn_id= so the task uses the job's connection."
        )
    resolved = conn_id or recorded
    if not resolved:
        raise ValueError(f"{task_id}: the manifest names no conn_id; pass conn_id=")
    return str(resolved)
