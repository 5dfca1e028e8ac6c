"""Benchmark: gathering batch results, ours vs the SDK iterator vs a raw byte copy.

Creates ``--batches`` batches holding ``--rows`` requests in total on a local emulator
(through the real submit path), waits until they end, then measures, each in its own
subprocess so memory peaks do not mix:

- ours: :func:`airflow_batch.gather.gathering.gather_batch` for every batch (results and failure
  part files, missing detection, usage sums), at 1 batch and at all batches (peak RSS);
- SDK: ``for r in client.messages.batches.results(id)`` (what the official provider's
  ``stream_batch_results`` and the batch guide do), writing the same rows with ``json``;
  on ``--sdk-batches`` batches only when it is slow, and said so;
- raw: the same streams copied byte for byte to a file (the ceiling of any gather).

Run: ``.venv/bin/python bench/bench_gather.py`` (``--rows 200000`` for a quick run).
Targets: ours >= 10x the SDK's rows/s, >= 30% of the raw copy's, peak RSS <= 300 MB and
flat between one batch and all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _client(base_url: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=base_url, api_key="bench-key", max_retries=5, timeout=600)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- children: one measured path each --------------------------------------------------


def child_ours(
    base_url: str,
    batches: list[dict[str, Any]],
    out_dir: str,
    warmup: dict[str, Any],
    output_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from airflow_batch.api import BatchesApi
    from airflow_batch.gather.gathering import GatherConfig, gather_batch
    from airflow_batch.rules.schema import job_schema
    from airflow_batch.storage import as_path

    api = BatchesApi(_client(base_url))
    config = GatherConfig(validator=job_schema(output_schema).validator if output_schema else None)

    def prepare(record: dict[str, Any], job_dir: str) -> None:
        # The job folder of the gather: the submit's inputs twins (input rows) copied in, untimed.
        inputs = Path(record["job_dir"]) / "round-0" / "inputs"
        target = Path(job_dir) / "round-0" / "inputs"
        if not target.exists():
            shutil.copytree(inputs, target)

    def gather(record: dict[str, Any], job_dir: str) -> int:
        stats = gather_batch(api, record, job=as_path(job_dir), round_number=0, config=config)
        return sum(stats.result_counts.values())

    prepare(warmup, str(Path(out_dir) / "warmup"))
    gather(warmup, str(Path(out_dir) / "warmup"))
    for record in batches:
        prepare(record, out_dir)
    rows = 0
    start = time.perf_counter()
    for record in batches:
        rows += gather(record, out_dir)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def child_sdk(
    base_url: str, batches: list[dict[str, Any]], out_dir: str, warmup: dict[str, Any]
) -> dict[str, Any]:
    client = _client(base_url)
    sdk_rows(client, [warmup], out_dir)
    start = time.perf_counter()
    rows = sdk_rows(client, batches, out_dir)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def sdk_rows(client: Any, batches: list[dict[str, Any]], out_dir: str) -> int:
    """Write the batches' rows the way the batch guide and the official provider read results."""
    rows = 0
    for record in batches:
        batch_id = record["batch_id"]
        with open(Path(out_dir) / f"{batch_id}.jsonl", "w") as out:
            for response in client.messages.batches.results(batch_id):
                result = response.result
                if result.type == "succeeded":
                    message = result.message
                    usage = message.usage
                    row = {
                        "custom_id": response.custom_id,
                        "batch_id": batch_id,
                        "round": 0,
                        "model": message.model,
                        "text": "".join(b.text for b in message.content if b.type == "text"),
                        "stop_reason": message.stop_reason,
                        "usage": {
                            "input_tokens": usage.input_tokens,
                            "output_tokens": usage.output_tokens,
                            "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
                            "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
                        },
                    }
                else:
                    row = {"custom_id": response.custom_id, "batch_id": batch_id, "result_type": result.type}
                out.write(json.dumps(row) + "\n")
                rows += 1
    return rows


