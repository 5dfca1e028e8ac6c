"""The walk of one request from the factory to a Parquet row, measured (:mod:`airflow_batch.dev.walk`).

Builds a job of one inline request with ``anthropic_batch_job`` and runs it with ``dag.test()``
against the embedded emulator, in an Airflow home of its own, while
:class:`~airflow_batch.dev.walk.RequestWalk` traces which of the package's modules the request's
data passes; prints the walk (one module a line: whether it carries the request or only passes
it on, its layer, the first function met), the number of hops and every climb back. The
definitions are in :mod:`airflow_batch.dev.walk`.

Run: ``.venv/bin/python bench/walk.py`` (about 30 seconds).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from airflow_home import use_temporary_airflow_home

HOME = use_temporary_airflow_home("airflow-batch-walk-")


def main() -> int:
    import shutil

    from airflow.utils import db
    from dag_runner import run_dag

    from airflow_batch.dev.walk import traced_job
    from airflow_batch.emulator.process import EmulatorProcess

    db.initdb()
    try:
        with EmulatorProcess(Path(HOME) / "emulator") as emulator:
            os.environ["AIRFLOW_CONN_ANTHROPIC_DEFAULT"] = json.dumps(
                {"conn_type": "anthropic", "password": "sk-ant-walk", "host": emulator.base_url}
            )
            tracer, _, run = traced_job(emulator, os.path.join(HOME, "output"), "anthropic_default", run_dag)
        if run.state != "success":
            print(f"the one-request job ended {run.state}: the walk is incomplete", file=sys.stderr)
            return 1
        print("The walk of the request (the modules its own data passes):")
        print("\n".join(tracer.request.lines()))
        print("\nWith its batch (modules that see only the batch's id added):")
        print("\n".join(tracer.with_batch.lines()))
        return 0
    finally:
        shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
