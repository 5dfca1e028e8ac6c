"""Batches of a round that its ledger does not hold: found before the round is gathered.

A second batch for one chunk can exist after a lost race: a writer stalled between saving its
intent and sending its create (a triggerer frozen past its health threshold, a worker paused),
another writer took the round over, found no batch for the intent and created one, and then
the first writer's create went out when it resumed. The ledger records every intent that was
replaced without a batch (``interrupted``) and every intent still open, with the chunk's
request count and when it was made; the Batches API has no metadata on a batch, so the sweep
matches by those alone, as orphan adoption does (:func:`~airflow_batch.submit.chunk_batch.find_orphan`):
a batch created within an intent's window, holding its chunk's request count, that no chunk
and no earlier sweep claims. Only rounds with such intents are swept, so a round whose creates
all went through one writer never lists the API.

Every chunk of a gathered round has its batch (submit returned only then), so a stray is a
duplicate: it is cancelled at once (if it has not ended), waited for until it ends, and its
results are read only to count what it cost. Strays are recorded in the ledger (fenced, like
every ledger write), so a re-run neither cancels nor counts them twice; the round manifest
lists them under ``strays`` and adds their cost to the round's.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_batch.gather.batch_parts import write_rows
from airflow_batch.submit.chunk_batch import CLOCK_SKEW, CREATE_WINDOW, batch_requests, created_utc
from airflow_batch.submit.ledger import Ledger, LedgerStore, utcnow

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.api import BatchesApi
    from airflow_batch.gather.batch_parts import GatherConfig

#: Longest the sweep waits for a cancelled stray to reach ``ended`` before counting it.
STRAY_END_SECONDS = 300.0
STRAY_POLL_SECONDS = 1.0


def _windows(ledger: Ledger) -> list[tuple[int, int, datetime]]:
    """Return (chunk, requests, intent time) of every intent whose create may have made a batch."""
    sizes = {int(c["chunk"]): int(c["requests"]) for c in ledger.chunks}
    windows = [
        (int(entry["chunk"]), sizes.get(int(entry["chunk"]), -1), datetime.fromisoformat(entry["started_at"]))
        for entry in ledger.interrupted
    ]
    windows += [
        (chunk, sizes.get(chunk, -1), datetime.fromisoformat(entry["started_at"]))
        for chunk, entry in ledger.intents.items()
    ]
    return windows


def find_strays(api: BatchesApi, ledger: Ledger) -> dict[str, int]:
    """Return the unclaimed batches created within an intent's window with its chunk's size (id -> chunk)."""
    windows = _windows(ledger)
    if not windows:
        return {}
    earliest = min(started for _, _, started in windows) - CLOCK_SKEW
    claimed = ledger.claimed() | set(ledger.strays)
    found: dict[str, int] = {}
    for batch in api.recent_batches():
        created = created_utc(batch)
        if created < earliest:
            break  # newest first: everything further is older
        if batch.id in claimed:
            continue
        total = batch_requests(batch)
        for chunk, requests, started in windows:
            if total == requests and started - CLOCK_SKEW <= created <= started + CREATE_WINDOW:
                found[batch.id] = chunk
                break
    return found


def sweep_strays(
    api: BatchesApi,
    job: ObjectStoragePath,
    round_number: int,
    config: GatherConfig,
    log: logging.Logger,
) -> list[dict[str, Any]]:
    """Find, cancel and price the round's batches outside its ledger; return them for the manifest."""
    store = LedgerStore(job, round_number)
    ledger = store.load()
    if ledger is None:
        return []
    found = find_strays(api, ledger)
    for batch_id, chunk in found.items():
        action = "ended before it was found"
        if not api.retrieve(batch_id).ended:
            api.cancel(batch_id)
            action = "canceled"
        ledger.strays[batch_id] = {
            "chunk": chunk,
            "chunk_batch": ledger.batch_id(chunk),
            "found_at": utcnow(),
            "action": action,
        }
        ledger.events.append(f"{utcnow()} stray batch {batch_id} of chunk {chunk}: {action}")
        log.warning(
            "round %d: batch %s holds chunk %d a second time (the chunk's batch is %s; a writer that lost "
            "the round created it): %s. Its cost is counted in the round's.",
            round_number,
            batch_id,
            chunk,
            ledger.batch_id(chunk),
            action,
        )
    if found:
        store.save(ledger)
    unpriced = [batch_id for batch_id, entry in ledger.strays.items() if "usage_by_model" not in entry]
    for batch_id in unpriced:
        _price(api, ledger.strays[batch_id], batch_id, round_number, config)
    if unpriced:
        store.save(ledger)
    return [{"batch_id": batch_id, **entry} for batch_id, entry in sorted(ledger.strays.items())]


def _price(
    api: BatchesApi, entry: dict[str, Any], batch_id: str, round_number: int, config: GatherConfig
) -> None:
    """Wait for a stray to end, then add its result counts and usage to ``entry``."""
    deadline = time.monotonic() + STRAY_END_SECONDS
    while not api.retrieve(batch_id).ended:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"stray batch {batch_id} did not end within {STRAY_END_SECONDS:.0f} s of its cancel; "
                "re-run the gather to count its cost"
            )
        time.sleep(STRAY_POLL_SECONDS)
    settings = config.block_settings(batch_id, round_number, {})
    with open(os.devnull, "wb") as discard:  # a stray's rows are read only for their usage
        stats = api.download_results(batch_id, lambda chunks: write_rows(chunks, discard, discard, settings))
    entry["result_counts"] = {kind: n for kind, n in stats.result_counts.items() if n}
    entry["usage_by_model"] = stats.usage_by_model
    entry["cost"] = config.table.cost(stats.usage_by_model)
