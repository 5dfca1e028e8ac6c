"""What ``airflow backfill create --reprocess-behavior completed`` does to a date that already has a
run, on the Airflow we pin: the docs' claim about re-runs (docs/backfills.md) rests on it."""

from __future__ import annotations

import pendulum
import pytest
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow_test_env import run_dag

DAY = pendulum.datetime(2026, 3, 1, tz="UTC")


@pytest.mark.usefixtures("airflow_db")
def test_reprocess_completed_clears_the_existing_run_and_keeps_its_run_id() -> None:
    from airflow.models.backfill import ReprocessBehavior, _create_backfill
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with DAG("reprocess_daily", schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        EmptyOperator(task_id="work")
    first = run_dag(dag, logical_date=DAY)
    assert first.state == "success"

    _create_backfill(
        dag_id=dag.dag_id,
        from_date=DAY,
        to_date=DAY,
        max_active_runs=1,
        reverse=False,
        dag_run_conf=None,
        triggering_user_name=None,
        reprocess_behavior=ReprocessBehavior.COMPLETED,
    )

    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.logical_date == DAY)
        ).all()
        [run] = runs  # no second run for the date
        assert run.run_id == first.run_id  # the same run, cleared: a batch job re-attaches, no new spend
        assert (run.state, run.run_type) == ("queued", "backfill")
