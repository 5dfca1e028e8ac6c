"""Waiting for state in tests: poll with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any


async def until(condition: Callable[[], bool], deadline: float = 30.0, step: float = 0.05) -> None:
    """Wait until ``condition()`` is true, failing after ``deadline`` seconds."""
    stop = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > stop:
            raise AssertionError(f"condition not met within {deadline}s")
        await asyncio.sleep(step)


def until_sync(condition: Callable[[], bool], deadline: float = 30.0, step: float = 0.05) -> None:
    """Wait (blocking) until ``condition()`` is true, failing after ``deadline`` seconds."""
    stop = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > stop:
            raise AssertionError(f"condition not met within {deadline}s")
        time.sleep(step)


def release_after_first_poll(emulator: Any, progress_file: Any, **config: Any) -> threading.Thread:
    """Reconfigure ``emulator`` once the wait's first poll wrote ``progress_file``; return the thread.

    Batches created with a long start delay are still in progress at the sensor's first poll
    whatever the machine's speed, so a deferrable wait surely defers; releasing them then lets
    the trigger see them end.
    """

    def release() -> None:
        # Released even when the poll is late: a thread's missed deadline is silent, and the
        # batches would then sit out their whole start delay (10 minutes on a loaded machine).
        try:
            until_sync(progress_file.exists, deadline=120)
        finally:
            emulator.configure(**config)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread
