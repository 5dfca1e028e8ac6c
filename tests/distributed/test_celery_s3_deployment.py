"""A batch job on a production-shaped Airflow: Celery workers, triggerers, PostgreSQL, Redis, S3.

Everything runs on 127.0.0.1 and is stopped at the end by process group: PostgreSQL (an
``initdb`` cluster in a temp dir), Redis, a moto S3 server, the emulator, and Airflow with
CeleryExecutor (api-server, scheduler, dag-processor, two triggerers, two Celery workers).
The job's input and output live on S3. While it runs, the triggerer running the wait's
trigger is SIGKILLed, and so is the Celery worker running the gather, mid-way through its
batches. The run must still succeed with every request answered exactly once in the S3
results, no temporary object left behind, and the trigger run by both triggerers.
"""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from airflow_cluster import wait_for
from distributed_cluster import TASK_HEARTBEAT_TIMEOUT, DistributedDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.timeout(900)]

BUCKET = "airflow-batch-e2e"
DAG_ID = "distributed_reviews"
GROUP = "reviews"
REQUESTS = 3000
PER_BATCH = 500  # six batches: a gather long enough to be killed between two of them

# The DAG reads its input and writes its job folders through the documented Variables, both
# on S3 through the ``aws_default`` connection (whose endpoint_url is the moto server).
DAG_FILE = f'''
import pendulum
from airflow.sdk import DAG

from airflow_batch import anthropic_batch_job

with DAG(
    "{DAG_ID}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={{"retries": 2, "retry_delay": pendulum.duration(seconds=1)}},
):
    anthropic_batch_job(
        "{GROUP}",
        records="{{{{ var.value.airflow_batch_data }}}}/reviews.jsonl",
        custom_id_field="review_id",
        prompt_template="Classify the sentiment of this review: {{text}}",
        model="claude-haiku-4-5",
        max_tokens=32,
        output_path="{{{{ var.value.airflow_batch_output }}}}",
        poll_interval=1,
        max_retry_rounds=2,
        deferrable=True,
        submit_kwargs={{"max_requests_per_batch": {PER_BATCH}, "count_tokens_sample": 2}},
    )
'''

TEMPORARY = re.compile(r"(^|/)\.[^/]*\.tmp$|(^|/)\.staging-")


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributedDeployment]:
    """Start every server and the Celery cluster on a dags folder holding only the test DAG."""
    root = tmp_path_factory.mktemp("distributed")
    dags = root / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
    deployment = DistributedDeployment(
        root,
        dags,
        # Nothing is processed until the test says so; 5% transient errors make a retry round.
        emulator_config={"throughput": 0.0, "error_types": {"overloaded_error": 0.05}, "seed": 12},
        extra_env={
            "AIRFLOW_VAR_AIRFLOW_BATCH_DATA": f"s3://aws_default@{BUCKET}/input",
            "AIRFLOW_VAR_AIRFLOW_BATCH_OUTPUT": f"s3://aws_default@{BUCKET}/jobs",
        },
    )
    started = time.monotonic()
    deployment.start()
    print(f"distributed deployment ready in {time.monotonic() - started:.0f}s {deployment.cluster.timings}")
    try:
        yield deployment
    finally:
        deployment.stop()


def _upload_input(deployment: DistributedDeployment) -> list[str]:
    client = deployment.s3.client()
    client.create_bucket(Bucket=BUCKET)
    records = [{"review_id": f"review-{i:05d}", "text": f"lamp {i} is {i % 5}/5"} for i in range(REQUESTS)]
    body = "".join(json.dumps(record) + "\n" for record in records)
    client.put_object(Bucket=BUCKET, Key="input/reviews.jsonl", Body=body.encode())
    return [record["review_id"] for record in records]


def _object(deployment: DistributedDeployment, key: str) -> bytes:
    body: bytes = deployment.s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def _object_lines(deployment: DistributedDeployment, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _object(deployment, key).splitlines() if line.strip()]


class RunObserver:
    """What a test sees of one DAG run: task instances (REST API) and trigger owners (PostgreSQL)."""

    def __init__(self, deployment: DistributedDeployment, run_id: str) -> None:
        self.deployment = deployment
        self.cluster = deployment.cluster
        self.run_id = run_id
        self.base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
        #: task id -> names of the triggerers seen running its trigger, in order.
        self.triggerers: dict[str, list[str]] = collections.defaultdict(list)

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.cluster.api_json("GET", f"{self.base}/taskInstances/{GROUP}.{task_id}")
        return result

    def tasks(self) -> list[dict[str, Any]]:
        response = self.cluster.api_json("GET", f"{self.base}/taskInstances")
        return list(response["task_instances"])

    def trigger_owner(self, task_id: str) -> str | None:
        """Return the triggerer now running ``task_id``'s trigger (and remember it), or None."""
        owner = self.cluster.trigger_owner(DAG_ID, self.run_id, f"{GROUP}.{task_id}")
        if owner is None:
            return None
        seen = self.triggerers[task_id]
        if not seen or seen[-1] != owner:
            seen.append(owner)
        return owner

    def modified(self, key: str) -> datetime:
        """Return when the S3 object ``key`` was last written."""
        modified: datetime = self.deployment.s3.client().head_object(Bucket=BUCKET, Key=key)["LastModified"]
        return modified

    def keys(self, pattern: str) -> list[str]:
        """Return the S3 keys of this DAG's job folders matching the regular expression ``pattern``."""
        return [key for key in self.deployment.s3.keys(BUCKET, f"jobs/{DAG_ID}/") if re.search(pattern, key)]


