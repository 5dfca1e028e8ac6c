"""The estimate against what the emulator charges, on the three example jobs (dag.test).

Each example DAG runs twice, as a scheduled job would: the first run has no history, so its
estimate has only the upper bound (every request's ``max_tokens``); the second run's estimate
also has the *expected* figure, priced with the output length the first run observed. That
figure must be within 5% of the second run's actual cost at batch prices.

Cache expiry is realistic on the emulator's simulated clock: requests are processed 20 s
apart (the batches are created at that pace, then released once their wait has polled, see
``emulator/prompt_cache.py``), and the second run starts two hours after the first, as the
next run of a scheduled job does, so the first run's 1-hour cache entries have expired and
its first request writes the shared prompt again, as the estimate assumes.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow_test_env import run_dag
from deadlines import until_sync

from airflow_batch import layout
from airflow_batch.emulator.process import EmulatorProcess

DAGS = Path(__file__).resolve().parents[2] / "dags"
SUBMIT_TASKS = {
    "review_sentiment": "sentiment.submit",
    "product_descriptions": "submit",
    "document_summaries": "summaries.submit",
}
PACE = 1 / 20  # requests per second of simulated processing while a batch is created
NEXT_RUN_DELAY = 2 * 3600  # seconds: the second run is processed after the 1-hour TTL has passed


def _release_after_first_poll(emulator: EmulatorProcess, output: Path, dag_id: str) -> threading.Thread:
    """Speed the emulator up once a new round-0 wait of ``dag_id`` has polled its batches."""
    pattern = f"{dag_id}/*/{SUBMIT_TASKS[dag_id]}/round-0/progress.json"
    seen = set(output.glob(pattern))

    def release() -> None:
        try:  # released even when the poll is late (a thread's missed deadline is silent)
            until_sync(lambda: bool(set(output.glob(pattern)) - seen), deadline=120)
        finally:
            emulator.configure(throughput=1_000_000_000, start_delay_seconds=0)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def _run(dag: Any, emulator: EmulatorProcess, output: Path, start_delay: float) -> dict[str, Any]:
    """Run ``dag`` once, its batches paced and started ``start_delay`` later; return the figures."""
    emulator.configure(throughput=PACE, start_delay_seconds=start_delay)
    release = _release_after_first_poll(emulator, output, dag.dag_id)
    run = run_dag(dag)
    release.join(timeout=10)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    job = layout.job_dir(str(output), dag.dag_id, run.run_id, SUBMIT_TASKS[dag.dag_id])
    manifest = json.loads(Path(layout.final_manifest_path(job).path).read_text())
    round_0 = json.loads(Path(layout.round_manifest_path(job, 0).path).read_text())
    return {"manifest": manifest, "estimate": round_0["estimate"]}


@pytest.fixture
def example_dags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, anthropic_conn: str) -> tuple[Any, Path]:
    """The example DAGs as the dag-processor loads them, writing under a temp output folder."""
    from airflow.dag_processing.dagbag import DagBag

    output = tmp_path / "output"
    monkeypatch.setenv("AIRFLOW_VAR_AIRFLOW_BATCH_OUTPUT", str(output))
    monkeypatch.setenv("AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL", "0.5")
    monkeypatch.syspath_prepend(str(DAGS))
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag, output


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("dag_id", sorted(SUBMIT_TASKS))
def test_the_expected_estimate_of_a_second_run_is_within_5_percent_of_its_actual_cost(
    dag_id: str, example_dags: tuple[Any, Path], emulator: EmulatorProcess
) -> None:
    bag, output = example_dags
    dag = bag.dags[dag_id]

    first = _run(dag, emulator, output, start_delay=0)
    assert first["estimate"]["expected_batch_usd"] is None  # no history yet: the upper bound only
    second = _run(dag, emulator, output, start_delay=NEXT_RUN_DELAY)

    estimate, manifest = second["estimate"], second["manifest"]
    actual = manifest["cost"]["batch_usd"]
    expected = estimate["expected_batch_usd"]
    upper = estimate["batch_usd"]
    print(
        f"{dag_id}: expected ${expected:.6f}, upper bound ${upper:.6f}, actual ${actual:.6f} "
        f"(expected {expected / actual - 1:+.2%}, upper bound {upper / actual - 1:+.2%}); "
        f"{estimate['expected_output_tokens']} output tokens per request "
        f"{estimate['expected_basis']}; cache TTL {estimate['cache_ttl']}"
    )
    assert manifest["failed"] == 0 and estimate["method"] == "count_tokens"
    assert estimate["expected_basis"] == "observed in the last 1 run(s) of this task"
    assert expected == pytest.approx(actual, rel=0.05)
    assert upper >= actual
    usage, estimated = manifest["usage"], estimate["expected_usage"]
    assert (usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]) == (
        estimated["cache_creation_input_tokens"],
        estimated["cache_read_input_tokens"],
    )
    if dag_id == "document_summaries":
        # The style guide is cached: written once at the 1-hour TTL, read by every other request.
        assert estimate["cache_ttl"] == "1h"
        assert usage["cache_creation_1h_input_tokens"] == usage["cache_creation_input_tokens"] >= 5_000
        assert (
            usage["cache_read_input_tokens"]
            == (manifest["requests"] - 1) * usage["cache_creation_input_tokens"]
        )
