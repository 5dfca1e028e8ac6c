"""``run_dag``: ``dag.test()`` of a DAG built in a test (no side effects: child processes import it)."""

from __future__ import annotations

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
    return dag.test(**test_kwargs)  # type: ignore[arg-type]
