"""The complete DAGs of the docs (snippets marked ``<!-- snippet: dag -->``) run to the end.

Each is loaded as a DAG file would be, with its ``/data/`` paths (the reader's own folder) mapped
to a temporary folder holding a few sample records, with the fields its templates name, for each
JSONL file it names, and run with ``dag.test()`` against the emulator through the real SDK.
Every job it ran must have answered every request.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from doc_pages import Snippet, all_snippets

from airflow_batch.emulator.process import EmulatorProcess

DAG_SNIPPETS = all_snippets("python", mark="dag")
#: The logical date of every run: a snippet's ``{{ ds }}`` paths are this day's.
LOGICAL_DATE = pendulum.datetime(2026, 11, 1, tz="UTC")
_DATA_PATH = re.compile(r"/data/[^\s\"']+")
_PLACEHOLDER = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")


def test_the_docs_have_complete_dags_to_run() -> None:
    assert {snippet.page.name for snippet in DAG_SNIPPETS} >= {
        "README.md",
        "mapping.md",
        "getting-started.md",
    }


def _record_fields(source: str) -> tuple[str, list[str]]:
    """The id field and the other fields a snippet's records need: its templates' placeholders,
    ``custom_id_field`` and ``passthrough_fields``."""
    id_field = re.search(r"custom_id_field=\"(\w+)\"", source)
    passthrough = re.search(r"passthrough_fields=\[([^\]]*)\]", source)
    fields = set(_PLACEHOLDER.findall(source))
    fields |= set(re.findall(r"\"(\w+)\"", passthrough[1])) if passthrough else set()
    id_name = id_field[1] if id_field else "custom_id"
    return id_name, sorted(fields - {id_name})


def _write_inputs(source: str, data: Path) -> None:
    """Sample inputs for every ``/data/`` file the snippet names: records for JSONL, text else."""
    id_name, fields = _record_fields(source)
    for name in set(_DATA_PATH.findall(source.replace("{{ ds }}", LOGICAL_DATE.to_date_string()))):
        path = data / name.removeprefix("/data/")
        if not path.suffix:
            continue  # an output folder
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            records = [{id_name: f"r{i}", **{field: f"{field} {i}/a" for field in fields}} for i in range(3)]
            path.write_text("".join(json.dumps(record) + "\n" for record in records))
        else:
            path.write_text("Write plainly. " * 1_500)


def _load_dags(snippet: Snippet, data: Path) -> list[DAG]:
    """Write the snippet as a DAG file with ``/data/`` mapped to ``data``; parse it as Airflow does."""
    from airflow.dag_processing.dagbag import DagBag

    _write_inputs(snippet.text, data)
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
    run = run_dag(dags[0], logical_date=LOGICAL_DATE)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states

    manifests = [json.loads(path.read_text()) for path in (tmp_path / "data").rglob("manifest.json")]
    jobs = [manifest for manifest in manifests if "succeeded" in manifest and "rounds" in manifest]
    assert jobs, f"{snippet.where}: no job manifest was written"
    for job in jobs:
        assert job["requests"] > 0 and job["succeeded"] == job["requests"], job
