"""Benchmark: validate, chunk and persist requests read from a JSONL file (the submit pass).

Ours: ``airflow_batch.submit.chunking.prepare_chunks`` streaming the file line by line — every
request validated, defaults/encoding, job-wide custom_id uniqueness, fingerprint, cost
tally, chunk files written — with the API's limits (100,000 requests / ~255 MB per batch).

Baseline: the batch guide's approach (``chunk_requests``): load the whole file into a list
with ``json.loads`` per line, slice it by count (100,000) and ``json.dump`` each chunk to a
file. No validation at all.

Each measurement runs in a fresh process so peak RSS (``ru_maxrss``) is its own. Targets:
ours >= 150,000 requests/s and >= 4x the guide, and peak RSS <= largest chunk + 200 MB, flat from
100,000 to 1,000,000 requests. Run: ``.venv/bin/python bench/bench_submit.py`` (about two minutes).

``--shared``: 30,000 requests sharing a 47 KB cached system prompt; the chunk bytes on disk and
the speed of the pass with the prompt stored once (``shared/``) and with every line whole.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = (100_000, 1_000_000)
CHUNK = 100_000
MB = 1024 * 1024
SHARED_REQUESTS = 30_000
SHARED_SYSTEM = "You are a meticulous analyst of customer reviews; follow the house rules below. " * 590
WORDS = ("great lamp broke after week shipping slow colour lovely would buy again terrible support").split()  # noqa: SIM905


def write_input(path: Path, n: int) -> None:
    """Write ``n`` review-classification requests of 100-400 characters each."""
    import msgspec

    encode = msgspec.json.Encoder().encode
    with path.open("wb") as handle:
        for i in range(n):
            words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(20 + i % 50)]
            request = {
                "custom_id": f"review-{i:07d}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Classify the sentiment: " + " ".join(words)}],
                },
            }
            handle.write(encode(request) + b"\n")


def write_shared_input(path: Path, n: int) -> None:
    """Write ``n`` requests sharing a 47 KB system prompt marked for caching (1 hour)."""
    import msgspec

    encode = msgspec.json.Encoder().encode
    system = [{"type": "text", "text": SHARED_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    with path.open("wb") as handle:
        for i in range(n):
            words = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(20 + i % 50))
            params = {"model": "claude-haiku-4-5", "max_tokens": 64, "system": system}
            params["messages"] = [{"role": "user", "content": "Classify the sentiment: " + words}]
            handle.write(encode({"custom_id": f"review-{i:07d}", "params": params}) + b"\n")


def disk_bytes(folder: str) -> int:
    """Return the bytes of every file under ``folder``."""
    return sum(os.path.getsize(os.path.join(top, n)) for top, _, names in os.walk(folder) for n in names)


def child_ours(source: str, out: str, whole_lines: bool = False) -> dict[str, Any]:
    from airflow_batch.storage import as_path, iter_jsonl_lines
    from airflow_batch.submit import chunk_files
    from airflow_batch.submit.chunking import prepare_chunks

    if whole_lines:  # every line stored whole, as before shared prompts were stored once
        chunk_files.MIN_SHARED_BYTES = 1 << 40

    # Warm the storage layer (fsspec imports on first open) outside the timed region.
    with as_path(os.path.join(out, "warm")).open("wb") as handle:
        handle.write(b"")
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    prepared = prepare_chunks(
        iter_jsonl_lines(as_path(source)), staging=as_path(os.path.join(out, "chunks")),
        max_requests=CHUNK, max_bytes=255_000_000,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert not prepared.fatal, prepared.problems
    chunks = os.path.join(out, "chunks")
    return {
        "disk": disk_bytes(chunks) - disk_bytes(os.path.join(chunks, "inputs")),
        "requests": prepared.requests,
        "chunks": len(prepared.chunks),
        "largest_chunk": max(c.bytes for c in prepared.chunks),
        "wall": wall,
        "cpu": cpu,
        "rss_after_import": imported,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def chunk_requests(requests: list[dict[str, Any]], chunk_size: int = 9000) -> Any:
    """The batch guide's splitter, verbatim."""
    for i in range(0, len(requests), chunk_size):
        yield requests[i : i + chunk_size]


