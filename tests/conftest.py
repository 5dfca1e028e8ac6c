"""Shared fixtures: a real emulator subprocess and SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from airflow_batch.emulator.faults import EmulatorConfig
from airflow_batch.emulator.process import FAST_CONFIG, EmulatorProcess

if TYPE_CHECKING:  # the SDK is imported by the fixtures that need it: pytest-xdist's controller never does
    import anthropic

#: Every setting of the emulator at its fast default: what a test's emulator starts from.
DEFAULT_CONFIG = {**EmulatorConfig().to_json(), **FAST_CONFIG}


@pytest.fixture(autouse=True)
def no_trigger_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triggers fire at once in the test's process: ``dag.test()`` runs them inline, with no scheduler.

    A trigger holds an event ready at once for up to 4 polls (``wait.loop.settle``), against a race
    with a deployment's scheduler; inline there is none to race, and the hold cost seconds per
    deferral. Deployments (e2e, distributed) run triggers in their own processes and keep it; a test
    of the hold itself sets it back.
    """
    from airflow_batch.wait import loop

    monkeypatch.setattr(loop, "SETTLE_SECONDS", 0.0)


@pytest.fixture(scope="session")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """The emulator behind the ``emulator`` fixture: one per test process, handed fresh to each test.

    Started once: an emulator's start, its first create (it imports the SDK's request types) and
    its stop cost seconds of CPU each, which a new process per test paid hundreds of times.
    """
    with EmulatorProcess(tmp_path_factory.mktemp("emulator"), config=FAST_CONFIG) as process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorProcess:
    """An emulator as fresh as a new one for this test: running, empty, on the fast defaults.

    Reset forgets every batch, file, cache entry and call count and restarts the fault sequence;
    the log is emptied, so what a test reads there is its own. One a test stopped is started again.
    """
    if not emulator_process.running:
        emulator_process.start()
    emulator_process.configure(**DEFAULT_CONFIG)
    emulator_process.reset()
    emulator_process.log_path.write_bytes(b"")  # the emulator appends: it writes on from the start
    return emulator_process


@pytest.fixture(scope="session")
def emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """A second emulator shared by a whole session; tests must not assume it is empty or unconfigured."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator-session"), config=FAST_CONFIG) as process:
        yield process


@pytest.fixture
def sync_client(emulator: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    """A sync SDK client for the ``emulator`` fixture."""
    import anthropic

    with anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key") as client:
        yield client


@pytest.fixture
async def async_client(emulator: EmulatorProcess) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """An async SDK client for the ``emulator`` fixture."""
    import anthropic

    async with anthropic.AsyncAnthropic(base_url=emulator.base_url, api_key="test-key") as client:
        yield client
