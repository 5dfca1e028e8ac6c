"""The example DAGs parse fast, without side effects, and are shaped as documented."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {
    "review_sentiment",
    "product_descriptions",
    "document_summaries",
    "daily_review_sentiment",
    "invoice_extraction",
}


@pytest.fixture(scope="module")
def bare_dags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``dags/`` without its sample data: parsing must not need any input file."""
    folder = tmp_path_factory.mktemp("dags")
    for path in DAGS.glob("*.py"):
        shutil.copy(path, folder / path.name)
    shutil.copy(DAGS / ".airflowignore", folder / ".airflowignore")
    return folder


@pytest.fixture(scope="module")
def dagbag(bare_dags: Path):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    sys.path.insert(0, str(bare_dags))
    try:
        yield DagBag(dag_folder=str(bare_dags))
    finally:
        sys.path.remove(str(bare_dags))
        forget_modules_from(bare_dags)


def forget_modules_from(folder: Path) -> None:
    """Drop the modules imported from ``folder`` (batch_examples...), so later tests import dags/ anew."""
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(folder)):
            del sys.modules[name]


def test_every_example_dag_parses_without_errors_or_input_files(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


def test_each_dag_file_parses_in_under_two_seconds(dagbag) -> None:  # type: ignore[no-untyped-def]
    slow = {stat.file: stat.duration for stat in dagbag.dagbag_stats if stat.duration.total_seconds() > 2}
    assert slow == {}


def test_parsing_twice_is_fast_and_opens_no_network_connection(
    bare_dags: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from airflow.dag_processing.dagbag import DagBag

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a DAG file opened a network connection at parse time")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.syspath_prepend(str(bare_dags))
    started = time.monotonic()
    try:
        bag = DagBag(dag_folder=str(bare_dags))
    finally:
        forget_modules_from(bare_dags)
    assert bag.import_errors == {}
    assert time.monotonic() - started < 8


def test_daily_dag_is_partitioned_by_logical_date_and_does_not_catch_up(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["daily_review_sentiment"]

    assert dag.catchup is False
    assert dag.schedule == "@daily"
    assert "ds=" in dag.doc_md
    assert {"prepare_input", "sentiment.submit", "sentiment.finalize"} <= set(dag.task_ids)
    assert dag.get_task("sentiment.finalize").publish_path.endswith("/daily/output/ds={{ ds }}")


def test_waits_defer_to_the_triggerer_and_retry_once(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id in EXPECTED:
        waits = [t for t in dagbag.dags[dag_id].tasks if type(t).__name__ == "BatchesSensor"]
        assert waits, dag_id
        assert all(t.retries == 1 for t in waits), dag_id
        assert all(t.deferrable for t in waits), dag_id


def test_output_paths_are_templates_rendered_at_run_time(dagbag) -> None:  # type: ignore[no-untyped-def]
    submit = dagbag.dags["review_sentiment"].get_task("sentiment.submit")

    assert "var.value.get('airflow_batch_output'" in submit.output_path
    assert "var.value.get('airflow_batch_data'" in str(submit.records)


def test_daily_sample_reviews_are_a_pure_function_of_the_date(bare_dags: Path) -> None:
    sys.path.insert(0, str(bare_dags))
    try:
        from daily_review_sentiment import day_reviews
    finally:
        sys.path.remove(str(bare_dags))

    assert day_reviews("2026-01-02") == day_reviews("2026-01-02")
    assert day_reviews("2026-01-02") != day_reviews("2026-01-03")
    assert all(row["review_id"].startswith("2026-01-02-") for row in day_reviews("2026-01-02"))
