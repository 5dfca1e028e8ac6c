"""The [airflow_batch] configuration section: registered with Airflow, read when a task runs."""

from __future__ import annotations

import pytest

from airflow_batch import settings


def test_the_section_is_registered_with_its_defaults() -> None:
    from airflow.providers_manager import ProvidersManager

    configs = dict(ProvidersManager().provider_configs)
    options = configs["airflow-batch"]["airflow_batch"]["options"]
    assert options["poll_interval"]["default"] == "60"
    assert options["api_retry_budget_seconds"]["default"] == "300"
    assert settings.poll_interval() == 60.0


def test_environment_variables_follow_airflows_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL", "5")
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__API_RETRY_BUDGET_SECONDS", "42")

    assert settings.poll_interval() == 5.0
    assert settings.api_retry_policy().budget_seconds == 42.0


def test_a_value_that_is_not_a_number_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL", "often")

    with pytest.raises(ValueError, match=r"\[airflow_batch\] poll_interval = 'often' is not a number"):
        settings.poll_interval()
