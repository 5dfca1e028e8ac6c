"""Triggerer high availability under faults: a triggerer that stalls past its health threshold.

One deployment (PostgreSQL, api-server, scheduler, dag-processor, LocalExecutor and two
triggerers with a 10 s health threshold and 1 s heartbeats, started and stopped by process
group) runs three jobs against one emulator. While a job's trigger runs on triggerer A, A and
everything it spawned is SIGSTOPped (a long GC pause, a VM freeze) until triggerer B runs the
trigger, then SIGCONTed: Airflow 3.3 then cancels A's orphaned copy with the same "user action"
message a user's mark-failed uses, so ``on_kill`` runs, and a thread the copy started goes on.

- The wait: no batch may be canceled; the run succeeds with every request succeeded.
- A queue wave, A stopped inside a create: one batch per chunk (an extra one canceled and named
  in the round manifest's ``strays``), every request once, the cost the emulator billed.
- A user marks the deferred wait failed: its unfinished batches are canceled.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from airflow_cluster import wait_for
from distributed_cluster import TRIGGERER_HEALTH_THRESHOLD, DistributedCluster, DistributedDeployment

from airflow_batch import layout
from airflow_batch.rules.costs import price_table

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.timeout(600)]

GROUP = "job"
PER_BATCH = 200
WAIT_DAG, QUEUE_DAG, KILL_DAG = "chaos_wait", "chaos_queue", "chaos_kill"
#: Requests of each DAG: ten batches for the faults, three for the user's kill.
REQUESTS = {WAIT_DAG: 2000, QUEUE_DAG: 2000, KILL_DAG: 600}
#: The queue job's share of the processing queue: waves of five batches.
MAX_QUEUED = 1000
#: Every API call takes this long while the queue trigger creates its second wave, so that the
#: triggerer can be stopped inside a create.
CREATE_LATENCY_MS = 2500
#: What Airflow's trigger runner logs when it cancels a trigger with the "user action" message.
USER_ACTION_CANCEL = "Trigger cancelled by user action"
#: What it logs once a trigger's coroutine has ended (after ``on_kill``, when it ran).
TRIGGER_DONE = "trigger completed"

DAG_TEMPLATE = """
import pendulum
from airflow.sdk import DAG

from airflow_batch import anthropic_batch_job

with DAG(
    "{dag_id}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={{"retries": 1, "retry_delay": pendulum.duration(seconds=1)}},
):
    anthropic_batch_job(
        "{group}",
        requests="{requests}",
        output_path="{output}",
        poll_interval=1,
        max_retry_rounds=0,
        deferrable=True,
        submit_kwargs={{"max_requests_per_batch": {per_batch}, "count_tokens_sample": 0}},
        {extra}
    )