def child_raw(
    base_url: str, batches: list[dict[str, Any]], out_dir: str, warmup: dict[str, Any]
) -> dict[str, Any]:
    client = _client(base_url)
    raw_copy(client, [warmup], out_dir)
    start = time.perf_counter()
    rows, nbytes = raw_copy(client, batches, out_dir)
    seconds = time.perf_counter() - start
    return {"rows": rows, "bytes": nbytes, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def raw_copy(client: Any, batches: list[dict[str, Any]], out_dir: str) -> tuple[int, int]:
    """Copy the batches' result streams to files byte for byte; return lines and bytes."""
    rows = nbytes = 0
    for record in batches:
        batch_id = record["batch_id"]
        with (
            open(Path(out_dir) / f"{batch_id}.jsonl", "wb") as out,
            client.messages.batches.with_streaming_response.results(batch_id) as response,
        ):
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                nbytes += len(chunk)
                rows += chunk.count(b"\n")
    return rows, nbytes


CHILDREN = {"ours": child_ours, "sdk": child_sdk, "raw": child_raw}


def run_child(
    kind: str,
    base_url: str,
    batches: list[dict[str, Any]],
    work: Path,
    warmup: dict[str, Any],
    script: Path | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Measure one path in a fresh process, after it has run once on the small ``warmup`` batch.

    ``script`` is the benchmark whose ``--child`` runs it (default: this one).
    """
    out_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    spec = json.dumps(
        {
            "kind": kind,
            "base_url": base_url,
            "batches": batches,
            "out_dir": str(out_dir),
            "warmup": warmup,
            **extra,
        }
    )
    proc = subprocess.run(
        [sys.executable, str(script or Path(__file__).resolve()), "--child", spec],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- setup ---------------------------------------------------------------------------------


def create_batches(
    base_url: str, work: Path, rows: int, batches: int, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Submit ``rows`` tiny requests as ``batches`` batches through the real submit path.

    ``params`` are added to every request's params (e.g. an ``output_config``).
    """
    from airflow_batch.api import BatchesApi
    from airflow_batch.manifest import JobIdentity
    from airflow_batch.storage import as_path
    from airflow_batch.submit.round import SubmitSettings, submit_round

    client = _client(base_url)
    per_batch = -(-rows // batches)
    requests = (
        {
            "custom_id": f"req-{i:08d}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Write one short sentence about item {i}."}],
                **(params or {}),
            },
        }
        for i in range(rows)
    )
    manifest = submit_round(
        BatchesApi(client),
        requests,
        job=as_path(str(work / "job")),
        round_number=0,
        identity=JobIdentity("bench"),
        settings=SubmitSettings(max_requests_per_batch=per_batch, count_tokens_sample=0),
    )
    deadline = time.monotonic() + 600
    for record in manifest["batches"]:
        while client.messages.batches.retrieve(record["batch_id"]).processing_status != "ended":
            if time.monotonic() > deadline:
                raise TimeoutError("batches did not end within 10 minutes")
            time.sleep(0.2)
    return [
        {
            "batch_id": b["batch_id"],
            "chunk": b["chunk"],
            "chunk_path": b["chunk_path"],
            "job_dir": str(work / "job"),
        }
        for b in manifest["batches"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests in total")
    parser.add_argument("--batches", type=int, default=10, help="batches to spread them over")
    parser.add_argument("--sdk-batches", type=int, default=1, help="batches measured on the slow SDK path")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of ours and raw; best counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    if args.child:
        spec = json.loads(args.child)
        kind = spec.pop("kind")
        result = CHILDREN[kind](**spec)
        print(json.dumps(result))
        return

    from airflow_batch.emulator.process import EmulatorProcess

    work = Path(tempfile.mkdtemp(prefix="bench-gather-"))
    try:
        with EmulatorProcess(
            work / "emulator", config={"throughput": 1e9, "start_delay_seconds": 0}
        ) as emulator:
            t0 = time.perf_counter()
            batches = create_batches(emulator.base_url, work, args.rows, args.batches)
            # Each child first runs its path on this small batch, untimed: lazy imports, the
            # storage layer and the HTTP connection are then warm on every side alike.
            (warmup,) = create_batches(emulator.base_url, work / "warmup", 100, 1)
            print(f"setup: {args.rows:,} requests in {len(batches)} batches, {time.perf_counter() - t0:.0f}s")

            # Interleaved and best-of-N: other load on the machine hits every path alike.
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "raw": [], "ours_one": []}
            for _ in range(args.repeat):
                runs["ours_one"].append(run_child("ours", emulator.base_url, batches[:1], work, warmup))
                runs["ours"].append(run_child("ours", emulator.base_url, batches, work, warmup))
                runs["raw"].append(run_child("raw", emulator.base_url, batches, work, warmup))
            sdk = run_child("sdk", emulator.base_url, batches[: args.sdk_batches], work, warmup)
            ours_sdk = run_child("ours", emulator.base_url, batches[: args.sdk_batches], work, warmup)
            ours, raw, ours_one = (
                min(runs[k], key=lambda r: r["seconds"]) for k in ("ours", "raw", "ours_one")
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(r: dict[str, Any]) -> float:
        return r["rows"] / r["seconds"]

    print(f"{'path':<36}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    for name, r in (
        ("ours (gather_batch), all batches", ours),
        ("ours, first batch", ours_one),
        ("raw byte copy, all batches", raw),
        (f"SDK iterator, {args.sdk_batches} batch(es)", sdk),
        (f"ours, same {args.sdk_batches} batch(es), right after", ours_sdk),
    ):
        print(f"{name:<36}{r['rows']:>11,}{r['seconds']:>10.2f}{rate(r):>12,.0f}{r['peak_rss_mb']:>13.0f}")
    print(f"raw copy: {raw['bytes'] / raw['seconds'] / 1e6:.0f} MB/s; best of {args.repeat} interleaved runs")
    print(f"ours / SDK rows/s:  {rate(ours_sdk) / rate(sdk):6.1f}x   (target >= 10x; same batches)")
    print(f"ours / raw rows/s:  {rate(ours) / rate(raw):6.2f}    (target >= 0.30)")
    print(
        f"peak RSS: {ours_one['peak_rss_mb']:.0f} MB at {ours_one['rows']:,} rows, "
        f"{ours['peak_rss_mb']:.0f} MB at {ours['rows']:,} rows (target <= 300 MB, flat)"
    )


if __name__ == "__main__":
    main()
