"""Benchmark: results as they land, on a round whose batches end spread over the run (issue 25).

Run: ``.venv/bin/python bench/bench_landing.py [--batches 100] [--per-batch 20] [--stagger 2]``

An emulator starts each batch of the round ``--stagger`` seconds after the one before
(``start_stagger_seconds``), so 100 batches end over ~3 minutes. The same job runs twice through
``dag.test()``: without landing (``land_interval=None``: the round lands after its last batch
ended), and with ``anthropic_batch_job``'s default ``land_interval`` (the wait hands ended
batches to the worker as they end, a tenth of the round at a time or every 5 minutes). For each:

- wall time of the run, and the time the worker held: every operator's ``execute`` and the
  sensor's ``execute_complete`` timed in this process (``dag.test()`` runs tasks and triggers
  in-process, so a real worker's task start, seconds per resume, is not in it: the resumes are
  counted so it can be added);
- per batch, from its ``ended_at`` (the API's) to its sidecar (its rows readable): median and max;
- the tail: from the last batch's end to the job manifest;
- rows readable over time from the round's first batch end (each batch's rows from its
  sidecar's time on), drawn with the
  package's chart geometry (:mod:`airflow_batch.plugins.charts`) into ``--svg``
  (``docs/images/landing.svg``).

Small on purpose (2,000 requests): the 10 M benchmark (``bench_10m.py``) takes hours.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_home import REPO, use_temporary_airflow_home

HOME = use_temporary_airflow_home("airflow-batch-landing-")

HELD: dict[str, float] = {}
CALLS: dict[str, int] = {}


def timed(cls: type, name: str) -> None:
    """Wrap ``cls.name`` so that the time spent in it is added to ``HELD``."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = f"{cls.__name__}.{name}"
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            HELD[key] = HELD.get(key, 0.0) + time.perf_counter() - started
            CALLS[key] = CALLS.get(key, 0) + 1

    setattr(cls, name, wrapper)


def main() -> None:
    from airflow_batch.wait.landing import DEFAULT_LAND_INTERVAL

    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--per-batch", type=int, default=20)
    parser.add_argument("--stagger", type=float, default=2.0)
    parser.add_argument("--land-interval", type=float, default=DEFAULT_LAND_INTERVAL)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--svg", type=Path, default=REPO / "docs" / "images" / "landing.svg")
    args = parser.parse_args()

    import anthropic
    import msgspec
    import pendulum
    from airflow.sdk import DAG
    from airflow.utils import db
    from dag_runner import run_dag

    from airflow_batch import anthropic_batch_job, layout
    from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess
    from airflow_batch.operators.finalize import FinalizeBatchJobOperator
    from airflow_batch.operators.gather import GatherResultsOperator
    from airflow_batch.operators.submit import SubmitBatchesOperator
    from airflow_batch.sensors.batches import BatchesSensor
    from airflow_batch.storage import read_json

    for cls, names in (
        (SubmitBatchesOperator, ("execute",)),
        (BatchesSensor, ("execute", "execute_complete")),
        (GatherResultsOperator, ("execute",)),
        (FinalizeBatchJobOperator, ("execute",)),
    ):
        for name in names:
            timed(cls, name)
    db.initdb()
    requests = Path(HOME) / "requests.jsonl"
    with requests.open("wb") as out:
        for i in range(args.batches * args.per_batch):
            params = {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Item {i}"}],
            }
            out.write(msgspec.json.encode({"custom_id": f"r{i:06d}", "params": params}) + b"\n")
    with EmulatorProcess(Path(HOME) / "emulator", config=FAST_CONFIG) as emulator:
        os.environ["AIRFLOW_CONN_ANTHROPIC_DEFAULT"] = msgspec.json.encode(
            {"conn_type": "anthropic", "password": "bench-key", "host": emulator.base_url}
        ).decode()
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key="bench-key")
        readable: dict[str, list[tuple[float, int]]] = {}
        for label, land_interval in (("at the end", None), ("as they land", args.land_interval)):
            emulator.reset()
            emulator.configure(start_stagger_seconds=args.stagger)
            HELD.clear()
            CALLS.clear()
            dag_id = "landing_" + ("off" if land_interval is None else "on")
            output = os.path.join(HOME, "out")
            with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
                anthropic_batch_job(
                    "job", requests=str(requests), output_path=output, conn_id="anthropic_default",
                    max_retry_rounds=0, poll_interval=args.poll_interval, land_interval=land_interval,
                    submit_kwargs={"max_requests_per_batch": args.per_batch, "count_tokens_sample": 0},
                )  # fmt: skip
            started = time.time()
            run = run_dag(dag)
            wall = time.time() - started
            job = layout.job_dir(output, dag.dag_id, run.run_id, "job.submit")
            manifest = read_json(layout.round_manifest_path(job, 0))
            lags = []
            ends = []
            landed = []
            for record in manifest["batches"]:
                ended = client.messages.batches.retrieve(record["batch_id"]).ended_at
                assert ended is not None
                sidecar = Path(
                    str(layout.gather_stats_path(job, 0, record["batch_id"])).removeprefix("file://")
                )
                lags.append(sidecar.stat().st_mtime - ended.timestamp())
                ends.append(ended.timestamp())
                rows = msgspec.json.decode(sidecar.read_bytes())["result_counts"]
                landed.append((sidecar.stat().st_mtime, sum(rows.values())))
            # From the round's first batch end: the runs' submits take different times.
            readable[label] = sorted((at - min(ends), rows) for at, rows in landed)
            final = Path(str(layout.final_manifest_path(job)).removeprefix("file://")).stat().st_mtime
            held = sum(HELD.values())
            resumes = CALLS.get("BatchesSensor.execute_complete", 0)
            print(f"\n== landing {label}: run {run.state}")
            print(f"wall {wall:.1f} s; batches ended over {max(ends) - min(ends):.0f} s")
            print(f"worker held {held:.1f} s = {100 * held / wall:.1f}% of wall ({resumes} sensor resume(s))")
            for key, seconds in sorted(HELD.items()):
                print(f"  {key}: {seconds:.2f} s in {CALLS[key]} call(s)")
            first_readable = min(ends) + lags[ends.index(min(ends))] - started
            print(
                f"batch end -> rows readable: median {statistics.median(lags):.1f} s, max {max(lags):.1f} s; "
                f"first batch's rows readable {first_readable:.1f} s into the run"
            )
            print(f"tail: last batch end -> job manifest {final - max(ends):.1f} s")
            print(f"ended at {datetime.fromtimestamp(max(ends)).isoformat()}")
        write_svg(args.svg, readable, args.batches * args.per_batch, args.batches)
        print(f"\nrows readable over time: {args.svg}")