def test_job_on_s3_survives_a_killed_triggerer_and_a_killed_celery_worker(
    distributed: DistributedDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, emulator = distributed.cluster, distributed.emulator
    started = time.monotonic()
    custom_ids = _upload_input(distributed)
    cluster.wait_for_dag(DAG_ID, timeout=180)
    cluster.api_json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    run_id = cluster.api_json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
    run = RunObserver(distributed, run_id["dag_run_id"])

    # 1. The wait defers; its trigger runs on one triggerer and polls: only a running trigger
    #    writes the round's progress.json, and only its owner runs it.
    first = wait_for(lambda: run.trigger_owner("wait"), timeout=240, what="the wait's trigger on a triggerer")
    (progress,) = wait_for(lambda: run.keys(r"/round-0/progress\.json$"), timeout=60, what="progress.json")
    assert first in cluster.triggerer_names and run.trigger_owner("wait") == first, run.triggerers
    cluster.kill(first)
    killed_at = time.monotonic()
    killed_at_utc = datetime.now(UTC)

    # 2. The other triggerer takes the trigger over once the dead one's heartbeat is stale,
    #    and runs it: progress.json is written again after the kill.
    second = wait_for(
        lambda: (owner := run.trigger_owner("wait")) not in (None, first) and owner,
        timeout=90,
        what="the trigger taken over by the other triggerer",
    )
    print(f"trigger moved from {first} to {second} in {time.monotonic() - killed_at:.1f}s")
    wait_for(
        lambda: run.modified(progress) > killed_at_utc + timedelta(seconds=1),
        timeout=60,
        what=f"progress.json written by {second}",
    )
    # Let the batches end. Every API call now takes 1.5 s, so the gather of six batches
    # takes long enough to be killed between two of them; the retry round meets no error.
    emulator.configure(throughput=1_000_000.0, latency_ms=1500, error_types={})

    # 3. The gather runs on a Celery worker: once it has gathered one batch, kill that worker.
    wait_for(lambda: run.task("gather")["state"] == "running", timeout=180, what="gather running")
    gathered = r"/round-0/results/[^/]+\.stats\.json$"
    wait_for(lambda: run.keys(gathered), timeout=120, what="a first gathered batch")
    gather = run.task("gather")
    worker = cluster.component_of_pid(int(gather["pid"]))
    assert worker in cluster.worker_names, (gather["pid"], gather.get("hostname"))
    gathered_before_kill = len(run.keys(gathered))
    cluster.kill(worker)
    emulator.configure(latency_ms=0)
    print(f"killed {worker} in gather try {gather['try_number']}, {gathered_before_kill}/6 batches gathered")

    # 4. The dead worker's task is failed after its heartbeat timeout and retried on the other.
    cluster.wait_for_run(DAG_ID, run.run_id, timeout=300 + TASK_HEARTBEAT_TIMEOUT)
    tries = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in run.tasks()}
    with capsys.disabled():
        print(f"\n{DAG_ID}: {first} killed during the wait (trigger taken over by {second}), {worker} killed")
        print(f"during the gather; run finished {time.monotonic() - started:.0f}s after the upload. Tries:")
        for task_id, (state, try_number) in sorted(tries.items()):
            print(f"  {task_id:<20} {state:<8} try {try_number}")

    assert gathered_before_kill < REQUESTS // PER_BATCH  # the kill really was mid-gather
    assert tries[f"{GROUP}.gather"] == ("success", 2)
    assert tries[f"{GROUP}.finalize"][0] == "success"

    (results_key,) = run.keys(rf"/{GROUP}\.submit/results\.jsonl$")
    (failures_key,) = run.keys(rf"/{GROUP}\.submit/failures\.jsonl$")
    results = _object_lines(distributed, results_key)
    counts = collections.Counter(row["custom_id"] for row in results)
    assert set(counts) == set(custom_ids)
    assert max(counts.values()) == 1
    assert _object_lines(distributed, failures_key) == []
    manifest = json.loads(_object(distributed, results_key.replace("results.jsonl", "manifest.json")))
    assert manifest["requests"] == manifest["succeeded"] == REQUESTS
    assert len(manifest["rounds"]) >= 2  # round 0's transient errors, resent from S3

    leftovers = [key for key in distributed.s3.keys(BUCKET) if TEMPORARY.search(key)]
    assert leftovers == []

    # Both triggerers ran the wait's trigger, the killed one first (the trigger table said so
    # while each wrote progress.json); the survivor's trigger log says so too. (The killed
    # one's log may be lost with it: a SIGKILLed triggerer does not flush.)
    assert run.triggerers["wait"][:2] == [first, second], run.triggerers
    wait_logs = cluster.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run.run_id}" / f"task_id={GROUP}.wait"
    (survivor_job,) = (job for job, name in cluster.triggerer_jobs.items() if name == second)
    survivor_log = "".join(p.read_text() for p in wait_logs.glob(f"attempt=*.log.trigger.{survivor_job}.log"))
    assert "Watching 6 batches" in survivor_log, f"{second} (triggerer job {survivor_job}) logged no run"