def child_guide(source: str, out: str) -> dict[str, Any]:
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    with open(source, encoding="utf-8") as handle:
        requests = [json.loads(line) for line in handle]
    largest = 0
    chunks = 0
    for index, chunk in enumerate(chunk_requests(requests, CHUNK)):
        path = os.path.join(out, f"chunk-{index:05d}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(chunk, handle)
        largest = max(largest, os.path.getsize(path))
        chunks += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "requests": len(requests),
        "chunks": chunks,
        "largest_chunk": largest,
        "wall": wall,
        "cpu": cpu,
        "rss_after_import": imported,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def measure_shared() -> None:
    """Print chunk bytes on disk and speed for 30,000 requests sharing a 47 KB system prompt."""
    print(f"bench_submit --shared: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-submit-shared-"))
    try:
        source = workdir / "requests-shared.jsonl"
        write_shared_input(source, SHARED_REQUESTS)
        print(f"input: {SHARED_REQUESTS:,} requests, {source.stat().st_size / MB:.1f} MB")
        for kind in ("ours-whole", "ours", "guide"):
            r = measure(kind, source, workdir)
            disk = r.get("disk", 0)
            print(line(kind, r) + (f"  chunk files on disk {disk / MB:8.1f} MB" if disk else ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(kind: str, source: Path, workdir: Path) -> dict[str, Any]:
    out = workdir / f"out-{kind}-{source.stem}"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(source), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(out)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label:<28} {r['requests']:>9,} req  {r['requests'] / r['wall']:>9,.0f} req/s wall "
        f"({r['requests'] / r['cpu']:>9,.0f} req/s cpu)  peak RSS {r['peak_rss'] / MB:7.1f} MB "
        f"(after imports {r['rss_after_import'] / MB:6.1f} MB)  "
        f"largest chunk {r['largest_chunk'] / MB:5.1f} MB"
    )


def main() -> None:
    print(f"bench_submit: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    try:
        results: dict[tuple[str, int], dict[str, Any]] = {}
        for n in SIZES:
            source = workdir / f"requests-{n}.jsonl"
            write_input(source, n)
            print(f"input: {n:,} requests, {source.stat().st_size / MB:.1f} MB")
            for kind in ("ours", "guide"):
                results[kind, n] = measure(kind, source, workdir)
                print(line(f"{kind} ({n:,})", results[kind, n]))
            source.unlink()
        big = max(SIZES)
        ours, guide = results["ours", big], results["guide", big]
        speed = (ours["requests"] / ours["wall"]) / (guide["requests"] / guide["wall"])
        cpu_speed = (ours["requests"] / ours["cpu"]) / (guide["requests"] / guide["cpu"])
        memory = guide["peak_rss"] / ours["peak_rss"]
        bound = ours["largest_chunk"] + 200 * MB
        growth = results["ours", big]["peak_rss"] - results["ours", min(SIZES)]["peak_rss"]
        print(f"speed ratio (ours / guide, {big:,} requests): {speed:.2f}x wall, {cpu_speed:.2f}x cpu")
        print(f"peak memory ratio (guide / ours): {memory:.2f}x")
        print(
            f"ours at {big:,}: {ours['requests'] / ours['wall']:,.0f} req/s wall "
            f"({'meets' if ours['requests'] / ours['wall'] >= 100_000 else 'BELOW'} 100,000 req/s); "
            f"peak RSS {ours['peak_rss'] / MB:.1f} MB vs bound largest chunk + 200 MB = {bound / MB:.1f} MB "
            f"({'within' if ours['peak_rss'] <= bound else 'ABOVE'}); "
            f"growth from {min(SIZES):,} to {big:,} requests: {growth / MB:+.1f} MB"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, source, out = sys.argv[2:5]
        if kind == "guide":
            print(json.dumps(child_guide(source, out)))
        else:
            print(json.dumps(child_ours(source, out, whole_lines=kind == "ours-whole")))
    elif "--shared" in sys.argv:
        measure_shared()
    else:
        main()
