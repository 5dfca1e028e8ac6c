"""``BatchesSensor``: wait until every batch of a round has ended, without holding a worker.

Deferrable by default: one :class:`~airflow_batch.triggers.batches.BatchesTrigger` watches
the whole round from the triggerer. In non-deferrable mode the sensor polls in the worker
with the same poll step and decision policy (:mod:`airflow_batch.polling`), so the two
paths behave alike: same retries, same deadline, same cancel policy, same events.

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

import os
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import BaseSensorOperator

from airflow_batch import polling
from airflow_batch.exceptions import BatchPollError, BatchWaitTimeoutError
from airflow_batch.links.console import BatchConsoleLink, push_console_links
from airflow_batch.manifest import RoundManifest
from airflow_batch.triggers.batches import BatchesTrigger

if TYPE_CHECKING:
    import anthropic
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


class BatchesSensor(BaseSensorOperator):
    """Wait until every batch of a submitted round has ``processing_status == "ended"``.

    Returns (XCom) the manifest plus ``batch_status``, ``counts``, ``timed_out``,
    ``canceled_by_timeout`` and ``waited_at``, for the gather task.

    :param manifest: The submit task's manifest (e.g. ``submit.output``).
    :param conn_id: Anthropic connection; default: the manifest's ``conn_id``.
    :param poll_interval: Seconds between polls (default 60; 1 s is the lowest sensible value).
    :param timeout: Seconds before the wait deadline (default 24 h, the batches' own lifetime).
    :param timeout_policy: ``cancel`` (default): cancel unfinished batches at the deadline;
        ``leave``: leave them running for a later attempt to re-attach.
    :param fail_on_timeout: Fail with ``BatchWaitTimeoutError`` at the deadline (default). When
        False (and policy ``cancel``), wait for the canceled batches to end and return the
        manifest with ``timed_out=True`` so the round is gathered and retried.
    :param cancel_grace: Seconds to wait for canceled batches to reach ``ended`` (default 1 h).
    :param deferrable: Wait in the triggerer (default True; ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``
        in the environment overrides the default); False polls in the worker (``mode="poke"``
        only). Either way the first poll runs in the worker: a round whose batches have all
        ended already (a cleared re-run, a quick round) returns without deferring.
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
        poll_interval: float = polling.DEFAULT_POLL_INTERVAL,
        timeout: float = polling.DEFAULT_TIMEOUT,
        timeout_policy: str = "cancel",
        fail_on_timeout: bool = True,
        cancel_grace: float = polling.DEFAULT_CANCEL_GRACE,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        poll_interval = polling.validate_poll_interval(poll_interval)
        super().__init__(poke_interval=poll_interval, timeout=timeout, **kwargs)
        self.manifest = manifest
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.timeout_policy = polling.validate_timeout_policy(timeout_policy)
        self.fail_on_timeout = fail_on_timeout
        self.cancel_grace = float(cancel_grace)
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self._wait: tuple[anthropic.Anthropic, polling.WaitState] | None = None

    def _round(self) -> Mapping[str, Any]:
        if not isinstance(self.manifest, Mapping):
            raise ValueError(
                f"{self.task_id}: manifest must be the submit task's manifest (a dict, e.g. "
                f"manifest=submit.output), got {type(self.manifest).__name__}."
            )
        return self.manifest

    def _conn_id(self, manifest: Mapping[str, Any]) -> str:
        from airflow.providers.anthropic.hooks.anthropic import AnthropicHook

        return self.conn_id or str(manifest.get("conn_id") or AnthropicHook.default_conn_name)

    def execute(self, context: Context) -> RoundManifest:
        """Defer to one trigger for the whole round (or poll here when not deferrable)."""
        from airflow.providers.anthropic.hooks.anthropic import AnthropicHook

        manifest = self._round()
        batch_ids = polling.batch_ids_of(manifest)
        if not batch_ids:
            self.log.info("The round has no batches; nothing to wait for.")
            return polling.waited_manifest(manifest, {"batch_status": {}}, time.time())
        push_console_links(context["ti"], batch_ids)
        conn_id = self._conn_id(manifest)
        job_dir = manifest.get("job_dir")
        round_number = int(manifest.get("round", 0))
        end_time = time.time() + self.timeout
        wait_for_cancel = not self.fail_on_timeout and self.timeout_policy == "cancel"
        self.log.info(
            "Waiting for %d batches of round %d (%s), deadline in %ss, policy %r.",
            len(batch_ids),
            round_number,
            "deferred to the triggerer" if self.deferrable else "polling in the worker",
            self.timeout,
            self.timeout_policy,
        )

        def write_progress(state: polling.WaitState, now: float) -> None:
            if not job_dir:
                return
            try:
                polling.write_progress(
                    str(job_dir), round_number, polling.progress_document(state, round_number, now)
                )
            except Exception as exc:  # progress is informational; the wait goes on
                self.log.warning("Could not write the progress file of round %s: %s", round_number, exc)

        client = cast("anthropic.Anthropic", AnthropicHook(conn_id=conn_id).get_conn())
        poller = client.with_options(max_retries=0, timeout=polling.REQUEST_TIMEOUT)
        state = polling.WaitState(
            batch_ids=batch_ids,
            end_time=end_time,
            poll_interval=self.poll_interval,
            timeout_policy=self.timeout_policy,
            wait_for_cancel=wait_for_cancel,
            cancel_grace=self.cancel_grace,
        )
        if self.deferrable:
            # One poll here first. A round that has already ended returns without a deferral,
            # which also sidesteps an Airflow 3.3 race: a trigger that fires within about a
            # second of the deferral can fail the resumed task with a 409.
            first = state.record_poll(
                polling.poll_sync(poller, state.pending(), round_batches=len(batch_ids)), time.time()
            )
            client.close()
            if first.action == "finish" and first.event is not None:
                write_progress(state, time.time())
                return self._finish(manifest, first.event)
            self.defer(
                trigger=BatchesTrigger.for_state(
                    state,
                    conn_id=conn_id,
                    job_dir=str(job_dir) if job_dir else None,
                    round_number=round_number,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout + self.cancel_grace + DEFER_MARGIN),
            )
        self._wait = (poller, state)

        try:
            event = polling.wait_sync(poller, state, log=self.log, on_poll=write_progress)
        finally:
            client.close()
        return self._finish(manifest, event)

    def execute_complete(self, context: Context, event: Any = None) -> RoundManifest:
        """Validate the trigger's event and return the manifest with the final counts."""
        return self._finish(self._round(), event)

    def _finish(self, manifest: Mapping[str, Any], event: Any) -> RoundManifest:
        try:
            event = polling.validate_event(event)
        except ValueError as exc:
            raise BatchPollError(f"{self.task_id}: {exc}") from exc
        if event["status"] == "error":
            raise BatchPollError(event["message"])
        result = polling.waited_manifest(manifest, event, time.time())
        self.log.info(
            "%s",
            polling.progress_line(polling.summarize(polling.batch_ids_of(manifest), result["batch_status"])),
        )
        if event["status"] == "timeout":
            not_ended = polling.next_to_poll(polling.batch_ids_of(manifest), result["batch_status"])
            if self.fail_on_timeout or not_ended:
                raise BatchWaitTimeoutError(
                    f"{event['message']} Raise timeout= or set fail_on_timeout=False to gather a "
                    "timed-out round; with timeout_policy='leave' a retry of this task re-attaches."
                )
            self.log.warning("%s The round is passed on with timed_out=True.", event["message"])
        return result

    def on_kill(self) -> None:
        """Cancel the unfinished batches when a user kills the non-deferrable wait."""
        if self._wait is None:
            return
        client, state = self._wait
        pending = state.pending()
        if not pending or state.phase != "waiting":
            return
        outcome = polling.call_many_sync(client, "cancel", pending, attempts=2)
        self.log.info("on_kill: canceled %d of %d unfinished batches.", len(outcome.statuses), len(pending))
