"""Lineage and metrics of a whole job: OpenLineage events and StatsD datagrams of one ``dag.test()``.

The job runs in a child process with Airflow's settings for both on, as a worker would have them:
OpenLineage's file transport writing every event to a file, and ``[metrics] statsd_on`` sending to
a UDP listener on 127.0.0.1 owned by the test (``statsd_influxdb_enabled`` so the datagrams carry
their tags). Airflow reads both settings when its config and ``Stats`` are first set up in a
process, hence the child. The job: 40 requests in batches of 10 under ``max_queued_requests=20``
(so the submit waits for queue room in the queue trigger), 25% of them failing retryably, one
retry round, JSONL and Parquet results and a published copy. A second DAG's job is refused by its
budget, for the failure event.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest

from airflow_batch import layout
from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess
from airflow_batch.lineage.figures import FACET_NAME, FACET_SCHEMA_URL, token_kinds
from airflow_batch.metrics import METRICS, PREFIX
from airflow_batch.storage import as_path

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
FACET_SCHEMA = json.loads((REPO / "docs" / "lineage" / "AirflowBatchRunFacet.json").read_text())
#: The facet's own fields (the first part of its ``allOf`` is OpenLineage's RunFacet, checked by the client).
OWN_FIELDS = {**FACET_SCHEMA["$defs"]["AirflowBatchRunFacet"]["allOf"][1], "$defs": FACET_SCHEMA["$defs"]}
MODEL = "claude-haiku-4-5"

_JOBS = """
import json, sys
import pendulum
from airflow.sdk import DAG
from dag_runner import run_dag
from airflow_batch import anthropic_batch_job
from airflow_batch.wait import loop

loop.SETTLE_SECONDS = 0.0  # triggers run inline: no scheduler to race (tests/conftest.py, no_trigger_hold)
args = json.loads(sys.argv[1])
start = pendulum.datetime(2026, 1, 1, tz="UTC")
with DAG("observed_job", schedule=None, start_date=start) as dag:
    anthropic_batch_job(
        "job", requests=args["requests"], output_path=args["output"], max_retry_rounds=1,
        poll_interval=0.5, results_format=["jsonl", "parquet"], publish_path=args["publish"],
        max_queued_requests=20, max_failure_rate=1.0,  # a quarter fails at first: some may stay failed
        submit_kwargs={"count_tokens_sample": 0, "max_requests_per_batch": 10},
    )
print("run", run_dag(dag).state, flush=True)
with DAG("observed_refused", schedule=None, start_date=start) as refused:
    anthropic_batch_job("job", requests=args["requests"], output_path=args["output"], max_cost_usd=0.000001,
                        submit_kwargs={"count_tokens_sample": 0})
