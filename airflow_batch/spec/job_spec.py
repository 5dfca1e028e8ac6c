"""``JobSpec``: everything a job was configured with, written once into its folder as ``spec.json``.

The submit builds it from its arguments (checked when the DAG was parsed) once they are rendered,
and writes it before anything is sent. Later tasks and triggers are given the job folder and the
round number and read it back (:func:`read_job_spec`), so a retry round and a wave created in the
triggerer use the settings the job was submitted with, not a copy re-threaded through kwargs.

Written once: a second submit of the same job folder writes the same spec again (a retry, a
clear) or, while no batch has been created, a changed one; once the job may have spent under a
spec, one that changes what is sent is refused
(:class:`~airflow_batch.exceptions.JobSpecConflictError`, naming both), never silently replaced;
a changed guard (the budget...) replaces it, logged. The write is fenced
(:func:`~airflow_batch.storage.replace_json_fenced`): two writers cannot both win.

Read back as a stranger's file: a missing, unreadable or damaged file, or another
``spec_version``, raises :class:`~airflow_batch.exceptions.JobSpecError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch import layout
from airflow_batch.exceptions import JobSpecConflictError, JobSpecError
from airflow_batch.manifest import JobIdentity
from airflow_batch.storage import FenceLost, read_json, replace_json_fenced
from airflow_batch.submit.round import SubmitSettings

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

SPEC_VERSION = 1
#: ``SubmitSettings`` fields a round works out for itself: not part of what the job was asked to do.
_ROUND_ONLY = ("expected_basis", "spent_usd")


@dataclass(frozen=True)
class JobSpec:
    """What a job was configured with: identity, request defaults, schema, reuse, budget and batching."""

    identity: JobIdentity
    #: How rounds are split, priced and guarded (the user's ``expected_output_tokens``, if any).
    settings: SubmitSettings = field(default_factory=SubmitSettings)
    model: str | None = None
    max_tokens: int | None = None
    system: str | list[Any] | None = None
    cache_system_prompt: bool = True
    cache_ttl: str | None = None
    prompt_template: str | None = None
    custom_id_field: str = "custom_id"
    #: The ``custom_id_from`` template, or the name of the callable.
    custom_id_from: str | None = None
    #: The name of the ``request_builder`` callable.
    request_builder: str | None = None
    #: The output schema as sent (JSON Schema), or None.
    output_schema: Mapping[str, Any] | None = None
    #: Record fields carried into result rows (``passthrough_fields``, and ``key`` with ``custom_id_from``).
    passthrough_fields: tuple[str, ...] = ()
    reuse_answers: bool = False
    #: The answer store the job reads and writes (resolved URI), or None.
    answer_store: str | None = None
    max_age: float | None = None
    canary: int = 0
    canary_max_failure_rate: float = 0.0
    include_content: bool = False
    poll_interval: float | None = None
    #: ``documents=`` jobs only: what finalize does with the uploads.
    delete_files: str | None = None
    upload_concurrency: int = 8
    #: Where the task's earlier runs' output lengths are kept.
    history_path: str | None = None
    #: Keep each round's chunk files after it has landed (else the gather removes them).
    keep_chunks: bool = False
    #: Land ended batches while the round runs (the wait), and while its later waves wait for queue room
    #: (the submit): at most every ``land_interval`` s, or ``land_min_batches`` at once; None: never early.
    land_interval: float | None = None
    land_min_batches: int | None = None
    #: The gather's arguments a batch landed early is landed with (as the gather would land it).
    gather_settings: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the spec as the JSON document of ``spec.json``."""
        settings = {k: v for k, v in dataclasses.asdict(self.settings).items() if k not in _ROUND_ONLY}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(
            identity=self.identity.to_json(),
            settings=settings,
            passthrough_fields=list(self.passthrough_fields),
            # A set of retryable error types in a stable order: a re-run writes the same spec.
            gather_settings=msgspec.to_builtins(self.gather_settings, order="sorted"),
        )
        return {"spec_version": SPEC_VERSION, **msgspec.to_builtins(values)}

    @classmethod
    def from_json(cls, data: Any, source: str) -> JobSpec:
        """Return the spec ``data`` holds; ``source`` (the file) is named in any error."""
        fix = f"clear the job's submit task so it writes {source} again (it re-attaches to its batches)"
        if not isinstance(data, Mapping):
            raise JobSpecError(f"{source} is not a job spec (a JSON object); {fix}")
        version = data.get("spec_version")
        if version != SPEC_VERSION:
            raise JobSpecError(
                f"{source} has spec_version {version!r}; this airflow_batch reads {SPEC_VERSION}: run the "
                f"job's tasks with the airflow_batch version that submitted it, or {fix}"
            )
        try:
            values = {k: v for k, v in data.items() if k != "spec_version"}
            values["identity"] = JobIdentity.from_json(values["identity"])
            values["settings"] = SubmitSettings(**values.get("settings", {}))
            values["passthrough_fields"] = tuple(values.get("passthrough_fields") or ())
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise JobSpecError(f"{source} is damaged ({type(exc).__name__}: {exc}); {fix}") from None

    def job_file(self) -> dict[str, Any]:
        """Return what ``job.json`` holds for the gather, the finalize and ``read_table``: the
        output schema, passthrough fields, history, answer store, ``keep_chunks`` (and
        ``delete_files``)."""
        return {
            "output_schema": self.output_schema,
            "passthrough_fields": list(self.passthrough_fields),
            "history_path": self.history_path,
            "answer_store": self.answer_store,
            "keep_chunks": self.keep_chunks,
            **({"delete_files": self.delete_files} if self.delete_files is not None else {}),
        }

    def differences(self, other: JobSpec) -> dict[str, str]:
        """Return ``{name: "this != other"}`` for each setting that differs (settings' fields by name)."""
        mine, theirs = _flat(self.to_json()), _flat(other.to_json())
        return {
            name: f"{mine.get(name)!r} != {theirs.get(name)!r}"
            for name in sorted(mine.keys() | theirs.keys())
            if mine.get(name) != theirs.get(name)
        }


