"""Fixtures of the wait tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anthropic
import pytest
from wait_support import batch_requests


@pytest.fixture
def create_batches(sync_client: anthropic.Anthropic) -> Callable[[Sequence[int]], list[str]]:
    """Return a function creating one batch per size on the emulator; it returns their ids."""

    def create(sizes: Sequence[int]) -> list[str]:
        return [sync_client.messages.batches.create(requests=batch_requests(n)).id for n in sizes]  # type: ignore[arg-type]

    return create
