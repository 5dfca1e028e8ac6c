"""What a job cannot run without is a DAG import error naming the fix: output folder, model, input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG

from airflow_batch import anthropic_batch_job

START = pendulum.datetime(2026, 1, 1)


@pytest.fixture(autouse=True)
def no_configured_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH", raising=False)
    monkeypatch.delenv("AIRFLOW__AIRFLOW_BATCH__MODEL", raising=False)


def _job(**kwargs: object) -> None:
    with DAG("needs", schedule=None, start_date=START):
        anthropic_batch_job("job", **kwargs)  # type: ignore[arg-type]


def test_a_dag_file_without_an_output_folder_is_an_import_error_naming_the_setting(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "no_output.py").write_text(
        textwrap.dedent(
            """
            import pendulum
            from airflow.sdk import DAG
            from airflow_batch import anthropic_batch_job

            with DAG("no_output", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
                anthropic_batch_job("job", records=[{"t": "x"}], prompt_template="{t}", model="m")
            """
        )
    )
    bag = DagBag(dag_folder=str(folder))

    [error] = bag.import_errors.values()
    assert "job.submit: no output_path: pass output_path=" in error
    assert "AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH" in error
    assert "no_output" not in bag.dags


def test_the_configured_output_path_and_model_satisfy_the_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__MODEL", "claude-haiku-4-5")
    _job(records=[{"t": "x"}], prompt_template="{t}")  # parses


def test_records_without_a_model_anywhere_are_refused_at_parse(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"job\.submit: no model: .* pass model= \(e\.g\. 'claude-haiku-4-5'\)"
    ):
        _job(records=[{"t": "x"}], prompt_template="{t}", output_path=str(tmp_path))
    # A request_builder may set the model per record: that is left to run time.
    builder = {"request_builder": lambda record: {"model": "m"}}
    _job(records=[{"t": "x"}], submit_kwargs=builder, output_path=str(tmp_path))


def test_an_inline_request_without_a_model_is_named_by_its_row(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    requests = [
        {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": messages}},
        {"custom_id": "b", "params": {"max_tokens": 5, "messages": messages}},
    ]
    with pytest.raises(ValueError, match=r"request 2 \(custom_id 'b'\) sets no params\.model"):
        _job(requests=requests, output_path=str(tmp_path))
    _job(requests=requests, output_path=str(tmp_path), model="claude-haiku-4-5")  # the default fills it


def test_a_missing_local_input_file_is_refused_at_parse_but_a_template_waits(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"job\.submit: requests='.*missing\.jsonl': no file there"):
        _job(requests=missing, output_path=str(tmp_path), model="m")
    with pytest.raises(ValueError, match="no file there"):
        _job(requests=f"file://{missing}", output_path=str(tmp_path), model="m")
    _job(requests=str(tmp_path / "{{ ds }}.jsonl"), output_path=str(tmp_path), model="m")
    _job(requests="s3://bucket/requests.jsonl", output_path=str(tmp_path), model="m")