"""


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributedDeployment]:
    """Start PostgreSQL, the emulator and the two-triggerer LocalExecutor cluster on the three DAGs."""
    root = tmp_path_factory.mktemp("chaos")
    dags, inputs, output = root / "dags", root / "input", root / "output"
    dags.mkdir()
    inputs.mkdir()
    for dag_id, count in REQUESTS.items():
        requests = inputs / f"{dag_id}.jsonl"
        _write_requests(requests, dag_id, count)
        extra = f"max_queued_requests={MAX_QUEUED}," if dag_id == QUEUE_DAG else ""
        (dags / f"{dag_id}.py").write_text(
            DAG_TEMPLATE.format(
                dag_id=dag_id, group=GROUP, requests=requests, output=output, per_batch=PER_BATCH, extra=extra
            )
        )
    deployment = DistributedDeployment(
        root, dags, emulator_config={"throughput": 0.0, "seed": 22}, celery=False, s3_server=False
    )
    started = time.monotonic()
    # The SDK's per-request log lines would go to a capture pytest closed between tests.
    http_log = logging.getLogger("httpx2")
    level = http_log.level
    http_log.setLevel(logging.WARNING)
    deployment.start()
    print(f"chaos deployment ready in {time.monotonic() - started:.0f}s {deployment.cluster.timings}")
    try:
        yield deployment
    finally:
        deployment.stop()
        http_log.setLevel(level)


def _write_requests(path: Path, dag_id: str, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            params = {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Label item {i}."}],
            }
            out.write(json.dumps({"custom_id": f"{dag_id}-{i:05d}", "params": params}) + "\n")


class ChaosRun:
    """One DAG run of the chaos deployment: its job folder, its batches and its triggers' owners."""

    def __init__(self, deployment: DistributedDeployment, dag_id: str) -> None:
        self.deployment = deployment
        self.cluster: DistributedCluster = deployment.cluster
        self.dag_id = dag_id
        self.cluster.wait_for_dag(dag_id, timeout=180)
        self.cluster.api_json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        run = self.cluster.api_json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        self.run_id: str = run["dag_run_id"]
        output = str(deployment.root / "output")
        self.job = Path(layout.job_dir(output, dag_id, self.run_id, f"{GROUP}.submit").path)
        self.started = time.monotonic()
        self.timeline: list[str] = []

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:6.1f}s  {what}")

    def owner(self, task: str) -> str | None:
        return self.cluster.trigger_owner(self.dag_id, self.run_id, f"{GROUP}.{task}")

    def ledger(self) -> dict[str, Any]:
        path = self.job / "round-0" / "ledger.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def ledger_batches(self) -> list[str]:
        return [entry["batch_id"] for entry in self.ledger().get("batches", {}).values()]

    def stall(
        self,
        task: str,
        *,
        running: str,
        inside: Callable[[], bool] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> tuple[str, str]:
        """SIGSTOP the triggerer running ``task``'s trigger until the other triggerer runs it (and
        ``until()`` holds), then SIGCONT it, and wait until Airflow has cancelled the stopped copy;
        return (stopped triggerer, the other).

        The stop comes once the trigger really runs there (its log says ``running``: the trigger
        table names a triggerer before it has started the trigger) and ``inside()`` holds.
        """
        first = wait_for(lambda: self.owner(task), timeout=180, what=f"{task}'s trigger on a triggerer")
        wait_for(
            lambda: (
                self.owner(task) == first
                and running in self.trigger_log(first, task)
                and (inside is None or inside())
            ),
            timeout=120,
            interval=0.05,
            what=f"{task}'s trigger running on {first} ({running!r} in its log) at the fault",
        )
        self.cluster.pause(first)
        self.note(f"SIGSTOP {first} (running {task}'s trigger)")
        try:
            second = wait_for(
                lambda: (owner := self.owner(task)) not in (None, first) and owner,
                timeout=6 * TRIGGERER_HEALTH_THRESHOLD,
                interval=0.2,
                what=f"{task}'s trigger taken over from {first}",
            )
            self.note(f"{second} runs {task}'s trigger")
            if until is not None:
                wait_for(until, timeout=120, interval=0.2, what=f"{second} done before {first} resumes")
                self.note(f"{second} done what {first} was doing")
        finally:
            self.cluster.resume(first)
            self.note(f"SIGCONT {first}")
        wait_for(
            lambda: TRIGGER_DONE in self.trigger_log(first, task).partition(USER_ACTION_CANCEL)[2],
            timeout=60,
            what=f"{first} done cancelling its orphaned copy of {task}'s trigger (on_kill returned)",
        )
        self.note(f"{first} cancelled its copy ('{USER_ACTION_CANCEL}'), on_kill returned")
        for said in _events(self.trigger_log(first, task), "on_kill", "writer", "adopted", "created"):
            self.note(f"  {first}: {said}")
        return first, second

    def trigger_log(self, name: str, task: str) -> str:
        """Return what triggerer ``name`` logged running ``task``'s trigger in this run."""
        (job_id,) = (job for job, owner in self.cluster.triggerer_jobs.items() if owner == name)
        logs = (
            self.cluster.home / "logs" / f"dag_id={self.dag_id}" / f"run_id={self.run_id}"
            / f"task_id={GROUP}.{task}"
        )  # fmt: skip
        return "\n".join(path.read_text(errors="replace") for path in logs.glob(f"*.trigger.{job_id}.log"))

    def finish(self) -> dict[str, Any]:
        run = self.cluster.wait_for_run(self.dag_id, self.run_id, timeout=300, states=("success", "failed"))
        self.note(f"run {run['state']}")
        return run

    def tries(self) -> dict[str, tuple[str, int]]:
        tis = self.cluster.api_json("GET", f"/api/v2/dags/{self.dag_id}/dagRuns/{self.run_id}/taskInstances")
        return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in tis["task_instances"]}

    def results(self) -> collections.Counter[str]:
        lines = (self.job / "results.jsonl").read_text().splitlines()
        return collections.Counter(json.loads(line)["custom_id"] for line in lines if line.strip())

    def report(self, capsys: pytest.CaptureFixture[str], batches: list[Any]) -> None:
        with capsys.disabled():
            print(f"\n{self.dag_id} {self.run_id}:")
            for line in self.timeline:
                print(f"  {line}")
            for batch in batches:
                counts = batch.request_counts
                print(
                    f"  {batch.id} {batch.processing_status} cancel_initiated_at={batch.cancel_initiated_at} "
                    f"succeeded={counts.succeeded} canceled={counts.canceled} errored={counts.errored}"
                )
            for task_id, (state, try_number) in sorted(self.tries().items()):
                print(f"  {task_id:<16} {state!s:<16} try {try_number}")


