"""Benchmark: what the 1-hour cache TTL saves on ``document_summaries`` against the 5-minute TTL.

Runs the example DAG ``document_summaries`` (30 documents sharing the ~5,100-token house style
guide as a cached system prompt, Claude Haiku 4.5) twice with ``airflow dags test``, each
against a fresh emulator: once with ``[airflow_batch] cache_ttl = 5m``, once with ``1h`` (the
default). Each batch is created at a slow pace, ``--seconds-apart`` (default 400) between
requests on the emulator's simulated processing clock, as a busy batch may process requests
sharing a prompt minutes apart; once the job's wait has polled the batch, the emulator is sped
up, so the run ends in seconds while the cache decisions reflect the slow schedule (see
``airflow_batch/emulator/prompt_cache.py``). With the 5-minute TTL every request finds the
entry expired and writes it again; with the 1-hour TTL the first request writes it and every
later one reads it.

The figures are the job manifests' (``manifest.json`` of each run): cache writes, cache reads
and cost at batch prices, and the saving.

Run: ``.venv/bin/python bench/bench_cache_ttl.py`` (``--workdir`` keeps the runs' files).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from airflow_batch.dev.deployment import AIRFLOW_EXECUTABLE, airflow_environment, example_dags_environment
from airflow_batch.emulator.process import EmulatorProcess

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "document_summaries"
SUBMIT_TASK = "summaries.submit"
TTLS = ("5m", "1h")


def release_after_first_poll(
    emulator: EmulatorProcess, output: Path, deadline: float = 300
) -> threading.Thread:
    """Speed the emulator up once the job's round-0 wait has polled its batch (written progress.json)."""
    pattern = f"{DAG_ID}/*/{SUBMIT_TASK}/round-0/progress.json"

    def release() -> None:
        stop = time.monotonic() + deadline
        while not any(output.glob(pattern)):
            if time.monotonic() > stop:
                return  # the run fails on its own timeout; nothing to release
            time.sleep(0.1)
        emulator.configure(throughput=1_000_000_000)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def run_job(workdir: Path, ttl: str, seconds_apart: float) -> dict[str, Any]:
    """Run ``document_summaries`` with ``cache_ttl`` on a fresh emulator; return its job manifest."""
    output = workdir / f"output-{ttl}"
    config = {"throughput": 1 / seconds_apart, "start_delay_seconds": 0}
    with EmulatorProcess(workdir / f"emulator-{ttl}", config=config) as emulator:
        env = airflow_environment(workdir / "airflow-home", REPO / "dags")
        env.update(example_dags_environment(output, anthropic_url=emulator.base_url, poll_interval=0.5))
        env["AIRFLOW__AIRFLOW_BATCH__CACHE_TTL"] = ttl
        release = release_after_first_poll(emulator, output)
        log = workdir / f"dags-test-{ttl}.log"
        with log.open("wb") as out:
            code = subprocess.call(
                [AIRFLOW_EXECUTABLE, "dags", "test", DAG_ID], env=env, stdout=out, stderr=out
            )
        release.join(timeout=5)
        if code != 0:
            raise SystemExit(f"airflow dags test {DAG_ID} (cache_ttl={ttl}) failed; log: {log}")
    (manifest,) = output.glob(f"{DAG_ID}/*/{SUBMIT_TASK}/manifest.json")
    result: dict[str, Any] = json.loads(manifest.read_text())
    return result


def table(manifests: dict[str, dict[str, Any]]) -> list[str]:
    """Return the Markdown table of the two runs and the saving."""
    rows = [
        "| cache TTL | cache writes (tokens) | cache reads (tokens) | cost at batch prices |",
        "| --- | ---: | ---: | ---: |",
    ]
    for ttl in TTLS:
        usage, cost = manifests[ttl]["usage"], manifests[ttl]["cost"]
        rows.append(
            f"| {ttl} | {usage['cache_creation_input_tokens']:,} | {usage['cache_read_input_tokens']:,} "
            f"| ${cost['batch_usd']:.4f} |"
        )
    short, long = manifests["5m"]["cost"]["batch_usd"], manifests["1h"]["cost"]["batch_usd"]
    rows.append(f"| saving of 1h | | | ${short - long:.4f} ({(short - long) / short:.0%}) |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds-apart", type=float, default=400.0, help="simulated seconds between requests"
    )
    parser.add_argument("--workdir", help="keep the runs' files here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cache-ttl-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        env = airflow_environment(workdir / "airflow-home", REPO / "dags")
        subprocess.run([AIRFLOW_EXECUTABLE, "db", "migrate"], env=env, check=True, capture_output=True)
        manifests = {ttl: run_job(workdir, ttl, args.seconds_apart) for ttl in TTLS}
        requests = {ttl: manifest["requests"] for ttl, manifest in manifests.items()}
        print(
            f"{DAG_ID}: {requests['1h']} requests, {args.seconds_apart:g} simulated seconds apart, "
            "one emulator run per TTL"
        )
        print("\n".join(table(manifests)))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
