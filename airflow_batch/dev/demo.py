"""``make demo``: the review-sentiment DAG end to end against the local emulator.

On a fresh machine this starts the emulator (with a few percent of injected
``overloaded_error`` results and of answers that break the output schema, so a retry round is
visible), makes an isolated
``AIRFLOW_HOME`` under ``.demo/``, migrates its database, points ``anthropic_default`` at
the emulator, runs the ``review_sentiment`` DAG with ``airflow dags test`` (the deferred
wait runs its trigger inline), prints a summary from the job's ``manifest.json`` and stops
the emulator. Nothing keeps running afterwards.

Airflow reads its configuration once, at import, so the Airflow work happens in child
processes started with the demo's environment; this process never imports Airflow.

The same DAG runs against the real API when ``anthropic_default`` holds a real key::

    export AIRFLOW_CONN_ANTHROPIC_DEFAULT='{"conn_type": "anthropic", "password": "sk-ant-..."}'
    airflow dags test review_sentiment
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_batch.dev.deployment import (
    AIRFLOW_EXECUTABLE,
    airflow_environment,
    example_dags_environment,
    example_dags_folder,
)

DAG_ID = "review_sentiment"
AIRFLOW = AIRFLOW_EXECUTABLE


def demo_environment(workdir: Path, emulator_url: str) -> dict[str, str]:
    """Return the environment of the demo's Airflow: its own home, DB, DAGs and connection."""
    env = airflow_environment(workdir / "airflow-home", example_dags_folder())
    env.update(example_dags_environment(workdir / "output", anthropic_url=emulator_url, poll_interval=2))
    return env


def newest_job_manifest(output: Path, dag_id: str) -> Path | None:
    """Return the most recent finalized job manifest of ``dag_id`` under ``output``."""
    manifests = [
        p
        for p in (output / dag_id).glob("*/*/manifest.json")
        if p.parent.name != "round" and not p.parent.name.startswith("round-")
    ]
    manifests += list((output / dag_id).glob("*/*/map-*/manifest.json"))
    return max(manifests, key=lambda p: p.stat().st_mtime, default=None)


def summary_lines(manifest: Mapping[str, Any], seconds: float) -> list[str]:
    """Return the demo's summary of a finalized job manifest."""
    usage = manifest.get("usage", {})
    cost = manifest.get("cost", {})
    rounds = manifest.get("rounds", [])
    retry_rounds = [r for r in rounds if r.get("round", 0) > 0 and r.get("batches")]
    failures = manifest.get("failures_by_error_type") or manifest.get("failures_by_type") or {}
    first_round_errors = dict(rounds[0].get("error_types", {})) if rounds else {}
    for kind, count in (rounds[0].get("result_counts", {}) if rounds else {}).items():
        if count and kind not in ("succeeded", "errored"):
            first_round_errors[kind] = count
    lines = [
        f"requests          {manifest.get('requests', 0):,}",
        f"succeeded         {manifest.get('succeeded', 0):,}",
        f"failed            {manifest.get('failed', 0):,}"
        + (f"  ({', '.join(f'{n} {t}' for t, n in sorted(failures.items()))})" if failures else ""),
        f"retry rounds      {len(retry_rounds)}"
        + (
            f"  (round 0 had {', '.join(f'{n} {t}' for t, n in sorted(first_round_errors.items()))})"
            if first_round_errors
            else ""
        ),
        f"batches           {sum(len(r.get('batches', [])) for r in rounds)}",
        "tokens            "
        f"{usage.get('input_tokens', 0):,} input, {usage.get('output_tokens', 0):,} output, "
        f"{usage.get('cache_read_input_tokens', 0):,} cache read, "
        f"{usage.get('cache_creation_input_tokens', 0):,} cache write",
        f"cost              ${cost.get('batch_usd', 0.0):.4f} at batch prices "
        f"(${cost.get('standard_usd', 0.0):.4f} on the standard API)",
        f"results           {manifest.get('results_path')}"
        + (" (and results.parquet)" if manifest.get("results_parquet_path") else ""),
        f"failures          {manifest.get('failures_path')}",
        f"wall time         {seconds:.0f} s",
    ]
    return lines


