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

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path

WORKSPACE = "wrkspc_a"
BETA = "output-300k-2026-03-24"
#: The emulator logs each call that sends ``anthropic-beta``, with the betas and the workspace.
BETA_LINE = re.compile(rf"anthropic-beta {BETA} on [A-Z]+ \S+ in workspace {WORKSPACE}$", re.M)
BATCH = "/v1/messages/batches/{batch_id}"


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

    # Every call the job made, whatever its answer, went to its workspace (the emulator counts
    # them all by workspace, beta header or not), and each kind of call is there.
    calls = emulator.calls()
    assert set(calls) == {WORKSPACE}, calls
    made = calls[WORKSPACE]
    assert made["POST /v1/messages/batches"] == len(batch_ids)  # no create refused or repeated
    assert made[f"GET {BATCH}/results"] >= len(batch_ids)
    assert made[f"GET {BATCH}"] >= len(batch_ids) and made["POST /v1/messages/count_tokens"] >= 1
    # And every one of them carried the job's beta (the log line is written before the answer).
    assert len(BETA_LINE.findall(emulator.log_path.read_text())) == sum(made.values())

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
