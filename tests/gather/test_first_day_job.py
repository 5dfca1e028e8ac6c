"""A newcomer's job: keys that are not ids, results that join back, settings from config, a dated copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout, read_results
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.submit.records import custom_id_for

FILES = ["src/app/main.py", "src/app/db.py", "README.md", "src/app/main.py.orig", "docs/a b.txt"]
LANGUAGES = ["ja", "de"]


@pytest.mark.usefixtures("airflow_db")
def test_keys_become_stable_ids_rows_join_back_in_order_and_the_output_is_published_by_date(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Settings from Airflow's config, read when the tasks run: no output_path, model or
    # poll_interval is passed to the job.
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__OUTPUT_PATH", str(tmp_path / "jobs"))
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__MODEL", "claude-haiku-4-5")
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL", "0.5")
    records = [{"path": path, "lang": lang, "size": i} for i, (path, lang) in enumerate(
        (path, lang) for path in FILES for lang in LANGUAGES
    )]  # fmt: skip
    published = str(tmp_path / "published") + "/ds={{ ds }}"
    with DAG("first_day", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        job = anthropic_batch_job(
            "review",
            records=records,
            custom_id_from="{path}:{lang}",
            passthrough_fields=["path", "lang"],
            prompt_template="Review {path} for a {lang} reader.",
            max_tokens=32,
            conn_id=anthropic_conn,
            max_retry_rounds=0,
            publish_path=published,
            submit_kwargs={"count_tokens_sample": 0},
        )
    run = run_dag(dag, logical_date=pendulum.datetime(2026, 11, 27))
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert job.output.operator.task_id == "review.finalize"

    folder = layout.job_dir(str(tmp_path / "jobs"), dag.dag_id, run.run_id, "review.submit")
    rows: list[dict[str, Any]] = list(read_results(str(folder)))
    assert [row["row"] for row in rows] == list(range(1, len(records) + 1))  # input order
    for row, record in zip(rows, records, strict=True):
        key = f"{record['path']}:{record['lang']}"
        assert row["custom_id"] == custom_id_for(key)  # valid, stable, derived from the key
        assert row["input"] == {"path": record["path"], "lang": record["lang"], "key": key}
        assert row["model"] == "claude-haiku-4-5"  # the configured default model
    assert len({row["custom_id"] for row in rows}) == len(records)
    assert custom_id_for("src/app/main.py:ja") != custom_id_for("src/app/main.py.orig:ja")

    day = tmp_path / "published" / "ds=2026-11-27"
    current = msgspec.json.decode((day / "manifest.json").read_bytes())["published_version"]
    assert sorted(p.name for p in (day / "versions" / current).iterdir()) == [
        "failures.jsonl", "manifest.json", "results.jsonl",
    ]  # fmt: skip
    assert list(read_results(str(day))) == rows  # the dated copy reads the same


def test_a_relative_path_is_refused_when_the_dag_is_parsed() -> None:
    with (
        pytest.raises(ValueError, match=r"records='data/\{\{ ds \}\}.jsonl' is a relative path"),
        DAG("relative", schedule=None, start_date=pendulum.datetime(2026, 1, 1)),
    ):
        anthropic_batch_job("job", records="data/{{ ds }}.jsonl", prompt_template="{x}", output_path="/tmp/x")
    with (
        pytest.raises(ValueError, match="output_path='out' is a relative path"),
        DAG("relative_out", schedule=None, start_date=pendulum.datetime(2026, 1, 1)),
    ):
        anthropic_batch_job("job", records=[{"x": 1}], prompt_template="{x}", output_path="out")