TABLE_COLUMNS = ("custom_id", "product", "sentiment", "stars", "keywords")


def table_lines(manifest: Mapping[str, Any], rows: int = 5) -> list[str]:
    """Return the first rows of the job's ``results.parquet`` as an aligned text table."""
    uri = manifest.get("results_parquet_path")
    if not uri:
        return []
    import pyarrow.parquet as pq

    table = pq.read_table(str(uri).removeprefix("file://"))
    columns = [name for name in TABLE_COLUMNS if name in table.column_names]
    head = table.select(columns).slice(0, rows).to_pylist()
    cells = [[_cell(row[name]) for name in columns] for row in head]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells
    ]
    lines.append(f"({table.num_rows:,} rows, {len(table.column_names)} typed columns: {uri})")
    return lines


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TASK_DONE = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_PROGRESS = re.compile(r"\d+/\d+ batches ended, .*?\)")


def highlight(line: str) -> str | None:
    """Return what the demo echoes of one Airflow log line: finished tasks and wait progress."""
    if match := _TASK_DONE.search(line):
        return f"  task {match.group(1)} finished"
    if match := _PROGRESS.search(line):
        return f"    wait: {match.group(0)}"
    return None


def _run(command: list[str], env: Mapping[str, str], log: Path, what: str, echo: bool = False) -> None:
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        last = None
        for raw in process.stdout:
            out.write(raw)
            shown = highlight(raw.decode(errors="replace")) if echo else None
            if shown and shown != last:  # the resumed wait repeats the trigger's last line
                print(shown, flush=True)
                last = shown
        returncode = process.wait()
    if returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{what} failed (exit {returncode}); log: {log}\n{tail}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_batch.dev.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", default=".demo", help="where the demo keeps its state (default ./.demo)")
    parser.add_argument("--error-rate", type=float, default=0.05, help="share of requests that error")
    parser.add_argument(
        "--invalid-output-rate", type=float, default=0.03, help="share of answers that break the schema"
    )
    parser.add_argument("--throughput", type=float, default=40.0, help="emulated requests per second")
    args = parser.parse_args(argv)

    from airflow_batch.emulator.process import EmulatorProcess

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "emulator", ignore_errors=True)
    log = workdir / "demo.log"
    log.write_text("")
    started = time.monotonic()
    config = {
        "error_types": {"overloaded_error": args.error_rate},
        "invalid_output_rate": args.invalid_output_rate,
        "seed": 7,
        "throughput": args.throughput,
    }
    with EmulatorProcess(workdir / "emulator", config=config) as emulator:
        print(
            f"emulator          {emulator.base_url} ({args.error_rate:.0%} overloaded_error and "
            f"{args.invalid_output_rate:.0%} answers off the schema injected)"
        )
        env = demo_environment(workdir, emulator.base_url)
        print(f"AIRFLOW_HOME      {env['AIRFLOW_HOME']}")
        print("migrating the Airflow database ...", flush=True)
        _run([AIRFLOW, "db", "migrate"], env, log, "airflow db migrate")
        print(f"running {DAG_ID} (airflow dags test; log: {log}) ...", flush=True)
        _run([AIRFLOW, "dags", "test", DAG_ID], env, log, f"airflow dags test {DAG_ID}", echo=True)
        batches = emulator.batch_count()
    manifest_path = newest_job_manifest(workdir / "output", DAG_ID)
    if manifest_path is None:
        print(f"the run finished but wrote no job manifest under {workdir / 'output'}", file=sys.stderr)
        return 1
    manifest = json.loads(manifest_path.read_text())
    print()
    print(f"{DAG_ID}: done ({batches} batches created on the emulator)")
    for line in summary_lines(manifest, time.monotonic() - started):
        print("  " + line)
    print(f"  manifest          {manifest_path}")
    table = table_lines(manifest)
    if table:
        print()
        print("first rows of results.parquet:")
        for line in table:
            print("  " + line)
    print()
    print("next: make up (or .venv/bin/airflow-batch dev) runs these DAGs in a local Airflow with its UI")
    print("      and the Batch jobs page, against the emulator, until Ctrl-C (docs/dev.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
