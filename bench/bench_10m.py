"""Benchmark: ten million requests through the whole ``anthropic_batch_job`` on a real Airflow.

What it runs (all on 127.0.0.1, stopped at the end):

- the emulator with the organisation's processing queue limited (``--queue-limit``, 500,000),
  each batch processed at ``--batch-rate`` requests/s (2,000: five full batches in the queue
  make 10,000 requests/s in all, slower than our own work, as a real queue is) and 1 %
  ``overloaded_error``;
- an Airflow deployment (LocalExecutor, scheduler, dag-processor, triggerer, api-server:
  the one ``airflow-batch dev`` and the end-to-end tests use) running one DAG: a job of
  ``--requests`` small requests from a JSONL file, batches of 100,000, one retry round;
- beside it, in the same run, the batch guide's sharded loop (``submit_batch_jobs`` +
  ``wait_for_all_batches``) on ``--guide-requests`` requests against the same queue limit.

What it measures:

- every ``custom_id`` exactly once in ``results.jsonl`` or ``failures.jsonl`` (rows 1..N in
  order, so no duplicate and no gap);
- each task process's peak RSS (sampled from ``/proc`` every 0.25 s: every process the
  executor starts for a task; the target is <= 400 MB for each);
- the worker-seconds the job held (the summed lifetimes of those task processes: a deferred
  task holds none) against the run's wall time (target: < 25 %);
- the wall time of each stage, and our overhead per million requests (wall time minus the time
  the emulated API needed to process every request at its rate).

Run: ``.venv/bin/python bench/bench_10m.py`` (about half an hour on 2 cores; ``--requests
1000000`` for a quicker run). Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "guide"))

DAG_ID = "bench_10m"
TASK_TITLE = "airflow worker -- "
EXECUTOR = "LocalExecutor:"
DAG_FILE = """
import pendulum
from datetime import timedelta
from airflow.sdk import DAG
from airflow_batch import anthropic_batch_job

with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False,
         default_args={{"retries": 1, "retry_delay": timedelta(seconds=5)}}):
    anthropic_batch_job(
        "job",
        requests={requests!r},
        output_path={output!r},
        max_retry_rounds=1,
        max_failure_rate=0.05,
        timeout=6 * 3600,
        {share}{land}
        submit_kwargs={{"max_requests_per_batch": 100_000, "count_tokens_sample": 0}},
    )
