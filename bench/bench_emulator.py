"""Benchmark the emulator at API scale: a 100,000-request create, then streaming its results.

Run: ``.venv/bin/python bench/bench_emulator.py [--requests 100000] [--full-answers 10000]``.
Prints a table against the targets: create <= 5 s, results stream >= 200,000 lines/s,
emulator RSS <= 400 MB (peak, sampled every 20 ms while creating and streaming). The batch is
plain text requests, the emulator's fast path. A second, smaller batch of requests that take
the full-answer path (structured outputs, thinking, a forced tool, web search) is timed
beside it, for information (no target).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import httpx
import psutil

from airflow_batch.emulator.process import EmulatorProcess

CREATE_TARGET_S = 5.0
STREAM_TARGET_LPS = 200_000
RSS_TARGET_MB = 400.0
_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "reviewers", "rate")


class RssSampler:
    """Samples a process's resident memory in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
            self._stop.wait(0.02)

    @contextmanager
    def sampling(self) -> Iterator[RssSampler]:
        """Sample while the block runs."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def make_requests(count: int) -> list[dict[str, object]]:
    """Return ``count`` requests with ~500-character user messages (~600 bytes of JSON each)."""
    requests: list[dict[str, object]] = []
    for i in range(count):
        words = [_WORDS[(i + j) % len(_WORDS)] for j in range(90)]
        text = f"Review {i}: " + " ".join(words)
        requests.append(
            {
                "custom_id": f"req-{i:07d}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": text[:500]}],
                },
            }
        )
    return requests


_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "keywords", "stars"],
}
_FULL_ANSWER_PARAMS: tuple[dict[str, object], ...] = (
    {"output_config": {"format": {"type": "json_schema", "schema": _SCHEMA}}},
    {"thinking": {"type": "adaptive"}},
    {"tools": [{"name": "rate", "input_schema": _SCHEMA}], "tool_choice": {"type": "any"}},
    {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
)


def make_full_answer_requests(count: int) -> list[dict[str, object]]:
    """Return ``count`` requests cycling through structured output, thinking, a forced tool, web search."""
    requests = make_requests(count)
    for i, request in enumerate(requests):
        params = request["params"]
        assert isinstance(params, dict)
        params.update(_FULL_ANSWER_PARAMS[i % len(_FULL_ANSWER_PARAMS)], max_tokens=1024)
    return requests


def main() -> None:
    """Run the benchmark and print the results table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000, help="requests in the batch")
    parser.add_argument(
        "--full-answers", type=int, default=10_000, help="requests in the full-answer batch (0: skip)"
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorProcess(Path(tmp) / "data", config={"throughput": 1_000_000_000}) as emulator,
    ):
        assert emulator.pid is not None
        sampler = RssSampler(emulator.pid)
        requests = make_requests(args.requests)
        body_mb = len(httpx.Request("POST", "http://x", json={"requests": requests}).content) / 2**20
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key="bench", timeout=600)

        emulator_process = psutil.Process(emulator.pid)
        cpu_before = sum(emulator_process.cpu_times()[:2]), time.process_time()
        with sampler.sampling():
            started = time.perf_counter()
            raw = client.messages.batches.with_raw_response.create(requests=requests)  # type: ignore[arg-type]
            create_s = time.perf_counter() - started
        create_cpu = (
            sum(emulator_process.cpu_times()[:2]) - cpu_before[0],
            time.process_time() - cpu_before[1],
        )
        batch = raw.parse()
        server_timing = raw.headers.get("server-timing", "")
        del requests
        create_rss = sampler.peak_mb

        deadline = time.monotonic() + 120
        while batch.processing_status != "ended":
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch.id} did not end")
            time.sleep(0.05)
            batch = client.messages.batches.retrieve(batch.id)

        results_file = Path(tmp) / "results.jsonl"
        lines = 0
        cpu_before = sum(emulator_process.cpu_times()[:2]), time.process_time()
        with sampler.sampling(), results_file.open("wb") as sink:
            started = time.perf_counter()
            with client.messages.batches.with_streaming_response.results(batch.id) as response:
                for chunk in response.http_response.iter_raw():
                    lines += chunk.count(b"\n")
                    sink.write(chunk)
            stream_s = time.perf_counter() - started
        stream_cpu = (
            sum(emulator_process.cpu_times()[:2]) - cpu_before[0],
            time.process_time() - cpu_before[1],
        )
        stream_lps = lines / stream_s

        started = time.perf_counter()
        copied = 0
        with results_file.open("rb") as source:
            while block := source.read(2**20):
                copied += len(block)
        disk_s = time.perf_counter() - started
        disk_lps = lines / disk_s

        full_s = 0.0
        if args.full_answers:
            full = make_full_answer_requests(args.full_answers)
            started = time.perf_counter()
            raw = client.messages.batches.with_raw_response.create(requests=full)  # type: ignore[arg-type]
            full_s = time.perf_counter() - started
            full_timing = raw.headers.get("server-timing", "")

    size_mb = copied / 2**20
    rows = [
        (
            "create (SDK, end to end)",
            f"{create_s:.2f} s",
            f"<= {CREATE_TARGET_S:.0f} s",
            create_s <= CREATE_TARGET_S,
        ),
        (
            "results stream",
            f"{stream_lps:,.0f} lines/s",
            f">= {STREAM_TARGET_LPS:,}",
            stream_lps >= STREAM_TARGET_LPS,
        ),
        (
            "emulator peak RSS",
            f"{sampler.peak_mb:.0f} MB",
            f"<= {RSS_TARGET_MB:.0f} MB",
            sampler.peak_mb <= RSS_TARGET_MB,
        ),
    ]
    print(
        f"batch: {args.requests:,} requests, create body {body_mb:.1f} MB, "
        f"results {size_mb:.1f} MB, {lines:,} lines"
    )
    print(
        f"create: emulator side {server_timing} (ms); the rest is the SDK building the request and transfer"
    )
    print(
        f"CPU seconds (emulator / client): create {create_cpu[0]:.2f} / {create_cpu[1]:.2f}, "
        f"stream {stream_cpu[0]:.2f} / {stream_cpu[1]:.2f}"
    )
    print(f"peak RSS while creating {create_rss:.0f} MB; stream {stream_s:.2f} s")
    print(f"load average during the run: {os.getloadavg()} on {os.cpu_count()} CPUs")
    print(
        f"raw read of the same file from disk: {disk_s:.3f} s ({disk_lps:,.0f} lines/s); "
        f"stream/disk ratio {stream_lps / disk_lps:.3f}"
    )
    if args.full_answers:
        print(
            f"full-answer path (structured output, thinking, forced tool, web search): create of "
            f"{args.full_answers:,} requests {full_s:.2f} s end to end; emulator side {full_timing} (ms)"
        )
    print(f"{'measure':<26} {'value':>20} {'target':>12}  ok")
    for name, value, target, ok in rows:
        print(f"{name:<26} {value:>20} {target:>12}  {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
