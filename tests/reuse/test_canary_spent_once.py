"""The canary is paid at most once per round and never before a refusal, through ``dag.test()``.

Rule (issue 23, class 7): the canary's budget check uses the round's own estimate (the same
calibration), so no canary is paid for a round then refused; the ledger records the canary before
it is sent, so a re-run of the round (a retry, a clear, a worker lost after the canary) never
sends it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.folder import JobFolder
from airflow_batch.rules.costs import price_table
from airflow_batch.storage import as_path, read_json
from airflow_batch.submit.chunking import prepare_chunks
from airflow_batch.submit.estimate import estimate_cost

LOGICAL_DATE = pendulum.datetime(2026, 3, 1)
CANARY = 5


def _requests(path: Path, n: int, model: str, words: int = 1_200) -> list[dict[str, Any]]:
    requests = [
        {
            "custom_id": f"q{i:04d}",
            "params": {
                "model": model,
                "max_tokens": 1_024,  # never cut: the canary refuses an answer cut at max_tokens
                "messages": [
                    {"role": "user", "content": " ".join(f"word{(i + k) % 97}" for k in range(words))}
                ],
            },
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(request) + "\n" for request in requests))
    return requests


def _dag(dag_id: str, requests: Path, output: str, conn_id: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "job",
            requests=str(requests),
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=0,
            poll_interval=0.5,
            canary=CANARY,
            submit_kwargs={"count_tokens_sample": 20},
            **kwargs,
        )
    return dag


def _messages(emulator: EmulatorProcess) -> int:
    return emulator.stats()["messages_answered"]


def _estimates(requests: list[dict[str, Any]], tmp_path: Path, count_tokens: Any) -> tuple[float, float]:
    """Return (the round's batches without the canary, the canary) at batch + standard prices."""
    figures = []
    for name, part in (("main", requests[CANARY:]), ("canary", requests[:CANARY])):
        prepared = prepare_chunks(
            part, staging=as_path(str(tmp_path / f"{name}-{id(count_tokens)}")), max_requests=100_000,
            max_bytes=256_000_000,
        )  # fmt: skip
        del prepared.tally.sample[20:]
        estimate = estimate_cost(prepared.tally, price_table(), count_tokens=count_tokens)
        figures.append(
            estimate["batch_usd"] if name == "main" else estimate["batch_usd"] + estimate["standard_usd"]
        )
    return figures[0], figures[1]


@pytest.mark.usefixtures("airflow_db")
def test_the_canary_budget_check_uses_the_rounds_calibrated_estimate(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # Sonnet 5 counts ~30% more tokens than the local approximation: the calibrated estimate is higher.
    requests = _requests(tmp_path / "requests.jsonl", 300, "claude-sonnet-5")
    local_main, local_canary = _estimates(requests, tmp_path, None)
    with BatchesApi(anthropic.Anthropic(base_url=emulator.base_url, api_key="test")) as api:
        calibrated_main, calibrated_canary = _estimates(requests, tmp_path, api.count_tokens)
    assert calibrated_main > local_main + local_canary + 0.01  # room for a budget between the two
    # A budget the local estimate fits but the calibrated round does not: refused before the canary.
    budget = local_main + local_canary + 0.005
    dag = _dag(
        "canary_budget",
        tmp_path / "requests.jsonl",
        str(tmp_path / "out"),
        anthropic_conn,
        max_cost_usd=budget,
    )
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "failed"
    assert _messages(emulator) == 0 and emulator.batch_count() == 0, "a canary was paid for a refused round"
    job = layout.job_dir(str(tmp_path / "out"), "canary_budget", run.run_id, "job.submit")
    refusal = read_json(layout.refusal_path(job, 0))
    assert refusal["kind"] == "BudgetExceededError" and "canary" in refusal["reason"]
    assert not layout.ledger_path(job, 0).exists()  # nothing was spent: nothing binds a re-run
    # A budget the calibrated round fits: the canary is paid once and the round is created.
    dag = _dag(
        "canary_budget_fits", tmp_path / "requests.jsonl", str(tmp_path / "out"), anthropic_conn,
        max_cost_usd=calibrated_main + calibrated_canary + 0.005,
    )  # fmt: skip
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert _messages(emulator) == CANARY and emulator.batch_count() == 1


@pytest.mark.usefixtures("airflow_db")
def test_a_rerun_after_the_canary_was_paid_never_sends_it_again(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _requests(tmp_path / "requests.jsonl", 40, "claude-haiku-4-5", words=20)
    install = JobFolder.install_chunks
    lost: list[int] = []

    def worker_lost_after_the_canary(*args: Any) -> None:
        if not lost:
            lost.append(1)
            raise RuntimeError("worker lost after the canary was paid, before its round was recorded")
        install(*args)

    monkeypatch.setattr(JobFolder, "install_chunks", worker_lost_after_the_canary)
    dag = _dag("canary_rerun", tmp_path / "requests.jsonl", str(tmp_path / "out"), anthropic_conn)
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "failed" and _messages(emulator) == CANARY and emulator.batch_count() == 0
    job = layout.job_dir(str(tmp_path / "out"), "canary_rerun", run.run_id, "job.submit")
    recorded = read_json(layout.ledger_path(job, 0))["canary"]
    assert (recorded["requests"], recorded["answered"]) == (CANARY, CANARY) and recorded["cost"][
        "batch_usd"
    ] > 0

    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)  # the same run, cleared
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert _messages(emulator) == CANARY, "the re-run sent the canary again"
    manifest = read_json(layout.final_manifest_path(job))
    assert manifest["succeeded"] == 40  # the canary's answers were lost with the worker: sent in the batch
    round_0 = read_json(layout.round_manifest_path(job, 0))
    assert round_0["canary"] == recorded  # its cost is the job's
    assert round_0["cost"]["batch_usd"] > recorded["cost"]["batch_usd"]


@pytest.mark.usefixtures("airflow_db")
def test_a_failed_canary_is_not_sent_again_over_the_same_input(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    emulator.configure(refusal_rate=1.0, seed=3)
    _requests(tmp_path / "requests.jsonl", 40, "claude-haiku-4-5", words=20)
    dag = _dag("canary_failed", tmp_path / "requests.jsonl", str(tmp_path / "out"), anthropic_conn)
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "failed" and _messages(emulator) == CANARY
    job = layout.job_dir(str(tmp_path / "out"), "canary_failed", run.run_id, "job.submit")
    assert read_json(layout.refusal_path(job, 0))["kind"] == "CanaryFailedError"

    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)  # a retry: same input
    assert run.state == "failed" and _messages(emulator) == CANARY and emulator.batch_count() == 0
    refusal = read_json(layout.refusal_path(job, 0))
    assert refusal["kind"] == "CanaryFailedError" and "not sent again" in refusal["reason"]
    assert refusal["canary_cost_usd"] == 0

    # Accepting the failure rate submits the input as it is, still without a second canary.
    emulator.configure(refusal_rate=0.0)
    dag = _dag(
        "canary_failed", tmp_path / "requests.jsonl", str(tmp_path / "out"), anthropic_conn,
        canary_max_failure_rate=1.0,
    )  # fmt: skip
    run = run_dag(dag, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert _messages(emulator) == CANARY and emulator.batch_count() == 1
