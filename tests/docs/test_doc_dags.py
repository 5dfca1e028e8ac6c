"""The complete DAGs of the docs (snippets marked ``<!-- snippet: dag -->``) run to the end.

Each is loaded as a DAG file would be, with its ``/data/`` paths (the reader's own folder) mapped
to a temporary folder holding a few sample records for each JSONL file it names, and run with
``dag.test()`` against the emulator through the real SDK. Every job it ran must have answered
every request.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from doc_pages import Snippet, all_snippets

from airflow_batch.emulator.process import EmulatorProcess

DAG_SNIPPETS = all_snippets("python", mark="dag")
_DATA_FILE = re.compile(r"/data/[\w./-]+\.jsonl")


def test_the_docs_have_complete_dags_to_run() -> None:
    assert {snippet.page.name for snippet in DAG_SNIPPETS} >= {"README.md", "mapping.md"}


def _load_dags(snippet: Snippet, data: Path) -> list[DAG]:
    """Write the snippet as a DAG file with ``/data/`` mapped to ``data``; parse it as Airflow does."""
    from airflow.dag_processing.dagbag import DagBag

    for name in set(_DATA_FILE.findall(snippet.text)):
        records = [{"custom_id": f"r{i}", "text": f"Review {i} of {name}: fine."} for i in range(3)]
        path = data / name.removeprefix("/data/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    data.mkdir(parents=True, exist_ok=True)
    dag_file = data / f"doc_dag_{snippet.page.stem}_{snippet.line}.py"
    dag_file.write_text(snippet.text.replace("/data/", f"{data}/"))
    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors, f"{snippet.where}: {bag.import_errors}"
    return list(bag.dags.values())


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("snippet", DAG_SNIPPETS, ids=[snippet.where for snippet in DAG_SNIPPETS])
def test_doc_dag_runs_against_the_emulator(
    snippet: Snippet,
    emulator: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The docs' DAGs leave the poll interval to the deployment (60 s by default).
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL", "0.5")
    dags = _load_dags(snippet, tmp_path / "data")
    assert len(dags) == 1, f"{snippet.where}: a doc DAG snippet defines one DAG"
    run = run_dag(dags[0])
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states

    manifests = [json.loads(path.read_text()) for path in (tmp_path / "data").rglob("manifest.json")]
    jobs = [manifest for manifest in manifests if "succeeded" in manifest and "rounds" in manifest]
    assert jobs, f"{snippet.where}: no job manifest was written"
    for job in jobs:
        assert job["requests"] > 0 and job["succeeded"] == job["requests"], job