def callable_name(value: Any) -> str | None:
    """Return a template as it is, a callable as ``module.qualname`` (what a spec can record of it)."""
    if value is None or isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"


def _flat(document: Mapping[str, Any]) -> dict[str, Any]:
    """Return the spec's settings at one level (``settings.max_cost_usd`` as ``max_cost_usd``)."""
    flat = {k: v for k, v in document.items() if k not in ("identity", "settings")}
    return {**flat, **document["identity"], **document["settings"]}


#: Settings that guard or pace the job rather than decide what was sent: a re-run may change them
#: (a budget raised for a refused retry round, a longer poll interval) under batches already created.
GUARDS = frozenset(
    {"max_cost_usd", "budget_basis", "expected_output_tokens", "count_tokens_sample", "poll_interval"}
    | {"max_queued_requests", "adopt_orphans", "canary_max_failure_rate", "upload_concurrency"}
    | {"land_interval", "land_min_batches", "gather_settings"}
)


def write_job_spec(
    job: ObjectStoragePath, spec: JobSpec, *, bound: bool, log: logging.Logger | None = None
) -> None:
    """Write ``spec`` as the job folder's ``spec.json``.

    ``bound``: the job may have spent under the recorded spec (a batch, an intent or a canary is
    recorded). Then a recorded spec that differs in more than :data:`GUARDS` raises
    :class:`JobSpecConflictError` naming both, and stays, unless ``on_input_change="resubmit"``
    (the user asked for the round to start over on a change). Before that, nothing was spent under
    the recorded spec and the new one replaces it; every replacement of a different spec is logged.
    """
    path = layout.spec_path(job)
    document = spec.to_json()

    def holds(current: Any) -> bool:
        if current is None or current == document:
            return True
        try:
            recorded = JobSpec.from_json(current, str(path))
        except JobSpecError:
            return True  # damaged: nothing a stranger's file can bind
        changed = recorded.differences(spec)
        said = "; ".join(f"{name}: {values}" for name, values in changed.items())
        if bound and changed.keys() - GUARDS and spec.settings.on_input_change == "fail":
            raise JobSpecConflictError(
                f"{path} records the spec this job created batches under, and the task now has another "
                f"({said}; recorded != now). Nothing was replaced or sent: restore the job's settings, "
                "run the new ones as a new DAG run, or set on_input_change='resubmit' to start the round over"
            )
        (log or logging.getLogger(__name__)).warning("%s: the job's spec changes: %s", path, said)
        return True

    try:
        replace_json_fenced(path, document, holds)
    except FenceLost as lost:  # another submit of this job wrote in between: judge what it wrote
        current = read_json(path)
        if current != document:
            holds(current)
            raise JobSpecConflictError(f"{path}: {lost}, with other settings; run the task again") from lost


def read_job_spec(job: ObjectStoragePath) -> JobSpec:
    """Return the spec the job's submit wrote (:class:`JobSpecError` when it is missing or damaged)."""
    path = layout.spec_path(job)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise JobSpecError(
            f"{path} is missing: the job's submit writes it before creating any batch. Clear the "
            "submit task (it re-attaches to the batches it recorded), or keep job folders on shared "
            "storage (output_path on s3://, gs://...) so every worker and triggerer sees them"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise JobSpecError(
            f"{path} is not readable JSON ({exc}); clear the job's submit task so it writes it again"
        ) from None
    return JobSpec.from_json(data, str(path))