def rows_at(landed: list[tuple[float, int]], moment: float) -> int:
    """Return the rows readable ``moment`` seconds after the first batch ended: those landed by then."""
    return sum(rows for at, rows in landed if at <= moment)


def write_svg(path: Path, readable: dict[str, list[tuple[float, int]]], requests: int, batches: int) -> None:
    """Draw rows readable over time, per mode, as a grouped bar chart in a standalone SVG file."""
    from airflow_batch.plugins.charts import HEIGHT, LEFT, RIGHT, WIDTH, bar_chart

    span = max(at for landed in readable.values() for at, _ in landed)
    moments = [span * (step + 1) / 12 for step in range(12)]
    groups = [
        (
            f"{moment:.0f}s",
            [(label, float(rows_at(landed, moment)), "") for label, landed in readable.items()],
        )
        for moment in moments
    ]
    chart = bar_chart(
        "landing",
        f"Rows readable, s after the first of {batches} batches ended ({requests:,} requests)",
        groups,
    )
    colours = dict(zip(readable, ("#b0b7c3", "#2e7d32"), strict=False))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{2 * WIDTH}" '
        f'height="{2 * HEIGHT}" font-family="sans-serif" font-size="9">',
        f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" font-size="11">{chart.title}</text>',
    ]
    for tick in chart.y_ticks:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{tick.at:.1f}" y2="{tick.at:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{tick.at + 3:.1f}" text-anchor="end">{tick.text}</text>'
        )
    for mark in chart.marks:
        parts.append(
            f'<rect x="{mark.x:.1f}" y="{mark.y:.1f}" width="{mark.width:.1f}" height="{mark.height:.1f}" '
            f'fill="{colours[mark.kind]}"><title>{mark.title}</title></rect>'
        )
    for tick in chart.x_ticks:
        parts.append(f'<text x="{tick.at:.1f}" y="{HEIGHT - 30}" text-anchor="middle">{tick.text}</text>')
    for index, kind in enumerate(chart.legend):
        x = LEFT + index * 150
        parts.append(
            f'<rect x="{x}" y="{HEIGHT - 16}" width="10" height="10" fill="{colours[kind]}"/>'
            f'<text x="{x + 14}" y="{HEIGHT - 7}">{kind}</text>'
        )
    parts.append("</svg>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
