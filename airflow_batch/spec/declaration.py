"""What the declaration of one parameter says: its name, type, default, documentation and tasks.

The declarations themselves are in :mod:`airflow_batch.spec.parameters`; reading them (which task
takes what, the ``:param`` docstrings) is :mod:`airflow_batch.spec.docstrings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["job", "submit", "wait", "gather", "retry", "finalize"]

#: The callable each task's parameters belong to, as a reader finds it.
TASKS: Mapping[Task, str] = {
    "job": "anthropic_batch_job",
    "submit": "SubmitBatchesOperator",
    "wait": "BatchesSensor",
    "gather": "GatherResultsOperator",
    "retry": "RetryFailedOperator",
    "finalize": "FinalizeBatchJobOperator",
}


class _Required:
    """The default of a parameter that has none."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Parameter:
    """One parameter: the same name, type, default and meaning in every task listed."""

    name: str
    type: str
    doc: str
    tasks: tuple[Task, ...]
    topic: str
    default: Any = None
    #: The default in a task that takes it otherwise (the factory's ``None``: "the operator's default").
    defaults: Mapping[Task, Any] = field(default_factory=dict)
    #: The annotation in a task that writes it otherwise.
    types: Mapping[Task, str] = field(default_factory=dict)
    #: The values accepted, when they are few: the check's own constant, refused at parse time.
    choices: tuple[Any, ...] = ()
    #: The page of the documentation site that tells more (``"cost.md#prompt-caching-and-its-ttl"``).
    see: str | None = None

    def default_in(self, task: Task) -> Any:
        """Return the default ``task`` gives this parameter."""
        return self.defaults.get(task, self.default)

    def type_in(self, task: Task) -> str:
        """Return the annotation ``task`` writes for this parameter."""
        return self.types.get(task, self.type)