print("refused", run_dag(refused).state, flush=True)
"""


@dataclass
class ObservedJob:
    job: Path
    events: list[dict[str, Any]]
    datagrams: list[str]
    manifest: dict[str, Any]
    rounds: list[dict[str, Any]]
    publish: Path
    requests: Path


class StatsdListener:
    """A StatsD server for one test: every datagram received on 127.0.0.1 (UDP), line by line."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                continue
            self.lines.extend(line for line in data.decode().splitlines() if line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.socket.close()


def _write_requests(path: Path, n: int) -> Path:
    with path.open("w") as out:
        for i in range(n):
            params = {
                "model": MODEL,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Item {i}."}],
            }
            out.write(json.dumps({"custom_id": f"r{i:03d}", "params": params}) + "\n")
    return path


@pytest.fixture(scope="module")
def observed(airflow_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedJob]:
    tmp = tmp_path_factory.mktemp("observed")
    events_file = tmp / "openlineage.jsonl"
    requests = _write_requests(tmp / "requests.jsonl", 40)
    output, publish = tmp / "out", tmp / "published"
    statsd = StatsdListener()
    with EmulatorProcess(tmp_path_factory.mktemp("emulator"), config=FAST_CONFIG) as emulator:
        emulator.configure(error_types={"overloaded_error": 0.25}, seed=5)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), *sys.path]),
            "AIRFLOW_CONN_ANTHROPIC_DEFAULT": json.dumps(
                {"conn_type": "anthropic", "password": "sk-ant-observe", "host": emulator.base_url}
            ),
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "observe-test",
            # The facets read the task's XCom: in a forked emitter that hangs (the provider's docs).
            "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
        }
        args = {"requests": str(requests), "output": str(output), "publish": str(publish)}
        child = subprocess.run(
            [sys.executable, "-c", _JOBS, json.dumps(args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
            check=False,
        )
    statsd.close()
    log = child.stdout + child.stderr
    assert "run success" in child.stdout, log[-5000:]
    assert "refused failed" in child.stdout, log[-5000:]
    job = next(output.glob("observed_job/*/job.submit"))
    manifest = json.loads((job / "manifest.json").read_text())
    rounds = [json.loads((job / f"round-{n}" / "manifest.json").read_text()) for n in range(2)]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    yield ObservedJob(job, events, statsd.lines, manifest, rounds, publish, requests)


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file:"))


def _completed(observed: ObservedJob, task_id: str, dag_id: str = "observed_job") -> dict[str, Any]:
    [event] = [
        e
        for e in observed.events
        if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{dag_id}.{task_id}"
    ]
    return event


def _outputs(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in event["outputs"]}


def test_lineage_events_name_the_files_of_every_stage(observed: ObservedJob) -> None:
    job, rounds = observed.job, observed.rounds
    assert rounds[0]["result_counts"].get("errored") and rounds[1]["round"] == 1  # a real retry round

    submit = _completed(observed, "job.submit")
    assert [(i["namespace"], i["name"]) for i in submit["inputs"]] == [("file", str(observed.requests))]
    [chunks] = submit["outputs"]
    assert (chunks["namespace"], chunks["name"]) == ("file", str(job / "round-0" / "chunks"))
    assert chunks["outputFacets"]["outputStatistics"]["rowCount"] == rounds[0]["requests"] == 40
    assert chunks["outputFacets"]["outputStatistics"]["fileCount"] == len(rounds[0]["batches"])
    batch_ids = [b["batch_id"] for b in rounds[0]["batches"]]
    queries = [
        f["externalQueryId"] for k, f in submit["run"]["facets"].items() if k.startswith("externalQuery")
    ]
    assert queries == batch_ids and len(batch_ids) == 4

    wait = _completed(observed, "job.wait")
    assert wait["run"]["facets"]["externalQuery"]["externalQueryId"] == batch_ids[0]

    for task_id, number in (("job.gather", 0), ("job.gather_1", 1)):
        gather = _completed(observed, task_id)
        outputs = _outputs(gather)
        results, failures = job / f"round-{number}" / "results", job / f"round-{number}" / "failures"
        assert set(outputs) == {str(results), str(failures)}
        stats = outputs[str(failures)]["outputFacets"]["outputStatistics"]
        parts = [_local(p) for p in rounds[number]["failures_paths"]]
        assert stats["rowCount"] == sum(len(p.read_text().splitlines()) for p in parts)
        assert stats["size"] == sum(p.stat().st_size for p in parts)
        facet = gather["run"]["facets"][FACET_NAME]
        assert facet["round"] == number and facet["succeeded"] == rounds[number]["result_counts"]["succeeded"]
        assert facet["batchUsd"] == rounds[number]["cost"]["batch_usd"]
        # Per model: the round's requests and outcomes as its manifest counted them (one model here).
        jsonschema.validate(facet, OWN_FIELDS)
        [(model, figures)] = facet["models"].items()
        counts = rounds[number]["result_counts_by_model"][model]
        assert figures["requests"] == rounds[number]["requests_by_model"][MODEL] == rounds[number]["requests"]
        assert figures["succeeded"] == counts["succeeded"] == rounds[number]["result_counts"]["succeeded"]
        assert figures["failedByType"] == {k: n for k, n in counts.items() if k != "succeeded" and n}
        assert figures["failedByType"] == facet["failedByType"]  # every failure counted for its model
        assert figures["failed"] == facet["failed"]

    retry = _completed(observed, "job.retry_1")
    assert [i["name"] for i in retry["inputs"]] == [str(job / "round-0" / "failures")]
    assert (
        _outputs(retry)[str(job / "round-1" / "chunks")]["outputFacets"]["outputStatistics"]["rowCount"]
        == (rounds[0]["retryable"])
    )


def test_finalize_lineage_carries_the_manifests_figures_and_the_parquet_schema(observed: ObservedJob) -> None:
    job, manifest = observed.job, observed.manifest
    finalize = _completed(observed, "job.finalize")

    assert {i["name"] for i in finalize["inputs"]} == {
        str(job / f"round-{n}" / kind) for n in range(2) for kind in ("results", "failures")
    }
    outputs = _outputs(finalize)
    finals = ["results.jsonl", "failures.jsonl", "results.parquet", "failures.parquet"]
    published = layout.published_version_dir(as_path(str(observed.publish)), manifest["published_version"])
    assert set(outputs) == {str(job / f) for f in finals} | {
        str(published.path).rstrip("/") + "/" + f for f in finals
    }
    assert all(Path(name).exists() for name in outputs)
    results = outputs[str(job / "results.jsonl")]["outputFacets"]["outputStatistics"]
    assert (results["rowCount"], results["size"]) == (
        manifest["succeeded"],
        (job / "results.jsonl").stat().st_size,
    )
    schema = outputs[str(job / "results.parquet")]["facets"]["schema"]["fields"]
    assert [f["name"] for f in schema] == pq.read_schema(job / "results.parquet").names

    facet = finalize["run"]["facets"][FACET_NAME]
    assert facet["_schemaURL"] == FACET_SCHEMA_URL
    jsonschema.validate(facet, OWN_FIELDS)
    assert (facet["requests"], facet["succeeded"], facet["failed"]) == (
        manifest["requests"],
        manifest["succeeded"],
        manifest["failed"],
    )
    assert facet["failedByType"] == manifest["failures_by_type"]
    assert (facet["batchUsd"], facet["standardUsd"]) == (
        manifest["cost"]["batch_usd"],
        manifest["cost"]["standard_usd"],
    )
    assert facet["tokens"] == token_kinds(manifest["usage"])
    [(model, figures)] = facet["models"].items()
    assert model.startswith(MODEL)
    assert figures["tokens"] == token_kinds(manifest["usage"])
    # Per model over the job: each failure counted once, where it ended (retried ones in round 1).
    assert (figures["requests"], figures["succeeded"], figures["failed"]) == (
        manifest["requests"],
        manifest["succeeded"],
        manifest["failed"],
    )
    assert figures["failedByType"] == manifest["failures_by_type"]
    assert figures["batchUsd"] == pytest.approx(manifest["cost"]["batch_usd"], abs=1e-6)
    assert figures["standardUsd"] == pytest.approx(manifest["cost"]["standard_usd"], abs=1e-6)
    every_batch = [b for r in manifest["rounds"] for b in r["batches"]]
    assert facet["batchIds"] == every_batch


def test_a_refused_submit_fails_with_its_reason_as_the_error_message(observed: ObservedJob) -> None:
    [failed] = [
        e
        for e in observed.events
        if e["eventType"] == "FAIL" and e["job"]["name"] == "observed_refused.job.submit"
    ]
    message = failed["run"]["facets"]["errorMessage"]["message"]
    assert "max_cost_usd" in message, message


def _metrics(observed: ObservedJob) -> dict[str, list[tuple[float, str, dict[str, str]]]]:
    """Return the job's datagrams by metric name (without the prefixes): (value, type, tags)."""
    found: dict[str, list[tuple[float, str, dict[str, str]]]] = defaultdict(list)
    for line in observed.datagrams:
        head, _, rest = line.partition(":")
        name, *tag_parts = head.split(",")
        if not name.startswith(f"airflow.{PREFIX}."):
            continue
        value, kind = rest.split("|")[:2]
        tags = dict(part.split("=", 1) for part in tag_parts)
        found[name.removeprefix(f"airflow.{PREFIX}.")].append((float(value), kind, tags))
    return found


def _total(
    points: list[tuple[float, str, dict[str, str]]], dag_id: str = "observed_job", **tags: str
) -> float:
    return sum(
        v for v, _, t in points if t.get("dag_id") == dag_id and all(t.get(k) == w for k, w in tags.items())
    )


def test_statsd_receives_the_jobs_counters_gauge_and_timers(observed: ObservedJob) -> None:
    metrics, manifest, rounds = _metrics(observed), observed.manifest, observed.rounds

    assert set(metrics) <= set(METRICS), set(metrics) - set(METRICS)
    assert _total(metrics["requests.submitted"]) == sum(r["requests"] for r in rounds)
    assert _total(metrics["requests.submitted"], task_id="job.retry_1") == rounds[1]["requests"]
    assert _total(metrics["requests.succeeded"]) == manifest["succeeded"]
    failed = sum(n for r in rounds for t, n in r["result_counts"].items() if t != "succeeded")
    assert _total(metrics["requests.failed"], failure_type="errored") == failed
    assert _total(metrics["batches.created"]) == sum(len(r["batches"]) for r in rounds)
    [model_key] = manifest["usage_by_model"]
    for kind, tokens in token_kinds(manifest["usage"]).items():
        if tokens:
            assert _total(metrics[f"tokens.{kind}"], model=model_key) == tokens, kind
    assert _total(metrics["cost.micro_usd"]) == pytest.approx(manifest["cost"]["batch_usd"] * 1e6, abs=2)
    assert _total(metrics["cost.standard_micro_usd"]) == pytest.approx(
        manifest["cost"]["standard_usd"] * 1e6, abs=2
    )

    # The queue trigger's polls: within the job's share of the queue. dag.test() runs the trigger
    # inline, without the task instance a triggerer gives it, so here the gauge has no tags.
    gauges = [v for v, kind, _ in metrics.pop("queue.queued_requests") if kind == "g"]
    assert gauges and all(0 <= v <= 20 for v in gauges), gauges
    for stage in ("submit", "wait", "gather", "retry", "finalize"):
        timings = [(v, t) for v, kind, t in metrics[f"{stage}.duration"] if kind == "ms"]
        assert timings and all(v >= 0 for v, _ in timings), stage
    for name, points in metrics.items():
        assert all({"dag_id", "task_id"} <= set(t) for _, _, t in points), name