"""


def write_requests(path: Path, count: int) -> None:
    """Write ``count`` small requests as JSONL (a few seconds per million)."""
    encode = msgspec.json.Encoder().encode
    with path.open("wb", buffering=1 << 22) as out:
        for start in range(0, count, 100_000):
            lines = [
                encode(
                    {
                        "custom_id": f"r{i:09d}",
                        "params": {
                            "model": "claude-haiku-4-5",
                            "max_tokens": 32,
                            "messages": [{"role": "user", "content": f"Label item {i}."}],
                        },
                    }
                )
                for i in range(start, min(start + 100_000, count))
            ]
            out.write(b"\n".join(lines) + b"\n")


@dataclass
class Seen:
    """One process of the executor, as the sampler saw it."""

    pid: int
    ppid: int
    started: float
    last_seen: float
    peak_rss: int = 0
    children: set[int] = field(default_factory=set)
    title: str = ""


class TaskProcessSampler:
    """Samples every descendant of the scheduler: lifetimes and peak RSS, four times a second."""

    def __init__(self, root_pid: int) -> None:
        self.root = root_pid
        self.seen: dict[int, Seen] = {}
        self.before: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TaskProcessSampler:
        self._sample()  # what runs before the job is not the job's
        self.before = set(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def _sample(self) -> None:
        try:
            descendants = psutil.Process(self.root).children(recursive=True)
        except psutil.Error:
            return
        now = time.time()
        for proc in descendants:
            try:
                rss, ppid, created = proc.memory_info().rss, proc.ppid(), proc.create_time()
            except psutil.Error:
                continue
            entry = self.seen.get(proc.pid)
            if entry is None:
                entry = self.seen[proc.pid] = Seen(proc.pid, ppid, created, now)
            if not entry.title.startswith(TASK_TITLE) or EXECUTOR in entry.title:  # retitled once started
                with contextlib.suppress(psutil.Error):
                    entry.title = " ".join(proc.cmdline())[:160]
            entry.last_seen = now
            entry.peak_rss = max(entry.peak_rss, rss)
            if ppid in self.seen:
                self.seen[ppid].children.add(proc.pid)

    def task_processes(self) -> list[Seen]:
        """Return the processes that ran a task during the job: the children of executor workers.

        An executor worker (titled ``airflow worker -- LocalExecutor: <idle>`` or ``... <ti id>``)
        lives for the whole run, so it is not counted; the child it forks for each task instance
        lives as long as the task runs and is titled ``airflow worker -- <ti id>``.
        """
        workers = {p.pid for p in self.seen.values() if EXECUTOR in p.title}
        return [p for p in self.seen.values() if p.pid not in self.before and p.ppid in workers]


def check_rows(path: Path, kind: str) -> list[int]:
    """Return the input rows of a merged file, read streaming."""
    rows: list[int] = []
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    with path.open("rb") as handle:
        for line in handle:
            rows.append(int(decode(line)["row"]))
    return rows


def run_job(args: argparse.Namespace, work: Path, base_url: str) -> dict[str, Any]:
    from airflow_cluster import AirflowCluster

    requests = work / "requests.jsonl"
    started = time.monotonic()
    write_requests(requests, args.requests)
    print(f"input: {args.requests:,} requests, {requests.stat().st_size / 1e9:.2f} GB, "
          f"written in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    dags = work / "dags"
    dags.mkdir()
    share = f"max_queued_requests={args.share}," if args.share else ""
    land = "" if args.land_interval is None else f"land_interval={args.land_interval or None},"
    (dags / f"{DAG_ID}.py").write_text(
        DAG_FILE.format(
            dag_id=DAG_ID, requests=str(requests), output=str(work / "out"), share=share, land=land
        )
    )
    env = {
        "AIRFLOW_CONN_ANTHROPIC_DEFAULT": json.dumps(
            {"conn_type": "anthropic", "password": "bench-key", "host": base_url}
        ),
        "AIRFLOW__AIRFLOW_BATCH__POLL_INTERVAL": str(args.poll_interval),
        "AIRFLOW__CORE__PARALLELISM": "4",
    }
    cluster = AirflowCluster(work / "airflow", dags_folder=dags, extra_env=env)
    try:
        cluster.start(timeout=300)
        cluster.wait_for_dag(DAG_ID, timeout=300)
        cluster.api_json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        with TaskProcessSampler(cluster.processes["scheduler"].pid) as sampler:
            t0 = time.monotonic()
            run = cluster.api_json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
            run_id = run["dag_run_id"]
            cluster.wait_for_run(DAG_ID, run_id, timeout=6 * 3600)
            wall = time.monotonic() - t0
        tis = cluster.api_json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[
            "task_instances"
        ]
        tasks = sampler.task_processes()
        (work / "processes.json").write_text(
            json.dumps([vars(p) | {"children": sorted(p.children)} for p in sampler.seen.values()], indent=1)
        )
    finally:
        cluster.stop()
    job = next((work / "out" / DAG_ID).glob("*/job.submit"))
    manifest = json.loads((job / "manifest.json").read_text())
    landing = landing_times(job, manifest, base_url)
    rows = sorted(
        check_rows(job / "results.jsonl", "results") + check_rows(job / "failures.jsonl", "failures")
    )
    every_once = rows == list(range(1, args.requests + 1))
    stages = {ti["task_id"]: (ti["start_date"], ti["end_date"], ti["try_number"], ti["state"]) for ti in tis}
    task_of = {ti["id"]: ti["task_id"] for ti in tis}
    held: dict[str, float] = {}
    for process in tasks:  # titled with its task instance id
        task_id = task_of.get(process.title.split()[-1] if process.title else "", "?")
        held[task_id] = held.get(task_id, 0.0) + process.last_seen - process.started
    return {
        "held_by_task": held,
        "wall": wall,
        "every_once": every_once,
        "manifest": manifest,
        "task_processes": len(tasks),
        "worker_seconds": sum(p.last_seen - p.started for p in tasks),
        "peak_task_rss_mb": max((p.peak_rss for p in tasks), default=0) / 2**20,
        "stages": stages,
        "landing": landing,
    }


def landing_times(job: Path, manifest: dict[str, Any], base_url: str) -> dict[str, float]:
    """Return, in seconds: the first batch's end to its rows readable (its sidecar written), and the
    last batch's end (of any round) to the job manifest; the API's ``ended_at`` against file times."""
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key="bench-key")
    ends: list[tuple[float, Path]] = []
    for summary in manifest["rounds"]:
        for batch_id in summary["batches"]:
            ended = client.messages.batches.retrieve(batch_id).ended_at
            assert ended is not None
            sidecar = job / f"round-{summary['round']}" / "results" / f"{batch_id}.stats.json"
            ends.append((ended.timestamp(), sidecar))
    first_end, first_sidecar = min(ends, key=lambda item: item[0])
    last_end = max(end for end, _ in ends)
    return {
        "first_readable": first_sidecar.stat().st_mtime - first_end,
        "tail": (job / "manifest.json").stat().st_mtime - last_end,
        "batches": float(len(ends)),
    }


def guide_child(base_url: str, count: int) -> None:
    """The batch guide's sharded submit loop and wait, on ``count`` requests (run as a child)."""
    import anthropic
    import batch_guide

    batch_guide.POLL_SECONDS = 0  # its pause between creates, in seconds
    client = anthropic.Anthropic(base_url=base_url, api_key="bench-key")
    requests = [
        {
            "custom_id": f"g{i:09d}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": f"Label item {i}."}],
            },
        }
        for i in range(count)
    ]
    started = time.monotonic()
    outcome = "finished"
    try:
        ids = batch_guide.submit_batch_jobs(client, requests, chunk_size=100_000)
        batch_guide.wait_for_all_batches(client, ids, poll_interval=2)
    except Exception as exc:  # what the guide's loop does against a full queue
        outcome = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.monotonic() - started, "outcome": outcome, "peak_rss_mb": peak}))


