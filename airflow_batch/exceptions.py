"""Every failure airflow_batch raises, split by whether money was spent.

Errors found before any batch is created (bad input, budget, changed input) derive from
:class:`BeforeSubmitError`: nothing was submitted, fix the cause and re-run. Errors found
after submission (timeouts, permanent API faults while waiting, too many failed requests)
derive from :class:`AfterSubmitError`: batches exist and outputs written so far are kept.

A refusal that the same input meets again on every try (invalid rows, the budget, an unknown
model, a failed canary, a changed input, another job's ``publish_path``, a failure rate above
the limit) is also a :class:`RetryCannotFix`: Airflow fails the
task at once instead of spending its retries (and ``retry_delay``) on the same answer.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from airflow.providers.anthropic.exceptions import AnthropicError
from airflow.sdk.exceptions import AirflowFailException


class AirflowBatchError(AnthropicError):
    """Base class of every airflow_batch error."""


class BeforeSubmitError(AirflowBatchError):
    """Raised before any batch was created: nothing was spent."""

    def record(self, round_number: int) -> dict[str, Any]:
        """Return the refusal as the round records it (``round-N/refusal.json``): round and reason."""
        return {"round": round_number, "reason": str(self), "kind": type(self).__name__}


class RetryCannotFix(AirflowFailException):
    """Mixin of refusals a retry meets again: the task fails without retrying (fix, then clear)."""


class InvalidRequestsError(BeforeSubmitError, RetryCannotFix):
    """One or more input rows are not valid Message Batches requests."""


class MissingInputError(BeforeSubmitError, FileNotFoundError):
    """The input file named when the task ran does not exist (yet): nothing was read or sent.

    Retried (an upstream writer may still be late); listed on the batch jobs page with the path.
    """


class BudgetExceededError(BeforeSubmitError, RetryCannotFix):
    """The cost estimate is above what is left of ``max_cost_usd``.

    ``estimate_usd`` is the round's guarded estimate at batch prices, ``budget_usd`` the job's
    budget, ``spent_usd`` what its earlier rounds cost and ``basis`` which estimate was guarded
    (``"upper_bound"`` or ``"expected"``, see ``budget_basis``).
    """

    def __init__(
        self,
        message: str,
        *,
        estimate_usd: float,
        budget_usd: float,
        spent_usd: float,
        basis: str = "upper_bound",
    ) -> None:
        super().__init__(message)
        self.estimate_usd = estimate_usd
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.basis = basis

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only figures: the default reduce would rebuild from the message alone and fail.
        rebuild = partial(
            type(self),
            estimate_usd=self.estimate_usd,
            budget_usd=self.budget_usd,
            spent_usd=self.spent_usd,
            basis=self.basis,
        )
        return (rebuild, self.args)

    def record(self, round_number: int) -> dict[str, Any]:
        """Return the refusal with its numbers: estimate, budget and spend so far (USD, batch prices)."""
        return {
            **super().record(round_number),
            "estimate_usd": self.estimate_usd,
            "budget_usd": self.budget_usd,
            "spent_usd": self.spent_usd,
            "basis": self.basis,
        }


class UnknownModelError(BeforeSubmitError, RetryCannotFix):
    """A request names a model the API does not serve (every request of it would fail)."""


class UnknownModelPriceError(BeforeSubmitError, RetryCannotFix):
    """The price table has no entry for a model, so cost cannot be estimated."""


class InputChangedError(BeforeSubmitError, RetryCannotFix):
    """The input of a task instance differs from the one its recorded batches were built from."""


class ChunkFileError(AirflowBatchError):
    """A chunk file, or a shared prompt it references, is missing or damaged: nothing more is created.

    Raised before the create of any chunk of the wave; the message names the file.
    """


class AnswerStoreError(BeforeSubmitError):
    """A segment of the answer store is damaged or not one; the message names the file.

    Raised and caught inside the store (:mod:`airflow_batch.reuse.store`): the segment is skipped
    with a warning and its requests are sent, so nothing in a store fails a job.
    """


class CanaryFailedError(BeforeSubmitError, RetryCannotFix):
    """Too many canary answers were unusable (invalid for the schema, empty, cut at max_tokens).

    ``examples`` are the failed canary requests (custom_id and why); ``cost_usd`` what the canary
    cost at standard prices. No batch was created.
    """

    def __init__(self, message: str, *, examples: list[dict[str, Any]], cost_usd: float) -> None:
        super().__init__(message)
        self.examples = examples
        self.cost_usd = cost_usd

    def __reduce__(self) -> tuple[Any, ...]:
        return (partial(type(self), examples=self.examples, cost_usd=self.cost_usd), self.args)

    def record(self, round_number: int) -> dict[str, Any]:
        """Return the refusal with the failed examples and the canary's cost (USD, standard prices)."""
        return {**super().record(round_number), "examples": self.examples, "canary_cost_usd": self.cost_usd}


