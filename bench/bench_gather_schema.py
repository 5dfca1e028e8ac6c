"""Benchmark: gathering structured results with schema validation, side by side in one run.

Creates ``--rows`` structured requests (``output_config.format`` a JSON schema of 5 properties:
an enum, an integer range, an array of at most 3 strings, two strings) in ``--batches``
batches on a local emulator, waits until they end, then measures each path in its own
subprocess (so memory peaks do not mix), after an untimed warm-up on a small batch:

- ours + schema: :func:`~airflow_batch.gather.gathering.gather_batch` with the job's compiled
  validator (every answer checked; ``output`` and ``invalid_output`` rows), at one batch and at
  all of them (peak RSS, flat);
- ours, plain: the same gather without a schema;
- SDK + jsonschema: ``client.messages.batches.results()`` and ``jsonschema`` validation of each
  ``json.loads(text)``, what a user would otherwise write (one batch: it is slow), compared
  with ours on the same batch, each the best of the same ``--repeat`` interleaved runs;
- raw: the result streams copied byte for byte (the ceiling).

Then, separately: writing the gathered rows as ``results.parquet`` (rows/s, peak RSS).

Run: ``.venv/bin/python bench/bench_gather_schema.py`` (``--rows 100000`` for a quick run).
Targets: ours + schema >= 0.7 of ours plain, >= 20x SDK + jsonschema, peak RSS <= 300 MB and
flat from 100k to 1M rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gather import (
    _client,
    _peak_rss_mb,
    child_ours,
    child_raw,
    create_batches,
    run_child,
)

SCRIPT = Path(__file__).resolve()
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "summary": {"type": "string"},
        "language": {"type": "string"},
    },
    "required": ["sentiment", "stars", "keywords", "summary", "language"],
    "additionalProperties": False,
}


def child_sdk_jsonschema(
    base_url: str, batches: list[dict[str, Any]], out_dir: str, warmup: dict[str, Any]
) -> dict[str, Any]:
    """The SDK iterator plus ``jsonschema`` per answer: what a user writes without this package."""
    import jsonschema

    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    client = _client(base_url)

    def rows_of(records: list[dict[str, Any]]) -> int:
        rows = 0
        for record in records:
            batch_id = record["batch_id"]
            with open(Path(out_dir) / f"{batch_id}.jsonl", "w") as out:
                for response in client.messages.batches.results(batch_id):
                    result = response.result
                    row: dict[str, Any] = {"custom_id": response.custom_id, "result_type": result.type}
                    if result.type == "succeeded":
                        text = "".join(b.text for b in result.message.content if b.type == "text")
                        try:
                            output = json.loads(text)
                            errors = [e.message for e in validator.iter_errors(output)]
                        except ValueError as exc:
                            output, errors = None, [str(exc)]
                        row.update(output=output, errors=errors, usage=result.message.usage.model_dump())
                    out.write(json.dumps(row) + "\n")
                    rows += 1
        return rows

    rows_of([warmup])
    start = time.perf_counter()
    rows = rows_of(batches)
    return {"rows": rows, "seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


def child_ours_schema(
    base_url: str, batches: list[dict[str, Any]], out_dir: str, warmup: dict[str, Any]
) -> dict[str, Any]:
    return child_ours(base_url, batches, out_dir, warmup, output_schema=SCHEMA)


def child_parquet(
    base_url: str, batches: list[dict[str, Any]], out_dir: str, warmup: dict[str, Any]
) -> dict[str, Any]:
    """Gather (untimed), then time writing the rows as results.parquet / failures.parquet."""
    from airflow_batch.gather.tables import write_tables
    from airflow_batch.storage import as_path

    child_ours(base_url, batches, out_dir, warmup, output_schema=SCHEMA)
    parts = Path(out_dir) / "round-0"
    results, failures = Path(out_dir) / "results.jsonl", Path(out_dir) / "failures.jsonl"
    for name, target in (("results", results), ("failures", failures)):
        with target.open("wb") as out:
            for part in sorted((parts / name).glob("*.jsonl")):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    rows = sum(1 for _ in results.open("rb"))
    start = time.perf_counter()
    write_tables(
        as_path(str(results)),
        as_path(str(failures)),
        as_path(str(Path(out_dir) / "results.parquet")),
        as_path(str(Path(out_dir) / "failures.parquet")),
        output_schema=SCHEMA,
        passthrough=[],
    )
    seconds = time.perf_counter() - start
    size = (Path(out_dir) / "results.parquet").stat().st_size
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "bytes": size}


CHILDREN = {
    "ours_schema": child_ours_schema,
    "ours": child_ours,
    "sdk_jsonschema": child_sdk_jsonschema,
    "raw": child_raw,
    "parquet": child_parquet,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests in total")
    parser.add_argument("--batches", type=int, default=10, help="batches to spread them over")
    parser.add_argument("--sdk-batches", type=int, default=1, help="batches measured on the slow SDK path")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs; the best counts")
    parser.add_argument("--invalid-output-rate", type=float, default=0.02, help="answers breaking the schema")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    if args.child:
        spec = json.loads(args.child)
        kind = spec.pop("kind")
        print(json.dumps(CHILDREN[kind](**spec)))
        return

    from airflow_batch.emulator.process import EmulatorProcess

    structured = {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    work = Path(tempfile.mkdtemp(prefix="bench-gather-schema-"))
    try:
        config = {
            "throughput": 1e9,
            "start_delay_seconds": 0,
            "invalid_output_rate": args.invalid_output_rate,
        }
        with EmulatorProcess(work / "emulator", config=config) as emulator:
            url = emulator.base_url
            t0 = time.perf_counter()
            batches = create_batches(url, work, args.rows, args.batches, structured)
            (warmup,) = create_batches(url, work / "warmup", 100, 1, structured)
            took = time.perf_counter() - t0
            print(f"setup: {args.rows:,} structured requests in {len(batches)} batches, {took:.0f}s")

            def measure(kind: str, chosen: list[dict[str, Any]]) -> dict[str, Any]:
                return run_child(kind, url, chosen, work, warmup, script=SCRIPT)

            runs: dict[str, list[dict[str, Any]]] = {
                "ours_schema": [],
                "ours": [],
                "raw": [],
                "one": [],
                "sdk": [],
                "ours_sdk": [],
            }
            for _ in range(args.repeat):
                runs["one"].append(measure("ours_schema", batches[:1]))
                runs["ours_schema"].append(measure("ours_schema", batches))
                runs["ours"].append(measure("ours", batches))
                runs["raw"].append(measure("raw", batches))
                # The slow path and ours on the same batches, each the best of the same runs.
                runs["sdk"].append(measure("sdk_jsonschema", batches[: args.sdk_batches]))
                if args.sdk_batches != 1:
                    runs["ours_sdk"].append(measure("ours_schema", batches[: args.sdk_batches]))
            if args.sdk_batches == 1:
                runs["ours_sdk"] = runs["one"]
            parquet = measure("parquet", batches)
            best = {kind: min(found, key=lambda r: r["seconds"]) for kind, found in runs.items()}
            sdk, ours_sdk = best["sdk"], best["ours_sdk"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(r: dict[str, Any]) -> float:
        return float(r["rows"]) / r["seconds"]

    print(f"{'path':<44}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    for name, r in (
        ("ours + schema validation, all batches", best["ours_schema"]),
        ("ours + schema validation, first batch", best["one"]),
        ("ours, plain (no schema), all batches", best["ours"]),
        ("raw byte copy, all batches", best["raw"]),
        (f"SDK iterator + jsonschema, {args.sdk_batches} batch(es)", sdk),
        (f"ours + schema, same {args.sdk_batches} batch(es)", ours_sdk),
        ("results.parquet from the gathered rows", parquet),
    ):
        print(f"{name:<44}{r['rows']:>11,}{r['seconds']:>10.2f}{rate(r):>12,.0f}{r['peak_rss_mb']:>13.0f}")
    print(f"best of {args.repeat} interleaved runs; results.parquet {parquet['bytes'] / 1e6:.0f} MB")
    plain_ratio = rate(best["ours_schema"]) / rate(best["ours"])
    print(f"ours+schema / ours plain:      {plain_ratio:6.2f}   (target >= 0.7)")
    print(f"ours+schema / SDK+jsonschema:  {rate(ours_sdk) / rate(sdk):6.1f}x  (target >= 20x; same batches)")
    each = ", ".join(
        f"{rate(ours) / rate(slow):.1f}x" for ours, slow in zip(runs["ours_sdk"], runs["sdk"], strict=True)
    )
    print(f"  run by run (ours / SDK of the same interleaved run): {each}")
    print(f"ours+schema / raw copy:        {rate(best['ours_schema']) / rate(best['raw']):6.2f}")
    print(
        f"peak RSS: {best['one']['peak_rss_mb']:.0f} MB at {best['one']['rows']:,} rows, "
        f"{best['ours_schema']['peak_rss_mb']:.0f} MB at {best['ours_schema']['rows']:,} rows "
        "(target <= 300 MB, flat)"
    )


if __name__ == "__main__":
    main()
