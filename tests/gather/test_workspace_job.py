"""A job in a workspace: every call it makes carries the workspace (and its betas), its batches
are invisible from any other workspace, and its manifests record both (dag.test, emulator)."""

from __future__ import annotations

import re
from pathlib import Path

import anthropic
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from deadlines import until_sync

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path

WORKSPACE = "wrkspc_a"
BETA = "output-300k-2026-03-24"
#: The emulator logs every call that sends ``anthropic-beta``: its method, path and workspace.
CALL_LINE = re.compile(rf"anthropic-beta {BETA} on (?P<method>[A-Z]+) (?P<path>\S+) in workspace (?P<ws>\S+)")


def _kind(method: str, path: str) -> str:
    """Return the API call a logged method and path are: create, retrieve, results, count_tokens..."""
    if path.endswith("/count_tokens"):
        return "count_tokens"
    if path.endswith("/results"):
        return "results"
    if path == "/v1/messages/batches":
        return "create" if method == "POST" else "list"
    if path.startswith("/v1/messages/batches/"):
        return "cancel" if path.endswith("/cancel") else "retrieve"
    return f"{method} {path}"


@pytest.mark.usefixtures("airflow_db")
def test_a_job_in_a_workspace_calls_only_that_workspace_and_its_batches_are_invisible_elsewhere(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # A third of round 0 is overloaded, so a retry round creates, waits and gathers too.
    emulator.configure(error_types={"overloaded_error": 0.3}, seed=3)
    output = str(tmp_path / "out")
    with DAG("workspace_job", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "scoped",
            records=[{"id": f"r{i}", "text": f"item {i}"} for i in range(12)],
            custom_id_field="id",
            prompt_template="Describe {text}",
            model="claude-haiku-4-5",
            max_tokens=64,
            output_path=output,
            conn_id=anthropic_conn,
            workspace_id=WORKSPACE,
            betas=[BETA],
            max_retry_rounds=1,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 3},
        )
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    job = layout.job_dir(output, dag.dag_id, run.run_id, "scoped.submit")
    manifest = msgspec.json.decode(as_path(str(layout.final_manifest_path(job))).read_bytes())
    assert (manifest["workspace_id"], manifest["betas"]) == (WORKSPACE, [BETA])
    assert manifest["succeeded"] == 12 and len(manifest["rounds"]) == 2
    batch_ids = [batch for summary in manifest["rounds"] for batch in summary["batches"]]
    for number in (0, 1):
        round_manifest = msgspec.json.decode(
            as_path(str(layout.round_manifest_path(job, number))).read_bytes()
        )
        assert (round_manifest["workspace_id"], round_manifest["betas"]) == (WORKSPACE, [BETA])

    # Every call the job made sent its beta, and with it its workspace; each kind of call is there.
    def results_downloaded() -> bool:
        calls = [
            m for m in CALL_LINE.finditer(emulator.log_path.read_text()) if m["path"].endswith("/results")
        ]
        return len(calls) >= len(batch_ids)

    until_sync(results_downloaded, deadline=30)
    calls = list(CALL_LINE.finditer(emulator.log_path.read_text()))
    assert {call["ws"] for call in calls} == {WORKSPACE}
    assert {"create", "retrieve", "results", "count_tokens"} <= {_kind(c["method"], c["path"]) for c in calls}
    assert {c["path"].split("/")[4] for c in calls if _kind(c["method"], c["path"]) == "results"} == set(
        batch_ids
    )

    # From the default workspace, or another one, the job's batches do not exist.
    with anthropic.Anthropic(base_url=emulator.base_url, api_key="k", max_retries=0) as client:
        assert [b.id for b in client.messages.batches.list()] == []
        assert [b.id for b in client.messages.batches.list(workspace_id="wrkspc_b")] == []
        for batch_id in batch_ids:
            for other in ({}, {"workspace_id": "wrkspc_b"}):
                with pytest.raises(anthropic.NotFoundError):
                    client.messages.batches.retrieve(batch_id, **other)  # type: ignore[arg-type]
                with pytest.raises(anthropic.NotFoundError):
                    list(client.messages.batches.results(batch_id, **other))  # type: ignore[arg-type]
        own = client.messages.batches.list(workspace_id=WORKSPACE)
        assert sorted(b.id for b in own) == sorted(batch_ids)
        assert (
            client.messages.batches.retrieve(batch_ids[0], workspace_id=WORKSPACE).processing_status
            == "ended"
        )