def _events(log: str, *words: str) -> list[str]:
    """Return the messages of a JSON-lines trigger log that contain one of ``words``."""
    events = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = str(record.get("event", "")) if isinstance(record, dict) else ""
        if any(word in event for word in words) and "HTTP Request" not in event:
            events.append(event[:300])
    return events


def _client(deployment: DistributedDeployment) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=deployment.emulator.base_url, api_key="test-key")


def test_a_stalled_triggerer_cancels_no_batch_of_the_wait_it_lost(
    chaos: DistributedDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = chaos.emulator
    emulator.reset()
    emulator.configure(throughput=0.0, latency_ms=0)  # the wait stays deferred through the fault
    run = ChaosRun(chaos, WAIT_DAG)
    first, second = run.stall("wait", running=" batches ended, ")  # it has polled
    emulator.configure(throughput=1_000_000.0)
    finished = run.finish()

    with _client(chaos) as client:
        batches = [client.messages.batches.retrieve(batch_id) for batch_id in run.ledger_batches()]
    run.report(capsys, batches)
    assert second != first
    assert len(batches) == REQUESTS[WAIT_DAG] // PER_BATCH
    assert [b.id for b in batches if b.cancel_initiated_at is not None] == []
    assert sum(b.request_counts.canceled for b in batches) == 0
    assert finished["state"] == "success"
    results = run.results()
    assert len(results) == REQUESTS[WAIT_DAG] and max(results.values()) == 1
    manifest = json.loads((run.job / "manifest.json").read_text())
    assert manifest["succeeded"] == REQUESTS[WAIT_DAG]


def _creating(run: ChaosRun) -> bool:
    """Return whether a create is under way: the ledger records an intent for a chunk with no batch."""
    ledger = run.ledger()
    return any(chunk not in ledger.get("batches", {}) for chunk in ledger.get("intents", {}))


def _strays(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the batches the job's manifest names as strays (its own or any round's), by id."""
    parts = [manifest, *manifest.get("rounds", [])]
    return {stray["batch_id"]: stray for part in parts for stray in part.get("strays") or []}


def test_a_queue_wave_stalled_inside_a_create_makes_one_batch_per_chunk_and_pays_what_it_reports(
    chaos: DistributedDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = chaos.emulator
    emulator.reset()
    emulator.configure(throughput=0.0, latency_ms=0)  # the first wave stays queued
    run = ChaosRun(chaos, QUEUE_DAG)
    wave = MAX_QUEUED // PER_BATCH
    wait_for(lambda: len(run.ledger_batches()) == wave, timeout=180, what="the first wave created")
    run.note(f"first wave: {wave} batches")
    # The first wave ends; the queue trigger creates the second, each create taking 2.5 s.
    emulator.configure(throughput=1_000_000.0, latency_ms=CREATE_LATENCY_MS)
    # The other triggerer adopts the batch of the create in flight and creates the rest of the
    # wave before the stopped one resumes (the order issue 22 saw).
    first, second = run.stall(
        "submit",
        running="waits for queue room",
        inside=lambda: _creating(run),
        until=lambda: len(run.ledger_batches()) == REQUESTS[QUEUE_DAG] // PER_BATCH,
    )
    emulator.configure(latency_ms=0)
    finished = run.finish()

    with _client(chaos) as client:
        batches = list(client.messages.batches.list(limit=100))
        custom_ids = {
            b.id: frozenset(r.custom_id for r in client.messages.batches.results(b.id)) for b in batches
        }
    run.report(capsys, batches)
    by_chunk: dict[str, list[Any]] = collections.defaultdict(list)
    for batch in batches:
        by_chunk[min(custom_ids[batch.id])].append(batch)
    manifest = json.loads((run.job / "manifest.json").read_text())
    strays = _strays(manifest)
    recorded = set(run.ledger_batches())
    with capsys.disabled():
        print(f"  {len(batches)} batches for {len(by_chunk)} chunks; strays {strays}")
    assert second != first
    assert len(by_chunk) == REQUESTS[QUEUE_DAG] // PER_BATCH
    assert all(len(custom_ids[group[0].id]) == PER_BATCH for group in by_chunk.values())
    for chunk, group in sorted(by_chunk.items()):
        ids = {batch.id for batch in group}
        assert len(ids & recorded) == 1, f"chunk from {chunk}: batches {ids}, recorded {ids & recorded}"
        unnamed = ids - recorded - strays.keys()
        assert not unnamed, f"chunk from {chunk}: extra batches {unnamed} not named in the strays"
    for batch in batches:  # a stray still running when found is canceled
        if strays.get(batch.id, {}).get("action") == "canceled":
            assert batch.cancel_initiated_at is not None, batch.id
    assert finished["state"] == "success"
    results = run.results()
    assert len(results) == REQUESTS[QUEUE_DAG] and max(results.values()) == 1
    billed = price_table().cost(emulator.billing()["usage_by_model"])
    assert manifest["cost"]["batch_usd"] == pytest.approx(billed["batch_usd"], abs=1e-5)


def test_a_user_marking_the_deferred_wait_failed_cancels_its_batches(
    chaos: DistributedDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = chaos.emulator
    emulator.reset()
    emulator.configure(throughput=0.0, latency_ms=0)
    run = ChaosRun(chaos, KILL_DAG)
    owner = wait_for(lambda: run.owner("wait"), timeout=180, what="the wait's trigger on a triggerer")
    wait_for(
        lambda: " batches ended, " in run.trigger_log(owner, "wait"), timeout=60, what="the trigger polling"
    )
    batch_ids = run.ledger_batches()
    assert len(batch_ids) == REQUESTS[KILL_DAG] // PER_BATCH
    task = f"/api/v2/dags/{KILL_DAG}/dagRuns/{run.run_id}/taskInstances/{GROUP}.wait"
    run.cluster.api_json("PATCH", task, json={"new_state": "failed"})
    run.note(f"wait marked failed (its trigger on {owner})")

    with _client(chaos) as client:

        def canceled() -> list[Any] | None:
            batches = [client.messages.batches.retrieve(batch_id) for batch_id in batch_ids]
            return batches if all(b.cancel_initiated_at is not None for b in batches) else None

        try:
            batches = wait_for(canceled, timeout=60, what="every batch of the killed wait canceled")
        finally:
            run.report(capsys, [client.messages.batches.retrieve(batch_id) for batch_id in batch_ids])
    assert {b.processing_status for b in batches} <= {"canceling", "ended"}
    assert run.finish()["state"] == "failed"
