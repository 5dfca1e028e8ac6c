"""Which errors fail their task at once (a retry would meet them again) and which Airflow may retry."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_batch import exceptions


@pytest.mark.parametrize(
    "name",
    [
        "InvalidRequestsError",
        "BudgetExceededError",
        "UnknownModelError",
        "UnknownModelPriceError",
        "InputChangedError",
        "CanaryFailedError",
        "NothingToFinalizeError",
        "PublishConflictError",
        "FailureRateExceededError",
    ],
)
def test_an_error_the_same_files_meet_again_fails_without_retries(name: str) -> None:
    error = getattr(exceptions, name)
    assert issubclass(error, exceptions.RetryCannotFix)
    assert issubclass(error, AirflowFailException)


@pytest.mark.parametrize("name", ["IncompleteJobError", "LedgerFencedOutError"])
def test_an_error_a_later_try_can_get_past_is_left_to_airflows_retries(name: str) -> None:
    assert not issubclass(getattr(exceptions, name), exceptions.RetryCannotFix)
