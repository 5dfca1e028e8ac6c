"""Shared fixtures: a real emulator subprocess and SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import pytest

from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess


@pytest.fixture
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """A fresh emulator (own data dir, fast processing) running for one test."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator"), config=FAST_CONFIG) as process:
        yield process


@pytest.fixture(scope="session")
def emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One emulator shared by a whole session; tests must not assume it is empty or unconfigured."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator-session"), config=FAST_CONFIG) as process:
        yield process


@pytest.fixture
def sync_client(emulator: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    """A sync SDK client for the ``emulator`` fixture."""
    with anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key") as client:
        yield client


@pytest.fixture
async def async_client(emulator: EmulatorProcess) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """An async SDK client for the ``emulator`` fixture."""
    async with anthropic.AsyncAnthropic(base_url=emulator.base_url, api_key="test-key") as client:
        yield client
