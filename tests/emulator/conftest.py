"""Emulator-test fixtures: the process's emulator, reset and reconfigured before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import pytest

from airflow_batch.emulator.process import EmulatorProcess


@pytest.fixture
def emu(emulator: EmulatorProcess) -> EmulatorProcess:
    """The process's emulator, emptied and back on the fast default config."""
    return emulator


@pytest.fixture
def client(emu: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.base_url, api_key="test-key") as sdk:
        yield sdk


@pytest.fixture
async def aclient(emu: EmulatorProcess) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="test-key") as sdk:
        yield sdk