def run_guide(base_url: str, count: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--guide-child", base_url, str(count)],
        capture_output=True,
        text=True,
        check=False,
        timeout=3 * 3600,
    )
    if proc.returncode != 0:
        return {"seconds": 0.0, "outcome": f"crashed: {proc.stderr[-500:]}", "peak_rss_mb": 0.0}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--guide-requests", type=int, default=1_000_000)
    parser.add_argument("--queue-limit", type=int, default=500_000)
    parser.add_argument(
        "--batch-rate", type=float, default=2_000.0, help="requests/s each batch is processed at"
    )
    parser.add_argument("--error-rate", type=float, default=0.01)
    parser.add_argument("--share", type=int, default=0, help="max_queued_requests (0: learn from 429s)")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument(
        "--land-interval",
        type=float,
        default=None,
        help="the job's land_interval (0: off; default: anthropic_batch_job's default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, job files)")
    parser.add_argument("--guide-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guide_child:
        guide_child(args.guide_child[0], int(args.guide_child[1]))
        return

    from airflow_batch.emulator.process import EmulatorProcess

    work = Path(tempfile.mkdtemp(prefix="bench-10m-", dir=os.environ.get("BENCH_DIR")))
    config = {
        "queue_limit": args.queue_limit,
        "throughput": args.batch_rate,
        "error_types": {"overloaded_error": args.error_rate},
        "seed": 10,
    }
    print(f"load average {os.getloadavg()[0]:.1f}; work dir {work}", flush=True)
    try:
        with EmulatorProcess(work / "emulator", config=config) as emulator:
            ours = run_job(args, work, emulator.base_url)
            stats = emulator.stats()
        report(args, ours, stats)
        # The guide's loop against a fresh emulator with the same queue (the first holds 10 M results).
        with EmulatorProcess(work / "emulator-guide", config=config) as emulator:
            guide = run_guide(emulator.base_url, args.guide_requests)
            guide_refused = emulator.stats()["creates_refused"]
        print(f"batch guide loop        {args.guide_requests:,} requests: {guide['outcome']} after "
              f"{guide['seconds']:.0f} s, peak RSS {guide['peak_rss_mb']:.0f} MB, "
              f"{guide_refused} create(s) answered 429", flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, ours: dict[str, Any], stats: dict[str, int]) -> None:
    """Print the job's figures."""
    manifest = ours["manifest"]
    api_seconds = args.requests / (args.batch_rate * (args.queue_limit // 100_000))
    overhead = max(0.0, ours["wall"] - api_seconds)
    print()
    print(f"requests                {args.requests:,} (queue limit {args.queue_limit:,}, "
          f"{args.batch_rate:,.0f} requests/s per batch, {args.error_rate:.0%} overloaded)")  # fmt: skip
    print(f"every custom_id once    {ours['every_once']} ({manifest['succeeded']:,} succeeded, "
          f"{manifest['failed']:,} failed, {len(manifest['rounds'])} rounds)")  # fmt: skip
    print(f"peak queued (emulator)  {stats['peak_requests_queued']:,}; creates answered 429: "
          f"{stats['creates_refused']}")  # fmt: skip
    print(f"wall time               {ours['wall']:.0f} s (the emulated API alone needs {api_seconds:.0f} s)")
    print(f"overhead                {overhead / (args.requests / 1e6):.1f} s per million requests")
    ratio = ours["worker_seconds"] / ours["wall"]
    print(f"worker-seconds held     {ours['worker_seconds']:.0f} s = {ratio:.1%} of the wall time "
          f"(target < 25%; {ours['task_processes']} task processes)")  # fmt: skip
    print(f"peak task RSS           {ours['peak_task_rss_mb']:.0f} MB (target <= 400 MB)")
    landing = ours["landing"]
    print(f"first batch end -> rows {landing['first_readable']:.1f} s (its rows readable: sidecar written)")
    print(f"last batch end -> manifest {landing['tail']:.1f} s (the tail; {landing['batches']:.0f} batches)")
    print("stages (start, end, try, state, worker-seconds held):")
    for task_id, stage in sorted(ours["stages"].items(), key=lambda item: item[1][0] or ""):
        held = ours["held_by_task"].get(task_id, 0.0)
        print(f"  {task_id:<16} {stage[0]}  {stage[1]}  try {stage[2]}  {stage[3]}  {held:.0f} s", flush=True)


if __name__ == "__main__":
    main()
