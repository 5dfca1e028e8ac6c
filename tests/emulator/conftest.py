"""Emulator-test fixtures: one emulator per module, reset and reconfigured before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import pytest

from airflow_batch.emulator.faults import EmulatorConfig
from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess

DEFAULT_CONFIG = {**EmulatorConfig().to_json(), **FAST_CONFIG}


@pytest.fixture(scope="module")
def module_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("emulator-module"), config=FAST_CONFIG) as process:
        yield process


@pytest.fixture
def emu(module_emulator: EmulatorProcess) -> EmulatorProcess:
    """The module's emulator, emptied and back on the fast default config."""
    module_emulator.configure(**DEFAULT_CONFIG)
    module_emulator.reset()
    return module_emulator


@pytest.fixture
def client(emu: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.base_url, api_key="test-key") as sdk:
        yield sdk


@pytest.fixture
async def aclient(emu: EmulatorProcess) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="test-key") as sdk:
        yield sdk
