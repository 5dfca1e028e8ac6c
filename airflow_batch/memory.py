"""Keeping the cyclic garbage collector out of bulk row work.

Decoding tens of thousands of rows creates as many dicts and tuples, and every few hundred
new objects CPython runs a collection; the full ones walk everything alive, so a bulk pass
spends most of its time collecting garbage that is not there (rows hold no reference
cycles). While :func:`paused_gc` is active no collection runs; the rows are freed by
reference counting as usual when the work is done.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (restored as it was, even on error)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
