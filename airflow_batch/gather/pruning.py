"""What stays of a round's chunk files once the round has landed.

The chunk files hold every request in full, as sent: a job with a long shared prompt keeps it
once per request (1.4 GB for 30,000 requests with a 47 KB system prompt). Once a round is
gathered (every batch landed, its manifest written) nothing needs them any more, because each
reader keeps what it needs elsewhere:

- a retry round reads ``retry_requests.jsonl`` (the retryable failures' requests, written here
  first, see :func:`airflow_batch.submit.retrying.keep_retry_requests`);
- re-attaching (a retry or clear of the submit) reads the ledger, which keeps each chunk's
  request count and bytes; a chunk file is put back only for a chunk without a batch;
- the stray sweep reads the chunk sizes from the ledger too; gather reads the inputs twins
  (``round-N/inputs/``, kept: small), and answer reuse the answer store and ``reused.jsonl``.

So the gather removes ``round-N/chunks/`` unless the job was submitted with ``keep_chunks=True``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from airflow_batch.folder import JobFolder
from airflow_batch.submit.retrying import keep_retry_requests


def prune_chunks(manifest: Mapping[str, Any], *, keep: bool, log: logging.Logger) -> None:
    """Keep the requests a retry of the gathered round would send, then remove its chunk files.

    ``keep``: the job's ``keep_chunks``; the retry requests are kept either way, so a retry round
    reads one file whatever the setting.
    """
    round_number = int(manifest["round"])
    folder = JobFolder(str(manifest["job_dir"])).chunks_dir(round_number)
    if not folder.exists():  # removed by an earlier run of this gather
        return
    if manifest.get("retryable"):
        kept = keep_retry_requests(manifest)
        log.info("round %d: %d retryable request(s) kept for the next round", round_number, kept)
    if keep:
        return
    files = [path for path in folder.iterdir() if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    with contextlib.suppress(FileNotFoundError):  # another run of this gather removed it first
        folder.rmdir(recursive=True)
    log.info(
        "round %d has landed: removed its %d chunk file(s) (%.1f MB); keep_chunks=True keeps them",
        round_number,
        len(files),
        size / 1e6,
    )
