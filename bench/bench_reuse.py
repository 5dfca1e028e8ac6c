"""Benchmark: the submit pass with answer reuse on, against a store of 1,000,000 answers, vs off.

Input: 1,000,000 distinct review-classification requests (``bench_submit.py``'s, numbered), JSONL.
Store: 1,000,000 answers in 10 segments of 100,000 (as 10 gathered batches write them), half of
them answers to requests of the input (every other one), half to requests it does not hold.

Each measurement runs in a fresh process (its own peak RSS, ``ru_maxrss``), two ways:

- **the submit task** (``submit_round``, what ``SubmitBatchesOperator`` runs): read, validate,
  chunk, persist, estimate and create the batches on the emulator (started here), off and on
  (with reuse: the index read, every request fingerprinted and looked up while streaming, the
  500,000 hits resolved shard by shard into ``reused.jsonl``, half the batches created);
- **the pass alone** (``prepare_chunks``, no batch created): the submit's own CPU work without
  the uploads, the strictest comparison of what reuse adds.

Off and on run interleaved; the pass twice each, the faster kept (the machine is shared).
Target (issue 17): the submit with reuse on at most 1.3x the time of reuse off; peak RSS flat
(the index holds 8 bytes an answer, twice while it is merged). ``on`` also runs over the first
100,000 requests, to show memory does not grow with the input.

Run: ``.venv/bin/python bench/bench_reuse.py`` (about eight minutes on two cores).
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

N = 1_000_000
SMALL = 100_000
SEGMENTS = 10
CHUNK = 100_000
MB = 1024 * 1024
WORDS = ("great lamp broke after week shipping slow colour lovely would buy again terrible support").split()  # noqa: SIM905


def write_input(path: Path, n: int) -> None:
    """Write ``n`` distinct review-classification requests of 100-400 characters each.

    bench_submit's requests, each with its review number in the prompt: every request is its own
    question, so each has its own fingerprint and answer.
    """
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
                    "messages": [
                        {
                            "role": "user",
                            "content": f"Classify the sentiment of review {i}: " + " ".join(words),
                        }
                    ],
                },
            }
            handle.write(encode(request) + b"\n")


def build_store(source: Path, store: str, base_url: str) -> int:
    """Write 1,000,000 answers: every other request of the input, and as many it does not hold."""
    import msgspec

    from airflow_batch.reuse.fingerprint import Fingerprints, answer_scope
    from airflow_batch.reuse.store import SegmentWriter
    from airflow_batch.rules.params import decode_line
    from airflow_batch.storage import as_path

    fingerprints = Fingerprints(scope=answer_scope(base_url, None))  # a job without a schema
    per_segment = N // SEGMENTS
    writer_job = f"{store}-writer-job"  # keeps the receipts that vouch for the segments
    written = 0
    writer = SegmentWriter()
    with source.open("rb") as handle:
        for i, line in enumerate(handle):
            if i % 2 == 0:
                params = decode_line(line).params
            else:  # a request the input does not hold (another prompt)
                params = decode_line(line.replace(b"Classify", b"Summarise")).params
            fingerprint = fingerprints.of(params)
            sentiment = ("positive", "negative", "neutral")[i % 3]
            text = msgspec.json.encode(json.dumps({"sentiment": sentiment, "confidence": (i % 100) / 100}))
            answer = b'{"model":"claude-haiku-4-5","stop_reason":"end_turn","text":%s}' % text
            source_json = (
                b'{"batch_id":"msgbatch_%05d","job_dir":"%s",'
                b'"round":0,"written_at":"2026-11-26T03:00:00+00:00","usage":{"input_tokens":%d,"output_tokens":12,'
                b'"cache_creation_input_tokens":0,"cache_creation_1h_input_tokens":0,"cache_read_input_tokens":0}}'
            ) % (i // per_segment, writer_job.encode(), 20 + i % 50)
            writer.add(fingerprint, answer, source_json)
            written += 1
            if written % per_segment == 0:
                name = f"batch-{written // per_segment:05d}"
                writer.commit(as_path(store), name, as_path(writer_job), time.time() - 3600)
                writer = SegmentWriter()
    writer.close()
    return written


def child(kind: str, source: str, out: str, store: str, base_url: str) -> dict[str, Any]:
    """Run one measurement: ``off``/``on`` (the pass) or ``submit-off``/``submit-on`` (the task)."""
    import logging

    from airflow_batch.storage import as_path, iter_jsonl_lines
    from airflow_batch.submit.chunking import prepare_chunks

    # Warm the storage layer (fsspec imports on first open) outside the timed region.
    with as_path(os.path.join(out, "warm")).open("wb") as handle:
        handle.write(b"")
    import anthropic

    from airflow_batch.api import BatchesApi
    from airflow_batch.manifest import JobIdentity
    from airflow_batch.reuse.fingerprint import answer_scope
    from airflow_batch.reuse.store import load_index
    from airflow_batch.submit.round import SubmitSettings, submit_round
    from airflow_batch.submit.routing import AnswerReuse, Routing

    logging.basicConfig(level=logging.WARNING)
    reuse = kind.endswith("on")
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    index_seconds = 0.0
    if kind.startswith("submit"):
        settings = SubmitSettings(max_requests_per_batch=CHUNK, count_tokens_sample=0)
        with BatchesApi(anthropic.Anthropic(base_url=base_url, api_key="bench")) as api:
            manifest = submit_round(
                api, iter_jsonl_lines(as_path(source)), job=as_path(os.path.join(out, "job")), round_number=0,
                identity=JobIdentity("bench"), settings=settings, reuse=AnswerReuse(store) if reuse else None,
            )  # fmt: skip
        sent, reused, batches = manifest["requests"], manifest.get("reused", 0), len(manifest["batches"])
    else:
        routing = None
        if reuse:
            index = load_index(store)
            index_seconds = time.perf_counter() - start
            routing = Routing(job=out, round_number=0, index=index, scope=answer_scope(base_url, None))
        try:
            prepared = prepare_chunks(
                iter_jsonl_lines(as_path(source)), staging=as_path(os.path.join(out, "chunks")),
                max_requests=CHUNK, max_bytes=255_000_000, diversion=routing,
            )  # fmt: skip
        finally:
            if routing is not None:
                routing.close()
        assert not prepared.fatal
        sent, reused, batches = prepared.requests, routing.reused if routing is not None else 0, 0
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "kind": kind,
        "requests": sent,
        "reused": reused,
        "batches": batches,
        "wall": wall,
        "cpu": cpu,
        "index_seconds": index_seconds,
        "rss_after_import": imported,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def measure(kind: str, source: Path, workdir: Path, store: str, emulator: Any) -> dict[str, Any]:
    out = workdir / f"out-{kind}-{source.stem}-{time.monotonic_ns()}"
    out.mkdir()
    if kind.startswith("submit"):
        emulator.reset()
    base_url = emulator.base_url  # the store's answers are scoped to it
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(source), str(out), store, base_url],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(out)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label:<34} {r['wall']:6.2f} s wall ({r['cpu']:6.2f} s cpu)  sent {r['requests']:>9,}  "
        f"reused {r['reused']:>9,}  peak RSS {r['peak_rss'] / MB:7.1f} MB "
        f"(after imports {r['rss_after_import'] / MB:6.1f} MB)"
        + (f"  {r['batches']} batches" if r["kind"].startswith("submit") else "")
        + (f"  index read in {r['index_seconds']:.2f} s" if r["kind"] == "on" else "")
    )


def verdict(label: str, on: dict[str, Any], off: dict[str, Any]) -> str:
    ratio = on["wall"] / off["wall"]
    return (
        f"{label}: {ratio:.2f}x wall, {on['cpu'] / off['cpu']:.2f}x cpu "
        f"({'meets' if ratio <= 1.3 else 'ABOVE'} the 1.3x target); peak RSS {on['peak_rss'] / MB:.1f} MB on "
        f"vs {off['peak_rss'] / MB:.1f} MB off ({(on['peak_rss'] - off['peak_rss']) / MB:+.1f} MB)"
    )


def main() -> None:
    print(f"bench_reuse: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-reuse-"))
    try:
        source = workdir / "requests.jsonl"
        write_input(source, N)
        small = workdir / "requests-small.jsonl"
        with source.open("rb") as full, small.open("wb") as out:
            for _ in range(SMALL):
                out.write(full.readline())
        store = str(workdir / "store")
        from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess

        with EmulatorProcess(workdir / "emulator", config=FAST_CONFIG) as emulator:
            started = time.perf_counter()
            answers = build_store(source, store, emulator.base_url)
            size = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
            print(
                f"input: {N:,} requests, {source.stat().st_size / MB:.1f} MB; store: {answers:,} answers in "
                f"{SEGMENTS} segments, {size / MB:.1f} MB (built in {time.perf_counter() - started:.1f} s)"
            )
            submit = {
                kind: measure(kind, source, workdir, store, emulator) for kind in ("submit-off", "submit-on")
            }
            for kind, result in submit.items():
                print(line(f"{kind} ({N:,} requests)", result), flush=True)
            runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for _ in range(2):
                for kind in ("off", "on"):
                    runs[kind].append(measure(kind, source, workdir, store, emulator))
                    print(line(f"pass {kind} ({N:,} requests)", runs[kind][-1]), flush=True)
            small_on = measure("on", small, workdir, store, emulator)
        print(line(f"pass on ({SMALL:,} requests)", small_on))
        off = min(runs["off"], key=lambda r: r["wall"])
        on = min(runs["on"], key=lambda r: r["wall"])
        print(f"{N:,} requests, {answers:,} stored answers, half of the requests found:")
        print("  " + verdict("the submit task, on/off", submit["submit-on"], submit["submit-off"]))
        print("  " + verdict("the pass alone, on/off", on, off))
        print(
            f"  pass on at {SMALL:,} requests: peak RSS {small_on['peak_rss'] / MB:.1f} MB; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, source, out, store, base_url = sys.argv[2:7]
        print(json.dumps(child(kind, source, out, store, base_url)))
    else:
        main()
