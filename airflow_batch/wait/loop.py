"""The wait's one loop: read a round's statuses, fold them into the policy, act on its decisions.

The trigger runs :func:`wait_for_round` in the triggerer; the sensor runs the very same
coroutine in its worker (non-deferrable mode, and the first poll before it defers), so the
two paths cannot drift. Only I/O lives here; every decision is :class:`WaitState`'s.

Reading many batches: a round with more than ``LIST_THRESHOLD`` unfinished batches is read
from list pages of 1,000 (newest first) rather than one ``retrieve`` per batch: a cycle over
1,000 batches costs one or two calls instead of 1,000, which matters under the Batches API's
request rate limits. Paging stops once every unfinished batch was seen or after
``ceil(batches / 1000) + LIST_EXTRA_PAGES`` pages; batches not seen (a busy workspace, a
batch that does not exist) are then retrieved one by one, so a missing batch still ends in
a 404 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from airflow_batch.exceptions import BatchesApiError
from airflow_batch.memory import paused_gc
from airflow_batch.wait.policy import (
    LIST_THRESHOLD,
    CallOutcome,
    Decision,
    WaitState,
    batch_status,
    list_page_budget,
    statuses_in_page,
)

if TYPE_CHECKING:
    import logging

    from airflow_batch.api import AsyncBatchesApi
    from airflow_batch.manifest import JobIdentity

T = TypeVar("T")
POLL_CONCURRENCY = 32  # status calls in flight at once
LIST_PAGE_SIZE = 1000
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
HOOK_MODULE = "airflow_batch.hooks.batches"  # imports the SDK: ~2 s and 150,000 objects on a cold process
#: What the SDK's HTTP stack imports at its first request, on the loop unless imported before:
#: anyio's asyncio backend and the OpenTelemetry propagators (17 ms of the first call's CPU).
FIRST_REQUEST_IMPORTS = ("anyio._backends._asyncio", "opentelemetry.propagate")
_import_lock = threading.Lock()


def import_without_collections(module: str, *warm_ups: str) -> None:
    """Import ``warm_ups`` (those that import), then ``module``, with the garbage collector paused.

    Called from a worker thread. Importing the SDK creates about 150,000 objects (thousands
    of pydantic models), which sets off full collections of the whole heap: 100-250 ms each,
    holding the GIL, so the triggerer's event loop stalls although the import runs in a
    thread. With collection paused none runs during the import; then every object alive is
    frozen (moved out of the collector's view, as Airflow's DAG processor does before
    forking), so the next collections do not scan them either. Most are modules, classes
    and functions that live as long as the process; the cost is that garbage cycles among
    them are never collected (about 800 objects for the SDK's import). Once per process:
    later calls return at once. A warm-up that fails to import is left to its user (the SDK
    reports a propagator ``OTEL_PROPAGATORS`` names but nobody installed).
    """
    if module in sys.modules:
        return
    with _import_lock:
        if module in sys.modules:
            return
        with paused_gc():
            for warm_up in warm_ups:
                with contextlib.suppress(Exception):
                    importlib.import_module(warm_up)
            importlib.import_module(module)  # last: its presence in sys.modules means all are done
            gc.freeze()


#: Longest a trigger holds back an event that is ready at once after the task deferred.
SETTLE_SECONDS = 15.0


async def settle(started: float, poll_interval: float) -> float:
    """Hold a trigger's event until ``min(15 s, 4 polls)`` after the trigger started; return the seconds held.

    Airflow 3 has a race (apache/airflow#66374, #67287, #72716): when a trigger fires before
    the scheduler has processed the executor's "success" for the process that deferred, the
    stale event finds the task instance already requeued, reports a state mismatch and fails
    the try (or uses up a retry). The window is the scheduler's event latency, seconds under
    load; an event that would otherwise come within it waits this long. Short against what
    a wait costs anyway; tests with sub-second polls wait about as long as a few polls.
    """
    remaining = started + min(SETTLE_SECONDS, 4 * poll_interval) - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
    return max(remaining, 0.0)


def triggerer_name(trigger: object) -> str:
    """Return which triggerer runs ``trigger``, for its log.

    Airflow 3.3's trigger runner leaves ``triggerer_job_id`` None (it never learns its job id),
    so the host and process name the triggerer when the job id is missing.
    """
    where = f"host {socket.gethostname()}, pid {os.getpid()}"
    job_id = getattr(trigger, "triggerer_job_id", None)
    return f"triggerer job {job_id} ({where})" if job_id is not None else f"the triggerer on {where}"


def is_local(base_url: str) -> bool:
    """Return whether ``base_url`` points at this machine (the emulator), not the real API."""
    return (urlparse(str(base_url)).hostname or "") in LOCAL_HOSTS


async def connect(identity: JobIdentity) -> AsyncBatchesApi:
    """Return the async API of the job's connection; imports and client construction run off the loop."""

    def hook() -> Any:
        import_without_collections(HOOK_MODULE, *FIRST_REQUEST_IMPORTS)
        return identity.hook()

    batches_hook = await asyncio.to_thread(hook)
    api: AsyncBatchesApi = await batches_hook.async_batches_api()
    return api


async def call_each(
    call: Callable[[str], Awaitable[Any]], batch_ids: Sequence[str], outcome: CallOutcome
) -> CallOutcome:
    """Call ``call(batch_id)`` for each batch, a few at a time; fold the answers into ``outcome``."""
    slots = asyncio.Semaphore(POLL_CONCURRENCY)

    async def one(batch_id: str) -> None:
        async with slots:
            try:
                outcome.statuses[batch_id] = batch_status(await call(batch_id))
            except BatchesApiError as exc:
                (outcome.transient if exc.transient else outcome.permanent)[batch_id] = str(exc)

    await asyncio.gather(*(one(batch_id) for batch_id in batch_ids))
    return outcome


async def read_statuses(api: AsyncBatchesApi, pending: Sequence[str], *, round_batches: int) -> CallOutcome:
    """Read the status of every ``pending`` batch (list pages for many, then retrieves)."""
    outcome = CallOutcome()
    if len(pending) > LIST_THRESHOLD:
        wanted, after = set(pending), None
        for _ in range(list_page_budget(round_batches, LIST_PAGE_SIZE)):
            try:
                page = await api.list_page(after)
            except BatchesApiError as exc:
                if not exc.transient:
                    outcome.permanent[pending[0]] = str(exc)
                else:  # the list kept failing for the whole retry budget: ask again next cycle
                    outcome.transient.update(
                        (batch_id, str(exc)) for batch_id in pending if batch_id not in outcome.statuses
                    )
                return outcome
            outcome.statuses.update(statuses_in_page(page, wanted))
            after = page.get("last_id")
            if wanted <= outcome.statuses.keys() or not page.get("has_more") or not after:
                break
    unseen = [batch_id for batch_id in pending if batch_id not in outcome.statuses]
    return await call_each(api.retrieve, unseen, outcome)


async def cancel_batches(api: AsyncBatchesApi, batch_ids: Sequence[str]) -> CallOutcome:
    """Cancel every batch of ``batch_ids``; return the status each cancel left, or its failure."""
    return await call_each(api.cancel, batch_ids, CallOutcome())


def _emit(log: logging.Logger | Any, decision: Decision) -> None:
    for line in decision.info:
        log.info("%s", line)
    for line in decision.warnings:
        log.warning("%s", line)


async def poll_once(api: AsyncBatchesApi, state: WaitState, log: logging.Logger | Any) -> Decision:
    """Read the pending batches once, fold the answers in, and carry out any deadline cancels."""
    outcome = await read_statuses(api, state.pending(), round_batches=len(state.batch_ids))
    decision = state.record_poll(outcome, time.time())
    while decision.action == "cancel":
        _emit(log, decision)
        decision = state.record_cancel(await cancel_batches(api, state.pending()), time.time())
    _emit(log, decision)
    return decision


async def wait_for_round(
    api: AsyncBatchesApi,
    state: WaitState,
    *,
    log: logging.Logger | Any,
    on_poll: Callable[[WaitState, float], None] | None = None,
    interrupt: Callable[[WaitState, float], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Poll until the wait ends; return its final event. ``on_poll`` (blocking) runs in a thread.

    ``interrupt`` (pure, on the loop) may end the wait early with an event of its own after a
    poll (the trigger's ``landing`` event); the state then carries on in the next trigger.
    """
    while True:
        decision = await poll_once(api, state, log)
        if on_poll is not None:
            await asyncio.to_thread(on_poll, state, time.time())
        if decision.event is not None:
            return decision.event
        early = interrupt(state, time.time()) if interrupt is not None else None
        if early is not None:
            return early
        await asyncio.sleep(decision.sleep)


async def cancel_unfinished(
    identity: JobIdentity,
    state: WaitState,
    *,
    log: logging.Logger | Any,
    within: float,
) -> None:
    """Cancel the round's batches not yet ended (a user killed the wait), in at most ``within`` seconds."""
    pending = state.pending()
    if not pending or state.phase != "waiting":
        return
    api = await connect(identity)
    try:
        outcome = await asyncio.wait_for(cancel_batches(api, pending), timeout=within)
    finally:
        await api.close()
    log.info("on_kill: canceled %d of %d unfinished batches.", len(outcome.statuses), len(pending))
    for batch_id, cause in {**outcome.permanent, **outcome.transient}.items():
        log.warning("on_kill: could not cancel batch %s: %s", batch_id, cause)


def run_in_new_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on a fresh event loop in its own thread; return its result.

    For sync callers that may be inside a running loop's thread (a worker's ``on_kill``
    arrives as a signal while the in-worker wait's loop runs), where ``asyncio.run`` refuses.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="airflow-batch-loop")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
