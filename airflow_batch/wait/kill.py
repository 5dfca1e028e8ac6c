"""Whether a cancelled trigger was killed by a person, or only moved to another triggerer.

Airflow 3.3 cancels a trigger with the same "user action" message, and so calls its
``on_kill()``, in two different situations: a user marked the deferred task failed, success or
cleared it (the batches should be cancelled), and a triggerer that stalled past
``[triggerer] triggerer_health_check_threshold`` resumed and found that another triggerer owns
its trigger now (``update_triggers`` puts the orphaned copy in ``cancelling_triggers``; the
batches must keep running: the other copy is watching them). Airflow's docstring says the second
never calls ``on_kill``; on 3.3.2 it does (apache/airflow#73454).

The two differ in the task instance's state, which only a person or the scheduler changes: a
user's action moves the task out of ``deferred`` before the trigger is cancelled, while a
reassignment leaves it ``deferred``. The trigger runner asks the API server for it through the
Task SDK (``GetTaskStates``, the same channel a trigger uses for connections). When the state
cannot be read (no task instance, the API server unreachable, a slow answer), nothing is
cancelled and the log says why: a batch left running is recovered by the next attempt, which
re-attaches to it; a batch cancelled by mistake is lost work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

#: The state a task instance keeps while a trigger (any copy of it) waits for it.
DEFERRED = "deferred"
#: How long to wait for the task instance's state before giving up (and cancelling nothing).
STATE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class KillVerdict:
    """Whether ``on_kill`` should cancel the batches, and why (for the log)."""

    cancel: bool
    reason: str


def read_task_state(task_instance: Any) -> str | None:
    """Return the current state of ``task_instance`` as the API server has it (blocking call).

    Raises when the trigger runner cannot ask (no Task SDK channel in this process) or the
    task instance is not found.
    """
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = getattr(task_instance, "map_index", -1)
    map_index = -1 if map_index is None else int(map_index)
    states = RuntimeTaskInstance.get_task_states(
        dag_id=task_instance.dag_id,
        task_ids=[task_instance.task_id],
        run_ids=[task_instance.run_id],
        map_index=map_index if map_index >= 0 else None,
    )
    run_states = states.get(task_instance.run_id) or {}
    key = task_instance.task_id if map_index < 0 else f"{task_instance.task_id}_{map_index}"
    if key not in run_states:
        raise LookupError(f"task instance {key} of run {task_instance.run_id} not found")
    state = run_states[key]
    return None if state is None else str(state)


async def kill_verdict(task_instance: Any, *, timeout: float = STATE_TIMEOUT_SECONDS) -> KillVerdict:
    """Return whether the trigger of ``task_instance`` was killed by a user (cancel) or moved (keep)."""
    if task_instance is None:
        return KillVerdict(
            False,
            "the trigger has no task instance to ask, so a user's kill cannot be "
            "told from a move to another triggerer",
        )
    try:
        state = await asyncio.wait_for(asyncio.to_thread(read_task_state, task_instance), timeout)
    except Exception as error:  # unreadable: keep the batches, the next attempt re-attaches
        return KillVerdict(
            False,
            f"the task instance's state could not be read ({type(error).__name__}: "
            f"{error}), so a user's kill cannot be told from a move to another "
            "triggerer",
        )
    if state == DEFERRED:
        return KillVerdict(
            False,
            "the task is still deferred: another triggerer runs this wait now (or "
            "a newer try waits on the same batches)",
        )
    return KillVerdict(True, f"the task instance is {state or 'cleared (no state)'}: a user acted on it")
