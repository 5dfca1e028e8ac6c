"""Where the Anthropic Console shows a batch, and the one URL a round's link opens."""

from __future__ import annotations

from collections.abc import Sequence

CONSOLE_BATCHES_URL = "https://platform.claude.com/workspaces/default/batches"


def batch_console_url(batch_id: str) -> str:
    """Return the Anthropic Console page of one batch."""
    return f"{CONSOLE_BATCHES_URL}/{batch_id}"


def round_console_url(batch_ids: Sequence[str]) -> str:
    """Return the one URL the extra link shows for a round: its batch, or the batches list."""
    if len(batch_ids) == 1:
        return batch_console_url(batch_ids[0])
    return CONSOLE_BATCHES_URL