class NothingToFinalizeError(AirflowBatchError, RetryCannotFix):
    """Round 0 left no manifest (its submit was refused or failed): finalize has nothing to merge.

    Finalize still fails (without retries) rather than being skipped: Airflow judges a run by its
    last tasks, so a skipped finalize would mark a run whose submit was refused a success.
    """


class BatchesApiError(AirflowBatchError):
    """A call to the API failed permanently, or kept failing transiently past the retry budget.

    ``transient`` says which (a re-run may then succeed); ``status_code`` and ``error_code``
    are the last response's, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        status_code: int | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code
        self.error_code = error_code


class QueueFullError(BatchesApiError):
    """A create was refused because the organisation's processing queue is full (a 429 to wait out).

    ``retry_after`` is the wait the API asked for, in seconds, when it named one. The submit
    defers until room frees up; this never fails a task.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, transient=True, **kwargs)
        self.retry_after = retry_after


class SpendLimitReachedError(BatchesApiError):
    """The organisation's spend limit is reached (a 429 that is not a rate limit): nothing more is sent."""


class AfterSubmitError(AirflowBatchError):
    """Raised after batches were created: they exist and may have results."""


class BatchWaitTimeoutError(AfterSubmitError):
    """The wait deadline passed before every batch ended."""


class BatchPollError(AfterSubmitError):
    """Polling a batch failed permanently (401, 403, 404) or the trigger event was malformed."""


class ResultsGoneError(AfterSubmitError):
    """Batches of a round ended, but the API no longer holds their results (archived 29 days after
    creation, or deleted) and no retry round is left to resubmit their requests.

    ``batches`` maps each such batch id to why its results are gone.
    """

    def __init__(self, message: str, *, batches: dict[str, str]) -> None:
        super().__init__(message)
        self.batches = batches

    def __reduce__(self) -> tuple[Any, ...]:
        return (partial(type(self), batches=self.batches), (str(self),))


class IncompleteJobError(AfterSubmitError):
    """A round of the job that was due did not complete; finalize merged what landed first."""


class PublishConflictError(AfterSubmitError, RetryCannotFix):
    """``publish_path`` is another job's (another DAG or task publishes there): nothing was replaced.

    The job's own files are written; publish to a folder of its own (e.g. with the DAG id in it).
    """


class FailureRateExceededError(AfterSubmitError, RetryCannotFix):
    """The final failure rate is above ``max_failure_rate``; every output was written first."""


class LedgerFencedOutError(AirflowBatchError):
    """Another writer saved a round's ledger since this one read it: this writer stops.

    Raised by a copy of the queue trigger whose triggerer stalled and lost it to another, or by
    a task's old process beside its retry. It creates nothing more; the other writer goes on.
    """


class JobSpecError(AirflowBatchError, RetryCannotFix):
    """A job folder's ``spec.json`` is missing, unreadable, damaged or of another ``spec_version``.

    The message names the file and the fix; nothing is sent on its behalf.
    """


class JobSpecConflictError(JobSpecError):
    """A job folder already holds a different spec from a submit that created batches under it.

    Nothing was replaced: the message names the file and both values of each setting that differs.
    """
