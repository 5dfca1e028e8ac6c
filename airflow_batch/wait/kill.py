"""Whether a cancelled trigger was killed by a person, or only moved to another triggerer.

Airflow 3.3 cancels a trigger with the same "user action" message, and so calls its
``on_kill()``, in two different situations: a user marked the deferred task failed, success or
cleared it (the batches should be cancelled), and a triggerer that stalled past
``[triggerer] triggerer_health_check_threshold`` resumed and found that another triggerer owns
its trigger now (``update_triggers`` puts the orphaned copy in ``cancelling_triggers``; the
batches must keep running: the other copy is watching them). Airflow's docstring says the second
never calls ``on_kill``; on 3.3.2 it does (apache/airflow#73454).

Two signals tell them apart, the cheap one first:

- **A stall.** A trigger is moved only when its triggerer stopped heartbeating for the health
  threshold, so the copy that gets the reassignment's cancel has just come back from standing
  still. :class:`StallWatch` ticks in the trigger's own loop; a gap of at least half the
  threshold in the last minute means this copy was frozen long enough to lose its trigger: it
  cancels nothing. (Asking the API server right then is also what not to do: measured on a
  deployment, the resumed triggerer's supervisor answered ``GetTaskStates`` only after 30-50 s,
  long enough to be declared unhealthy again.)
- **The task instance's state**, which only a person or the scheduler changes: a user's action
  moves the task out of ``deferred`` before the trigger is cancelled, while a reassignment leaves
  it ``deferred``. The trigger runner asks the API server for it through the Task SDK
  (``GetTaskStates``, the same channel a trigger uses for connections).

When the state cannot be read in time (measured on a deployment: the triggerer's supervisor
often answers ``GetTaskStates`` too late for ``on_kill``), the stall decides alone: no stall
means no reassignment, so the kill is a user's. Residual risk, said in the docs (deployment): a supervisor
that alone stopped heartbeating (its runner's loop kept running) loses its triggers without a
stall this watch can see. Without a task instance (not in a triggerer) nothing is cancelled.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

#: The state a task instance keeps while a trigger (any copy of it) waits for it.
DEFERRED = "deferred"
#: How long to wait for the task instance's state before giving up (and cancelling nothing).
STATE_TIMEOUT_SECONDS = 3.0


#: How long after a stall a cancel is still taken for the reassignment it caused.
STALL_MEMORY_SECONDS = 60.0
STALL_TICK_SECONDS = 1.0


def stall_threshold() -> float:
    """Return the event-loop gap that may have cost this triggerer its triggers: half the health threshold."""
    from airflow.configuration import conf

    return conf.getfloat("triggerer", "triggerer_health_check_threshold", fallback=30.0) / 2


class StallWatch:
    """Ticks in a trigger's event loop and remembers when the loop last stood still (a stopped process)."""

    def __init__(self) -> None:
        self.last_tick = time.monotonic()
        self.gap = 0.0
        self.gap_ended = -math.inf

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            await asyncio.sleep(STALL_TICK_SECONDS)
            self.note()

    def note(self) -> None:
        """Record the time since the last tick (a gap when the loop did not run)."""
        now = time.monotonic()
        gap = now - self.last_tick - STALL_TICK_SECONDS
        if gap > 0 and (gap >= self.gap or now - self.gap_ended > STALL_MEMORY_SECONDS):
            self.gap, self.gap_ended = gap, now
        self.last_tick = now

    def recent_stall(self, threshold: float) -> float | None:
        """Return the seconds this loop stood still within the last minute, if at least ``threshold``."""
        self.note()  # a stall the ticker has not seen yet: the time since its last tick
        if self.gap >= threshold and time.monotonic() - self.gap_ended <= STALL_MEMORY_SECONDS:
            return self.gap
        return None


@dataclass(frozen=True)
class KillVerdict:
    """Whether ``on_kill`` should cancel the batches, and why (for the log)."""

    cancel: bool
    reason: str


async def read_task_state(task_instance: Any) -> str | None:
    """Return the current state of ``task_instance`` as the API server has it.

    Sent on the trigger runner's own event loop (``asend``, as its state syncs are), not from a
    thread through the blocking ``send``. Raises when this process has no Task SDK channel (not a
    triggerer) or the task instance is not found.
    """
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None:
        raise RuntimeError("no Task SDK channel to the triggerer's supervisor in this process")
    map_index = getattr(task_instance, "map_index", -1)
    map_index = -1 if map_index is None else int(map_index)
    response = await comms.asend(
        GetTaskStates(
            dag_id=task_instance.dag_id,
            task_ids=[task_instance.task_id],
            run_ids=[task_instance.run_id],
            map_index=map_index if map_index >= 0 else None,
        )
    )
    states = getattr(response, "task_states", None) or {}
    run_states = states.get(task_instance.run_id) or {}
    key = task_instance.task_id if map_index < 0 else f"{task_instance.task_id}_{map_index}"
    if key not in run_states:
        raise LookupError(f"task instance {key} of run {task_instance.run_id} not found ({response!r:.200})")
    state = run_states[key]
    return None if state is None else str(state)


async def kill_verdict(
    task_instance: Any, stall: StallWatch | None = None, *, timeout: float = STATE_TIMEOUT_SECONDS
) -> KillVerdict:
    """Return whether the trigger of ``task_instance`` was killed by a user (cancel) or moved (keep)."""
    stood_still = stall.recent_stall(stall_threshold()) if stall is not None else None
    if stood_still is not None:
        return KillVerdict(
            False,
            f"this triggerer stood still for {stood_still:.0f} s just before (past half "
            "the health threshold another triggerer takes its triggers over), so this is "
            "most likely the cancel of a copy another triggerer runs now",
        )
    if task_instance is None:
        return KillVerdict(
            False,
            "the trigger has no task instance to ask, so a user's kill cannot be "
            "told from a move to another triggerer",
        )
    try:
        state = await asyncio.wait_for(read_task_state(task_instance), timeout)
    except Exception as error:
        # Measured on a deployment: the supervisor often answers GetTaskStates too late for
        # on_kill. The stall is then the signal: Airflow 3.3 sends the reassignment cancel only
        # to a copy whose triggerer missed its heartbeats for the health threshold, which this
        # loop would have seen. No watch (outside a trigger's run): keep the batches.
        if stall is None:
            return KillVerdict(
                False,
                f"the task instance's state could not be read ({type(error).__name__}: "
                f"{error}) and no stall watch ran, so a user's kill cannot be told from a "
                "move to another triggerer",
            )
        return KillVerdict(
            True,
            f"the task instance's state could not be read in {timeout:.0f} s "
            f"({type(error).__name__}), and this triggerer did not stand still, as one whose "
            "trigger was moved to another triggerer has: a user acted on it",
        )
    if state == DEFERRED:
        return KillVerdict(
            False,
            "the task is still deferred: another triggerer runs this wait now (or "
            "a newer try waits on the same batches)",
        )
    return KillVerdict(True, f"the task instance is {state or 'cleared (no state)'}: a user acted on it")
