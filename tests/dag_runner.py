"""``run_dag``: ``dag.test()`` of a DAG built in a test (no side effects: child processes import it)."""

from __future__ import annotations

import inspect
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DAG


def run_dag(dag: DAG, **test_kwargs: object) -> DagRun:
    """Run ``dag`` with ``dag.test()`` (deferred tasks run their trigger inline); return the run.

    Airflow 3.3's ``dag.test()`` only runs DAGs it finds serialized in the metadata DB, and
    a DAG built inside a test lives in no DAG file, so it is written to the DB first, as the
    dag-processor would.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.flush()
        update_dag_parsing_results_in_db(
            "dags-folder",
            None,
            [LazyDeserializedDAG.from_dag(dag)],
            {},
            None,
            set(),
            session=session,
        )
    # dag.test() sleeps 1 s in each loop that finds nothing to run, and a failed task's downstream
    # turns upstream_failed one level per loop: 8 s for a job whose submit failed. Inline, no other
    # process changes a state between loops, so its own sleeps (and only those) are made short.
    test_loop = inspect.unwrap(type(dag).test).__code__
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        real_sleep(min(seconds, 0.01) if sys._getframe(1).f_code is test_loop else seconds)

    time.sleep = sleep
    try:
        return dag.test(**test_kwargs)  # type: ignore[arg-type]
    finally:
        time.sleep = real_sleep
