"""``BatchesSensor``: wait until every batch of a round has ended, without holding a worker.

Deferrable by default: after one poll in the worker (a round that has already ended returns
at once), one :class:`~airflow_batch.triggers.batches.BatchesTrigger` watches the whole round
from the triggerer. In non-deferrable mode the worker runs the very same loop
(:func:`airflow_batch.wait.loop.wait_for_round`), so both paths share retries, deadline,
cancel policy, progress file and events.

Timeout. ``timeout`` (default 24 h) is a wall-clock deadline fixed when the attempt starts.
When it passes, ``timeout_policy="cancel"`` (default) cancels every unfinished batch;
``"leave"`` leaves them running so a later attempt (``retries``) re-attaches to them.
``fail_on_timeout=True`` (default) then fails the task with ``BatchWaitTimeoutError``, so the
round is not gathered. With ``fail_on_timeout=False`` and policy ``cancel`` the wait keeps
polling until the canceled batches reach ``ended`` (at most ``cancel_grace`` seconds) and
returns the manifest with ``timed_out=True``: the gather lands what finished, and the
canceled requests become retryable failures for the next round.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from airflow_batch import settings
from airflow_batch.exceptions import BatchPollError, BatchWaitTimeoutError
from airflow_batch.lineage import BatchJobLineage
from airflow_batch.links.console import BatchConsoleLink, push_console_links
from airflow_batch.manifest import JobIdentity, RoundManifest
from airflow_batch.spec.docstrings import documented
from airflow_batch.triggers.batches import ON_KILL_BUDGET, BatchesTrigger
from airflow_batch.wait.events import batch_ids_of, validate_event, waited_manifest
from airflow_batch.wait.landing import LANDING, LandingPolicy, validate_land_interval, validate_landing
from airflow_batch.wait.loop import (
    cancel_unfinished,
    connect,
    is_local,
    poll_once,
    run_in_new_loop,
    wait_for_round,
)
from airflow_batch.wait.policy import (
    DEFAULT_CANCEL_GRACE,
    DEFAULT_TIMEOUT,
    WaitState,
    next_to_poll,
    validate_poll_interval,
    validate_timeout_policy,
)
from airflow_batch.wait.progress import ProgressWriter, progress_line, summarize

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFER_MARGIN = 900.0  # the trigger's own deadline fires first; Airflow's defer timeout is a backstop


def default_deferrable() -> bool:
    """Return True unless ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE`` is set in the environment.

    Airflow's own default for ``[operators] default_deferrable`` is False, and every generated
    ``airflow.cfg`` writes that False out, so an explicit choice in the file cannot be told
    from the default. This sensor's default is True, because holding a worker slot for up to
    24 h is the wrong default for a batch wait; pass ``deferrable=False`` (or set the
    environment variable, e.g. where no triggerer runs) to poll in the worker.
    """
    env = os.environ.get("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "t", "yes", "y", "on")
    return True


@documented("wait")
class BatchesSensor(BatchJobLineage, BaseSensorOperator):
    """Wait until every batch of a submitted round has ``processing_status == "ended"``.

    Returns (XCom) the manifest plus ``batch_status``, ``counts``, ``timed_out``,
    ``canceled_by_timeout`` and ``waited_at``, with ``stage="waited"``, for the gather task.
    """

    template_fields: Sequence[str] = ("manifest", "conn_id")
    operator_extra_links = (BatchConsoleLink(),)
    valid_modes: Sequence[str] = ("poke",)
    ui_color = "#f0e4d7"

    def __init__(
        self,
        *,
        manifest: Any,
        conn_id: str | None = None,
        poll_interval: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        timeout_policy: str = "cancel",
        fail_on_timeout: bool = True,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        deferrable: bool | None = None,
        land_interval: float | None = None,
        land_min_batches: int | None = None,
        gather_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.land_interval = validate_land_interval(land_interval)
        self.land_min_batches = land_min_batches
        self.gather_settings = dict(gather_settings or {})
        if poll_interval is not None:
            poll_interval = validate_poll_interval(poll_interval)
        super().__init__(poke_interval=poll_interval or 60.0, timeout=timeout, **kwargs)
        self.manifest = manifest
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.timeout_policy = validate_timeout_policy(timeout_policy)
        self.fail_on_timeout = fail_on_timeout
        self.cancel_grace = float(cancel_grace)
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self._watching: tuple[JobIdentity, WaitState] | None = None

    def _round(self) -> Mapping[str, Any]:
        if not isinstance(self.manifest, Mapping):
            raise ValueError(
                f"{self.task_id}: manifest must be the submit task's manifest (a dict, e.g. "
                f"manifest=submit.output), got {type(self.manifest).__name__}."
            )
        return self.manifest

    def execute(self, context: Context) -> RoundManifest:
        """Poll once here, then defer to one trigger for the whole round (or keep polling here)."""
        manifest = self._round()
        batch_ids = batch_ids_of(manifest)
        # Pushed first, also for a round with nothing to wait for: the extra link reads them.
        push_console_links(context["ti"], batch_ids)
        if not batch_ids:
            self.log.info("The round has no batches (answered without one, or empty); nothing to wait for.")
            return waited_manifest(manifest, {"batch_status": {}}, time.time())
        landed = self._landed(manifest, batch_ids)
        if landed:
            self.log.info(
                "%d of %d batch(es) of the round were gathered already: not asking the API for them",
                len(landed),
                len(batch_ids),
            )
            batch_ids = [batch_id for batch_id in batch_ids if batch_id not in landed]
            if not batch_ids:
                return waited_manifest(manifest, {"batch_status": landed}, time.time())
        identity = JobIdentity.of(manifest, self.conn_id, self.task_id)
        state = WaitState(
            batch_ids=batch_ids,
            end_time=time.time() + self.timeout,
            poll_interval=self.poll_interval or settings.poll_interval(),
            timeout_policy=self.timeout_policy,
            wait_for_cancel=not self.fail_on_timeout and self.timeout_policy == "cancel",
            cancel_grace=self.cancel_grace,
        )
        self._watching = (identity, state)
        event = asyncio.run(self._watch(identity, manifest, state))
        if event is None:
            self.log.info(
                "Deferring to the triggerer: %d of %d batches of round %d not ended after the first poll; "
                "deadline in %ss, policy %r.",
                len(state.pending()),
                len(batch_ids),
                int(manifest.get("round", 0)),
                self.timeout,
                self.timeout_policy,
            )
            self.defer(
                trigger=BatchesTrigger.for_state(
                    state,
                    **self._round_kwargs(identity, manifest),
                    **self._landing(len(batch_ids), list(landed)),
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout + self.cancel_grace + DEFER_MARGIN),
            )
        return self._finish(manifest, event)

    @staticmethod
    def _round_kwargs(identity: JobIdentity, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Return what the trigger needs to reach the round's batches and write its progress."""
        return {
            "identity": identity.to_json(),
            "job_dir": manifest.get("job_dir"),
            "round_number": int(manifest.get("round", 0)),
        }

    def _landing(self, batches: int, landed: list[str]) -> dict[str, Any]:
        """Return the trigger's landing arguments (none when ``land_interval`` is off)."""
        if self.land_interval is None:
            return {}
        policy = LandingPolicy.for_round(self.land_interval, self.land_min_batches, batches)
        return {"land_interval": policy.interval, "land_min_batches": policy.min_batches, "landed": landed}

    async def _watch(
        self, identity: JobIdentity, manifest: Mapping[str, Any], state: WaitState
    ) -> dict[str, Any] | None:
        """Return the wait's final event, or None when a deferrable wait should defer after one poll."""
        api = await connect(identity)
        try:
            validate_poll_interval(state.poll_interval, local=is_local(api.base_url))
            writer = ProgressWriter(manifest.get("job_dir"), int(manifest.get("round", 0)), self.log)
            if not self.deferrable:
                self.log.info(
                    "Waiting for %d batches in the worker (deferrable=False).", len(state.batch_ids)
                )
                return await wait_for_round(api, state, log=self.log, on_poll=writer.write)
            decision = await poll_once(api, state, self.log)
            await asyncio.to_thread(writer.write, state, time.time())
            if decision.event is not None:  # ended, timed out or failed: say which, not "deferred"
                self.log.info(
                    "Not deferring: the wait ended at the first poll (%s). %s",
                    decision.event["status"],
                    decision.event["message"],
                )
            return decision.event
        finally:
            await api.close()

    def execute_complete(self, context: Context, event: Any = None) -> RoundManifest:
        """Validate the trigger's event and return the manifest with the final counts.

        A ``landing`` event lands the ended batches it names, then defers again.
        """
        if isinstance(event, Mapping) and event.get("status") == LANDING:
            self._land(event)
        return self._finish(self._round(), event)

    def _land(self, event: Mapping[str, Any]) -> None:
        """Land the ended batches a ``landing`` event names (here, in the worker), then defer again."""
        from airflow_batch.storage import as_path
        from airflow_batch.wait.landing_worker import land_ended

        try:
            landing = validate_landing(event)
        except ValueError as exc:
            raise BatchPollError(f"{self.task_id}: {exc}") from exc
        manifest = self._round()
        identity = JobIdentity.of(manifest, self.conn_id, self.task_id)
        round_number = int(manifest.get("round", 0))
        state = WaitState.from_kwargs(**landing["state"])
        land_ended(
            identity,
            as_path(str(manifest["job_dir"])),
            round_number,
            {str(record["batch_id"]): record for record in manifest["batches"]},
            landing["to_land"],
            landed=landing["landed"],
            gather_settings=self.gather_settings,
            log=self.log,  # type: ignore[arg-type]
            meanwhile=f"while {len(state.pending())} of {len(state.batch_ids)} still run; waiting again",
        )
        ProgressWriter(str(manifest["job_dir"]), round_number, self.log, landed=landing["landed"]).write(
            state, time.time()
        )
        self.defer(
            trigger=BatchesTrigger.for_state(
                state,
                **self._round_kwargs(identity, manifest),
                **self._landing(len(state.batch_ids), list(landing["landed"])),
            ),
            method_name="execute_complete",
            timeout=timedelta(
                seconds=max(state.end_time - time.time(), 0.0) + self.cancel_grace + DEFER_MARGIN
            ),
        )

    @staticmethod
    def _landed(manifest: Mapping[str, Any], batch_ids: Sequence[str]) -> dict[str, Any]:
        """Return the statuses of the round's batches already gathered (a re-run of the wait).

        With ``delete_batches`` they may be gone from the API; their rows are in the job folder.
        """
        from airflow_batch.gather.gathering import landed_batches
        from airflow_batch.storage import as_path

        job_dir = manifest.get("job_dir")
        if not isinstance(job_dir, str):
            return {}
        return dict(landed_batches(as_path(job_dir), int(manifest.get("round", 0)), batch_ids))

    def _finish(self, manifest: Mapping[str, Any], event: Any) -> RoundManifest:
        try:
            event = validate_event(event)
        except ValueError as exc:
            raise BatchPollError(f"{self.task_id}: {exc}") from exc
        if event["status"] == "error":
            raise BatchPollError(event["message"])
        landed = self._landed(manifest, batch_ids_of(manifest))
        if landed:
            event = {**event, "batch_status": {**event["batch_status"], **landed}}
        result = waited_manifest(manifest, event, time.time())
        batch_ids = batch_ids_of(manifest)
        self.log.info("%s", progress_line(summarize(batch_ids, result["batch_status"])))
        if event["status"] == "timeout":
            if self.fail_on_timeout or next_to_poll(batch_ids, result["batch_status"]):
                raise BatchWaitTimeoutError(
                    f"{event['message']} Raise timeout= or set fail_on_timeout=False to gather a "
                    "timed-out round; with timeout_policy='leave' a retry of this task re-attaches."
                )
            self.log.warning("%s The round is passed on with timed_out=True.", event["message"])
        return result

    def on_kill(self) -> None:
        """Cancel the unfinished batches when a user kills the in-worker wait."""
        if self._watching is None:
            return
        identity, state = self._watching
        run_in_new_loop(cancel_unfinished(identity, state, log=self.log, within=ON_KILL_BUDGET))
