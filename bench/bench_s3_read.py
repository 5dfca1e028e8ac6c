"""Benchmark: JSONL reads and submit from S3 (a local moto server) against the same file on disk.

Issue 12: ``storage.iter_jsonl_lines`` used ``readline`` on the fsspec file, and s3fs's
``readline`` copies the rest of its cached block for every line: a 250,001-line input read at
tens of lines per second and a submit from S3 never finished. Every JSONL read now goes
through one block-buffered reader. In one run, this prints:

1. lines/s of ``iter_jsonl_lines`` over a 250,001-line JSONL of requests (~39 MB) on local
   disk and on S3 (``s3://aws_default@bench/...``, moto server on 127.0.0.1), best of 5,
   interleaved, and the ratio (target: S3 >= 0.5 of local), with the CPU seconds each read
   cost this process and the moto server (the server shares the machine's cores);
   with, for scale, the time to fetch the object's bytes alone (one boto3 GET, and s3fs's
   ``read_bytes``, which buffers the whole object);
2. the old ``for line in file`` read of the same S3 object, for at most 10 s (the baseline);
3. the package's submit path (``submit.inputs.input_rows`` into ``submit.round.submit_round``:
   read, validate, chunk, persist, create the batches) of the same 250,001 requests against
   the emulator (throughput 0, so nothing is processed), input and job folder on local disk
   vs both on S3, best of 2 interleaved,
   and the ratio of the times (target: S3 within 2x of local).

Run: ``.venv/bin/python bench/bench_s3_read.py`` (about two minutes). The moto server and the
emulator are started here and stopped by their pids; the S3 connection is the environment
variable ``AIRFLOW_CONN_AWS_DEFAULT`` with a dummy key and ``endpoint_url`` at moto.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "distributed"))

from local_services import MotoS3  # noqa: E402

LINES = 250_001
BUCKET = "bench"
MB = 1024 * 1024
WORDS = ("great lamp broke after week shipping slow colour lovely would buy again terrible support").split()  # noqa: SIM905


def write_input(path: Path, n: int) -> None:
    """Write ``n`` review-classification requests (~160 bytes a line), as bench_submit.py does."""
    import msgspec

    encode = msgspec.json.Encoder().encode
    with path.open("wb") as handle:
        for i in range(n):
            words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(1 + i % 3)]
            request = {
                "custom_id": f"review-{i:07d}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Classify the sentiment: " + " ".join(words)}],
                },
            }
            handle.write(encode(request) + b"\n")


def count_lines(uri: str) -> int:
    from airflow_batch.storage import as_path, iter_jsonl_lines

    return sum(1 for _ in iter_jsonl_lines(as_path(uri)))


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process ``pid`` has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def readline_baseline(uri: str, limit_seconds: float) -> tuple[int, float]:
    """Read lines the old way (``for line in file``) for at most ``limit_seconds``."""
    from airflow_batch.storage import as_path

    started = time.perf_counter()
    lines = 0
    with as_path(uri).open("rb") as handle:
        for _ in handle:
            lines += 1
            if time.perf_counter() - started > limit_seconds:
                break
    return lines, time.perf_counter() - started


def submit(base_url: str, source: str, output: str, run_id: str) -> tuple[float, int, int]:
    """Submit ``source`` as the submit operator does; return seconds, requests, batches."""
    import anthropic

    from airflow_batch import layout
    from airflow_batch.api import BatchesApi
    from airflow_batch.manifest import JobIdentity
    from airflow_batch.submit.inputs import input_rows
    from airflow_batch.submit.round import SubmitSettings, submit_round

    client = anthropic.Anthropic(base_url=base_url, api_key="bench-key", max_retries=5, timeout=600)
    started = time.perf_counter()
    manifest = submit_round(
        BatchesApi(client),
        input_rows(source, "requests"),
        job=layout.job_dir(output, "bench_s3", run_id, "submit"),
        round_number=0,
        identity=JobIdentity("anthropic_default"),
        settings=SubmitSettings(),
        row_label="line",
    )
    return time.perf_counter() - started, manifest["requests"], len(manifest["batches"])


def main() -> None:
    print(f"bench_s3_read: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"  # no line per HTTP request
    s3 = MotoS3(workdir / "moto")
    emulator = None
    try:
        s3.start()
        os.environ.update(s3.connection_env("aws_default"))
        source = workdir / "requests.jsonl"
        write_input(source, LINES)
        size = source.stat().st_size
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(source), BUCKET, "input/requests.jsonl")
        local_uri = f"file://{source}"
        s3_uri = f"s3://aws_default@{BUCKET}/input/requests.jsonl"
        print(f"input: {LINES:,} request lines, {size / MB:.1f} MiB, on local disk and on moto S3")

        # Warm the storage layer (fsspec, s3fs, the connection) outside the timed region.
        client.put_object(Bucket=BUCKET, Key="warm.jsonl", Body=b'{"a": 1}\n')
        assert count_lines(f"s3://aws_default@{BUCKET}/warm.jsonl") == 1

        def raw_get() -> int:
            return len(client.get_object(Bucket=BUCKET, Key="input/requests.jsonl")["Body"].read())

        def fsspec_get() -> int:
            from airflow_batch.storage import as_path

            return len(as_path(s3_uri).read_bytes())

        best = {"local": float("inf"), "s3": float("inf"), "raw": float("inf"), "fsspec": float("inf")}
        cpu: dict[str, list[tuple[float, float]]] = {"local": [], "s3": []}  # (ours, server) per read
        assert s3.process is not None
        for _ in range(5):
            for name, uri in (("local", local_uri), ("s3", s3_uri)):
                ours, server = time.process_time(), cpu_seconds(s3.process.pid)
                seconds, lines = timed(lambda uri=uri: count_lines(uri))
                cpu[name].append((time.process_time() - ours, cpu_seconds(s3.process.pid) - server))
                assert lines == LINES, (name, lines)
                best[name] = min(best[name], seconds)
            for name, get in (("raw", raw_get), ("fsspec", fsspec_get)):
                seconds, length = timed(get)
                assert length == size
                best[name] = min(best[name], seconds)
        local_rate, s3_rate = LINES / best["local"], LINES / best["s3"]
        print(f"  iter_jsonl_lines, local disk: {local_rate:>12,.0f} lines/s  ({best['local']:.3f} s)")
        print(f"  iter_jsonl_lines, S3 (moto):  {s3_rate:>12,.0f} lines/s  ({best['s3']:.3f} s)")
        verdict = "meets" if s3_rate >= 0.5 * local_rate else "BELOW"
        print(f"  S3 / local: {s3_rate / local_rate:.2f} ({verdict} the 0.5 target)")
        for name in ("local", "s3"):
            ours = statistics.median(c for c, _ in cpu[name])
            server = statistics.median(c for _, c in cpu[name])
            print(f"  CPU per read (median of 5), {name:>5}: this process {ours:.3f} s, moto {server:.3f} s")
        print(
            f"  for scale, the object's bytes alone (no lines): boto3 GET {best['raw']:.3f} s, "
            f"ObjectStoragePath.read_bytes (s3fs) {best['fsspec']:.3f} s = "
            f"{best['fsspec'] / best['local']:.1f}x the whole local read"
        )

        old_lines, old_seconds = readline_baseline(s3_uri, limit_seconds=10)
        old_rate = old_lines / old_seconds
        print(
            f"  old `for line in file` on S3: {old_lines:,} lines in {old_seconds:.1f} s = "
            f"{old_rate:,.0f} lines/s (the whole file: ~{LINES / old_rate / 60:,.0f} min); "
            f"new / old: {s3_rate / old_rate:,.0f}x"
        )

        from airflow_batch.emulator.process import EmulatorProcess

        emulator = EmulatorProcess(workdir / "emulator", config={"throughput": 0}).start()
        local_out, s3_out = str(workdir / "jobs"), f"s3://aws_default@{BUCKET}/jobs"
        # Warm-up: the SDK, the emulator and both stores, on a small input.
        small = workdir / "small.jsonl"
        write_input(small, 50)
        client.upload_file(str(small), BUCKET, "input/small.jsonl")
        submit(emulator.base_url, f"file://{small}", local_out, "warm-local")
        submit(emulator.base_url, f"s3://aws_default@{BUCKET}/input/small.jsonl", s3_out, "warm-s3")

        results: dict[str, list[float]] = {"local": [], "s3": []}
        for attempt in range(2):
            for name, uri, out in (("local", local_uri, local_out), ("s3", s3_uri, s3_out)):
                seconds, requests, batches = submit(emulator.base_url, uri, out, f"run-{name}-{attempt}")
                assert requests == LINES, (name, requests)
                results[name].append(seconds)
        for name, times in results.items():
            where = "local disk" if name == "local" else "S3 (moto)"
            print(
                f"  submit from {where:<10}: {min(times):6.2f} s best of {len(times)} "
                f"({', '.join(f'{t:.2f}' for t in times)}; {LINES:,} requests, {batches} batches)"
            )
        ratio = min(results["s3"]) / min(results["local"])
        print(f"  submit S3 / local time: {ratio:.2f}x ({'within' if ratio <= 2 else 'ABOVE'} the 2x target)")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        if emulator is not None:
            emulator.stop()
        s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
