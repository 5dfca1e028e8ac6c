"""JobSpec: written once into the job folder, read back validated as if a stranger wrote it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from airflow_batch import layout
from airflow_batch.exceptions import JobSpecConflictError, JobSpecError
from airflow_batch.manifest import JobIdentity
from airflow_batch.spec.job_spec import SPEC_VERSION, JobSpec, read_job_spec, write_job_spec
from airflow_batch.storage import as_path
from airflow_batch.submit.round import SubmitSettings

SPEC = JobSpec(
    JobIdentity("anthropic_default", ("files-api-2025-04-14",), "wrkspc_1"),
    SubmitSettings(
        max_requests_per_batch=500, max_cost_usd=2.5, prices={"claude-x": {"input": 1, "output": 2}}
    ),
    model="claude-haiku-4-5",
    system=[{"type": "text", "text": "Be brief."}],
    output_schema={"type": "object", "properties": {"label": {"type": "string"}}},
    passthrough_fields=("product_id", "key"),
    answer_store="s3://bucket/_answers",
    max_age=3600.0,
)


def test_a_spec_round_trips_through_its_json_with_the_version() -> None:
    document = json.loads(json.dumps(SPEC.to_json()))
    assert document["spec_version"] == SPEC_VERSION == 1
    assert document["identity"] == {
        "conn_id": "anthropic_default",
        "betas": ["files-api-2025-04-14"],
        "workspace_id": "wrkspc_1",
    }
    assert "spent_usd" not in document["settings"] and "expected_basis" not in document["settings"]
    assert JobSpec.from_json(document, "spec.json") == SPEC


def test_the_spec_is_written_once_and_read_back(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    write_job_spec(job, SPEC, bound=False)
    write_job_spec(job, SPEC, bound=True)  # a retry or a clear writes the same spec again
    assert read_job_spec(job) == SPEC
    assert read_job_spec(job).settings.max_requests_per_batch == 500


def test_a_different_spec_replaces_one_nothing_was_spent_under(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    write_job_spec(job, SPEC, bound=False)
    changed = JobSpec(SPEC.identity, SubmitSettings(max_cost_usd=9.0), model="claude-sonnet-4-5")
    write_job_spec(job, changed, bound=False)
    assert read_job_spec(job) == changed


def test_a_second_writer_with_another_spec_is_refused_naming_both(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    write_job_spec(job, SPEC, bound=False)
    other = JobSpec(
        SPEC.identity, SubmitSettings(max_requests_per_batch=500, max_cost_usd=9.0), model="claude-x"
    )
    with pytest.raises(JobSpecConflictError) as refused:
        write_job_spec(job, other, bound=True)
    message = str(refused.value)
    assert str(layout.spec_path(job)) in message
    assert "max_cost_usd: 2.5 != 9.0" in message and "model: 'claude-haiku-4-5' != 'claude-x'" in message
    assert read_job_spec(job) == SPEC  # nothing was replaced


def test_a_missing_spec_names_the_file_and_the_fix(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    with pytest.raises(JobSpecError, match=r"spec\.json is missing: .*Clear the submit task"):
        read_job_spec(job)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", r"spec\.json is not readable JSON"),
        (b"[1, 2]", r"spec\.json is not a job spec"),
        (b'{"spec_version": 2, "identity": {"conn_id": "c"}}', r"spec_version 2; this airflow_batch reads 1"),
        (b'{"identity": {"conn_id": "c"}}', r"spec_version None; this airflow_batch reads 1"),
        (b'{"spec_version": 1}', r"spec\.json is damaged \(KeyError"),
        (
            b'{"spec_version": 1, "identity": {"conn_id": "c"}, "colour": "red"}',
            r"spec\.json is damaged \(TypeError",
        ),
        (
            b'{"spec_version": 1, "identity": {"conn_id": "c"}, "settings": {"max_requests_per_batch": 0}}',
            r"spec\.json is damaged \(ValueError: max_requests_per_batch must be between 1",
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "newer-version",
        "no-version",
        "no-identity",
        "unknown-field",
        "bad-setting",
    ],
)
def test_a_stranger_spec_is_refused_naming_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    job = as_path(str(tmp_path / "job"))
    layout.spec_path(job).parent.mkdir(parents=True, exist_ok=True)
    layout.spec_path(job).write_bytes(content)
    with pytest.raises(JobSpecError, match=expected) as refused:
        read_job_spec(job)
    assert str(layout.spec_path(job)) in str(refused.value)


def test_a_raised_budget_replaces_the_spec_of_a_job_that_spent_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A retry round refused by the budget: the DAG's budget is raised and the job cleared.
    job = as_path(str(tmp_path / "job"))
    write_job_spec(job, SPEC, bound=False)
    raised = dataclasses.replace(SPEC, settings=dataclasses.replace(SPEC.settings, max_cost_usd=10.0))
    with caplog.at_level("WARNING"):
        write_job_spec(job, raised, bound=True)
    assert read_job_spec(job).settings.max_cost_usd == 10.0
    assert "the job's spec changes: max_cost_usd: 2.5 != 10.0" in caplog.text


def test_on_input_change_resubmit_lets_a_changed_spec_start_the_job_over(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    write_job_spec(job, SPEC, bound=False)
    resubmit = dataclasses.replace(
        SPEC, model="claude-x", settings=dataclasses.replace(SPEC.settings, on_input_change="resubmit")
    )
    write_job_spec(job, resubmit, bound=True)
    assert read_job_spec(job).model == "claude-x"
