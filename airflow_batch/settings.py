"""The ``[airflow_batch]`` configuration section: the defaults a task reads when it runs.

Registered through the provider info, so ``airflow config list`` shows it (this module is
imported while Airflow discovers providers, hence nothing heavy at module level). Set a value in
``airflow.cfg`` or as ``AIRFLOW__AIRFLOW_BATCH__<OPTION>`` (``AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL=5``).
Every option is a default: an argument given to an operator, sensor or ``anthropic_batch_job``
wins. Values are read when a task runs, not when the DAG is parsed, so changing one needs
no redeploy of the DAGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_batch.api.retry import RetryPolicy

SECTION = "airflow_batch"


@dataclass(frozen=True)
class Option:
    """One option of the section: its default (as configuration text), type and meaning."""

    default: str
    type: str
    description: str
    example: str | None = None


OPTIONS: dict[str, Option] = {
    "poll_interval": Option(
        "60",
        "float",
        "Seconds between status polls of a round's batches. At least 1 against the real API; "
        "the local emulator accepts less.",
        "5",
    ),
    "output_path": Option(
        "",
        "string",
        "Base URI of job folders when an operator is given no output_path (an absolute local path, "
        "file://, s3://, gs://).",
        "s3://my-bucket/batch-jobs",
    ),
    "model": Option(
        "", "string", "Model of requests that name none, when the job sets no model.", "claude-haiku-4-5"
    ),
    "cache_ttl": Option(
        "1h",
        "string",
        "Prompt-cache lifetime of the shared system prompt: 1h (recommended for batches, which can "
        "take longer than 5 minutes) or 5m.",
    ),
    "max_failure_rate": Option(
        "0.05",
        "float",
        "Share of a job's requests (0-1) that may still be failed after every retry round before "
        "finalize fails the run; a job's own max_failure_rate wins. 1 never fails a run for failed "
        "requests.",
        "0.01",
    ),
    "api_retry_budget_seconds": Option(
        "300",
        "float",
        "How long one API call may keep failing with transient faults (429, 5xx, 529, dropped "
        "connections) before the task fails.",
    ),
}


def _conf() -> Any:
    from airflow.sdk import conf

    return conf


def get(option: str) -> str:
    """Return the configured value of ``option`` (its default when unset)."""
    default = OPTIONS[option].default
    return str(_conf().get(SECTION, option, fallback=default))


def get_float(option: str) -> float:
    """Return ``option`` as a number, naming the option when the value is not one."""
    value = get(option)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"[{SECTION}] {option} = {value!r} is not a number") from None


def poll_interval() -> float:
    """Return the configured seconds between polls."""
    return get_float("poll_interval")


def max_failure_rate() -> float:
    """Return the configured share of failed requests above which finalize fails (0-1)."""
    rate = get_float("max_failure_rate")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"[{SECTION}] max_failure_rate = {rate!r} must be between 0 and 1")
    return rate


def api_retry_policy() -> RetryPolicy:
    """Return the retry policy with the configured time budget."""
    from airflow_batch.api.retry import RetryPolicy

    return RetryPolicy(budget_seconds=get_float("api_retry_budget_seconds"))


def provider_config() -> dict[str, Any]:
    """Return the section as ``get_provider_info()["config"]`` declares it."""
    return {
        SECTION: {
            "description": "Defaults of airflow-batch (Anthropic Message Batches) operators and sensors.",
            "options": {
                name: {
                    "description": option.description,
                    "version_added": "0.2.0",
                    "type": option.type,
                    "example": option.example,
                    "default": option.default,
                }
                for name, option in OPTIONS.items()
            },
        }
    }
