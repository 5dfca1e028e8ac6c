"""Benchmark: documents and images through the Files API against the base64 way.

Generates N one-page PDFs of ~50 KB and N small PNGs (distinct bytes each) in a local folder,
then, against the emulator (a separate process) through the real SDK:

- **upload**: ``prepare_documents`` reads every file once and uploads each (8 at a time):
  files uploaded per second;
- **re-run**: the same step again on the same job folder (a retry or a clear): uploads (should be 0);
- **batch size**: the requests as sent (one ``file_id`` block + the prompt) against the same
  requests with the file inline as base64: bytes per request, requests per 256 MB batch;
- **cost**: the round submitted (``submit_round``: estimate calibrated with ``count_tokens``,
  then batches), the estimate's input tokens against the input tokens the emulator billed;
- **peak RSS** of this process (listing, reading, hashing, uploading, building, submitting).

Run: ``.venv/bin/python bench/bench_documents.py [N]`` (default 10,000 of each).
"""

from __future__ import annotations

import base64
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from media_files import pdf_bytes, png_bytes  # noqa: E402

MB = 1024 * 1024
BATCH_BYTES = 256_000_000
MODEL = "claude-haiku-4-5"


def generate(folder: Path, n: int) -> None:
    """Write ``n`` one-page ~50 KB PDFs and ``n`` small PNGs, each file's bytes distinct."""
    (folder / "pdf").mkdir(parents=True)
    (folder / "png").mkdir()
    for i in range(n):
        (folder / "pdf" / f"invoice-{i:05d}.pdf").write_bytes(pdf_bytes(1, f"Invoice {i}", size=50_000))
        colour = (i % 251, (i // 251) % 251, 90)
        (folder / "png" / f"receipt-{i:05d}.png").write_bytes(png_bytes(64 + i % 64, 48 + i % 32, colour))


def inline_line(request: dict[str, Any], path: str) -> bytes:
    """Return the request line with its file inline as base64 instead of by file_id."""
    from airflow_batch.storage import as_path

    data = as_path(path).read_bytes()
    content = request["params"]["messages"][0]["content"]
    media_type = "application/pdf" if content[0]["type"] == "document" else "image/png"
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    params = {
        **request["params"],
        "messages": [{"role": "user", "content": [{**content[0], "source": source}, content[1]]}],
    }
    return msgspec.json.encode({**request, "params": params}) + b"\n"


def upload(api: Any, pattern: str, job: Any, log: logging.Logger, label: str) -> Any:
    """Run the upload step (8 files at a time); print and return its plan."""
    from airflow_batch.submit.documents import prepare_documents

    plan = prepare_documents(api, pattern, job=job, bound=False, kept=None, concurrency=8, log=log)
    up = plan.stats
    print(
        f"{label}: {up.files:,} files, {up.uploaded:,} uploaded ({up.uploaded_bytes / MB:,.1f} MB), "
        f"{up.reused:,} reused, in {up.seconds:.1f} s: {up.uploaded / up.seconds:,.0f} files/s, "
        f"{up.uploaded_bytes / MB / up.seconds:,.1f} MB/s"
    )
    return plan


def batch_bytes(plan: Any, requests: list[Any], defaults: Any) -> None:
    """Print bytes per request and requests per 256 MB batch, by file_id and inline as base64."""
    from airflow_batch.submit.records import Carried

    by_id = inline = 0
    for row, request in zip(plan.rows, requests, strict=True):
        filled = defaults.apply(request.request if isinstance(request, Carried) else request)
        by_id += len(msgspec.json.encode(filled)) + 1
        inline += len(inline_line(filled, row[0].uri))
    count = len(requests)
    for name, size in (("file_id", by_id), ("base64", inline)):
        per = size / count
        per_batch = min(100_000, int(BATCH_BYTES // per))
        print(
            f"{name:>8}: {per:,.0f} bytes/request, {per_batch:,} requests per 256 MB batch, "
            f"{size / MB:,.1f} MB for all {count:,} ({-(-count // per_batch)} batch(es))"
        )
    print(f"batch bytes, base64 / file_id: {inline / by_id:,.0f}x")


def billed_input_tokens(api: Any, batch_ids: list[str]) -> int:
    """Wait (deadline 10 min) for the batches to end; return the input tokens their results billed."""
    deadline = time.monotonic() + 600
    while any(api.retrieve(batch_id).processing_status != "ended" for batch_id in batch_ids):
        if time.monotonic() > deadline:
            raise TimeoutError("batches did not end within 10 minutes")
        time.sleep(0.5)
    billed = 0
    for batch_id in batch_ids:
        body = api.download_results(batch_id, lambda chunks: b"".join(chunks))
        for line in body.splitlines():
            result = msgspec.json.decode(line)["result"]
            if result["type"] == "succeeded":
                billed += result["message"]["usage"]["input_tokens"]
    return billed


def main() -> None:
    import anthropic

    from airflow_batch.api import BatchesApi, job_headers
    from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess
    from airflow_batch.manifest import JobIdentity
    from airflow_batch.media import FILES_BETA
    from airflow_batch.storage import as_path
    from airflow_batch.submit.documents import document_requests
    from airflow_batch.submit.records import RequestDefaults
    from airflow_batch.submit.round import SubmitSettings, submit_round

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    log = logging.getLogger("bench_documents")
    with tempfile.TemporaryDirectory(prefix="bench-documents-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        generate(root / "in", n)
        size = sum(p.stat().st_size for p in (root / "in").rglob("*") if p.is_file())
        print(
            f"generated {n:,} PDFs, {n:,} PNGs: {size / MB:,.1f} MB in {time.perf_counter() - started:.1f} s"
        )
        with EmulatorProcess(root / "emulator", config=FAST_CONFIG) as emulator:
            client = anthropic.Anthropic(base_url=emulator.base_url, api_key="bench-key", timeout=120)
            with BatchesApi(client, headers=job_headers([FILES_BETA])) as api:
                job, pattern = as_path(str(root / "job")), str(root / "in" / "*" / "*")
                plan = upload(api, pattern, job, log, "upload")
                upload(api, pattern, job, log, "re-run (a retry or a clear of the task)")
                requests = list(document_requests(plan, prompt_template="Extract the fields of {name}."))
                defaults = RequestDefaults(model=MODEL, max_tokens=64)
                batch_bytes(plan, requests, defaults)
                with plan.counted():
                    manifest = submit_round(
                        api,
                        requests,
                        job=job,
                        round_number=0,
                        identity=JobIdentity("bench", (FILES_BETA,)),
                        settings=SubmitSettings(count_tokens_sample=20),
                        log=log,
                        defaults=defaults,
                    )
                estimate = manifest["estimate"]
                billed = billed_input_tokens(api, [b["batch_id"] for b in manifest["batches"]])
                est = estimate["usage"]["input_tokens"]
                print(
                    f"cost: estimate {est:,} input tokens ({estimate['method']}), emulator billed {billed:,} "
                    f"({est / billed:.3f}x); ${estimate['batch_usd']:.2f} upper bound at batch prices"
                )
        print(
            f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
        )


if __name__ == "__main__":
    main()
