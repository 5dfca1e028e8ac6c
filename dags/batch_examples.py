"""Settings shared by the example DAGs: where inputs and outputs live, how often to poll.

Nothing here reads a file or calls an API: paths are Jinja templates rendered when a task
runs (from Airflow Variables, with defaults), so parsing the DAG folder stays fast and free
of side effects. The poll interval is not set here: every job reads ``[airflow_batch] poll_interval``
(``AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL``) when it runs; the demo sets it low for the emulator.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

#: Sample inputs shipped with the examples (``dags/data``); override with the Variable
#: ``airflow_batch_data`` (a local folder or an ``s3://`` / ``gs://`` prefix).
SAMPLE_DATA = str(Path(__file__).resolve().parent / "data")
DATA = "{{ var.value.get('airflow_batch_data', '" + SAMPLE_DATA + "') }}"
#: Where job folders are written; override with the Variable ``airflow_batch_output``.
OUTPUT = "{{ var.value.get('airflow_batch_output', '/tmp/airflow-batch-output') }}"
MODEL = "claude-haiku-4-5"
#: ``retries=1`` lets a deferred task survive a lost trigger or a worker restart: a retry of
#: submit re-attaches to its batches, a retry of a wait resumes watching them.
DEFAULT_ARGS = {"retries": 1, "retry_delay": timedelta(seconds=5)}
TAGS = ["airflow_batch", "example"]
